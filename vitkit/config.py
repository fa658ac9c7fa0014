"""Run and serve configuration, each option declared once: type, default, valid values, help, CLI flag and whether a
resumed run may change it.

    typed defaults <- YAML file (`--config`) <- command-line flags <- `--set section.key=value`

The command-line flags, `vitkit train --help-config`, validation with "did you mean", the resume policy and the
serve settings are all generated from the declarations below. To add an option, add one `option(...)` line.
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import logging
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import UserError

log = logging.getLogger(__name__)

# What a resumed run (`vitkit train --resume`) may do with an option:
REFUSE = "refuse"  # changing it would make the run something else than the run it continues
WARN = "warn"  # allowed, with a warning that the result differs from an uninterrupted run
FREE = "free"  # affects neither the weights nor the split


@dataclass(frozen=True)
class Range:
    """Valid numbers: `low`/`high` bounds, each closed unless `*_open`; None leaves that side unbounded."""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value) -> bool:
        if value is None:
            return True
        low_ok = self.low is None or (value > self.low if self.low_open else value >= self.low)
        high_ok = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return low_ok and high_ok

    def describe(self) -> str:
        if self.high is None:
            if self.low_open:
                return f"be greater than {self.low:g}"
            return "not be negative" if self.low == 0 else f"be at least {self.low:g}"
        if (self.low, self.high, self.low_open, self.high_open) == (0, 1, False, False):
            return "be between 0 and 1"
        return (f"be in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                f"{')' if self.high_open else ']'}")


POSITIVE, NOT_NEGATIVE, AT_LEAST_1 = Range(0, low_open=True), Range(0), Range(1)
FRACTION, PROBABILITY = Range(0, 1, high_open=True), Range(0, 1)


def option(default, help: str, *, choices: tuple | None = None, check: Range | None = None, flag: str | None = None,
           resume: str | None = None, metavar: str | None = None):
    """A config field with everything that is said about it. `flag`: its CLI option (else only `--set`); `resume`:
    REFUSE, WARN or FREE (default: the section's)."""
    meta = {"help": help, "choices": choices, "check": check, "flag": flag, "resume": resume, "metavar": metavar}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    name: str = option("vit_mini_patch4_32", "registered model (`vitkit models` lists them), or timm:NAME for timm's "
                       "model of that name trained from scratch", flag="--model")
    img_size: int | None = option(None, "input size in pixels; null: a named dataset's own size, else the model's",
                                  check=POSITIVE, flag="--img-size")
    in_chans: int | None = option(None, "1 (grayscale) or 3 (RGB); null: from the data", choices=(None, 1, 3))
    patch_size: int | None = option(None, "override the model's patch size", check=POSITIVE)
    embed_dim: int | None = option(None, "override the model's width", check=POSITIVE)
    depth: int | None = option(None, "override the number of blocks", check=POSITIVE)
    num_heads: int | None = option(None, "override the number of attention heads", check=POSITIVE)
    mlp_ratio: float | None = option(None, "override the MLP hidden size / width", check=POSITIVE)
    global_pool: str | None = option(None, "'token' (class token), 'avg' (mean of patch tokens) or 'map' (attention "
                                     "pooling, SigLIP); null: the model's", choices=(None, "token", "avg", "map"))
    stem: str | None = option(None, "'patch' (one strided conv, timm's ViT) or 'conv' (3x3 conv stack); null: the "
                              "model's", choices=(None, "patch", "conv"))
    stem_depth: int | None = option(None, "3x3 convs per resolution in a conv stem (the first strided); null: the "
                                    "model's (1)", check=AT_LEAST_1)
    class_token: bool | None = option(None, "a class token before the patches; false needs global_pool 'avg'; "
                                      "null: the model's (true)")
    reg_tokens: int | None = option(None, "register tokens after the class token (DINOv2's reg4: 4); null: the "
                                    "model's (0)", check=NOT_NEGATIVE)
    no_embed_class: bool | None = option(None, "position embeddings for the patches only, not the prefix tokens "
                                         "(DeiT-III, DINOv2); null: the model's (false)")
    pre_norm: bool | None = option(None, "a LayerNorm before the blocks and no bias in the patch conv (CLIP); "
                                   "null: the model's (false)")
    init_values: float | None = option(None, "LayerScale's starting value for each residual branch (DeiT-III: "
                                       "1e-6, DINOv2: 1e-5); null: the model's (none)", check=POSITIVE)
    act_layer: str | None = option(None, "the MLP's activation: 'gelu', 'gelu_tanh' (SigLIP), 'quick_gelu' (OpenAI "
                                   "CLIP) or 'silu' (SwiGLU); null: the model's (gelu)",
                                   choices=(None, "gelu", "gelu_tanh", "quick_gelu", "silu"))
    mlp_layer: str | None = option(None, "'mlp', or a gated MLP: 'swiglu_packed' (DINOv2 giant) or 'swiglu'; null: "
                                   "the model's (mlp)", choices=(None, "mlp", "swiglu_packed", "swiglu"))
    fc_norm: bool | None = option(None, "the final LayerNorm after pooling (true) or before it (false); null: after "
                                  "for 'avg', else before")
    dist_token: bool | None = option(None, "DeiT's distillation token and second head (averaged at inference); "
                                     "null: the model's (false)")
    dynamic_img_size: bool | None = option(None, "take any input size the patch divides, position embeddings "
                                           "interpolated on the fly; null: the model's (false)")
    abs_pos_embed: bool | None = option(None, "learned position embeddings added to the tokens; null: the model's "
                                        "(true; DINOv3: false)")
    rope: str | None = option(None, "rotary position embeddings in attention: 'dinov3', or 'cat' (by patch index: "
                              "EVA-02, timm's vit_*_rope_*); null: the model's (none)", choices=(None, "dinov3", "cat"))
    drop_rate: float = option(0.0, "dropout after attention projection, in the MLP and before the head",
                              check=FRACTION)
    attn_drop_rate: float = option(0.0, "dropout on attention probabilities", check=FRACTION)
    drop_path_rate: float = option(0.1, "stochastic depth of the last block (linearly less for earlier ones)",
                                   check=FRACTION)
    attn_impl: str = option("auto", "'auto' (fastest measured per device), 'sdpa' (fused kernel) or 'math' "
                            "(explicit)", choices=("auto", "sdpa", "math"), resume=FREE)
    init: str | None = option(None, "initial weights: timm:NAME[.TAG], a Hugging Face repo id or folder, "
                              ".safetensors/.pth/.bin/.npz or a vitkit checkpoint", flag="--init", metavar="SOURCE")
    init_strict: bool = option(True, "error when the init weights lack anything but the head; false keeps those "
                               "random", flag="--init-strict")


@dataclass
class DataConfig:
    source: str = option("", "DATA: an image folder, or fashion-mnist | mnist | cifar10 | cifar100", resume=REFUSE)
    root: str | None = option(None, "where named datasets' files are (else the user data dir, then system dirs)",
                              flag="--data-root", resume=FREE, metavar="DIR")
    val_fraction: float = option(0.1, "share of each class held out for validation when the data has no val split",
                                 check=FRACTION, flag="--val-fraction", resume=REFUSE)
    test_fraction: float = option(0.0, "share of each class held out for testing (image folders without test/)",
                                  check=FRACTION, flag="--test-fraction", resume=REFUSE)
    crop_scale: list[float] = option([0.8, 1.0], "random-resized-crop area range [low, high]", resume=REFUSE)
    crop_stretch: float = option(1.0, "largest one-axis stretch of a crop whose drawn aspect does not fit the image "
                                 "(1: none; 1.16: full-scale crops stretched by up to 15 percent)",
                                 check=Range(1, 2), resume=REFUSE)
    decode_scale: float = option(1.0, "image files: the training split decoded (and cached) this much larger than "
                                 "the model's input (1.143: 256 px for 224), so random-resized crops keep detail; "
                                 "validation and test stay at the input size", check=Range(1, 2), resume=REFUSE)
    hflip: float | None = option(None, "horizontal flip probability; null: 0.5 unless flips change the class (MNIST)",
                                 check=PROBABILITY, resume=REFUSE)
    translate: float = option(0.0, "random shift of up to this fraction of the size each way, black fill (0.1: ~3 "
                              "px at 28)", check=Range(0, 0.5))
    policy: str | None = option(None, "'trivial' (TrivialAugment), 'randaugment' or 'none'; null: trivial on small "
                                "data", choices=(None, "none", "trivial", "randaugment"))
    randaugment_ops: int = option(2, "RandAugment: ops per image", check=AT_LEAST_1)
    randaugment_magnitude: float = option(9.0, "RandAugment: strength of each op, 0-10", check=Range(0, 10))
    erase: float | None = option(None, "random-erasing probability (one noise rectangle); null: 0.25 on small data, "
                                 "else 0", check=PROBABILITY)
    repeats: int = option(1, "repeated augmentation: each drawn image appears this many times per batch, augmented "
                          "apart", check=AT_LEAST_1)
    probe_views: int = option(1, "frozen-feature training: views per training image whose features are cached; the "
                              "first is the image as is, the others augmented", check=AT_LEAST_1, resume=REFUSE)
    labels: str | None = option(None, "a label file (CSV, TSV or JSON Lines: an image path and its labels per row) "
                                "for the images in DATA; a folder's metadata.csv/.jsonl is read without it",
                                flag="--labels", resume=REFUSE, metavar="FILE")
    file_column: str | None = option(None, "label file: the column of image paths; null: file_name, else the first",
                                     flag="--file-column", resume=REFUSE, metavar="NAME")
    label_column: str | None = option(None, "label file: the column naming each image's label(s); null: label or "
                                      "labels, else the only other column", flag="--label-column", resume=REFUSE,
                                      metavar="NAME")
    label_sep: str | None = option(None, "label file: the separator of several labels in one cell (e.g. '|')",
                                   flag="--label-sep", resume=REFUSE, metavar="SEP")
    label_columns: str | None = option(None, "label file: one 0/1 column per label, comma-separated (-1 or blank: "
                                       "uncertain)", flag="--label-columns", resume=REFUSE, metavar="A,B,...")
    group_column: str | None = option(None, "label file: a column (e.g. patient id) whose images all go into one "
                                      "split", flag="--group-column", resume=REFUSE, metavar="NAME")
    no_label: str | None = option(None, "label file: the value that means no label (e.g. 'No Finding')",
                                  flag="--no-label", resume=REFUSE, metavar="VALUE")
    label_delimiter: str | None = option(None, "label file: the field delimiter (',', ';' or 'tab'); null: by the "
                                         "suffix (.tsv: tab)", choices=(None, ",", ";", "tab", "|"),
                                         flag="--label-delimiter", resume=REFUSE)
    task: str = option("auto", "'single' (one label per image), 'multi' (any number) or 'auto' (from the labels)",
                       choices=("auto", "single", "multi"), resume=REFUSE)
    uncertain: str = option("ignore", "multi-label: an uncertain label (-1 or blank in 0/1 columns) is 'ignore'd in "
                            "the loss, or counted as 'zeros' or 'ones'", choices=("ignore", "zeros", "ones"),
                            resume=REFUSE)
    max_bad_fraction: float = option(0.1, "stop when more than this share of image files cannot be decoded",
                                     check=PROBABILITY, flag="--max-bad-fraction", resume=FREE)
    allow_empty_classes: bool = option(False, "keep empty class folders as classes (warning) instead of an error",
                                       flag="--allow-empty-classes", resume=FREE)
    workers: int = option(2, "sharded data: processes that read and decode the stream", check=NOT_NEGATIVE,
                          resume=FREE)
    cache: bool = option(True, "image folders: keep decoded images in $VITKIT_CACHE (~/.cache/vitkit/decoded) for "
                         "next runs", resume=FREE)
    max_image_pixels: int = option(89_478_485, "images with more pixels are refused before decoding (decompression "
                                   "bombs; Pillow's default)", check=AT_LEAST_1, flag="--max-image-pixels",
                                   resume=FREE)


@dataclass
class TrainConfig:
    epochs: int = option(10, "passes over the training split", check=POSITIVE, flag="--epochs")
    batch_size: int = option(128, "images per optimizer step (the global batch over all processes)", check=POSITIVE,
                             flag="--batch-size", resume=REFUSE)
    eval_batch_size: int = option(512, "images per batch during validation", check=POSITIVE, resume=FREE)
    optimizer: str = option("adamw", "'adamw' or 'sgd' (with momentum, Nesterov)", choices=("adamw", "sgd"),
                            flag="--optimizer", resume=REFUSE)
    lr: float = option(1e-3, "peak learning rate, reached after warmup", check=POSITIVE, flag="--lr")
    min_lr: float = option(1e-5, "learning rate at the end of the cosine schedule", check=NOT_NEGATIVE)
    warmup_epochs: float = option(1.0, "linear warmup length in epochs", check=NOT_NEGATIVE)
    weight_decay: float = option(0.05, "decoupled weight decay (not on norms, biases, position embedding, class "
                                 "token)", check=NOT_NEGATIVE)
    momentum: float = option(0.9, "SGD momentum", check=PROBABILITY)
    label_smoothing: float = option(0.1, "cross-entropy label smoothing", check=FRACTION)
    mixup: float = option(0.0, "MixUp Beta(alpha, alpha); 0 turns it off (0.8 is DeiT's)", check=NOT_NEGATIVE)
    cutmix: float = option(0.0, "CutMix Beta(alpha, alpha); 0 turns it off (1.0 is DeiT's)", check=NOT_NEGATIVE)
    mix_prob: float = option(1.0, "share of batches that are mixed when mixup or cutmix is on", check=PROBABILITY)
    mix_switch: float = option(0.5, "chance of CutMix rather than MixUp when both are on", check=PROBABILITY)
    ema: float = option(0.0, "decay of an exponential moving average of the weights (e.g. 0.999); 0 turns it off",
                        check=FRACTION, flag="--ema", metavar="DECAY")
    accum_steps: int = option(1, "split each batch into this many passes (same result, less memory per pass)",
                              check=AT_LEAST_1, flag="--accum-steps", resume=FREE)
    balance: str = option("none", "imbalanced classes: 'loss' (class-weighted loss), 'sampler' (balanced draws) or "
                          "'none'", choices=("none", "loss", "sampler"), flag="--balance")
    grad_clip: float = option(1.0, "clip the gradient norm to this; 0 turns clipping off", check=NOT_NEGATIVE)
    precision: str = option("auto", "'auto' (bf16 where the hardware has it), 'bf16' or 'fp32'",
                            choices=("auto", "bf16", "fp32"), flag="--precision")
    bf16_weights: bool | None = option(None, "bf16 training on a bf16 copy of the weights, fp32 master copy; null: "
                                       "on CPUs")
    device: str = option("auto", "'auto' (cuda if available), 'cpu' or 'cuda'", choices=("auto", "cpu", "cuda"),
                         flag="--device")
    seed: int = option(0, "seed for the split, initialization, order and augmentation", flag="--seed",
                       resume=REFUSE)
    patience: int = option(0, "stop after this many epochs without a better val top-1; 0 turns early stopping off",
                           check=NOT_NEGATIVE, flag="--patience", resume=FREE)
    val_every: int = option(1, "validate every N epochs and after the last one (fewer passes over a large val "
                            "split); best.safetensors and early stopping see the validated epochs only",
                            check=AT_LEAST_1, flag="--val-every", resume=FREE)
    threads: int | None = option(None, "CPU threads for torch; null: torch's default", check=AT_LEAST_1, resume=FREE)
    grad_checkpointing: bool = option(False, "recompute each block's activations in the backward pass: far less "
                                      "memory for about one more forward pass of time per step", resume=FREE)
    compile: bool = option(False, "torch.compile the model for training steps (faster after a minute or two of "
                           "compiling)", resume=FREE)
    max_nonfinite_steps: int = option(0, "skip up to this many steps with a NaN/inf loss or gradient; 0: stop at the "
                                      "first", check=NOT_NEGATIVE, resume=FREE)
    freeze: str = option("none", "'backbone': train the head only (linear probe), 'none': train everything",
                         choices=("none", "backbone"), flag="--freeze", resume=REFUSE)
    teacher: str | None = option(None, "distill from this teacher: a vitkit checkpoint or timm:NAME[.TAG] (DeiT); "
                                 "its outputs on each batch guide the student", flag="--teacher", resume=REFUSE,
                                 metavar="SOURCE")
    teacher_weights: str | None = option(None, "weights file of a timm:NAME teacher (instead of timm's download)",
                                         resume=REFUSE)
    distill: str = option("hard", "'hard' (cross-entropy on the teacher's top class, DeiT's best) or 'soft' "
                          "(KL divergence at train.distill_tau)", choices=("hard", "soft"), flag="--distill",
                          resume=REFUSE)
    distill_alpha: float = option(0.5, "weight of the distillation loss; the label loss gets 1 - alpha",
                                  check=PROBABILITY, resume=REFUSE)
    distill_tau: float = option(1.0, "soft distillation's temperature", check=POSITIVE, resume=REFUSE)
    teacher_cache: bool = option(True, "compute the teacher's logits once per image and view when the augmentation "
                                 "is flips only (erased images live); false runs the teacher on every batch",
                                 resume=WARN)
    feature_cache: bool = option(True, "with --freeze backbone: compute the backbone's features once (cached on disk) "
                                 "and train the head on them; false runs the backbone every step, augmenting anew",
                                 resume=REFUSE)
    threshold_for: str = option("f1", "multi-label: each label's threshold chosen on validation for the best 'f1', or "
                                "for a sensitivity, e.g. 'sensitivity=0.9' (the highest that finds 9 in 10 positives)",
                                flag="--threshold-for", resume=FREE, metavar="f1|sensitivity=S")
    multi_label_loss: str = option("bce", "multi-label: 'bce' (binary cross-entropy per label) or 'asl' (asymmetric "
                                   "loss: easy negatives weighed down, for images with few of many labels)",
                                   choices=("bce", "asl"), flag="--multi-label-loss", resume=REFUSE)
    asl_gamma_neg: float = option(4.0, "asymmetric loss: focusing power on negatives (p^gamma)", check=NOT_NEGATIVE,
                                  resume=REFUSE)
    asl_gamma_pos: float = option(0.0, "asymmetric loss: focusing power on positives ((1-p)^gamma)",
                                  check=NOT_NEGATIVE, resume=REFUSE)
    asl_clip: float = option(0.05, "asymmetric loss: probability margin; negatives below it cost nothing",
                             check=FRACTION, resume=REFUSE)
    layer_decay: float = option(1.0, "layer-wise lr decay: block i of L gets lr * layer_decay^(L+1-i); 1 turns it "
                                "off", check=Range(0, 1, low_open=True), flag="--layer-decay", resume=REFUSE)
    backbone_lr_scale: float = option(1.0, "lr multiplier for everything but the head (e.g. 0.1 when fine-tuning)",
                                      check=NOT_NEGATIVE, resume=REFUSE)


LOGGERS = ("tensorboard", "mlflow", "wandb")  # output.loggers' choices (vitkit/tracking/ has one module each)


@dataclass
class OutputConfig:
    dir: str = option("runs", "parent folder of run directories", flag="--out", metavar="DIR")
    name: str | None = option(None, "run directory name; null: DATA-MODEL-DATE-TIME", flag="--name")
    report: bool = option(True, "write report.html (metrics, figures, attention maps on the val split) after "
                          "training")
    progress_every: float = option(30.0, "without a terminal (logs, CI, --no-progress): a progress line every this "
                                   "many seconds; 0 turns the lines off", check=NOT_NEGATIVE)
    loggers: list[str] = option([], "experiment trackers besides metrics.csv, comma-separated: tensorboard, mlflow, "
                                "wandb", choices=LOGGERS, flag="--log", metavar="NAME,...")
    mlflow_uri: str | None = option(None, "MLflow tracking store: sqlite:///FILE.db, http(s)://HOST:PORT or "
                                    "databricks; null: $MLFLOW_TRACKING_URI, else sqlite:///OUT/mlflow.db",
                                    flag="--mlflow-uri", metavar="URI")
    log_optional: bool = option(False, "a tracker that cannot start (server unreachable, package missing) is a "
                                "warning and the run trains without it, instead of an error", flag="--log-optional")


SECTION_RESUME = {"model": REFUSE, "data": WARN, "train": WARN, "output": FREE}


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def flat(self) -> dict:
        """{'train.lr': 0.001, ...}"""
        return {f"{section}.{key}": value for section, values in self.to_dict().items()
                for key, value in values.items()}


@dataclass
class ServeSettings:
    """`vitkit serve`'s settings (not part of a run's config)."""
    host: str = option("127.0.0.1", "address to bind (default: loopback only; any other address needs a token)",
                       flag="--host")
    port: int = option(8000, "TCP port to listen on", check=Range(0, 65535), flag="--port")
    top_k: int = option(5, "classes returned per image", check=AT_LEAST_1, flag="--top-k")
    max_batch: int = option(32, "images per forward pass (1: no batching)", check=AT_LEAST_1, flag="--max-batch")
    max_wait_ms: float = option(2.0, "how long the first image of a batch waits for company, in ms",
                                check=NOT_NEGATIVE, flag="--max-wait-ms")
    max_queue: int = option(256, "images waiting; beyond, requests get 503", check=AT_LEAST_1, flag="--max-queue")
    max_body_mb: float = option(16.0, "largest request body in MB", check=POSITIVE, flag="--max-body-mb")
    max_images: int = option(16, "images per request", check=AT_LEAST_1, flag="--max-images")
    max_image_pixels: int = option(40_000_000, "refuse larger images, from the header before decoding "
                                   "(decompression bombs)", check=AT_LEAST_1, flag="--max-image-pixels")
    timeout_s: float = option(30.0, "seconds per request, upload included", check=POSITIVE, flag="--timeout")
    decode_threads: int = option(2, "threads that decode uploaded images", check=AT_LEAST_1)
    max_connections: int = option(64, "concurrent connections; beyond, 503", check=AT_LEAST_1,
                                  flag="--max-connections")
    token: str | None = option(None, "access token the API asks for (Authorization: Bearer TOKEN); also "
                               "$VITKIT_TOKEN; default: none on loopback, else a new one, printed at start",
                               flag="--token", metavar="TOKEN")
    no_token: bool = option(False, "serve beyond loopback without a token: anyone who reaches the port may use it",
                            flag="--no-token")
    allowed_hosts: list[str] = option([], "host names the server answers to (its Host header), '*' for any; "
                                      "default: loopback names when bound to loopback, else any",
                                      flag="--allowed-hosts", metavar="NAME,NAME")
    no_explain: bool = option(False, "refuse attention overlays (?explain=1), which cost a second forward pass",
                              flag="--no-explain")
    docs: bool = option(False, "interactive API docs at /docs (Swagger UI, loaded by the browser from a CDN)",
                        flag="--docs")
    ssl_certfile: str | None = option(None, "serve HTTPS with this certificate (PEM); with --ssl-keyfile",
                                      flag="--ssl-certfile", metavar="PEM")
    ssl_keyfile: str | None = option(None, "the certificate's private key (PEM)", flag="--ssl-keyfile", metavar="PEM")

    def __post_init__(self) -> None:
        validate_fields(self)
        if self.max_queue < self.max_images:
            raise UserError("--max-queue must hold at least --max-images images, or large requests could never fit")
        if self.token is not None and self.no_token:
            raise UserError("--token and --no-token contradict each other: give one")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise UserError("HTTPS needs both --ssl-certfile and --ssl-keyfile")


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "output": OutputConfig}


