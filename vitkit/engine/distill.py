"""Knowledge distillation as in DeiT (Touvron et al., "Training data-efficient image transformers & distillation
through attention", ICML 2021): a teacher's outputs on the same augmented batch guide the student.

The loss is (1 - alpha) * (the label loss on the class head) + alpha * (the distillation loss), where the
distillation loss is

- hard: cross-entropy against the teacher's top class (DeiT's best, with alpha 0.5),
- soft: tau^2 * KL(teacher's softmax(z / tau) || student's softmax(z / tau)) per image (Hinton et al. 2015),

and reads the distillation head (`dist_token`, `head_dist`) where the student has one, else the class head. At
inference a distilled student averages its two heads (`VisionTransformer.heads`). Where the augmentation is flips
only, each training image has two views, and the teacher's logits for both are computed once before the first epoch
(`cache_teacher`); images that random erasing changed are still shown to the teacher live. The teacher is any vitkit
checkpoint, or a timm model (`timm:NAME[.TAG]`, or `timm:NAME` with `train.teacher_weights`); it sees the student's
batch renormalized to its own mean and std, resized to its input size where that is fixed, and with one channel
repeated to three (or three averaged to one) where the channels differ.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..optional import require
from .device import autocast

log = logging.getLogger(__name__)

KINDS = ("hard", "soft")
CACHE_LIMIT = 2 ** 30  # bytes of cached teacher logits at most (images x 2 views x classes x 4 bytes)


@dataclass
class Teacher:
    model: nn.Module  # in eval mode, on the training device
    source: str
    classes: list[str] | None  # None: only the number is known (timm)
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    in_chans: int
    img_size: int | None  # None: any size (a convnet)


def load_teacher(source: str, weights: str | None, device: torch.device) -> Teacher:
    """A vitkit checkpoint, or `timm:NAME[.TAG]` (timm's pretrained weights) or `timm:NAME` with `weights`."""
    if source.startswith("timm:"):
        return _timm_teacher(source[5:], weights, device)
    if weights:
        raise UserError("train.teacher_weights is for a timm: teacher; a vitkit checkpoint holds its own weights")
    if not Path(source).is_file():
        raise UserError(f"teacher {source} does not exist: give a vitkit checkpoint (best.safetensors of a run) or "
                        "timm:NAME[.TAG]")
    from .checkpoint import load_model

    model, meta = load_model(source, device)
    return Teacher(model.eval(), source, list(meta["classes"]), len(meta["classes"]), tuple(meta["mean"]),
                   tuple(meta["std"]), meta["in_chans"], meta["img_size"])


def _timm_teacher(name: str, weights: str | None, device: torch.device) -> Teacher:
    timm = require("timm", "interop")
    arch = name.split(".", 1)[0]
    if arch not in timm.list_models(arch):
        raise UserError(f"timm has no model {arch!r}: `python -c \"import timm; print(timm.list_models('*res*'))\"` "
                        "lists them")
    if weights:
        from ..models.pretrained import read_source  # a state dict in any layout --init reads

        state = read_source(weights).state
        head = next((v for k, v in state.items() if k.endswith(("fc.weight", "head.weight", "classifier.weight",
                                                                  "head.fc.weight"))), None)
        classes = head.shape[0] if head is not None else None
        model = timm.create_model(arch, pretrained=False, **({"num_classes": classes} if classes else {}))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise UserError(f"the teacher weights {weights} do not fit timm's {arch} (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]}): give the weights of that model")
    else:
        try:
            model = timm.create_model(name, pretrained=True)
        except Exception as err:  # offline, unknown tag: each its own exception type
            raise UserError(f"cannot load timm:{name} ({str(err).splitlines()[0] if str(err) else type(err).__name__}"
                            f"); offline, download its weights and pass them with --set train.teacher_weights=FILE "
                            f"and --teacher timm:{arch}") from None
    cfg = model.pretrained_cfg
    size = cfg.get("input_size", (3, 224, 224))
    return Teacher(model.to(device).eval(), f"timm:{name}", None, model.num_classes, tuple(cfg.get("mean", (0.5,) * 3)),
                   tuple(cfg.get("std", (0.5,) * 3)), int(size[0]),
                   int(size[-1]) if cfg.get("fixed_input_size") else None)


def check_teacher(teacher: Teacher, classes: list[str], img_size: int, channels: int) -> None:
    """One-line errors for a teacher that cannot guide this student; a log line for each adaptation."""
    if teacher.classes is not None and list(teacher.classes) != list(classes):
        raise UserError(f"the teacher {teacher.source} knows the classes {', '.join(teacher.classes)}; the data has "
                        f"{', '.join(classes)}: train the teacher on this data (same class folders)")
    if teacher.num_classes != len(classes):
        raise UserError(f"the teacher {teacher.source} has {teacher.num_classes} classes, the data {len(classes)}: "
                        "fine-tune the teacher on this data first, then pass its weights")
    if teacher.in_chans != channels:
        log.info("distillation: the student's %d-channel images go to the teacher as %d channels", channels,
                 teacher.in_chans)
    if teacher.img_size is not None and teacher.img_size != img_size:
        log.info("distillation: the student's %d px images are resized to the teacher's %d px", img_size,
                 teacher.img_size)


class Distiller:
    """The distillation loss of a batch, with the teacher's logits computed on the student's own input."""

    def __init__(self, teacher: Teacher, mean, std, kind: str = "hard", alpha: float = 0.5, tau: float = 1.0,
                 amp_dtype: torch.dtype | None = None):
        if kind not in KINDS:
            raise UserError(f"train.distill must be one of {', '.join(KINDS)}, not {kind!r}")
        self.teacher, self.kind, self.alpha, self.tau, self.amp_dtype = teacher, kind, alpha, tau, amp_dtype
        self.cache: torch.Tensor | None = None  # (images * 2, classes): logits of each training image's two views
        device = next(teacher.model.parameters()).device
        self.device = device
        self.student_stats = (torch.tensor(mean, device=device).view(1, -1, 1, 1),
                              torch.tensor(std, device=device).view(1, -1, 1, 1))
        self.teacher_stats = (torch.tensor(teacher.mean, device=device).view(1, -1, 1, 1),
                              torch.tensor(teacher.std, device=device).view(1, -1, 1, 1))

    def teacher_input(self, x: torch.Tensor) -> torch.Tensor:
        """The student's normalized batch as the teacher takes it: pixels, its channels, its size, its statistics."""
        x = x.float() * self.student_stats[1] + self.student_stats[0]  # back to [0, 1] pixels
        if x.shape[1] != self.teacher.in_chans:
            x = x.repeat(1, self.teacher.in_chans, 1, 1) if x.shape[1] == 1 else x.mean(dim=1, keepdim=True)
        size = self.teacher.img_size
        if size is not None and tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return (x - self.teacher_stats[0]) / self.teacher_stats[1]

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.amp_dtype):
            return self.teacher.model(self.teacher_input(x)).float()

    def batch_logits(self, x: torch.Tensor, views: torch.Tensor | None = None) -> torch.Tensor:
        """The teacher's logits for the batch `x`: from the cache where `views` names a cached view, else computed."""
        if self.cache is None or views is None:
            return self.teacher_logits(x)
        live = views < 0
        logits = self.cache[views.clamp(min=0)]
        if live.any():
            logits[live] = self.teacher_logits(x[live])
        return logits

    def loss(self, outputs, x: torch.Tensor, label_loss, views: torch.Tensor | None = None) -> torch.Tensor:
        """Summed over the batch's images, as the trainer's losses are. `outputs`: the class head's logits, or the
        class and distillation heads' (a student with a distillation token); `label_loss(logits)`: the usual loss;
        `views`: each image's cached view (`BatchLoader.keep_views`), -1 for those the teacher must see."""
        cls, dist = outputs if isinstance(outputs, tuple) else (outputs, outputs)
        teacher = self.batch_logits(x, views)
        return (1 - self.alpha) * label_loss(cls.float()) + self.alpha * distillation_loss(
            dist.float(), teacher, self.kind, self.tau)


