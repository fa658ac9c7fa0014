"""Frozen features: what a pretrained backbone says about each image, computed once and kept on disk.

A linear probe (`--freeze backbone`) trains only the head, so running the backbone over every image in every epoch
repeats the same work. Here the backbone runs once per image and view, in inference mode (fused attention, bf16
where the run uses it), and the features are cached under a key made of the backbone's weights, the images, the
preprocessing and the views: the head then trains for any number of epochs in seconds, and a second run with the
same backbone and data reads them back. View 0 is each image as it is; views 1..K-1 are augmented by the run's
recipe (`data.probe_views`), a little augmentation for a head that would otherwise see one picture of each image.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..data import ImageSet, Normalize
from ..data.augment import Augment
from ..data.cache import cache_root
from ..data.loader import BatchLoader
from ..errors import UserError
from .device import autocast

log = logging.getLogger(__name__)

FORMAT = 1  # bump when what is cached changes meaning


def features_dir() -> Path:
    return cache_root() / "features"


@torch.inference_mode()
def backbone_features(model: torch.nn.Module, images: torch.Tensor, mean, std, device: torch.device,
                      amp_dtype: torch.dtype | None, batch_size: int = 256, augment: Augment | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 images (N, C, H, W) to the heads' input (N, D), or (N, 2, D) with a distillation token: float32 on
    the CPU. With `augment`, each batch is augmented first (its draws from `generator`)."""
    model.eval()
    normalize = Normalize(mean, std, device)
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device, non_blocking=True)
        if augment is not None:
            x = augment.apply(x, augment.draw(len(x), generator), normalize)
        else:
            x = normalize(x)
        with autocast(device, amp_dtype):
            out.append(model.head_features(model.forward_features(x)).float().cpu())
    return torch.cat(out) if out else torch.empty(0, model.embed_dim)


def _update(h, tensor: torch.Tensor) -> None:
    h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())


def feature_key(model: torch.nn.Module, splits: dict[str, torch.Tensor], mean, std, views: int,
                augment: Augment | None, seed: int, amp_dtype: torch.dtype | None) -> str:
    """What the cached features depend on: the backbone's weights (the heads aside), every image's pixels, the
    normalization, the views and their augmentation, and the precision they were computed in."""
    h = hashlib.blake2b(digest_size=20)
    h.update(repr((FORMAT, tuple(mean), tuple(std), views, repr(augment) if views > 1 else None, seed,
                   str(amp_dtype))).encode())
    for name, tensor in sorted(model.state_dict().items()):
        if not name.startswith(("head.", "head_dist.")):
            h.update(name.encode())
            _update(h, tensor)
    for name, images in sorted(splits.items()):
        h.update(f"{name}:{tuple(images.shape)}".encode())
        _update(h, images)
    return h.hexdigest()


@dataclass
class FrozenFeatures:
    """The training split's features (views, N, ...), and those of the other splits (N, ...)."""
    train: torch.Tensor
    others: dict[str, torch.Tensor]
    seconds: float  # spent computing them (0 when read from the cache)
    cached: bool  # read from the cache


def frozen_features(model: torch.nn.Module, splits: dict[str, ImageSet], mean, std, device: torch.device,
                    amp_dtype: torch.dtype | None, batch_size: int, views: int = 1, augment: Augment | None = None,
                    seed: int = 0, use_cache: bool = True) -> FrozenFeatures:
    """Features of every split in `splits` (which must hold 'train'), from the disk cache or computed now."""
    if any(split.streamed for split in splits.values()):
        raise UserError("frozen-feature training needs the images in memory, not streamed shards: use an image "
                        "folder or a named dataset, or --set train.feature_cache=false")
    images = {name: split.images for name, split in splits.items()}
    key = feature_key(model, images, mean, std, views, augment, seed, amp_dtype)
    path = features_dir() / f"{key}.safetensors"
    if use_cache and path.is_file():
        try:
            stored = load_file(path)
            log.info("frozen features read from the cache (%s)", path)
            return FrozenFeatures(stored.pop("train"), stored, 0.0, True)
        except Exception as err:  # a damaged entry is computed again and replaced
            log.warning("the cached features in %s cannot be read (%s): computing them again", path, err)
    start = time.perf_counter()
    total = sum(len(v) for v in images.values()) + (views - 1) * len(images["train"])
    log.info("computing the frozen backbone's features: %d images%s, once (later epochs and runs read them)", total,
             f" ({views} views of each training image)" if views > 1 else "")
    generator = torch.Generator().manual_seed(seed)
    train = [backbone_features(model, images["train"], mean, std, device, amp_dtype, batch_size)]
    for _ in range(views - 1):
        train.append(backbone_features(model, images["train"], mean, std, device, amp_dtype, batch_size, augment,
                                       generator))
    others = {name: backbone_features(model, imgs, mean, std, device, amp_dtype, batch_size)
              for name, imgs in images.items() if name != "train"}
    seconds = time.perf_counter() - start
    log.info("frozen features: %d images in %.1f s (%.0f images/s)", total, seconds, total / max(seconds, 1e-9))
    result = FrozenFeatures(torch.stack(train), others, seconds, False)
    if use_cache:
        _store(path, result)
    return result


def _store(path: Path, features: FrozenFeatures) -> None:
    """Write the cache entry atomically; a full or read-only disk only costs the next run the computation."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({"train": features.train.contiguous(), **{k: v.contiguous() for k, v in features.others.items()}},
                  tmp)
        os.replace(tmp, path)
    except OSError as err:
        log.warning("could not cache the frozen features in %s (%s): the next run computes them again", path, err)


class FeatureLoader(BatchLoader):
    """`BatchLoader`'s batches over cached features instead of images: the same order (and the same draws from
    its generator), so without augmentation an epoch is the one the images would give; with several views each
    image of a batch comes as one of them, drawn at random."""

    def __init__(self, views: torch.Tensor, labels: torch.Tensor, batch_size: int, device: torch.device, **kwargs):
        super().__init__(ImageSet(views[0], labels, []), batch_size, (0.0,), (1.0,), device, shuffle=True, **kwargs)
        self.views = views.to(device) if device.type != "cpu" else views

    def _images(self, idx: torch.Tensor, params: dict | None, positions: torch.Tensor) -> torch.Tensor:
        idx = idx.to(self.views.device)
        if len(self.views) == 1:
            return self.views[0, idx].to(self.device, non_blocking=True)
        view = torch.randint(len(self.views), (len(idx),), generator=self.generator).to(self.views.device)
        return self.views[view, idx].to(self.device, non_blocking=True)
