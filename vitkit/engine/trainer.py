"""The trainer: epochs of batched steps with small hooks for validation, checkpointing and early stopping.

Every epoch draws its order, augmentation, dropout and drop-path randomness from a seed derived from (seed, epoch),
and the run directory is complete at every epoch boundary. A signal (Ctrl-C, SIGTERM) stops at the next step
boundary after saving where the epoch stood (step, partial sums, generator states), so a resumed run continues
exactly where the uninterrupted one would be, between epochs or inside one. Files and logs come from rank 0 only.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import signal
import time
from dataclasses import dataclass, field

import torch

from ..config import Config, threshold_sensitivity
from ..data import DataBundle
from ..data.loader import Batch
from ..data.splits import is_multi_label
from ..errors import Interrupted, NonFiniteLoss
from ..metrics import choose_thresholds, mean_average_precision, topk_accuracy
from ..tracking import Trackers
from . import dist
from .device import autocast
from .distill import merged_logits
from .ema import ModelEma
from .evaluate import predict_logits
from .interrupt import StopRequest
from .parts import MultiLabelLoss, TrainParts
from .progress import EpochProgress
from .run_writer import METRIC_COLUMNS, RunWriter, epoch_summary  # noqa: F401 (METRIC_COLUMNS: metrics.csv's)

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    epoch: int = 0  # completed epochs
    best_top1: float = float("-inf")
    best_epoch: int = 0
    epochs_without_improvement: int = 0
    history: list[dict] = field(default_factory=list)
    skipped_steps: int = 0  # steps skipped for a non-finite loss or gradient
    partial: dict | None = None  # where an interrupted epoch stopped (see `Trainer.save_partial`)


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


class Trainer:
    """The loop over `parts` (built by `parts.build_parts`); `writer` keeps the run directory."""

    def __init__(self, cfg: Config, data: DataBundle, parts: TrainParts, writer: RunWriter, device: torch.device,
                 amp_dtype: torch.dtype | None, show_progress: bool = True, trackers: Trackers | None = None):
        self.cfg, self.data, self.writer = cfg, data, writer
        self.trackers = trackers if trackers is not None else Trackers()  # TensorBoard, MLflow, W&B (rank 0)
        self.device, self.amp_dtype = device, amp_dtype
        self.model, self.work, self.ddp, self.forward = parts.model, parts.work, parts.ddp, parts.forward
        self.train_loader, self.val = parts.loader, parts.val
        self.optimizer, self.scheduler, self.ema = parts.optimizer, parts.scheduler, parts.ema
        self.loss_fn, self.soft_loss_fn = parts.loss_fn, parts.soft_loss_fn
        self.val_features = parts.val_features  # frozen-feature training: validation runs the heads on these
        self.distiller = parts.distiller
        self.feature_seconds = parts.feature_seconds
        self.show_progress = show_progress and dist.is_main()
        if not self.has_val and dist.is_main():
            log.info("no validation split: every epoch's %s weights become best.safetensors",
                     "averaged (EMA)" if self.ema is not None else "latest")
        self.state = TrainState()
        self.stop = StopRequest()
        # A CPU step is synchronous anyway, so its loss is checked at once; on a GPU every 20 steps, unless
        # skipping bad steps is allowed (which needs the answer before the update).
        self.check_each_step = device.type == "cpu" or cfg.train.max_nonfinite_steps > 0
        # Multi-label data: sigmoid per label, models chosen by validation mAP, per-label thresholds chosen on it
        self.multi_label = is_multi_label(data.splits["train"])
        self.score = "val_map" if self.multi_label else "val_top1"
        self.thresholds: dict[str, list[float]] = {}  # 'raw' / 'ema' -> the last validation's F1-optimal ones

    @property
    def run_dir(self):
        return self.writer.run_dir

    # ------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Everything a resume needs, the weights included, so that one atomic file is always consistent."""
        return {**dataclasses.asdict(self.state), "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), **rng_states(),
                **({"ema": self.ema.state_dict()} if self.ema else {})}

    def load_state_dict(self, state: dict) -> None:
        saved = {f.name: state[f.name] for f in dataclasses.fields(TrainState) if f.name in state}
        self.state = TrainState(**{**saved, "history": list(state["history"])})  # older states lack the last two
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
                val = self.validate() if self.validates(epoch) else self.no_validation()
                seconds = time.perf_counter() - start + earlier_seconds
                row = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, **val,
                       "lr": max(g["lr"] for g in self.optimizer.param_groups), "seconds": round(seconds, 2),
                       "img_per_s": round(images / seconds, 1)}
                stop = self.end_epoch(row)
                if self.stopping() and epoch < epochs:
                    raise self._interrupted(f"after epoch {epoch}")
                if stop:
                    log.info("early stop: val %s has not improved for %d epochs",
                             "mAP" if self.multi_label else "top-1", self.cfg.train.patience)
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
        progress = EpochProgress(epoch, self.cfg.train.epochs, len(self.train_loader), first, self.show_progress,
                                 dist.is_main(), self.cfg.output.progress_every)
        last = len(self.train_loader) - 1
        self.trackers.begin_epoch()
        for step, batch in enumerate(batches, start=first):
            result = self.train_step(batch, epoch, step)
            if result is not None:
                batch_loss, logits = result
                loss_sum += batch_loss
                correct += hits(logits, batch.y)
                seen += len(batch.y)
                if self.trackers:
                    self.trackers.step((epoch - 1) * (last + 1) + step + 1, batch_loss, len(batch.y),
                                       max(g["lr"] for g in self.optimizer.param_groups))
            if (step % 20 == 0 or step == last) and not self.check_each_step:
                self._check_finite(loss_sum, epoch, step)
            progress.step(step, seen - seen_before, lambda: (float(loss_sum) / max(seen, 1),
                                                             float(correct) / max(seen, 1)))
            if self.stopping():
                progress.close()
                self.save_partial(epoch, step + 1, loss_sum, correct, seen, earlier + time.perf_counter() - start)
                raise self._interrupted(f"in epoch {epoch} after step {step + 1} of {last + 1}")
        progress.close()
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
        views = batch.views.chunk(passes) if batch.views is not None else [None] * len(xs)
        scale = dist.world_size() / batch.size  # sum over the images / global batch size, times DDP's averaging
        total, all_logits = torch.zeros((), device=self.device), []
        for i, (x, y, target, view) in enumerate(zip(xs, ys, targets, views)):
            last = i == len(xs) - 1
            with self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext():
                if self.work is not None:  # the bf16 copy runs without autocast
                    x, casts = x.to(torch.bfloat16), contextlib.nullcontext()
                else:
                    casts = autocast(self.device, self.amp_dtype)
                with casts:
                    logits, loss = self._loss(x, y, target, view)
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

    def _loss(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, views: torch.Tensor | None = None):
        """(logits, summed loss) of one pass; with a teacher, the distillation loss mixed in (its logits read from
        its cache for the images whose `views` it holds)."""
        outputs = self.forward(x)

        def label_loss(logits):
            return self.loss_fn(logits.float(), y) if target is None else self.soft_loss_fn(logits.float(), target)

        if self.distiller is None:
            return outputs, label_loss(outputs)
        return merged_logits(outputs), self.distiller.loss(outputs, x, label_loss, views)

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

    def validates(self, epoch: int) -> bool:
        """Whether `epoch` ends with a validation pass: every `train.val_every`-th epoch, and the last one."""
        return self.has_val and (epoch % self.cfg.train.val_every == 0 or epoch == self.cfg.train.epochs)

    def no_validation(self) -> dict:
        """The validation columns of an epoch without a validation pass: NaN (empty in the report's curves)."""
        keys = ("val_loss", "val_map", "val_map_ema") if self.multi_label else \
            ("val_loss", "val_top1", "val_top5", "val_top1_ema")
        return dict.fromkeys(keys, float("nan"))

    def validate(self) -> dict:
        if not self.has_val:
            return self.no_validation()
        if self.multi_label:
            return self._validate_multi_label()
        logits = self._val_logits(self.model)
        labels = self.val.labels
        row = {"val_loss": float(torch.nn.functional.cross_entropy(logits, labels)),
               "val_top1": topk_accuracy(logits, labels, 1), "val_top5": topk_accuracy(logits, labels, 5)}
        row["val_top1_ema"] = topk_accuracy(self._val_logits(self.ema.module), labels, 1) if self.ema else float("nan")
        return row

    def _validate_multi_label(self) -> dict:
        """Validation loss and mAP of the weights (and of their average), and each label's threshold for each, F1-optimal
        or for `train.threshold_for`'s sensitivity (the best checkpoint keeps those of the weights it holds)."""
        labels = self.val.labels
        row = {"val_map_ema": float("nan")}
        sensitivity = threshold_sensitivity(self.cfg.train.threshold_for)
        for name, model in (("raw", self.model), ("ema", self.ema.module if self.ema else None)):
            if model is None:
                continue
            logits = self._val_logits(model)
            probs = torch.sigmoid(logits).numpy()
            row["val_map" if name == "raw" else "val_map_ema"] = mean_average_precision(probs, labels.numpy())
            if name == "raw":
                row["val_loss"] = float(MultiLabelLoss()(logits, labels)) / len(labels)
            self.thresholds[name] = choose_thresholds(probs, labels.numpy(), sensitivity)
        return row

    def _val_logits(self, model: torch.nn.Module) -> torch.Tensor:
        if self.val_features is not None:
            model.eval()
            with torch.inference_mode(), autocast(self.device, self.amp_dtype):
                return model.heads(self.val_features).float().cpu()
        return predict_logits(model, self.val.images, self.data.mean, self.data.std, self.device, self.amp_dtype,
                              self.cfg.train.eval_batch_size)

    # ------------------------------------------------------------------------------------------ hooks
    def end_epoch(self, row: dict) -> bool:
        """Record the epoch, save checkpoints, and say whether to stop early."""
        s = self.state
        s.epoch = row["epoch"]
        s.history.append(row)
        top1 = row[self.score]  # val top-1, or multi-label: val mAP
        if self.ema is not None and row[f"{self.score}_ema"] > top1:  # the better of the raw and averaged weights
            top1 = row[f"{self.score}_ema"]
        # Without validation there is nothing to compare on: the latest weights are the best we know. Between the
        # validations of `train.val_every` the best model stays, and patience (in epochs) is checked at the next one.
        validated = self.validates(s.epoch)
        improved = not self.has_val or (validated and not math.isnan(top1) and top1 > s.best_top1)
        if improved:
            s.best_top1, s.best_epoch, s.epochs_without_improvement = top1, s.epoch, 0
        else:
            s.epochs_without_improvement += 1
        self.writer.epoch(row, self.model, self.ema.module if self.ema else None, improved, self.has_val,
                          self.state_dict() if dist.is_main() else {}, s.history, self.score, self.thresholds)
        if dist.is_main():
            log.info(epoch_summary(row, self.cfg.train.epochs, self.has_val, self.ema is not None, improved,
                                   None if validated or not self.has_val else self._next_validation(s.epoch)))
        self.trackers.epoch(row, s.epoch * len(self.train_loader))
        patience = self.cfg.train.patience
        return validated and patience > 0 and s.epochs_without_improvement >= patience

    def _next_validation(self, epoch: int) -> int:
        every = self.cfg.train.val_every
        return min((epoch // every + 1) * every, self.cfg.train.epochs)

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
            self.writer.state(self.state_dict())


def hits(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Correct answers in a batch: images whose top class is the label, or multi-label: the share of each image's
    known labels that the sign of its logit gets right (1 - Hamming loss), summed over the images."""
    if y.ndim == 1:
        return (logits.argmax(1) == y).sum()
    known = ~torch.isnan(y)
    right = ((logits > 0) == (y > 0.5)) & known
    return (right.sum(1) / known.sum(1).clamp(min=1)).sum()


def rng_states() -> dict:
    return {"rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_states(state: dict) -> None:
    torch.set_rng_state(state["rng_cpu"])
    if state.get("rng_cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
