"""A trained classifier: a checkpoint plus the preprocessing it records, for files, folders or Pillow images."""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from PIL import Image

from ..data.images import IMAGE_SUFFIXES, BadImage, decode, is_hidden, prepare
from ..errors import UserError
from ..models import has_attention_maps
from . import allocator
from .checkpoint import load_model
from .device import resolve_device, resolve_precision
from .evaluate import FrozenCompiled, compiled_for_inference, predict_logits

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    source: str
    top: list[tuple[str, float]] | None  # (class, probability), best first; None when the image was unreadable
    error: str | None = None
    # multi-label models: the labels whose sigmoid probability reaches their threshold, most probable first, as
    # (label, probability, threshold); None for single-label models (where probabilities are a softmax)
    labels: list[tuple[str, float, float]] | None = None

    def to_dict(self) -> dict:
        if self.top is None:
            return {"file": self.source, "error": self.error}
        out = {"file": self.source}
        if self.labels is not None:
            out["labels"] = [{"label": c, "probability": round(p, 6), "threshold": round(t, 6)}
                             for c, p, t in self.labels]
        return {**out, "top": [{"class": c, "probability": round(p, 6)} for c, p in self.top]}


def collect_images(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given, and image files (by suffix) found recursively in folders; hidden entries skipped."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames[:] = sorted(d for d in dirnames if not is_hidden(Path(d)))
                out += [Path(dirpath) / f for f in sorted(filenames)
                        if not is_hidden(Path(f)) and Path(f).suffix.lower() in IMAGE_SUFFIXES]
        elif p.exists():
            out.append(p)
        else:
            raise UserError(f"{p} does not exist: give image files or folders of images")
    return out


class TorchBackend:
    """Logits from a vitkit checkpoint (.safetensors) with PyTorch; `model` is there for attention maps."""

    runtime = "torch"

    def __init__(self, checkpoint: str | os.PathLike, device: str = "auto", precision: str = "auto",
                 compile: bool = False):
        allocator.tune()
        self.device = resolve_device(device)
        self.model, self.meta = load_model(checkpoint, self.device)
        self.amp_dtype = resolve_precision(precision, self.device)
        # `compile`: logits from `compiled_for_inference` (worth it for thousands of images); the attention maps of
        # --explain keep using the eager model
        self.forward = compiled_for_inference(self.model) if compile else self.model

    def logits(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        return predict_logits(self.forward, images, self.meta["mean"], self.meta["std"], self.device, self.amp_dtype,
                              batch_size)

    def warm_up(self, max_batch: int) -> None:
        """With `compile`, compile now for every padded batch size up to `max_batch` (see `FrozenCompiled`)."""
        if not isinstance(self.forward, FrozenCompiled):
            return
        sizes = [1 << i for i in range(FrozenCompiled.bucket(max_batch).bit_length())]
        log.info("compiling for batches of %s images", ", ".join(map(str, sizes)))
        shape = (self.meta["in_chans"], self.meta["img_size"], self.meta["img_size"])
        for n in sizes:
            self.logits(torch.zeros(n, *shape, dtype=torch.uint8), n)


ONNX_FORMAT = "vitkit-onnx/1"  # the sidecar's format tag, written by `vitkit.export`


def sidecar_path(onnx_path: str | os.PathLike) -> Path:
    """MODEL.onnx.json beside MODEL.onnx: class names, input size and preprocessing."""
    return Path(f"{onnx_path}.json")


class OnnxBackend:
    """Logits from an exported `MODEL.onnx` and its `MODEL.onnx.json` sidecar, run by ONNX Runtime (no attention
    maps: `model` is None)."""

    runtime = "onnx"
    model = None

    def __init__(self, path: str | os.PathLike, device: str = "auto"):
        from ..optional import require

        ort = require("onnxruntime", "export")
        path, side = Path(path), sidecar_path(path)
        if not path.is_file():
            raise UserError(f"ONNX model {path} not found: write one with 'vitkit export CHECKPOINT --format onnx'")
        try:
            self.meta = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise UserError(f"{side} is missing or unreadable: export again with 'vitkit export', which writes the "
                            "class names and preprocessing beside the model") from None
        if not str(self.meta.get("format", "")).startswith("vitkit-onnx/"):
            raise UserError(f"{side} is not a vitkit ONNX sidecar: export again with 'vitkit export'")
        providers = ["CPUExecutionProvider"]
        if device in ("auto", "cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        elif device == "cuda":
            raise UserError("this onnxruntime has no CUDA provider: install onnxruntime-gpu or use --device cpu")
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types for damaged files
            raise UserError(f"ONNX Runtime cannot load {path} ({err}): export it again") from None
        self.device = torch.device("cpu")  # inputs and outputs are host arrays

    def logits(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        out = [self.session.run(None, {"image": images[i:i + batch_size].numpy()})[0]
               for i in range(0, len(images), batch_size)]
        return torch.from_numpy(np.concatenate(out)) if out else torch.empty(0, len(self.meta["classes"]))

    def warm_up(self, max_batch: int) -> None:
        """Nothing to compile: ONNX Runtime optimizes its graph when it loads it."""


class OpenVinoBackend:
    """Logits from an OpenVINO IR (`MODEL.xml` + `.bin`, written by `vitkit export --format openvino`) and its
    `MODEL.xml.json` sidecar, on the CPU. `precision`: 'fp32', 'bf16', or 'auto' (OpenVINO's choice: bf16 where the
    CPU has bf16 units). An int8 IR runs its quantized layers in int8 whatever the precision."""

    runtime = "openvino"
    model = None

    def __init__(self, path: str | os.PathLike, device: str = "auto", precision: str = "auto"):
        from ..optional import require

        ov = require("openvino", "openvino")
        path, side = Path(path), sidecar_path(path)
        if not path.is_file() or not path.with_suffix(".bin").is_file():
            raise UserError(f"OpenVINO model {path} (with its .bin) not found: write one with 'vitkit export "
                            "CHECKPOINT --format openvino'")
        try:
            self.meta = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise UserError(f"{side} is missing or unreadable: export again with 'vitkit export --format openvino'"
                            ) from None
        if device not in ("auto", "cpu"):
            raise UserError("the OpenVINO runtime runs on the CPU here: use --device cpu (or auto)")
        hints = {"fp32": {"INFERENCE_PRECISION_HINT": "f32"}, "bf16": {"INFERENCE_PRECISION_HINT": "bf16"}}
        try:
            self.compiled = ov.Core().compile_model(str(path), "CPU", hints.get(precision, {}))
        except Exception as err:  # OpenVINO raises RuntimeError for damaged files and unsupported hints alike
            raise UserError(f"OpenVINO cannot load {path} ({str(err).splitlines()[0]}): export it again") from None
        self.device = torch.device("cpu")

    def logits(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        out = [np.asarray(self.compiled(images[i:i + batch_size].numpy())[0])
               for i in range(0, len(images), batch_size)]
        return torch.from_numpy(np.concatenate(out)) if out else torch.empty(0, len(self.meta["classes"]))

    def warm_up(self, max_batch: int) -> None:
        """Nothing to compile: OpenVINO compiled the model when it loaded it."""


class Classifier:
    """`vitkit.load(path)`: predicts classes of images with the preprocessing stored in the model file, over a
    backend that computes logits (`TorchBackend` for a checkpoint, `OnnxBackend` for an exported model).

    A multi-label model (`multi_label`) gives each label its own sigmoid probability; the labels that reach their
    threshold (chosen on validation when it was trained, 0.5 where none was kept) are its answer."""

    def __init__(self, checkpoint: str | os.PathLike | None = None, device: str = "auto", precision: str = "auto",
                 compile: bool = False, *, backend: TorchBackend | OnnxBackend | None = None):
        self.backend = backend or TorchBackend(checkpoint, device, precision, compile)
        self.meta: dict = self.backend.meta
        self.classes: list[str] = self.meta["classes"]
        self.img_size: int = self.meta["img_size"]
        self.in_chans: int = self.meta["in_chans"]
        self.multi_label: bool = self.meta.get("task") == "multi-label"
        self.thresholds: list[float] | None = None
        if self.multi_label:
            kept = self.meta.get("thresholds")
            self.thresholds = [float(t) for t in kept] if kept and len(kept) == len(self.classes) else \
                [0.5] * len(self.classes)

    @property
    def runtime(self) -> str:
        return self.backend.runtime

    @property
    def model(self) -> torch.nn.Module | None:
        """The PyTorch model (for attention maps), or None with the ONNX backend."""
        return self.backend.model

    @property
    def explainable(self) -> bool:
        """Whether attention maps can explain the predictions: our ViT in PyTorch (not ONNX, not a timm model)."""
        return has_attention_maps(self.backend.model)

    @property
    def device(self) -> torch.device:
        return self.backend.device

    def warm_up(self, max_batch: int) -> None:
        """Compile now for every batch size a server will use (a no-op unless the backend compiles)."""
        self.backend.warm_up(max_batch)

    def preprocess(self, image: str | os.PathLike | Image.Image) -> np.ndarray:
        """A path or Pillow image to the uint8 (C, H, W) array the model was trained on."""
        if isinstance(image, Image.Image):
            return prepare(image, self.img_size, self.in_chans)
        return decode(image, self.img_size, self.in_chans)

    def logits(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """uint8 (N, C, H, W) at the model's size to logits (N, K)."""
        return self.backend.logits(images, batch_size)

    def probabilities(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """uint8 (N, C, H, W) at the model's size to probabilities (N, K): softmax, or per-label sigmoid."""
        logits = self.logits(images, batch_size).float()
        return logits.sigmoid() if self.multi_label else logits.softmax(dim=1)

    def top_classes(self, images: torch.Tensor, top_k: int = 5, batch_size: int = 256
                    ) -> list[list[tuple[str, float]]]:
        """uint8 (N, C, H, W) at the model's size to each image's top-k (class, probability), best first."""
        return [top for top, _ in self.classify(images, top_k, batch_size)]

    def classify(self, images: torch.Tensor, top_k: int = 5, batch_size: int = 256
                 ) -> list[tuple[list[tuple[str, float]], list[tuple[str, float, float]] | None]]:
        """uint8 (N, C, H, W) to (top-k (class, probability), labels that pass their threshold) per image. The labels
        are None for single-label models; for multi-label ones the top list also holds every passing label."""
        probs = self.probabilities(images, batch_size)
        k = len(self.classes) if self.multi_label else min(top_k, len(self.classes))
        values, indices = probs.topk(k, dim=1)
        tops = [[(self.classes[c], p) for c, p in zip(i, v)] for v, i in zip(values.tolist(), indices.tolist())]
        if not self.multi_label:
            return [(top, None) for top in tops]
        cuts = torch.tensor(self.thresholds)
        answers = []
        for top, row in zip(tops, probs):
            passing = [(self.classes[c], float(row[c]), self.thresholds[c])
                       for c in (row >= cuts).nonzero()[:, 0].tolist()]
            passing.sort(key=lambda h: -h[1])
            named = {c for c, _, _ in passing}  # a label can pass at a low threshold below the top-k's probabilities
            answers.append(([t for rank, t in enumerate(top) if rank < top_k or t[0] in named], passing))
        return answers

    def predict(self, images, top_k: int = 5, batch_size: int = 256) -> list[Prediction]:
        """Top-k (class, probability) for each path or Pillow image; unreadable files get an error, not a crash."""
        images = list(images) if not isinstance(images, (str, os.PathLike, Image.Image)) else [images]
        arrays, results = [], []
        for item in images:
            name = str(item) if not isinstance(item, Image.Image) else "<image>"
            try:
                arrays.append(self.preprocess(item))
                results.append(Prediction(name, []))
            except BadImage as err:
                results.append(Prediction(name, None, str(err)))
        if arrays:
            ok = iter(r for r in results if r.top is not None)
            for top, labels in self.classify(torch.from_numpy(np.stack(arrays)), top_k, batch_size):
                r = next(ok)
                r.top, r.labels = top, labels
        return results


def load_classifier(path: str | os.PathLike, runtime: str = "auto", device: str = "auto",
                    precision: str = "auto", compile: bool = False) -> Classifier:
    """A checkpoint (.safetensors, PyTorch), an exported model (.onnx, ONNX Runtime) or an OpenVINO IR (.xml);
    `runtime` auto picks by suffix."""
    suffix = Path(path).suffix.lower()
    by_suffix = {".onnx": "onnx", ".xml": "openvino"}.get(suffix, "torch")
    if runtime == "auto":
        runtime = by_suffix
    if runtime != by_suffix:
        needs = {"onnx": f"an exported .onnx file: run 'vitkit export {path}'",
                 "openvino": f"an OpenVINO .xml: run 'vitkit export {path} --format openvino'",
                 "torch": "a .safetensors checkpoint"}[runtime]
        raise UserError(f"--runtime {runtime} needs {needs} and give the file it writes; {path} is for "
                        f"--runtime {by_suffix} (or auto)")
    if runtime != "torch" and compile:
        raise UserError(f"--compile is for PyTorch checkpoints: {'ONNX Runtime' if runtime == 'onnx' else 'OpenVINO'} "
                        "optimizes its graph itself")
    if runtime == "onnx":
        return Classifier(backend=OnnxBackend(path, device))
    if runtime == "openvino":
        return Classifier(backend=OpenVinoBackend(path, device, precision))
    return Classifier(path, device, precision, compile)
