"""A trained classifier: a checkpoint plus the preprocessing it records, for files, folders or Pillow images."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from PIL import Image

from ..data.images import IMAGE_SUFFIXES, BadImage, is_hidden, load_image, prepare
from ..errors import UserError
from .checkpoint import load_model
from .device import resolve_device, resolve_precision
from .evaluate import predict_logits


@dataclass
class Prediction:
    source: str
    top: list[tuple[str, float]] | None  # (class, probability), best first; None when the image was unreadable
    error: str | None = None

    def to_dict(self) -> dict:
        if self.top is None:
            return {"file": self.source, "error": self.error}
        return {"file": self.source, "top": [{"class": c, "probability": round(p, 6)} for c, p in self.top]}


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


class Classifier:
    """`vitkit.load(path)`: predicts classes of images with the preprocessing stored in the checkpoint."""

    def __init__(self, checkpoint: str | os.PathLike, device: str = "auto", precision: str = "auto"):
        self.device = resolve_device(device)
        self.model, self.meta = load_model(checkpoint, self.device)
        self.amp_dtype = resolve_precision(precision, self.device)
        self.classes: list[str] = self.meta["classes"]
        self.img_size: int = self.meta["img_size"]
        self.in_chans: int = self.meta["in_chans"]

    def preprocess(self, image: str | os.PathLike | Image.Image) -> np.ndarray:
        """A path or Pillow image to the uint8 (C, H, W) array the model was trained on."""
        if isinstance(image, Image.Image):
            return prepare(image, self.img_size, self.in_chans)
        return load_image(image, self.img_size, self.in_chans)

    def logits(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """uint8 (N, C, H, W) at the model's size to logits (N, K)."""
        return predict_logits(self.model, images, self.meta["mean"], self.meta["std"], self.device, self.amp_dtype,
                              batch_size)

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
            probs = self.logits(torch.from_numpy(np.stack(arrays)), batch_size).softmax(dim=1)
            k = min(top_k, len(self.classes))
            values, indices = probs.topk(k, dim=1)
            ok = iter(r for r in results if r.top is not None)
            for v, i in zip(values.tolist(), indices.tolist()):
                next(ok).top = [(self.classes[c], p) for c, p in zip(i, v)]
        return results
