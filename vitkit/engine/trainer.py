"""The trainer: epochs of batched steps with small hooks for validation, checkpointing and early stopping.

Every epoch draws its order, augmentation, dropout and drop-path randomness from a seed derived from (seed, epoch),
and the run directory is complete at every epoch boundary. A signal (Ctrl-C, SIGTERM) stops at the next step
boundary after saving where the epoch stood (step, partial sums, generator states), so a resumed run continues
exactly where the uninterrupted one would be, between epochs or inside one. Files and logs come from rank 0 only.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import signal
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
from .interrupt import Interrupted, StopRequest
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
    skipped_steps: int = 0  # steps skipped for a non-finite loss or gradient
    partial: dict | None = None  # where an interrupted epoch stopped (see `Trainer.save_partial`)


def compiled(model: torch.nn.Module):
    """`torch.compile(model)` for training steps; where compiling fails (no C++ compiler, an unsupported op)
    PyTorch runs those parts eagerly instead, with a warning, rather than stopping the run."""
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True
    log.info("train.compile: the first steps compile the model (a minute or two on a small CPU)")
    return torch.compile(model)


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


class Trainer:
    def __init__(self, cfg: Config, data: DataBundle, model: VisionTransformer, run_dir: Path, meta: dict,
                 device: torch.device, amp_dtype: torch.dtype | None, show_progress: bool = True):
        self.cfg, self.data, self.run_dir, self.meta = cfg, data, run_dir, meta
        self.device, self.amp_dtype = device, amp_dtype
        self.model = model.to(device)
        self.forward = compiled(self.model) if cfg.train.compile else self.model  # training forward passes
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
        self.stop = StopRequest()
        # A CPU step is synchronous anyway, so its loss is checked at once; on a GPU every 20 steps, unless
        # skipping bad steps is allowed (which needs the answer before the update).
        self.check_each_step = device.type == "cpu" or t.max_nonfinite_steps > 0

    # ------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Everything a resume needs, the weights included, so that one atomic file is always consistent."""
        s = self.state
        return {"epoch": s.epoch, "best_top1": s.best_top1, "best_epoch": s.best_epoch,
                "epochs_without_improvement": s.epochs_without_improvement, "history": s.history,
                "skipped_steps": s.skipped_steps, "partial": s.partial, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), **rng_states()}

    def load_state_dict(self, state: dict) -> None:
        self.state = TrainState(state["epoch"], state["best_top1"], state["best_epoch"],
                                state["epochs_without_improvement"], list(state["history"]),
                                state.get("skipped_steps", 0), state.get("partial"))
        if "model" in state:
            self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_states(state)

    # ------------------------------------------------------------------------------------------ loop
    def fit(self) -> TrainState:
        epochs = self.cfg.train.epochs
        with self.stop:
            for epoch in range(self.state.epoch + 1, epochs + 1):
                start = time.perf_counter()
                train_loss, train_acc, images, earlier_seconds = self.train_epoch(epoch)
                val = self.validate()
                seconds = time.perf_counter() - start + earlier_seconds
                row = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, **val,
                       "lr": max(g["lr"] for g in self.optimizer.param_groups), "seconds": round(seconds, 2),
                       "img_per_s": round(images / seconds, 1)}
                stop = self.end_epoch(row)
                if self.stop and epoch < epochs:
                    raise self._interrupted(f"after epoch {epoch}")
                if stop:
                    log.info("early stop: val top-1 has not improved for %d epochs", self.cfg.train.patience)
                    break
        return self.state

    def train_epoch(self, epoch: int) -> tuple[float, float, int, float]:
        """One pass over the training split, or the rest of an interrupted one: (loss, accuracy, images, seconds
        spent on this epoch before the interruption)."""
        seed = epoch_seed(self.cfg.train.seed, epoch)
        torch.manual_seed(seed)  # dropout and drop path
        self.train_loader.set_epoch_seed(seed)
        partial, self.state.partial = self.state.partial, None
        self.model.train()
        if partial is not None and partial["epoch"] == epoch:
            first, seen, earlier = partial["step"], partial["seen"], partial["seconds"]
            loss_sum, correct = partial["loss_sum"].to(self.device), partial["correct"].to(self.device)
            set_rng_states(partial)
            batches = self.train_loader.batches(first, partial["rng_loader"])
            log.info("continuing epoch %d at step %d of %d", epoch, first + 1, len(self.train_loader))
        else:
            first, seen, earlier = 0, 0, 0.0
            loss_sum = torch.zeros((), device=self.device)
            correct = torch.zeros((), device=self.device)
            batches = self.train_loader.batches()
        seen_before, start = seen, time.perf_counter()
        bar = tqdm(total=len(self.train_loader), initial=first, desc=f"epoch {epoch}/{self.cfg.train.epochs}",
                   unit="batch", leave=False, disable=None if self.show_progress else True,  # None: off if no TTY
                   dynamic_ncols=True)
        last = len(self.train_loader) - 1
        for step, (x, y) in enumerate(batches, start=first):
            result = self.train_step(x, y, epoch, step)
            if result is not None:
                loss, logits = result
                loss_sum += loss.detach() * len(y)
                correct += (logits.argmax(1) == y).sum()
                seen += len(y)
            if step % 20 == 0 or step == last:
                if not self.check_each_step:
                    self._check_finite(loss_sum, epoch, step)
                bar.set_postfix(loss=f"{float(loss_sum) / max(seen, 1):.4f}", acc=f"{float(correct) / max(seen, 1):.3f}",
                                img_s=f"{(seen - seen_before) / (time.perf_counter() - start):.0f}", refresh=False)
            bar.update()
            if self.stop:
                bar.close()
                self.save_partial(epoch, step + 1, loss_sum, correct, seen, earlier + time.perf_counter() - start)
                raise self._interrupted(f"in epoch {epoch} after step {step + 1} of {last + 1}")
        bar.close()
        totals = dist.all_reduce_sum(torch.stack([loss_sum.float(), correct.float(),
                                                  torch.tensor(float(seen), device=self.device)]))
        n = max(float(totals[2]), 1.0)
        return float(totals[0]) / n, float(totals[1]) / n, int(totals[2]), earlier

    def train_step(self, x: torch.Tensor, y: torch.Tensor, epoch: int = 0, step: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """One optimizer step; None when the step was skipped for a non-finite loss or gradient."""
        with autocast(self.device, self.amp_dtype):
            logits = self.forward(x)
            loss = self.loss_fn(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        if self.check_each_step and not torch.isfinite(loss):
            return self._skip(epoch, step, "loss")
        loss.backward()
        if self.cfg.train.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
            if self.check_each_step and not torch.isfinite(norm):
                self.optimizer.zero_grad(set_to_none=True)
                return self._skip(epoch, step, "gradient")
        self.optimizer.step()
        self.scheduler.step()
        return loss, logits

    def _skip(self, epoch: int, step: int, what: str) -> None:
        """Skip this step (the schedule still advances), or stop when no more skips are allowed."""
        self.state.skipped_steps += 1
        allowed = self.cfg.train.max_nonfinite_steps
        if self.state.skipped_steps > allowed:
            more = f" (more than train.max_nonfinite_steps={allowed} skipped)" if allowed else ""
            raise NonFiniteLoss(
                f"the training {what} became non-finite in epoch {epoch} at step {step + 1}{more}: lower the learning "
                f"rate (now {self.cfg.train.lr}), try --precision fp32, or skip such steps with --set "
                "train.max_nonfinite_steps=N; the last completed epoch is saved")
        log.warning("non-finite %s in epoch %d at step %d: step skipped (%d of at most %d)", what, epoch, step + 1,
                    self.state.skipped_steps, allowed)
        self.scheduler.step()
        return None

    def _check_finite(self, loss_sum: torch.Tensor, epoch: int, step: int) -> None:
        if not math.isfinite(float(loss_sum)):
            raise NonFiniteLoss(
                f"the training loss became non-finite in epoch {epoch} by step {step + 1}: lower the learning rate "
                f"(now {self.cfg.train.lr}), or try --precision fp32; the last completed epoch is saved")

    def _interrupted(self, where: str) -> Interrupted:
        name = signal.Signals(self.stop.signum).name
        return Interrupted(self.stop.signum, f"stopped by {name} {where}; saved in {self.run_dir}; continue with: "
                                             f"vitkit train --resume {self.run_dir}")

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

    def save_partial(self, epoch: int, step: int, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int,
                     seconds: float) -> None:
        """Save the state in the middle of `epoch`, `step` batches done, for an exact resume from there."""
        self.state.partial = {"epoch": epoch, "step": step, "loss_sum": loss_sum.detach().cpu(),
                              "correct": correct.detach().cpu(), "seen": seen, "seconds": seconds,
                              "rng_loader": self.train_loader.generator.get_state(), **rng_states()}
        if dist.is_main():
            save_state(self.run_dir / STATE_FILE, self.state_dict())


def rng_states() -> dict:
    return {"rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_states(state: dict) -> None:
    torch.set_rng_state(state["rng_cpu"])
    if state.get("rng_cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])


def write_metrics(path: Path, history: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write(path, buffer.getvalue())
