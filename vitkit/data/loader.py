"""Batches from in-memory uint8 images, augmented as whole batches on the training device.

No per-sample Python work in the hot loop: a batch is one index into the image tensor, one affine warp, grouped
colour ops and one normalization (see `augment.py`).

A batch is always the *global* batch: its order and every random draw are the same in each process, and process
`rank` of `world_size` takes its slice of it. So a run's images, augmentations and mixing partners do not depend
on how many processes train it, and a run saved by N processes resumes on M.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch

from ..errors import UserError
from .augment import Augment, Mix
from .splits import ImageSet


class Normalize:
    def __init__(self, mean, std, device: torch.device):
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 or float pixels in [0, 255] to normalized float."""
        return (x.float() - self.mean) / self.std


@dataclass
class Batch:
    x: torch.Tensor  # (b, C, H, W) normalized float, this process's share
    y: torch.Tensor  # (b,) class indices (of the unmixed image)
    target: torch.Tensor | None  # (b, num_classes) soft targets when mixing, else None
    size: int  # images in the global batch (the loss divides by this)
    views: torch.Tensor | None = None  # with `keep_views`: index * 2 + mirrored of each image, -1 where not exact


class BatchLoader:
    """Iterate over `Batch`es on `device`.

    With `shuffle`, the order and the augmentation come from `generator`, so a seeded generator per epoch makes
    every epoch reproducible (and resumable) on its own. `repeats` > 1 puts each drawn image `repeats` times in
    its batch with different augmentations (repeated augmentation; the epoch keeps its length). `class_weights`
    draws the order with replacement in proportion to each image's class weight (a balanced sampler).
    """

    def __init__(self, data: ImageSet, batch_size: int, mean, std, device: torch.device, shuffle: bool = False,
                 augment: Augment | None = None, drop_last: bool = False, rank: int = 0, world_size: int = 1,
                 mix: Mix | None = None, num_classes: int = 0, repeats: int = 1,
                 class_weights: torch.Tensor | None = None):
        self.data, self.batch_size, self.shuffle = data, batch_size, shuffle
        self.augment, self.drop_last, self.device = augment, drop_last, device
        self.rank, self.world_size = rank, world_size
        self.mix, self.num_classes, self.repeats = mix if mix else None, num_classes, repeats
        self.class_weights = class_weights
        self.keep_views = False  # set by a teacher that caches its logits per image and view (`distill.cache_teacher`)
        self.normalize = Normalize(mean, std, device)
        self.generator = torch.Generator()
        # Small datasets live on the training device once, instead of one copy per batch.
        on_device = device.type != "cpu" and data.images.numel() < 2 ** 31
        self.images = data.images.to(device) if on_device else data.images
        self.labels = data.labels.to(device) if on_device else data.labels

    def __len__(self) -> int:
        n = len(self.data)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch_seed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def __iter__(self) -> Iterator[Batch]:
        return self.batches()

    def order(self) -> torch.Tensor:
        n = len(self.data)
        if not self.shuffle:
            return torch.arange(n)
        if self.class_weights is not None:
            weights = self.class_weights[self.data.labels]
            return torch.multinomial(weights, n, replacement=True, generator=self.generator)
        order = torch.randperm(n, generator=self.generator)
        if self.repeats > 1:
            order = order[:math.ceil(n / self.repeats)].repeat_interleave(self.repeats)[:n]
        return order

    def batches(self, start: int = 0, rng_state: torch.Tensor | None = None) -> Iterator[Batch]:
        """The epoch's batches from batch `start` on; `rng_state` is `generator.get_state()` saved at that batch."""
        order = self.order()
        if rng_state is not None:
            self.generator.set_state(rng_state)  # augmentation draws continue where the saved epoch stopped
        for first in range(start * self.batch_size, len(order), self.batch_size):
            idx = order[first:first + self.batch_size]
            if self.drop_last and len(idx) < self.batch_size:
                return
            yield self._batch(idx)

    def _batch(self, idx: torch.Tensor) -> Batch:
        n = len(idx)
        params = self.augment.draw(n, self.generator) if self.augment is not None else None
        mixing = self.mix.draw(self.generator) if self.mix is not None else None
        mine = torch.tensor_split(torch.arange(n), self.world_size)[self.rank]  # positions in the global batch
        positions = mine
        if mixing is not None:
            positions = torch.cat([mine, n - 1 - mine])  # each image's partner is its mirror in the global batch
        x = self._images(idx[positions], params, positions)
        y = self.labels[idx[positions].to(self.labels.device)].to(self.device, non_blocking=True)
        if mixing is None:
            return Batch(x, y, None, n, self._views(idx[positions], params, positions) if self.keep_views else None)
        b = len(mine)
        x, target = self.mix.apply(x[:b], x[b:], y[:b], y[b:], self.num_classes, mixing)
        return Batch(x, y[:b], target, n)

    def _views(self, idx: torch.Tensor, params: dict | None, positions: torch.Tensor) -> torch.Tensor:
        """Each image's view of a flip-only augmentation, index * 2 + mirrored, or -1 where erasing changed it."""
        if params is None:
            return idx.to(self.device) * 2
        mirrored, exact = self.augment.view_keys(params)
        views = torch.where(exact[positions], idx * 2 + mirrored[positions], -1)
        return views.to(self.device, non_blocking=True)

    def _images(self, idx: torch.Tensor, params: dict | None, positions: torch.Tensor) -> torch.Tensor:
        x = self.images[idx.to(self.images.device)].to(self.device, non_blocking=True)
        if params is None:
            return self.normalize(x)
        return self.augment.apply(x, {k: v[positions] for k, v in params.items()}, self.normalize)


