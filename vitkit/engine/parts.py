"""The parts a training run is made of, built once from the config and handed to the trainer: the model and its
bf16 working copy, the DDP wrapper and compiled forward, the loader, optimizer, schedule, losses and weight EMA."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch

from ..config import Config
from ..data import DataBundle
from ..data.splits import Split
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


def build_parts(cfg: Config, data: DataBundle, model: torch.nn.Module, device: torch.device,
                bf16_weights: bool = False) -> TrainParts:
    t = cfg.train
    if t.batch_size < dist.world_size() * t.accum_steps:
        raise UserError(f"train.batch_size {t.batch_size} is the global batch: it must hold at least one image per "
                        f"process and pass ({dist.world_size()} x {t.accum_steps})")
    model = model.to(device)
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
    optimizer = build_optimizer(model, t)
    weights = recipe.class_weights.to(device) if t.balance == "loss" else None
    return TrainParts(
        model=model, work=work, ddp=ddp, forward=compiled(net) if t.compile else net, loader=loader,
        val=data.splits.get("val"), optimizer=optimizer, scheduler=build_scheduler(optimizer, t, len(loader)),
        loss_fn=torch.nn.CrossEntropyLoss(weight=weights, label_smoothing=t.label_smoothing, reduction="sum"),
        soft_loss_fn=torch.nn.CrossEntropyLoss(weight=weights, reduction="sum"),
        ema=ModelEma(model, t.ema) if t.ema > 0 else None)
