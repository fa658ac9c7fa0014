"""The trainer: epochs of batched steps with small hooks for validation, checkpointing and early stopping.

Every epoch draws its order, augmentation, dropout and drop-path randomness from a seed derived from (seed, epoch),
and the run directory is complete at every epoch boundary, so a resumed run continues exactly where the
uninterrupted one would be. Files and logs come from rank 0 only.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from ..config import Config
from ..data import Augment, BatchLoader, DataBundle
from ..fileio import atomic_write
from ..metrics import topk_accuracy
from ..models import VisionTransformer
from . import dist
from .checkpoint import MODEL_FILE, STATE_FILE, save_model, save_state
from .device import autocast
from .evaluate import predict_logits
from .optim import build_optimizer, build_scheduler

log = logging.getLogger(__name__)

METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_top1", "val_top5", "lr", "seconds",
                  "img_per_s"]


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the message says where and what to try."""


@dataclass
class TrainState:
    epoch: int = 0  # completed epochs
    best_top1: float = float("-inf")
    best_epoch: int = 0
    epochs_without_improvement: int = 0
    history: list[dict] = field(default_factory=list)


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


class Trainer:
    def __init__(self, cfg: Config, data: DataBundle, model: VisionTransformer, run_dir: Path, meta: dict,
                 device: torch.device, amp_dtype: torch.dtype | None, show_progress: bool = True):
        self.cfg, self.data, self.run_dir, self.meta = cfg, data, run_dir, meta
        self.device, self.amp_dtype = device, amp_dtype
        self.model = model.to(device)
        self.show_progress = show_progress and dist.is_main()
        t = cfg.train
        hflip = cfg.data.hflip if cfg.data.hflip is not None else (0.5 if data.hflip else 0.0)
        augment = Augment(scale=tuple(cfg.data.crop_scale), hflip=hflip)
        train_set = data.splits["train"]
        drop_last = len(train_set) >= 2 * t.batch_size  # avoid a tiny, noisy last step; keep all data when small
        self.train_loader = BatchLoader(train_set, t.batch_size, data.mean, data.std, device, shuffle=True,
                                        augment=augment, drop_last=drop_last, rank=dist.rank(),
                                        world_size=dist.world_size())
        self.val = data.splits.get("val")
        self.optimizer = build_optimizer(self.model, t)
        self.scheduler = build_scheduler(self.optimizer, t, len(self.train_loader))
        self.loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)
        self.state = TrainState()

    # ------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        s = self.state
        return {"epoch": s.epoch, "best_top1": s.best_top1, "best_epoch": s.best_epoch,
                "epochs_without_improvement": s.epochs_without_improvement, "history": s.history,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def load_state_dict(self, state: dict) -> None:
        self.state = TrainState(state["epoch"], state["best_top1"], state["best_epoch"],
                                state["epochs_without_improvement"], list(state["history"]))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_cpu"])
        if state.get("rng_cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])

    # ------------------------------------------------------------------------------------------ loop
    def fit(self) -> TrainState:
        epochs = self.cfg.train.epochs
        for epoch in range(self.state.epoch + 1, epochs + 1):
            start = time.perf_counter()
            train_loss, train_acc, images = self.train_epoch(epoch)
            val = self.validate()
            seconds = time.perf_counter() - start
            row = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, **val,
                   "lr": self.optimizer.param_groups[0]["lr"], "seconds": round(seconds, 2),
                   "img_per_s": round(images / seconds, 1)}
            stop = self.end_epoch(row)
            if stop:
                log.info("early stop: val top-1 has not improved for %d epochs", self.cfg.train.patience)
                break
        return self.state

    def train_epoch(self, epoch: int) -> tuple[float, float, int]:
        seed = epoch_seed(self.cfg.train.seed, epoch)
        torch.manual_seed(seed)  # dropout and drop path
        self.train_loader.set_epoch_seed(seed)
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        seen, start = 0, time.perf_counter()
        bar = tqdm(total=len(self.train_loader), desc=f"epoch {epoch}/{self.cfg.train.epochs}", unit="batch",
                   leave=False, disable=None if self.show_progress else True,  # None: off when not a TTY
                   dynamic_ncols=True)
        for step, (x, y) in enumerate(self.train_loader):
            loss, logits = self.train_step(x, y)
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
            if step % 20 == 0 or step == len(self.train_loader) - 1:
                self._check_finite(loss_sum, epoch, step)
                bar.set_postfix(loss=f"{float(loss_sum) / seen:.4f}", acc=f"{float(correct) / seen:.3f}",
                                img_s=f"{seen / (time.perf_counter() - start):.0f}", refresh=False)
            bar.update()
        bar.close()
        totals = dist.all_reduce_sum(torch.stack([loss_sum.float(), correct.float(),
                                                  torch.tensor(float(seen), device=self.device)]))
        return float(totals[0] / totals[2]), float(totals[1] / totals[2]), int(totals[2])

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(self.device, self.amp_dtype):
            logits = self.model(x)
            loss = self.loss_fn(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return loss, logits

    def _check_finite(self, loss_sum: torch.Tensor, epoch: int, step: int) -> None:
        if not math.isfinite(float(loss_sum)):
            raise NonFiniteLoss(
                f"the training loss became non-finite in epoch {epoch} near step {step}: lower the learning rate "
                f"(now {self.cfg.train.lr}), or try --precision fp32; the last completed epoch is saved")

    def validate(self) -> dict:
        if self.val is None or len(self.val) == 0:
            return {"val_loss": float("nan"), "val_top1": float("nan"), "val_top5": float("nan")}
        logits = predict_logits(self.model, self.val.images, self.data.mean, self.data.std, self.device,
                                self.amp_dtype, self.cfg.train.eval_batch_size)
        labels = self.val.labels
        return {"val_loss": float(torch.nn.functional.cross_entropy(logits, labels)),
                "val_top1": topk_accuracy(logits, labels, 1), "val_top5": topk_accuracy(logits, labels, 5)}

    # ------------------------------------------------------------------------------------------ hooks
    def end_epoch(self, row: dict) -> bool:
        """Record the epoch, save checkpoints, and say whether to stop early."""
        s = self.state
        s.epoch = row["epoch"]
        s.history.append(row)
        top1 = row["val_top1"]
        if self.val is None or len(self.val) == 0:
            improved = True  # nothing to compare on: the latest weights are the best we know
        else:
            improved = not math.isnan(top1) and top1 > s.best_top1
        if improved:
            s.best_top1, s.best_epoch, s.epochs_without_improvement = top1, s.epoch, 0
        else:
            s.epochs_without_improvement += 1
        if dist.is_main():
            self.save(improved, row)
            log.info("epoch %d/%d  train loss %.4f acc %.4f | val loss %.4f top-1 %.4f top-5 %.4f | %.1fs, %.0f img/s%s",
                     row["epoch"], self.cfg.train.epochs, row["train_loss"], row["train_acc"], row["val_loss"],
                     row["val_top1"], row["val_top5"], row["seconds"], row["img_per_s"], "  *best*" if improved else "")
        patience = self.cfg.train.patience
        return patience > 0 and s.epochs_without_improvement >= patience

    def save(self, improved: bool, row: dict) -> None:
        meta = {**self.meta, "epoch": row["epoch"], "val_top1": row["val_top1"]}
        save_model([self.run_dir / MODEL_FILE[k] for k in (("last", "best") if improved else ("last",))],
                   self.model, meta)
        save_state(self.run_dir / STATE_FILE, self.state_dict())  # the epoch counts as done once this exists
        write_metrics(self.run_dir / "metrics.csv", self.state.history)


def write_metrics(path: Path, history: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write(path, buffer.getvalue())