class ShardLoader:
    """`Batch`es streamed from a `ShardSet`, with `BatchLoader`'s interface.

    An epoch is `len(data) // batch_size` steps in every process (DDP needs equal step counts); process `rank`
    reads every `world_size`-th shard of the epoch's shard order and starts another pass over them if they run out
    first. Augmentation is drawn per process, and mixing partners come from the process's own share, so unlike the
    in-memory path the images depend on the number of processes. A resume inside an epoch reads the epoch again
    up to the saved step (same images, same draws).
    """

    def __init__(self, data, batch_size: int, mean, std, device: torch.device, augment: Augment | None = None,
                 rank: int = 0, world_size: int = 1, mix: Mix | None = None, num_classes: int = 0, workers: int = 2,
                 buffer: int = 2000):
        if len(data.shards) < world_size:
            raise UserError(f"{len(data.shards)} training shard(s) cannot feed {world_size} processes: write smaller "
                            "shards (vitkit data shard --shard-size)")
        self.data, self.batch_size, self.device, self.augment = data, batch_size, device, augment
        self.rank, self.world_size, self.mix, self.num_classes = rank, world_size, mix if mix else None, num_classes
        self.workers, self.buffer = workers, buffer
        self.normalize = Normalize(mean, std, device)
        self.generator = torch.Generator()
        self.local = len(torch.tensor_split(torch.arange(batch_size), world_size)[rank])
        self.seed = 0

    def __len__(self) -> int:
        return max(1, len(self.data) // self.batch_size)

    def set_epoch_seed(self, seed: int) -> None:
        self.seed = seed
        self.generator.manual_seed(seed * 31 + self.rank)

    def __iter__(self) -> Iterator[Batch]:
        return self.batches()

    def _stream(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from .shards import ShardStream

        order = torch.randperm(len(self.data.shards), generator=torch.Generator().manual_seed(self.seed))
        mine = [self.data.shards[int(i)] for i in order[self.rank::self.world_size]]
        for repeat in range(1_000_000):
            stream = ShardStream(self.data, mine, self.seed * 7 + repeat * 1_000_003 + self.rank, self.buffer)
            loader = torch.utils.data.DataLoader(stream, batch_size=self.local, num_workers=self.workers,
                                                 drop_last=True, persistent_workers=False)
            yield from loader

    def batches(self, start: int = 0, rng_state: torch.Tensor | None = None) -> Iterator[Batch]:
        stream = self._stream()
        for step in range(len(self)):
            images, labels = next(stream)
            params = self.augment.draw(len(images), self.generator) if self.augment is not None else None
            mixing = self.mix.draw(self.generator) if self.mix is not None else None
            if step < start:
                continue
            x = images.to(self.device, non_blocking=True)
            x = self.augment.apply(x, params, self.normalize) if params is not None else self.normalize(x)
            y = labels.to(self.device, non_blocking=True)
            if mixing is None:
                yield Batch(x, y, None, self.batch_size)
                continue
            x, target = self.mix.apply(x, x.flip(0), y, y.flip(0), self.num_classes, mixing)
            yield Batch(x, y, target, self.batch_size)
