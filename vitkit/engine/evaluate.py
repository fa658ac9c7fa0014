"""Batched inference over in-memory images and the evaluation of a checkpoint on a data split."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data import MANIFEST, ImageSet, Normalize, is_named, load_data, read_manifest
from ..data.dataset import check_bad_files
from ..data.labels import label_spec
from ..data.shards import is_sharded, read_index
from ..errors import DataError, UserError
from ..metrics import classification_report, multilabel_report
from . import allocator
from .checkpoint import load_model
from .device import autocast, compiled, resolve_device, resolve_precision

log = logging.getLogger(__name__)

TTA = ("none", "flip")


class FrozenCompiled(torch.nn.Module):
    """`torch.compile(model)` run with inductor's freezing, for a model whose weights no longer change: the weights
    become constants, so their bf16 copies are made once at compile time and linear layers run on prepacked oneDNN
    weights on CPUs (ViT-S/16, bf16, batch 32 on this project's 2-core AMX CPU: 1.3x the compiled model without
    freezing, see docs/benchmarks.md). Freezing is switched on around each call only (a global switch would also
    freeze the trainer's own evaluation, whose weights change every epoch). Shapes are static, so each batch is
    padded to the next power of two: one graph per such size, compiled on first use (`vitkit serve --compile`
    compiles them all before it answers). Where compiling fails, PyTorch runs those parts eagerly, with a warning."""

    def __init__(self, model: torch.nn.Module):
        import torch._dynamo

        super().__init__()
        limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"  # < 2.6
        setattr(torch._dynamo.config, limit, max(getattr(torch._dynamo.config, limit), 16))  # batch sizes 1 to 2**15
        self.compiled = compiled(model, dynamic=False)
        self.num_classes = getattr(model, "num_classes", 0)

    @staticmethod
    def bucket(n: int) -> int:
        """The padded batch size: the power of two at or above n."""
        return 1 << max(0, n - 1).bit_length()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch._inductor import config

        n, size = len(x), self.bucket(len(x))
        x = x.contiguous()  # decoded photos arrive channels-last; one memory layout, one graph per size
        if size > n:
            x = torch.cat([x, x.new_zeros(size - n, *x.shape[1:])])
        with config.patch(freezing=True):
            return self.compiled(x)[:n]


def compiled_for_inference(model: torch.nn.Module) -> FrozenCompiled:
    log.info("compiling the model for inference (tens of seconds on a small CPU, once per power-of-two batch size)")
    return FrozenCompiled(model)


@torch.inference_mode()
def predict_logits(model: torch.nn.Module, images: torch.Tensor, mean, std, device: torch.device,
                   amp_dtype: torch.dtype | None, batch_size: int = 512, tta: str = "none") -> torch.Tensor:
    """uint8 images (N, C, H, W) to float32 logits (N, K) on the CPU. `tta="flip"` averages the logits of each
    image and its mirror image (test-time augmentation)."""
    if tta not in TTA:
        raise UserError(f"test-time augmentation must be one of {', '.join(TTA)}, not {tta!r}")
    model.eval()
    normalize = Normalize(mean, std, device)
    out = []
    for start in range(0, len(images), batch_size):
        x = normalize(images[start:start + batch_size].to(device, non_blocking=True))
        with autocast(device, amp_dtype):
            logits = model(x).float()
            if tta == "flip":
                logits = (logits + model(x.flip(-1)).float()) / 2
        out.append(logits.cpu())
    return torch.cat(out) if out else torch.empty(0, getattr(model, "num_classes", 0))


def remap_labels(data: ImageSet, data_classes: list[str], model_classes: list[str]) -> ImageSet:
    """Express the data's labels in the checkpoint's class indices (matched by name)."""
    if data_classes == model_classes:
        return data
    unknown = sorted(set(data_classes) - set(model_classes))
    if unknown:
        raise DataError(f"the data has classes the model was not trained on: {', '.join(unknown)}; "
                        f"the model knows {', '.join(model_classes)}")
    if data.labels.ndim == 2:  # multi-label: the model's columns; a label the data never names is absent (0)
        labels = torch.zeros((len(data.labels), len(model_classes)))
        labels[:, [model_classes.index(c) for c in data_classes]] = data.labels
        return ImageSet(data.images, labels, data.ids)
    index = torch.tensor([model_classes.index(c) for c in data_classes])
    return ImageSet(data.images, index[data.labels], data.ids)


def source_key(source: str) -> str:
    """How a run records its DATA: a named dataset's name, or a folder's absolute path."""
    return source.lower() if is_named(source) else str(Path(source).resolve())


def default_split(source: str, manifest: Path | None, test_fraction: float) -> str:
    """'test' if the data has a test split, else 'val', decided before any image is decoded."""
    if is_named(source):
        return "test"
    if is_sharded(source):
        return "test" if "test" in read_index(source)["splits"] else "val"
    if manifest is not None and manifest.exists():
        return "test" if any(split == "test" for _, _, split in read_manifest(manifest)) else "val"
    if (Path(source) / "train").is_dir() and (Path(source) / "test").is_dir():
        return "test"
    return "test" if test_fraction > 0 else "val"


@dataclass
class Evaluation:
    """A checkpoint's model and metadata with one data split in its class indices, ready to score."""

    model: torch.nn.Module
    meta: dict
    device: torch.device
    amp_dtype: torch.dtype | None
    source: str
    split: str
    data: ImageSet
    bad_files: list[tuple[str, str]]
    tta: str = "none"
    compile: bool = False  # run the logits through `compiled_for_inference`
    _logits: torch.Tensor | None = field(default=None, repr=False)

    def logits(self, batch_size: int = 512) -> torch.Tensor:
        """The model's logits on the split, computed once (metrics and the report share them)."""
        if self._logits is None:
            model = compiled_for_inference(self.model) if self.compile else self.model
            self._logits = predict_logits(model, self.data.images, self.meta["mean"], self.meta["std"],
                                          self.device, self.amp_dtype, batch_size, self.tta)
        return self._logits


def prepare_evaluation(checkpoint: str | Path, source: str | None = None, split: str | None = None,
                       data_root: str | None = None, device: str = "auto", precision: str = "auto",
                       tta: str = "none", compile: bool = False, labels: dict | None = None) -> Evaluation:
    """Load `checkpoint` and the `split` of `source` (default: the data it was trained on; test if the data has a
    test split, else val) as the checkpoint saw it: same split manifest, size, channels and class indices.
    `compile` computes the logits with `compiled_for_inference` (pays off over thousands of images). `labels`: the
    label-file options (`data.labels`, `data.label_column`, ...) for a label file; by default those the run used."""
    allocator.tune()
    dev = resolve_device(device)
    model, meta = load_model(checkpoint, dev)
    if source is None:
        source = meta.get("data_source")
        if not source:
            raise UserError(f"{checkpoint} does not record its data: give DATA")
    manifest = Path(checkpoint).resolve().parent / MANIFEST
    same_source = meta.get("data_source") == source_key(source)
    manifest = manifest if same_source else None
    split = split or default_split(source, manifest, meta.get("test_fraction", 0.0))
    saved_data = meta.get("config", {}).get("data", {})  # the run's data options: its label file, if any
    bundle = load_data(source, img_size=meta["img_size"], channels=meta["in_chans"], data_root=data_root,
                       manifest=manifest, val_fraction=meta.get("val_fraction", 0.1),
                       test_fraction=meta.get("test_fraction", 0.0), seed=meta.get("split_seed", 0), splits=(split,),
                       allow_empty_classes=True,  # a class without images has no support here, nothing worse
                       max_image_pixels=saved_data.get("max_image_pixels"),
                       labels=label_spec({**(saved_data if same_source else {}), **(labels or {})}))
    if split not in bundle.splits or len(bundle.splits[split]) == 0:
        held_none = split == "val" and meta.get("val_fraction") == 0
        why = " (the run held none out: data.val_fraction=0)" if held_none else ""
        raise UserError(f"{source} has no {split!r} split{why}: choose another --split, or other data with that split")
    if not same_source and not is_named(source):
        log.warning("no split manifest of this checkpoint matches %s: a fresh split with the same seed was made", source)
    max_bad = meta.get("config", {}).get("data", {}).get("max_bad_fraction", 0.1)
    check_bad_files(bundle.bad_files, len(bundle.splits[split]) + len(bundle.bad_files), max_bad)
    data = remap_labels(bundle.splits[split], bundle.classes, meta["classes"])
    return Evaluation(model, meta, dev, resolve_precision(precision, dev), source, split, data, bundle.bad_files, tta,
                      compile)


def evaluate_checkpoint(checkpoint: str | Path, source: str | None = None, split: str | None = None,
                        data_root: str | None = None, batch_size: int = 512, device: str = "auto",
                        precision: str = "auto") -> dict:
    """Metrics of `checkpoint` on `split` of `source` (default: test if the data has one, else val)."""
    ev = prepare_evaluation(checkpoint, source, split, data_root, device, precision)
    return evaluation_report(ev, checkpoint, batch_size)


def evaluation_report(ev: Evaluation, checkpoint: str | Path, batch_size: int = 512) -> dict:
    if ev.meta.get("task") == "multi-label":  # at the per-label thresholds chosen on validation
        report = multilabel_report(ev.logits(batch_size), ev.data.labels, ev.meta["classes"], ev.meta.get("thresholds"))
    else:
        report = classification_report(ev.logits(batch_size), ev.data.labels, ev.meta["classes"])
    report.update({"checkpoint": str(checkpoint), "data": ev.source, "split": ev.split, "tta": ev.tta,
                   "skipped_files": [{"path": p, "reason": r} for p, r in ev.bad_files]})
    return report
