"""Optimizer with decay-free groups, and the warmup + cosine learning-rate schedule."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..config import TrainConfig

NO_DECAY = ("pos_embed", "cls_token", "reg_token", "dist_token")


def decays(name: str, p: nn.Parameter) -> bool:
    """Weight decay on matrices only: not on norms, biases, LayerScale, the position embedding or the prefix
    tokens."""
    return p.ndim > 1 and name.split(".")[-1] not in NO_DECAY


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if decays(name, p) else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def layer_id(name: str, depth: int) -> int:
    """0 for the embeddings, i + 1 for block i, depth + 1 for the final norms, attention pooling and the heads."""
    if name.startswith(("cls_token", "dist_token", "reg_token", "pos_embed", "patch_embed", "norm_pre")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def scaled_param_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0,
                        backbone_lr_scale: float = 1.0) -> list[dict]:
    """Groups with an `lr_scale`: layer_decay^(depth+1-layer) (LLRD), times backbone_lr_scale off the head."""
    if layer_decay == 1.0 and backbone_lr_scale == 1.0:
        return [{**g, "lr_scale": 1.0} for g in param_groups(model, weight_decay)]
    depth = len(getattr(model, "blocks", []))
    groups: dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = weight_decay if decays(name, p) else 0.0
        scale = layer_decay ** (depth + 1 - layer_id(name, depth))
        scale *= 1.0 if name.startswith(("head.", "head_dist.")) else backbone_lr_scale
        group = groups.setdefault((scale, decay), {"params": [], "weight_decay": decay, "lr_scale": scale})
        group["params"].append(p)
    return list(groups.values())


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = scaled_param_groups(model, cfg.weight_decay, cfg.layer_decay, cfg.backbone_lr_scale)
    for group in groups:
        group["lr"] = cfg.lr * group["lr_scale"]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), fused=fused_adamw(model))


def fused_adamw(model: nn.Module) -> bool | None:
    """True where torch's fused AdamW runs (all parameters on CPUs or GPUs): one kernel over every tensor instead of
    a loop, 3-4x faster on CPUs (docs/benchmarks.md); None leaves torch's default elsewhere."""
    return all(p.device.type in ("cpu", "cuda") for p in model.parameters()) or None


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warmup from ~0 to 1, then cosine from 1 down to `min_ratio` at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    total = cfg.epochs * steps_per_epoch
    warmup = min(int(cfg.warmup_epochs * steps_per_epoch), max(0, total - 1))
    min_ratio = min(1.0, cfg.min_lr / cfg.lr)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup, total, min_ratio))
