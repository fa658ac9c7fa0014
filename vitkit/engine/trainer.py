"""The trainer: epochs of batched steps with small hooks for validation, checkpointing and early stopping.

Every epoch draws its order, augmentation, dropout and drop-path randomness from a seed derived from (seed, epoch),
and the run directory is complete at every epoch boundary. A signal (Ctrl-C, SIGTERM) stops at the next step
boundary after saving where the epoch stood (step, partial sums, generator states), so a resumed run continues
exactly where the uninterrupted one would be, between epochs or inside one. Files and logs come from rank 0 only.
"""
from __future__ import annotations

import contextlib
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
from ..data import DataBundle
from ..data.loader import Batch
from ..errors import NonFiniteLoss, UserError
from ..fileio import atomic_write
from ..metrics import topk_accuracy
from ..models import VisionTransformer
from . import dist
from .checkpoint import EMA_FILE, MODEL_FILE, STATE_FILE, save_model, save_state
from .device import autocast
from .ema import ModelEma
from .evaluate import predict_logits
from ..errors import Interrupted
from .interrupt import StopRequest
from .master import Bf16Weights
from .optim import build_optimizer, build_scheduler
from .recipe import build_recipe, make_loader

log = logging.getLogger(__name__)

METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_top1", "val_top5", "val_top1_ema", "lr",
                  "seconds", "img_per_s"]


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
                 device: torch.device, amp_dtype: torch.dtype | None, show_progress: bool = True,
                 bf16_weights: bool = False):
        self.cfg, self.data, self.run_dir, self.meta = cfg, data, run_dir, meta
        self.device, self.amp_dtype = device, amp_dtype
        self.model = model.to(device)  # the weights that are optimized, evaluated and saved
        # bf16_weights: training passes run on a bf16 copy without autocast; the fp32 model stays the master copy.
        if bf16_weights:
            dist.broadcast_module(self.model)  # DDP below makes the copies agree; the masters must agree too
        self.work = Bf16Weights(self.model) if bf16_weights else None
        # Several processes: DDP averages the gradients; the loss below is scaled so that the average equals the
        # gradient of the global batch's mean loss, whatever the number of processes.
        train_net = self.work.module if self.work else self.model  # what the forward and backward passes run on
        self.ddp = dist.wrap(train_net, device)
        net = self.ddp or train_net
        self.forward = compiled(net) if cfg.train.compile else net  # training forward passes
        self.show_progress = show_progress and dist.is_main()
        t = cfg.train
        recipe = build_recipe(cfg, data)
        self.train_loader = make_loader(cfg, data, recipe, device)
        if t.batch_size < dist.world_size() * t.accum_steps:
            raise UserError(f"train.batch_size {t.batch_size} is the global batch: it must hold at least one image per "
                            f"process and pass ({dist.world_size()} x {t.accum_steps})")
        self.val = data.splits.get("val")
        self.optimizer = build_optimizer(self.model, t)
        self.scheduler = build_scheduler(self.optimizer, t, len(self.train_loader))
        weights = recipe.class_weights.to(device) if t.balance == "loss" else None
        self.loss_fn = torch.nn.CrossEntropyLoss(weight=weights, label_smoothing=t.label_smoothing, reduction="sum")
        self.soft_loss_fn = torch.nn.CrossEntropyLoss(weight=weights, reduction="sum")  # mixed targets
        self.ema = ModelEma(self.model, t.ema) if t.ema > 0 else None
        if not self.has_val and dist.is_main():
            log.info("no validation split: every epoch's %s weights become best.safetensors",
                     "averaged (EMA)" if self.ema is not None else "latest")
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
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), **rng_states(),
                **({"ema": self.ema.state_dict()} if self.ema else {})}

    def load_state_dict(self, state: dict) -> None:
        self.state = TrainState(state["epoch"], state["best_top1"], state["best_epoch"],
                                state["epochs_without_improvement"], list(state["history"]),
                                state.get("skipped_steps", 0), state.get("partial"))
        if "model" in state:
            self.model.load_state_dict(state["model"])
        if self.work is not None:
            self.work.sync()
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            if "ema" in state:
                self.ema.load_state_dict(state["ema"])
            else:
                log.warning("the saved run kept no weight average: train.ema starts from the current weights")
                self.ema = ModelEma(self.model, self.cfg.train.ema)
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
                if self.stopping() and epoch < epochs:
                    raise self._interrupted(f"after epoch {epoch}")
                if stop:
                    log.info("early stop: val top-1 has not improved for %d epochs", self.cfg.train.patience)
                    break
        return self.state

    def train_epoch(self, epoch: int) -> tuple[float, float, int, float]:
        """One pass over the training split, or the rest of an interrupted one: (loss, accuracy, images, seconds
        spent on this epoch before the interruption)."""
        seed = epoch_seed(self.cfg.train.seed, epoch)
        torch.manual_seed(seed + 7919 * dist.rank())  # dropout and drop path, different in each process
        self.train_loader.set_epoch_seed(seed)
        partial, self.state.partial = self.state.partial, None
        self.model.train()
        for m in self.model.modules():  # a frozen conv stem's BatchNorm keeps its running statistics too
            params = list(m.parameters(recurse=False))
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and params and not params[0].requires_grad:
                m.eval()
        if self.work is not None:
            self.work.follow_modes()
        if partial is not None and partial["epoch"] == epoch:
            first, seen, earlier = partial["step"], partial["seen"], partial["seconds"]
            loss_sum, correct = partial["loss_sum"].to(self.device), partial["correct"].to(self.device)
            if not dist.is_main():  # the saved sums are all processes' together: counted once, by rank 0
                seen, loss_sum, correct = 0, torch.zeros_like(loss_sum), torch.zeros_like(correct)
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
        for step, batch in enumerate(batches, start=first):
            result = self.train_step(batch, epoch, step)
            if result is not None:
                batch_loss, logits = result
                loss_sum += batch_loss
                correct += (logits.argmax(1) == batch.y).sum()
                seen += len(batch.y)
            if step % 20 == 0 or step == last:
                if not self.check_each_step:
                    self._check_finite(loss_sum, epoch, step)
                bar.set_postfix(loss=f"{float(loss_sum) / max(seen, 1):.4f}", acc=f"{float(correct) / max(seen, 1):.3f}",
                                img_s=f"{(seen - seen_before) / (time.perf_counter() - start):.0f}", refresh=False)
            bar.update()
            if self.stopping():
                bar.close()
                self.save_partial(epoch, step + 1, loss_sum, correct, seen, earlier + time.perf_counter() - start)
                raise self._interrupted(f"in epoch {epoch} after step {step + 1} of {last + 1}")
        bar.close()
        totals = dist.all_reduce_sum(torch.stack([loss_sum.float(), correct.float(),
                                                  torch.tensor(float(seen), device=self.device)]))
        n = max(float(totals[2]), 1.0)
        return float(totals[0]) / n, float(totals[1]) / n, int(totals[2]), earlier

    def train_step(self, batch: Batch, epoch: int = 0, step: int = 0) -> tuple[torch.Tensor, torch.Tensor] | None:
        """One optimizer step over `batch` in `train.accum_steps` passes: (summed loss of this process's images,
        their logits), or None when the step was skipped for a non-finite loss or gradient."""
        self.zero_grad()
        passes = self.cfg.train.accum_steps
        xs, ys = batch.x.chunk(passes), batch.y.chunk(passes)
        targets = batch.target.chunk(passes) if batch.target is not None else [None] * len(xs)
        scale = dist.world_size() / batch.size  # sum over the images / global batch size, times DDP's averaging
        total, all_logits = torch.zeros((), device=self.device), []
        for i, (x, y, target) in enumerate(zip(xs, ys, targets)):
            last = i == len(xs) - 1
            with self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext():
                if self.work is not None:  # the bf16 copy runs without autocast
                    x, casts = x.to(torch.bfloat16), contextlib.nullcontext()
                else:
                    casts = autocast(self.device, self.amp_dtype)
                with casts:
                    logits = self.forward(x)
                    loss = self.loss_fn(logits.float(), y) if target is None else self.soft_loss_fn(logits.float(),
                                                                                                     target)
                if self.check_each_step and self.ddp is None and not torch.isfinite(loss):
                    self.zero_grad()
                    return self._skip(epoch, step, "loss")
                (loss * scale).backward()
            total += loss.detach()
            all_logits.append(logits.detach())
        if self.work is not None:
            self.work.grads_to_master()
        # Under DDP every process holds the same averaged gradient, so they agree on skipping a step.
        clip = self.cfg.train.grad_clip if self.cfg.train.grad_clip > 0 else float("inf")
        if clip < float("inf") or self.ddp is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            if (self.check_each_step or self.ddp is not None) and not torch.isfinite(norm):
                self.zero_grad()
                return self._skip(epoch, step, "gradient")
        self.optimizer.step()
        self.scheduler.step()
        if self.work is not None:
            self.work.sync()
        if self.ema is not None:
            self.ema.update(self.model)
        return total, torch.cat(all_logits)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.work is not None:
            self.work.zero_grad()

    def stopping(self) -> bool:
        """Whether a signal asked to stop, in any process (they all stop at the same step)."""
        return dist.any_true(bool(self.stop), self.device)

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
        signum = self.stop.signum or signal.SIGTERM  # another process received it
        name = signal.Signals(signum).name
        return Interrupted(signum, f"stopped by {name} {where}; saved in {self.run_dir}; continue with: "
                                             f"vitkit train --resume {self.run_dir}")

    @property
    def has_val(self) -> bool:
        return self.val is not None and len(self.val) > 0

    def validate(self) -> dict:
        if not self.has_val:
            return {"val_loss": float("nan"), "val_top1": float("nan"), "val_top5": float("nan"),
                    "val_top1_ema": float("nan")}
        logits = self._val_logits(self.model)
        labels = self.val.labels
        row = {"val_loss": float(torch.nn.functional.cross_entropy(logits, labels)),
               "val_top1": topk_accuracy(logits, labels, 1), "val_top5": topk_accuracy(logits, labels, 5)}
        row["val_top1_ema"] = topk_accuracy(self._val_logits(self.ema.module), labels, 1) if self.ema else float("nan")
        return row

    def _val_logits(self, model: torch.nn.Module) -> torch.Tensor:
        return predict_logits(model, self.val.images, self.data.mean, self.data.std, self.device, self.amp_dtype,
                              self.cfg.train.eval_batch_size)

    # ------------------------------------------------------------------------------------------ hooks
    def end_epoch(self, row: dict) -> bool:
        """Record the epoch, save checkpoints, and say whether to stop early."""
        s = self.state
        s.epoch = row["epoch"]
        s.history.append(row)
        top1 = row["val_top1"]
        if self.ema is not None and row["val_top1_ema"] > top1:  # the better of the raw and averaged weights
            top1 = row["val_top1_ema"]
        if not self.has_val:
            improved = True  # nothing to compare on: the latest weights are the best we know
        else:
            improved = not math.isnan(top1) and top1 > s.best_top1
        if improved:
            s.best_top1, s.best_epoch, s.epochs_without_improvement = top1, s.epoch, 0
        else:
            s.epochs_without_improvement += 1
        if dist.is_main():
            self.save(improved, row)
            if self.has_val:
                ema = f" (EMA {row['val_top1_ema']:.4f})" if self.ema is not None else ""
                val = f"val loss {row['val_loss']:.4f} top-1 {row['val_top1']:.4f}{ema} top-5 {row['val_top5']:.4f}"
            else:
                val = "no validation split"
            log.info("epoch %d/%d  train loss %.4f acc %.4f | %s | %.1fs, %.0f img/s%s", row["epoch"],
                     self.cfg.train.epochs, row["train_loss"], row["train_acc"], val, row["seconds"],
                     row["img_per_s"], "  *best*" if improved and self.has_val else "")
        patience = self.cfg.train.patience
        return patience > 0 and s.epochs_without_improvement >= patience

    def save(self, improved: bool, row: dict) -> None:
        meta = {**self.meta, "epoch": row["epoch"], "val_top1": row["val_top1"], "weights": "raw"}
        # Without validation the average is preferred: at the end of a decaying schedule it is the steadier model.
        ema_better = self.ema is not None and (not self.has_val or row["val_top1_ema"] > row["val_top1"])
        save_model([self.run_dir / MODEL_FILE["last"]] + ([self.run_dir / MODEL_FILE["best"]] if improved and
                                                          not ema_better else []), self.model, meta)
        if self.ema is not None:
            ema_meta = {**meta, "val_top1": row["val_top1_ema"], "weights": "ema"}
            save_model([self.run_dir / EMA_FILE] + ([self.run_dir / MODEL_FILE["best"]] if improved and ema_better
                                                    else []), self.ema.module, ema_meta)
        save_state(self.run_dir / STATE_FILE, self.state_dict())  # the epoch counts as done once this exists
        write_metrics(self.run_dir / "metrics.csv", self.state.history)

    def save_partial(self, epoch: int, step: int, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int,
                     seconds: float) -> None:
        """Save the state in the middle of `epoch`, `step` batches done, for an exact resume from there (with any
        number of processes: the partial sums are those of all processes)."""
        totals = dist.all_reduce_sum(torch.stack([loss_sum.detach().float(), correct.float(),
                                                  torch.tensor(float(seen), device=self.device)])).cpu()
        self.state.partial = {"epoch": epoch, "step": step, "loss_sum": totals[0], "correct": totals[1],
                              "seen": int(totals[2]), "seconds": seconds,
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