@dataclass(frozen=True)
class Option:
    """One declared option, as `options()` lists them."""
    key: str  # 'train.lr'
    name: str  # 'lr'
    hint: object  # its type, e.g. float | None
    default: object
    help: str
    choices: tuple | None
    check: Range | None
    flag: str | None
    resume: str
    metavar: str | None


def declared(cls, section: str = "") -> list[Option]:
    """The options of one dataclass (a config section or ServeSettings), in declaration order."""
    hints = typing.get_type_hints(cls)
    result = []
    for f in dataclasses.fields(cls):
        m = f.metadata
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        key = f"{section}.{f.name}" if section else f.name
        result.append(Option(key, f.name, hints[f.name], default, m["help"], m["choices"], m["check"], m["flag"],
                             m["resume"] or SECTION_RESUME.get(section, WARN), m["metavar"]))
    return result


def options() -> dict[str, Option]:
    """Every run-config option by its key ('train.lr')."""
    return {o.key: o for section, cls in SECTIONS.items() for o in declared(cls, section)}


def all_keys() -> list[str]:
    return list(options())


def _resolve_key(key: str) -> Option:
    """'train.lr' or an unambiguous bare 'lr' to its option; otherwise an error with the closest key."""
    known = options()
    if key in known:
        return known[key]
    bare = [o for o in known.values() if o.name == key]
    if len(bare) == 1:
        return bare[0]
    close = difflib.get_close_matches(key, list(known) + [o.name for o in known.values()], n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise UserError(f"unknown config key {key!r}{hint}: run 'vitkit train --help-config' for the valid keys")


def _coerce(value, hint, key: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{key} must be a list like [0.8, 1.0], not {value!r}")
        return [_coerce(v, args[0], key) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{key} must be true or false, not {value!r}")
    if hint in (int, float) and isinstance(value, str):
        with contextlib.suppress(ValueError):  # YAML 1.1 reads '3e-4' as a string
            value = float(value) if hint is float else int(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    kind = {int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))
    raise UserError(f"{key} must be {kind}, not {value!r}")


def set_value(cfg: Config, key: str, value) -> None:
    o = _resolve_key(key)
    section = o.key.split(".", 1)[0]
    if isinstance(value, str) and value.lower() == "none" and o.default is None and "none" not in (o.choices or ()):
        value = None  # 'none' means null where null is allowed, and stays a word where it is a choice
    setattr(getattr(cfg, section), o.name, _coerce(value, o.hint, o.key))


def parse_assignment(text: str, none_is_null: bool = False) -> tuple[str, object]:
    """'train.lr=3e-4' to ('train.lr', 0.0003), values parsed as YAML scalars or lists; `none_is_null`: 'none' is
    None (for model arguments, which have no declared type)."""
    if "=" not in text:
        raise UserError(f"--set expects key=value (e.g. --set train.lr=3e-4), not {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if none_is_null and isinstance(value, str) and value.lower() == "none":
        value = None
    return key.strip(), value


def apply_dict(cfg: Config, data: dict, origin: str) -> None:
    if not isinstance(data, dict):
        raise UserError(f"{origin} must hold a mapping of sections (model, data, train, output)")
    for section, values in data.items():
        if section not in SECTIONS:
            close = difflib.get_close_matches(str(section), list(SECTIONS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(f"unknown section {section!r} in {origin}{hint}; sections: model, data, train, output")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise UserError(f"section {section!r} in {origin} must be a mapping of keys to values")
        for key, value in values.items():
            set_value(cfg, f"{section}.{key}", value)


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} not found: check the path given to --config")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{path} is not valid YAML{where}: fix the file") from None


def build_config(config_file: str | Path | None = None, options: dict | None = None,
                 assignments: list[str] | None = None, base: dict | None = None) -> Config:
    """Defaults <- `base` (a saved config) <- `config_file` <- `options` {'train.lr': ...} <- `assignments`."""
    cfg = Config()
    if base:
        apply_dict(cfg, base, "the saved config")
    if config_file:
        apply_dict(cfg, load_yaml(config_file), str(config_file))
    for key, value in (options or {}).items():
        if value is not None:
            set_value(cfg, key, value)
    for text in assignments or []:
        set_value(cfg, *parse_assignment(text))
    validate(cfg)
    return cfg


def check_value(o: Option, value, name: str | None = None) -> None:
    """The declared choices and range of `o`, with a message that names the option (`name`, default its key)."""
    name = name or o.key
    if o.choices is not None and isinstance(value, list):
        for item in value:
            if item not in o.choices:
                close = difflib.get_close_matches(str(item), [str(c) for c in o.choices], n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise UserError(f"{name}: unknown {item!r}{hint}; choose from {', '.join(map(str, o.choices))}")
    elif o.choices is not None and value not in o.choices:
        shown = ", ".join("null" if a is None else str(a) for a in o.choices)
        raise UserError(f"{name} must be one of {shown}, not {value!r}")
    if o.check is not None and not o.check.holds(value):
        raise UserError(f"{name} must {o.check.describe()}, not {value}")


def validate_fields(obj, section: str = "", flags: bool = True) -> None:
    """Every declared option of one dataclass instance against its choices and range; named by its CLI flag when
    it has one and `flags`, else by its key."""
    for o in declared(type(obj), section):
        check_value(o, getattr(obj, o.name), (o.flag if flags and o.flag and not section else None))


def threshold_sensitivity(text: str) -> float | None:
    """`train.threshold_for`: None for 'f1', S for 'sensitivity=S' (0 < S <= 1)."""
    if text == "f1":
        return None
    name, _, value = text.partition("=")
    try:
        sensitivity = float(value)
    except ValueError:
        sensitivity = -1.0
    if name.strip() != "sensitivity" or not 0 < sensitivity <= 1:
        raise UserError(f"--threshold-for must be 'f1' or 'sensitivity=S' with 0 < S <= 1 (e.g. sensitivity=0.9), "
                        f"not {text!r}")
    return sensitivity


def validate(cfg: Config) -> None:
    for section in SECTIONS:
        validate_fields(getattr(cfg, section), section)
    t, d = cfg.train, cfg.data
    if d.val_fraction + d.test_fraction >= 0.9:
        raise UserError("data.val_fraction + data.test_fraction leave too little to train on: keep them below 0.9")
    if len(d.crop_scale) != 2 or not 0 < d.crop_scale[0] <= d.crop_scale[1] <= 1:
        raise UserError(f"data.crop_scale must be [low, high] with 0 < low <= high <= 1, not {d.crop_scale}")
    threshold_sensitivity(t.threshold_for)  # a one-line error for anything but f1 or sensitivity=S
    if t.batch_size % t.accum_steps:
        raise UserError(f"train.batch_size ({t.batch_size}) must be a multiple of train.accum_steps ({t.accum_steps})")


def save_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def _yaml_scalar(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def describe_keys() -> str:
    """Every key with its default, its flag and its help, for `--help-config`; '[fixed]' marks what a resumed run
    may not change."""
    lines = []
    for section, cls in SECTIONS.items():
        lines.append(f"{section}:")
        for o in declared(cls, section):
            notes = (f" ({o.flag})" if o.flag else "") + (" [fixed]" if o.resume == REFUSE else "")
            setting = f"{o.name}: {_yaml_scalar(o.default)}"
            lines.append(f"  {setting:<34} # {o.help}{notes}")
    return "\n".join(lines)


def resume_changes(saved: Config, new: Config) -> dict[str, list[str]]:
    """The keys that differ between a saved run's config and the one resuming it, grouped by resume policy."""
    before, after = saved.flat(), new.flat()
    known = options()
    grouped: dict[str, list[str]] = {REFUSE: [], WARN: [], FREE: []}
    for key in after:
        if after[key] != before[key]:
            grouped[known[key].resume].append(key)
    return grouped


def resume_config(run_dir: str | Path, options: dict | None = None, assignments: list[str] | None = None) -> Config:
    """The saved config of `run_dir` with the changes a resume may make, each one named. What may change is declared
    with each option (`config.REFUSE`, `WARN`, `FREE`): more epochs or another learning rate are allowed with a
    warning (the result then differs from an uninterrupted run); changes to the model, the data split or the order
    of batches are refused."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a vitkit run directory (no config.yaml): give the folder 'vitkit train' "
                        "printed")
    saved = load_yaml(run_dir / "config.yaml")
    cfg = build_config(options=options, assignments=assignments, base=saved)
    before = build_config(base=saved)
    changes = resume_changes(before, cfg)
    old, new = before.flat(), cfg.flat()
    if changes[REFUSE]:
        shown = ", ".join(f"{k} ({old[k]!r} -> {new[k]!r})" for k in changes[REFUSE])
        raise UserError(f"--resume cannot change {shown}: it would no longer continue the same run; start a new run "
                        "instead")
    for key in changes[WARN]:
        if key == "train.epochs":
            log.warning("train.epochs changed from %d to %d: the learning-rate schedule follows the new length from "
                        "here on", old[key], new[key])
        else:
            log.warning("%s changed from %r to %r: the resumed run will differ from an uninterrupted one", key,
                        old[key], new[key])
    return cfg
