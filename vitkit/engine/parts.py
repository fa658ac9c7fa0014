"""The parts a training run is made of, built once from the config and handed to the trainer: the model and its
bf16 working copy, the DDP wrapper and compiled forward, the loader, optimizer, schedule, losses and weight EMA."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch

from ..config import Config
from ..data import DataBundle
from ..data.splits import Split, is_multi_label
from ..errors import UserError
from . import dist
from .device import compiled
from .ema import ModelEma
from .master import Bf16Weights
from .optim import build_optimizer, build_scheduler
from .recipe import build_recipe, make_loader

log = logging.getLogger(__name__)


@dataclass
class TrainParts:
    model: torch.nn.Module  # the fp32 weights that are optimized, evaluated and saved
    work: Bf16Weights | None  # with train.bf16_weights: the bf16 copy the passes run on
    ddp: torch.nn.Module | None  # several processes: DDP over what the passes run on
    forward: Callable  # the training forward pass (compiled with train.compile)
    loader: object  # BatchLoader or ShardLoader: this process's share of each batch
    val: Split | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loss_fn: torch.nn.Module  # summed cross-entropy on hard labels (label smoothing, class weights)
    soft_loss_fn: torch.nn.Module  # the same on mixed (MixUp/CutMix) targets
    ema: ModelEma | None
    distiller: object | None = None  # with train.teacher: the teacher and the distillation loss (`distill.Distiller`)
    val_features: torch.Tensor | None = None  # frozen-feature training: the validation split's head inputs
    feature_seconds: float | None = None  # the time computing the frozen features took (0: read from the cache)


def uses_feature_cache(cfg: Config) -> bool:
    """Whether the run trains its heads on cached features of a frozen backbone (no teacher to run on each view)."""
    t = cfg.train
    return t.freeze == "backbone" and t.feature_cache and not t.teacher


def check_feature_cache(cfg: Config) -> None:
    """Before any data is read: options that cached features cannot honour."""
    if uses_feature_cache(cfg) and cfg.data.decode_scale != 1:
        raise UserError("frozen-feature training caches each image's features at the model's input size, so "
                        "data.decode_scale does not apply: drop it, or --set train.feature_cache=false")


def build_parts(cfg: Config, data: DataBundle, model: torch.nn.Module, device: torch.device,
                bf16_weights: bool = False, amp_dtype: torch.dtype | None = None) -> TrainParts:
    t = cfg.train
    if t.batch_size < dist.world_size() * t.accum_steps:
        raise UserError(f"train.batch_size {t.batch_size} is the global batch: it must hold at least one image per "
                        f"process and pass ({dist.world_size()} x {t.accum_steps})")
    distiller = build_distiller(cfg, data, model, device, amp_dtype) if t.teacher else None
    if uses_feature_cache(cfg):
        return _frozen_feature_parts(cfg, data, model.to(device), device, amp_dtype)
    model = model.to(device)
    if t.grad_checkpointing:
        if not hasattr(model, "set_grad_checkpointing"):
            raise UserError(f"{cfg.model.name} has no gradient checkpointing in timm: drop train.grad_checkpointing")
        model.set_grad_checkpointing(True)  # before the bf16 copy, which copies the switch
    if bf16_weights:
        dist.broadcast_module(model)  # DDP below makes the copies agree; the masters must agree too
    work = Bf16Weights(model) if bf16_weights else None
    # Several processes: DDP averages the gradients; the trainer scales the loss so that the average equals the
    # gradient of the global batch's mean loss, whatever the number of processes.
    train_net = work.module if work else model
    ddp = dist.wrap(train_net, device)
    net = ddp or train_net
    recipe = build_recipe(cfg, data)
    loader = make_loader(cfg, data, recipe, device)
    if distiller is not None and t.teacher_cache:
        from .distill import cache_teacher

        cache_teacher(distiller, loader, t.epochs, max(t.batch_size // dist.world_size(), 1))
    optimizer = build_optimizer(model, t)
    return TrainParts(
        model=model, work=work, ddp=ddp, forward=compiled(net) if t.compile else net, loader=loader,
        val=data.splits.get("val"), optimizer=optimizer, scheduler=build_scheduler(optimizer, t, len(loader)),
        **_losses(t, recipe, device, data.splits["train"]), ema=ModelEma(model, t.ema) if t.ema > 0 else None,
        distiller=distiller)


class MultiLabelLoss(torch.nn.Module):
    """Binary cross-entropy of each label's sigmoid, averaged over the labels and summed over the images; uncertain
    targets (NaN) are left out. `pos_weight` weighs each label's positives (`--balance loss`).

    With `gamma_neg`, `gamma_pos` or `clip` it is the asymmetric loss (Ridnik et al., 2021): a positive costs
    -(1-p)^gamma_pos log p, a negative -p_m^gamma_neg log(1-p_m) with p_m = max(p - clip, 0), so the many easy
    negatives of an image with few of many labels weigh little; soft (mixed) targets weigh both terms."""

    def __init__(self, pos_weight: torch.Tensor | None = None, gamma_neg: float = 0.0, gamma_pos: float = 0.0,
                 clip: float = 0.0):
        super().__init__()
        self.register_buffer("pos_weight", pos_weight)
        self.gamma_neg, self.gamma_pos, self.clip = gamma_neg, gamma_pos, clip

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        known = ~torch.isnan(target)
        y = target.nan_to_num(0.0)
        if not (self.gamma_neg or self.gamma_pos or self.clip):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, pos_weight=self.pos_weight,
                                                                        reduction="none")
            return (loss * known).sum() / target.shape[1]
        logits = logits.float()
        p = torch.sigmoid(logits)
        shifted = (p - self.clip).clamp(min=0) if self.clip else p
        positive = torch.nn.functional.logsigmoid(logits) * (1 - p).pow(self.gamma_pos)
        if self.pos_weight is not None:
            positive = positive * self.pos_weight
        # log(1 - p_m); with no clip that is logsigmoid(-x), exact where p rounds to 1
        negative = torch.log1p(-shifted.clamp(max=1 - 1e-6)) if self.clip else torch.nn.functional.logsigmoid(-logits)
        negative = negative * shifted.pow(self.gamma_neg)
        loss = -(y * positive + (1 - y) * negative)
        return (loss * known).sum() / target.shape[1]


def _losses(t, recipe, device: torch.device, train: Split | None = None) -> dict:
    """Summed cross-entropy on hard labels (label smoothing, class weights), and on mixed targets; for multi-label
    data binary cross-entropy for both."""
    if is_multi_label(train):
        pos_weight = None
        if t.balance == "loss":
            labels = train.labels
            positives = (labels == 1).sum(0).float()
            negatives = (labels == 0).sum(0).float()
            pos_weight = (negatives / positives.clamp(min=1)).clamp(min=1.0).to(device)
            log.info("--balance loss: positive weights from %.2f to %.2f", float(pos_weight.min()),
                     float(pos_weight.max()))
        asl = {"gamma_neg": t.asl_gamma_neg, "gamma_pos": t.asl_gamma_pos, "clip": t.asl_clip} \
            if t.multi_label_loss == "asl" else {}
        loss = MultiLabelLoss(pos_weight, **asl).to(device)
        return {"loss_fn": loss, "soft_loss_fn": loss}
    if t.multi_label_loss != "bce":
        raise UserError(f"--multi-label-loss {t.multi_label_loss} is for multi-label data (several labels per image): "
                        "drop it for single-label data")
    weights = recipe.class_weights.to(device) if t.balance == "loss" else None
    return {"loss_fn": torch.nn.CrossEntropyLoss(weight=weights, label_smoothing=t.label_smoothing, reduction="sum"),
            "soft_loss_fn": torch.nn.CrossEntropyLoss(weight=weights, reduction="sum")}


def _frozen_feature_parts(cfg: Config, data: DataBundle, model: torch.nn.Module, device: torch.device,
                          amp_dtype: torch.dtype | None) -> TrainParts:
    """`--freeze backbone` on cached features: the backbone runs once per image and view, the steps run the heads
    alone (`model.heads`) on its features, and the whole model is what is saved and evaluated as before."""
    from .features import FeatureLoader, frozen_features

    t, d = cfg.train, cfg.data
    if dist.world_size() > 1:
        raise UserError("frozen-feature training runs in one process (the head trains in seconds): drop --nproc, or "
                        "--set train.feature_cache=false")
    recipe = build_recipe(cfg, data)
    if recipe.mix is not None or d.repeats > 1:
        log.warning("train.mixup/cutmix and data.repeats do not apply to cached features; data.probe_views adds "
                    "augmented views, train.feature_cache=false augments every epoch")
    splits = {name: data.splits[name] for name in ("train", "val") if name in data.splits and len(data.splits[name])}
    features = frozen_features(model, splits, data.mean, data.std, device, amp_dtype, t.eval_batch_size,
                               d.probe_views, recipe.augment, t.seed, d.cache)
    train = data.splits["train"]
    loader = FeatureLoader(features.train, train.labels, t.batch_size, device,
                           drop_last=len(train) >= 2 * t.batch_size, num_classes=len(data.classes),
                           class_weights=recipe.class_weights if t.balance == "sampler" else None)
    optimizer = build_optimizer(model, t)
    val = features.others.get("val")
    return TrainParts(
        model=model, work=None, ddp=None, forward=model.heads, loader=loader, val=data.splits.get("val"),
        optimizer=optimizer, scheduler=build_scheduler(optimizer, t, len(loader)), **_losses(t, recipe, device, train),
        ema=ModelEma(model, t.ema) if t.ema > 0 else None,
        val_features=val.to(device) if val is not None else None, feature_seconds=features.seconds)


def build_distiller(cfg: Config, data: DataBundle, model: torch.nn.Module, device: torch.device,
                    amp_dtype: torch.dtype | None):
    """The teacher of `train.teacher`, checked against the data; a student with a distillation token trains its
    second head on the teacher (set before the bf16 copy is made, which copies the switch)."""
    from .distill import Distiller, check_teacher, load_teacher

    t = cfg.train
    if is_multi_label(data.splits["train"]):
        raise UserError("distillation (--teacher) follows a teacher's classes, one per image: it does not apply to "
                        "multi-label data")
    teacher = load_teacher(t.teacher, t.teacher_weights, device)
    check_teacher(teacher, data.classes, data.img_size, data.channels)
    if getattr(model, "dist_token", None) is not None:
        model.distilled_training = True
    log.info("distilling from %s (%s, alpha %g%s) into the %s", teacher.source, t.distill, t.distill_alpha,
             f", tau {t.distill_tau:g}" if t.distill == "soft" else "",
             "distillation head" if getattr(model, "distilled_training", False) else "class head")
    return Distiller(teacher, data.mean, data.std, t.distill, t.distill_alpha, t.distill_tau, amp_dtype)
