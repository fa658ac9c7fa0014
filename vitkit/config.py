"""Run configuration: typed defaults <- YAML file <- command-line options and `--set section.key=value`.

Every key is documented where it is defined; `vitkit train --help-config` prints them. Unknown keys and bad values
are errors that name the key and what it accepts.
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import UserError


@dataclass
class ModelConfig:
    name: str = "vit_mini_patch4_32"  # registered model; `vitkit models` lists them
    img_size: int | None = None  # input size in pixels; null: a named dataset's own size, else the model's
    in_chans: int | None = None  # 1 (grayscale) or 3 (RGB); null: from the data
    patch_size: int | None = None  # override the model's patch size
    embed_dim: int | None = None  # override the model's width
    depth: int | None = None  # override the number of blocks
    num_heads: int | None = None  # override the number of attention heads
    mlp_ratio: float | None = None  # override the MLP hidden size / width
    global_pool: str | None = None  # 'token' (class token) or 'avg' (mean of patch tokens); null: the model's
    stem: str | None = None  # 'patch' (one strided conv, timm's ViT) or 'conv' (3x3 conv stack); null: the model's
    stem_depth: int | None = None  # 3x3 convs per resolution in a conv stem (the first strided); null: the model's (1)
    drop_rate: float = 0.0  # dropout after attention projection, in the MLP and before the head
    attn_drop_rate: float = 0.0  # dropout on attention probabilities
    drop_path_rate: float = 0.1  # stochastic depth of the last block (linearly less for earlier ones)
    attn_impl: str = "auto"  # 'auto' (fastest measured per device), 'sdpa' (fused kernel) or 'math' (explicit)
    init: str | None = None  # initial weights: timm:NAME[.TAG], a HF repo id or folder, .safetensors/.pth/.bin/.npz
    init_strict: bool = True  # error when the init weights lack anything but the head; false keeps those random


@dataclass
class DataConfig:
    source: str = ""  # DATA: an image folder, or fashion-mnist | mnist | cifar10 | cifar100
    root: str | None = None  # where named datasets' files are (else the user data dir, then system dirs)
    val_fraction: float = 0.1  # share of each class held out for validation when the data has no val split
    test_fraction: float = 0.0  # share of each class held out for testing (image folders without test/)
    crop_scale: list[float] = field(default_factory=lambda: [0.8, 1.0])  # random-resized-crop area range
    hflip: float | None = None  # horizontal flip probability; null: 0.5 unless flips change the class (MNIST)
    translate: float = 0.0  # random shift of up to this fraction of the size each way, black fill (0.1: ~3 px at 28)
    policy: str | None = None  # 'trivial' (TrivialAugment), 'randaugment' or 'none'; null: trivial on small data
    randaugment_ops: int = 2  # RandAugment: ops per image
    randaugment_magnitude: float = 9.0  # RandAugment: strength of each op, 0-10
    erase: float | None = None  # random-erasing probability (one noise rectangle); null: 0.25 on small data, else 0
    repeats: int = 1  # repeated augmentation: each drawn image appears this many times per batch, augmented apart
    max_bad_fraction: float = 0.1  # stop when more than this share of image files cannot be decoded
    allow_empty_classes: bool = False  # keep empty class folders as classes (warning) instead of an error
    workers: int = 2  # sharded data: processes that read and decode the stream
    cache: bool = True  # image folders: keep decoded images in $VITKIT_CACHE (~/.cache/vitkit/decoded) for next runs
    max_image_pixels: int = 89_478_485  # images with more pixels are refused before decoding (Pillow's default)


@dataclass
class TrainConfig:
    epochs: int = 10  # passes over the training split
    batch_size: int = 128  # images per optimizer step
    eval_batch_size: int = 512  # images per batch during validation
    optimizer: str = "adamw"  # 'adamw' or 'sgd' (with momentum, Nesterov)
    lr: float = 1e-3  # peak learning rate, reached after warmup
    min_lr: float = 1e-5  # learning rate at the end of the cosine schedule
    warmup_epochs: float = 1.0  # linear warmup length in epochs
    weight_decay: float = 0.05  # decoupled weight decay (not on norms, biases, position embedding, class token)
    momentum: float = 0.9  # SGD momentum
    label_smoothing: float = 0.1  # cross-entropy label smoothing
    mixup: float = 0.0  # MixUp Beta(alpha, alpha); 0 turns it off (0.8 is DeiT's)
    cutmix: float = 0.0  # CutMix Beta(alpha, alpha); 0 turns it off (1.0 is DeiT's)
    mix_prob: float = 1.0  # share of batches that are mixed when mixup or cutmix is on
    mix_switch: float = 0.5  # chance of CutMix rather than MixUp when both are on
    ema: float = 0.0  # decay of an exponential moving average of the weights (e.g. 0.999); 0 turns it off
    accum_steps: int = 1  # split each batch into this many passes (same result, less memory per pass)
    balance: str = "none"  # imbalanced classes: 'loss' (class-weighted loss), 'sampler' (balanced draws) or 'none'
    grad_clip: float = 1.0  # clip the gradient norm to this; 0 turns clipping off
    precision: str = "auto"  # 'auto' (bf16 where the hardware has it), 'bf16' or 'fp32'
    bf16_weights: bool | None = None  # bf16 training on a bf16 copy of the weights, fp32 master copy; null: on CPUs
    device: str = "auto"  # 'auto' (cuda if available), 'cpu' or 'cuda'
    seed: int = 0  # seed for the split, initialization, order and augmentation
    patience: int = 0  # stop after this many epochs without a better val top-1; 0 turns early stopping off
    threads: int | None = None  # CPU threads for torch; null: torch's default
    compile: bool = False  # torch.compile the model for training steps (faster after a minute or two of compiling)
    max_nonfinite_steps: int = 0  # skip up to this many steps with a NaN/inf loss or gradient; 0: stop at the first
    freeze: str = "none"  # 'backbone': train the head only (linear probe), 'none': train everything
    layer_decay: float = 1.0  # layer-wise lr decay: block i of L gets lr * layer_decay^(L+1-i); 1 turns it off
    backbone_lr_scale: float = 1.0  # lr multiplier for everything but the head (e.g. 0.1 when fine-tuning)


@dataclass
class OutputConfig:
    dir: str = "runs"  # parent folder of run directories
    name: str | None = None  # run directory name; null: DATA-MODEL-DATE-TIME
    report: bool = True  # write report.html (metrics, figures, attention maps on the val split) after training


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CHOICES = {
    "model.attn_impl": ("auto", "sdpa", "math"),
    "model.global_pool": (None, "token", "avg"),
    "model.stem": (None, "patch", "conv"),
    "model.in_chans": (None, 1, 3),
    "train.optimizer": ("adamw", "sgd"),
    "train.freeze": ("none", "backbone"),
    "train.balance": ("none", "loss", "sampler"),
    "data.policy": (None, "none", "trivial", "randaugment"),
    "train.precision": ("auto", "bf16", "fp32"),
    "train.device": ("auto", "cpu", "cuda"),
}


def all_keys() -> list[str]:
    return [f"{sec}.{f.name}" for sec, obj in _sections().items() for f in dataclasses.fields(obj)]


def _sections() -> dict:
    return {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "output": OutputConfig}


def _resolve_key(key: str) -> tuple[str, str]:
    """'train.lr' or an unambiguous bare 'lr' to ('train', 'lr'); otherwise an error with the closest key."""
    keys = all_keys()
    if key in keys:
        section, name = key.split(".", 1)
        return section, name
    bare = [k for k in keys if k.split(".", 1)[1] == key]
    if len(bare) == 1:
        return tuple(bare[0].split(".", 1))  # type: ignore[return-value]
    close = difflib.get_close_matches(key, keys + [k.split(".", 1)[1] for k in keys], n=1, cutoff=0.5)
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
    section, name = _resolve_key(key)
    obj = getattr(cfg, section)
    hints = typing.get_type_hints(type(obj))
    setattr(obj, name, _coerce(value, hints[name], f"{section}.{name}"))


def parse_assignment(text: str) -> tuple[str, object]:
    """'train.lr=3e-4' to ('train.lr', 0.0003), values parsed as YAML scalars or lists."""
    if "=" not in text:
        raise UserError(f"--set expects key=value (e.g. --set train.lr=3e-4), not {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and value.lower() == "none":
        value = None
    return key.strip(), value


def apply_dict(cfg: Config, data: dict, origin: str) -> None:
    if not isinstance(data, dict):
        raise UserError(f"{origin} must hold a mapping of sections (model, data, train, output)")
    for section, values in data.items():
        if section not in _sections():
            close = difflib.get_close_matches(str(section), list(_sections()), n=1)
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


def validate(cfg: Config) -> None:
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            shown = ", ".join("null" if a is None else str(a) for a in allowed)
            raise UserError(f"{key} must be one of {shown}, not {value!r}")
    t, d = cfg.train, cfg.data
    positive = {"train.epochs": t.epochs, "train.batch_size": t.batch_size, "train.eval_batch_size": t.eval_batch_size,
                "train.lr": t.lr}
    for key, value in positive.items():
        if value <= 0:
            raise UserError(f"{key} must be greater than 0, not {value}")
    for key, value in {"data.val_fraction": d.val_fraction, "data.test_fraction": d.test_fraction,
                       "data.max_bad_fraction": d.max_bad_fraction, "train.label_smoothing": t.label_smoothing,
                       "model.drop_path_rate": cfg.model.drop_path_rate, "model.drop_rate": cfg.model.drop_rate}.items():
        if not 0.0 <= value < 1.0 and not (key == "data.max_bad_fraction" and value == 1.0):
            raise UserError(f"{key} must be in [0, 1), not {value}")
    if d.val_fraction + d.test_fraction >= 0.9:
        raise UserError("data.val_fraction + data.test_fraction leave too little to train on: keep them below 0.9")
    if len(d.crop_scale) != 2 or not 0 < d.crop_scale[0] <= d.crop_scale[1] <= 1:
        raise UserError(f"data.crop_scale must be [low, high] with 0 < low <= high <= 1, not {d.crop_scale}")
    if d.hflip is not None and not 0 <= d.hflip <= 1:
        raise UserError(f"data.hflip must be between 0 and 1, not {d.hflip}")
    if t.warmup_epochs < 0 or t.min_lr < 0 or t.weight_decay < 0 or t.grad_clip < 0 or t.patience < 0 \
            or t.max_nonfinite_steps < 0:
        raise UserError("train.warmup_epochs, min_lr, weight_decay, grad_clip, patience and max_nonfinite_steps "
                        "must not be negative")
    if not 0 <= d.translate <= 0.5 or not 0 <= d.randaugment_magnitude <= 10 or d.randaugment_ops < 1:
        raise UserError("data.translate must be in [0, 0.5], data.randaugment_magnitude in [0, 10] and "
                        "data.randaugment_ops at least 1")
    for key, value in {"data.erase": d.erase, "train.mix_prob": t.mix_prob, "train.mix_switch": t.mix_switch}.items():
        if value is not None and not 0 <= value <= 1:
            raise UserError(f"{key} must be between 0 and 1, not {value}")
    if t.mixup < 0 or t.cutmix < 0 or not 0 <= t.ema < 1:
        raise UserError("train.mixup and train.cutmix must not be negative, train.ema must be in [0, 1)")
    if d.repeats < 1 or t.accum_steps < 1:
        raise UserError("data.repeats and train.accum_steps must be at least 1")
    if t.batch_size % t.accum_steps:
        raise UserError(f"train.batch_size ({t.batch_size}) must be a multiple of train.accum_steps ({t.accum_steps})")
    if d.max_image_pixels < 1:
        raise UserError(f"data.max_image_pixels must be a positive number of pixels, not {d.max_image_pixels}")


def save_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def describe_keys() -> str:
    """Every key with its default and the comment beside its definition, for `--help-config`."""
    import inspect

    lines = []
    for section, obj in _sections().items():
        source = inspect.getsource(obj).splitlines()
        comments = {}
        for line in source:
            name = line.strip().split(":", 1)[0]
            if "#" in line and name.isidentifier():
                comments[name] = line.split("#", 1)[1].strip()
        lines.append(f"{section}:")
        for f in dataclasses.fields(obj):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore
            lines.append(f"  {f.name}: {yaml.safe_dump(default, default_flow_style=True).strip().removesuffix('...').strip():<14}"
                         f" # {comments.get(f.name, '')}")
    return "\n".join(lines)