def cache_teacher(distiller: Distiller, loader, epochs: int, batch_size: int) -> bool:
    """Compute the teacher's logits for both views of every training image now, when the augmentation is flips
    only (random erasing aside), the images are in memory and the run has more epochs than views. The loader then
    names each image's view in its batches. Returns whether it did; the log says why not."""
    augment = loader.augment
    views = (0, 1) if augment is not None and augment.hflip > 0 else (0,)
    reason = None
    if not hasattr(loader, "keep_views"):
        reason = "the images are streamed from shards"
    elif loader.mix is not None or (augment is not None and not augment.flip_only):
        reason = "crops, translation, a policy or mixing make every view new"
    elif len(loader.images) * 2 * distiller.teacher.num_classes * 4 > CACHE_LIMIT:
        reason = f"the logits of {len(loader.images)} images would take more than {CACHE_LIMIT >> 30} GiB"
    elif epochs < len(views):
        reason = f"{epochs} epoch(s) show each image less often than the cache would"
    if reason:
        log.info("the teacher sees every batch (%s)", reason)
        return False
    start, n = time.perf_counter(), len(loader.images)
    cache = torch.empty(n * 2, distiller.teacher.num_classes, device=distiller.device)
    for mirrored in views:
        for first in range(0, n, batch_size):
            images = loader.images[first:first + batch_size].to(distiller.device)
            x = augment.view(images, bool(mirrored), loader.normalize) if augment is not None else \
                loader.normalize(images)
            cache[torch.arange(first, first + len(images), device=distiller.device) * 2 + mirrored] = \
                distiller.teacher_logits(x)
    distiller.cache, loader.keep_views = cache, True
    log.info("teacher logits of %d images%s computed once in %.1f s (erased images are shown to the teacher live)",
             n, ", as they are and mirrored," if len(views) > 1 else "", time.perf_counter() - start)
    return True


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str, tau: float = 1.0) -> torch.Tensor:
    """Summed over the images: cross-entropy against the teacher's top class (hard), or tau^2 times the KL
    divergence of the student's tempered softmax from the teacher's (soft)."""
    if kind == "hard":
        return F.cross_entropy(student, teacher.argmax(dim=1), reduction="sum")
    return F.kl_div(F.log_softmax(student / tau, dim=1), F.log_softmax(teacher / tau, dim=1), reduction="sum",
                    log_target=True) * tau * tau


def merged_logits(outputs) -> torch.Tensor:
    """The logits the student predicts with: the mean of its two heads while it trains with both."""
    return (outputs[0] + outputs[1]) / 2 if isinstance(outputs, tuple) else outputs
