"""The training recipe's data side: augmentation, mixing and class balance, with the small-data defaults.

A training split under `SMALL_DATA` images gets TrivialAugment and random erasing unless the config sets them
(`data.policy`, `data.erase`); ViTs overfit small datasets without them. The log says what was chosen.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..config import Config
from ..data import BatchLoader, DataBundle
from ..data.augment import Augment, Mix
from ..data.loader import ShardLoader
from ..data.splits import is_multi_label
from ..errors import UserError
from . import dist

log = logging.getLogger(__name__)

SMALL_DATA = 20_000  # training images below which the stronger defaults apply
IMBALANCE_WARNING = 10.0  # largest / smallest class size that draws a warning


@dataclass
class Recipe:
    augment: Augment
    mix: Mix | None
    class_weights: torch.Tensor | None  # (num_classes,) mean weight 1 over the training images; None: no balancing


def build_recipe(cfg: Config, data: DataBundle) -> Recipe:
    d, t = cfg.data, cfg.train
    train = data.splits["train"]
    small = len(train) < SMALL_DATA
    policy = d.policy if d.policy is not None else ("trivial" if small else "none")
    erase = d.erase if d.erase is not None else (0.25 if small else 0.0)
    if small and (d.policy is None or d.erase is None):
        log.info("small training split (%d images < %d): data.policy=%s, data.erase=%s (set them to choose)",
                 len(train), SMALL_DATA, policy, erase)
    hflip = d.hflip if d.hflip is not None else (0.5 if data.hflip else 0.0)
    augment = Augment(scale=tuple(d.crop_scale), stretch=d.crop_stretch, hflip=hflip, translate=d.translate,
                      policy=policy, ops=d.randaugment_ops, magnitude=d.randaugment_magnitude, erase=erase,
                      size=data.img_size)
    mix = Mix(t.mixup, t.cutmix, t.mix_prob, t.mix_switch, t.label_smoothing) if t.mixup or t.cutmix else None
    if is_multi_label(train):  # multi-label: --balance loss weighs each label's positives (`parts._losses`)
        if t.balance == "sampler":
            raise UserError("--balance sampler draws images by class, which multi-label data does not have: use "
                            "--balance loss (each label's positives weighted by its negatives / positives)")
        return Recipe(augment, mix, None)
    return Recipe(augment, mix, class_balance(train.class_counts(len(data.classes)), data.classes, t.balance))


def class_balance(counts: torch.Tensor, classes: list[str], balance: str) -> torch.Tensor | None:
    """Warn about a strongly imbalanced split; with `balance`, weights n / (K * n_c) for each present class."""
    present = counts > 0
    largest, smallest = counts.max(), counts[present].min()
    if largest / smallest >= IMBALANCE_WARNING and balance == "none":
        log.warning("the training split is strongly imbalanced: %r has %d images, %r only %d; consider "
                    "--balance loss or --balance sampler", classes[int(counts.argmax())], int(largest),
                    classes[int(torch.where(present, counts, float("inf")).argmin())], int(smallest))
    if balance == "none":
        return None
    weights = torch.where(present, counts.sum() / (int(present.sum()) * counts.clamp(min=1)), torch.zeros_like(counts))
    log.info("--balance %s: class weights from %.2f to %.2f", balance, float(weights[present].min()),
             float(weights.max()))
    return weights


def make_loader(cfg: Config, data: DataBundle, recipe: Recipe, device: torch.device) -> BatchLoader | ShardLoader:
    """The training split's loader: in memory, or streamed from shards; this process's share of each batch."""
    t, train = cfg.train, data.splits["train"]
    common = dict(augment=recipe.augment, rank=dist.rank(), world_size=dist.world_size(), mix=recipe.mix,
                  num_classes=len(data.classes))
    if train.streamed:
        if t.balance == "sampler" or cfg.data.repeats > 1:
            raise UserError("train.balance=sampler and data.repeats need in-memory data; streamed shards take "
                            "--balance loss")
        return ShardLoader(train, t.batch_size, data.mean, data.std, device, workers=cfg.data.workers, **common)
    drop_last = len(train) >= 2 * t.batch_size  # avoid a tiny, noisy last step; keep all data when small
    return BatchLoader(train, t.batch_size, data.mean, data.std, device, shuffle=True, drop_last=drop_last,
                       repeats=cfg.data.repeats, class_weights=recipe.class_weights if t.balance == "sampler" else None,
                       **common)
