"""Batches from in-memory uint8 images, augmented as whole batches on the training device.

No per-sample Python work in the hot loop: a batch is one index into the image tensor, one affine warp that does
random-resized-crop and horizontal flip for every image at once, and one normalization.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from .dataset import ImageSet


@dataclass
class Augment:
    """Random resized crop (area fraction in `scale`, aspect ratio in `ratio`) and horizontal flip."""

    scale: tuple[float, float] = (0.8, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """x: float (B, C, H, W); returns the same shape, each image cropped, rescaled and maybe mirrored."""
        B = x.shape[0]
        rand = torch.rand(B, 5, generator=generator).to(x.device)  # (B, 5): area, ratio, cx, cy, flip
        area = self.scale[0] + (self.scale[1] - self.scale[0]) * rand[:, 0]
        log_r = math.log(self.ratio[0]) + (math.log(self.ratio[1]) - math.log(self.ratio[0])) * rand[:, 1]
        aspect = torch.exp(log_r)
        w = torch.sqrt(area * aspect).clamp(max=1.0)  # crop width as a fraction of the image
        h = torch.sqrt(area / aspect).clamp(max=1.0)
        cx = (1 - w) * (2 * rand[:, 2] - 1)  # crop centre in [-1, 1] coordinates, crop inside the image
        cy = (1 - h) * (2 * rand[:, 3] - 1)
        flip = torch.where(rand[:, 4] < self.hflip, -1.0, 1.0)
        theta = torch.zeros(B, 2, 3, device=x.device)
        theta[:, 0, 0] = w * flip
        theta[:, 0, 2] = cx
        theta[:, 1, 1] = h
        theta[:, 1, 2] = cy
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, H, W, 2)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class Normalize:
    def __init__(self, mean, std, device: torch.device):
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255.0

    def __call__(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return (x_uint8.float() - self.mean) / self.std


class BatchLoader:
    """Iterate over (images float (B, C, H, W) normalized, labels (B,)) on `device`.

    With `shuffle`, the order and the augmentation come from `generator`, so a seeded generator per epoch makes
    every epoch reproducible (and resumable) on its own. `rank`/`world_size` give each process its own shard.
    """

    def __init__(self, data: ImageSet, batch_size: int, mean, std, device: torch.device, shuffle: bool = False,
                 augment: Augment | None = None, drop_last: bool = False, rank: int = 0, world_size: int = 1):
        self.data, self.batch_size, self.shuffle = data, batch_size, shuffle
        self.augment, self.drop_last, self.device = augment, drop_last, device
        self.rank, self.world_size = rank, world_size
        self.normalize = Normalize(mean, std, device)
        self.generator = torch.Generator()
        # Small datasets live on the training device once, instead of one copy per batch.
        on_device = device.type != "cpu" and data.images.numel() < 2 ** 31
        self.images = data.images.to(device) if on_device else data.images
        self.labels = data.labels.to(device) if on_device else data.labels

    def __len__(self) -> int:
        n = len(self.data) // self.world_size
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch_seed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches()

    def batches(self, start: int = 0, rng_state: torch.Tensor | None = None
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's batches from batch `start` on; `rng_state` is `generator.get_state()` saved at that batch."""
        n = len(self.data)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        per_rank = n // self.world_size if self.world_size > 1 else n
        order = order[self.rank * per_rank:(self.rank + 1) * per_rank]
        if rng_state is not None:
            self.generator.set_state(rng_state)  # augmentation draws continue where the saved epoch stopped
        for first in range(start * self.batch_size, len(order), self.batch_size):
            idx = order[first:first + self.batch_size]
            if self.drop_last and len(idx) < self.batch_size:
                return
            idx = idx.to(self.images.device)
            x = self.images[idx].to(self.device, non_blocking=True)
            y = self.labels[idx].to(self.device, non_blocking=True)
            x = self.normalize(x)
            if self.augment is not None:
                # Normalization is affine per channel, so warping after it equals warping before it.
                x = self.augment(x, self.generator)
            yield x, y
