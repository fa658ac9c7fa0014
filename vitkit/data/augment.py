"""Batched augmentation: every random number for a batch is drawn first, then applied to whole tensors.

Drawing (`Augment.draw`) and applying (`Augment.apply`) are separate so that each image's augmentation depends only
on its position in the global batch: a process of a distributed run applies its share of the same draws, and one
process or several see identical images. The pipeline, per image:

1. one affine warp: random resized crop, horizontal flip, random translation and the policy's geometric ops
   (shear, translate, rotate) composed into a single matrix, sampled once (black outside the image);
2. the policy's colour ops (brightness, colour, contrast, sharpness, posterize, solarize, autocontrast, equalize),
   grouped by op so that each op is one tensor expression over the images that drew it;
3. normalization, then random erasing of one rectangle with Gaussian noise (as in the random-erasing paper).

Policies: TrivialAugment (one op per image, uniform strength, the "wide" ranges) and RandAugment (`n` ops per image at
magnitude `m` of 10, timm's ranges). The geometric ops of a policy act before its colour ops (they commute except at
the black fill).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color", "contrast",
       "sharpness", "posterize", "solarize", "autocontrast", "equalize")
GEOMETRIC = OPS[1:6]
SIGNED = set(OPS[1:10])
# The strength of each op at full magnitude (level 1): RandAugment as in timm, TrivialAugment's "wide" space.
MAX_LEVEL = {
    "randaugment": {"shear": 0.3, "translate": 0.45, "rotate": 30.0, "enhance": 0.9, "posterize": 4, "solarize": 256},
    "trivial": {"shear": 0.99, "translate": 0.5, "rotate": 135.0, "enhance": 0.99, "posterize": 6, "solarize": 256},
}
POLICIES = ("none", "trivial", "randaugment")


@dataclass
class Augment:
    """Random resized crop (area fraction in `scale`, aspect in `ratio`, stretched along one axis by up to
    `stretch` where the drawn aspect does not fit otherwise), flip, translation (fraction of the size), a policy
    ('none', 'trivial', 'randaugment' with `ops` ops at `magnitude` of 10) and random erasing (`erase`: probability,
    `erase_area`: area fraction range). `size`: the side of the images it returns (the model's input), when the
    images it is given are larger (`data.decode_scale`); None: the side they have."""

    scale: tuple[float, float] = (0.8, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    stretch: float = 1.0
    hflip: float = 0.5
    translate: float = 0.0
    policy: str = "none"
    ops: int = 2
    magnitude: float = 9.0
    erase: float = 0.0
    erase_area: tuple[float, float] = (0.02, 1 / 3)
    size: int | None = None

    # ------------------------------------------------------------------------------------------ draw
    def draw(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Every random number `apply` needs for `n` images, as tensors with `n` rows."""
        p = {"warp": torch.rand(n, 7, generator=generator)}  # area, ratio, cx, cy, flip, shift x, shift y
        rounds = 0 if self.policy == "none" else (1 if self.policy == "trivial" else self.ops)
        if rounds:
            p["op"] = torch.randint(len(OPS), (n, rounds), generator=generator)
            p["level"] = torch.rand(n, rounds, generator=generator)  # trivial: uniform strength
            p["sign"] = torch.where(torch.rand(n, rounds, generator=generator) < 0.5, -1.0, 1.0)
        if self.erase > 0:
            p["erase"] = torch.rand(n, 5, generator=generator)  # apply, area, ratio, top, left
            p["erase_seed"] = torch.randint(2 ** 62, (n,), generator=generator)
        return p

    # ------------------------------------------------------------------------------------------ views
    @property
    def whole_image(self) -> bool:
        """Whether every crop is the whole image, unstretched."""
        return self.scale == (1.0, 1.0) and self.stretch == 1

    @property
    def flip_only(self) -> bool:
        """Whether each image's warp is one of two views, as it is or mirrored: no crop, stretch, shift or policy.
        Random erasing may come on top (it changes only the images it draws)."""
        return self.whole_image and self.translate == 0 and self.policy == "none"

    def view_keys(self, p: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """For a flip-only augmentation: each image's view (1 mirrored, 0 not) and whether `apply` returns exactly
        that view (False where random erasing draws the image)."""
        mirrored = (p["warp"][:, 4] < self.hflip).long()
        exact = p["erase"][:, 0] >= self.erase if "erase" in p else torch.ones(len(mirrored), dtype=torch.bool)
        return mirrored, exact

    def view(self, images: torch.Tensor, mirrored: bool, normalize) -> torch.Tensor:
        """`images` as `apply` returns them for the view `mirrored` of a flip-only augmentation, unerased."""
        u = torch.full((len(images), 7), 0.5)
        u[:, 4] = 0.0 if mirrored else 1.0  # flip where u < hflip: never at 1.0, always at 0.0 when hflip > 0
        return self.apply(images, {"warp": u}, normalize)

    # ------------------------------------------------------------------------------------------ apply
    def apply(self, images: torch.Tensor, p: dict[str, torch.Tensor], normalize) -> torch.Tensor:
        """images: uint8 (B, C, H, W) with `p` drawn for them; returns float (B, C, H, W), normalized."""
        x = images.float()
        p = {k: v.to(x.device) for k, v in p.items()}
        x = self._warp(x, p)
        for r in range(p["op"].shape[1] if "op" in p else 0):
            x = self._colour(x, p["op"][:, r], self._level(p, r) * p["sign"][:, r])
        x = normalize(x)
        if "erase" in p:
            x = self._erase(x, p)
        return x

    def _warp(self, x: torch.Tensor, p: dict) -> torch.Tensor:
        B, _, H, W = x.shape
        u = p["warp"]
        area = self.scale[0] + (self.scale[1] - self.scale[0]) * u[:, 0]
        # The aspect is drawn from the part of `ratio` where a crop of this area fits in the image (aspect in
        # [area, 1 / area]), the support of torchvision's rejection sampling: at area 1 the crop is the whole image.
        # `stretch` s widens that to [area / s^2, s^2 / area]: a crop too long for the image is clamped to its side
        # and stretched along it by up to s (at area 1 and s^2 >= 4/3: a random one-axis stretch of up to 15%).
        lo = (torch.log(area) - 2 * math.log(self.stretch)).clamp(min=math.log(self.ratio[0]))
        hi = (2 * math.log(self.stretch) - torch.log(area)).clamp(max=math.log(self.ratio[1]))
        aspect = torch.exp(lo + (hi - lo) * u[:, 1])
        w = torch.sqrt(area * aspect).clamp(max=1.0)  # crop width as a fraction of the image
        h = torch.sqrt(area / aspect).clamp(max=1.0)
        flip = torch.where(u[:, 4] < self.hflip, -1.0, 1.0)
        crop = _affine(B, x.device)  # output [-1, 1] coordinates -> source coordinates, as 3x3 matrices
        crop[:, 0, 0], crop[:, 1, 1] = w * flip, h
        crop[:, 0, 2] = (1 - w) * (2 * u[:, 2] - 1)  # the crop lies inside the image
        crop[:, 1, 2] = (1 - h) * (2 * u[:, 3] - 1)
        moved = self.translate > 0 or "op" in p
        if self.translate > 0:
            crop[:, 0, 2] += 2 * self.translate * (2 * u[:, 5] - 1)
            crop[:, 1, 2] += 2 * self.translate * (2 * u[:, 6] - 1)
        for r in range(p["op"].shape[1] if "op" in p else 0):
            crop = crop @ self._geometry(p, r, H, W)
        out = [B, x.shape[1], self.size or H, self.size or W]
        if not moved and self.whole_image and self.hflip == 0:
            return x if out == list(x.shape) else F.interpolate(x, size=out[2:], mode="bilinear", antialias=True)
        grid = F.affine_grid(crop[:, :2], out, align_corners=False)  # (B, out H, out W, 2)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def _level(self, p: dict, r: int) -> torch.Tensor:
        """Round `r`'s strength per image in [0, 1]: drawn (TrivialAugment) or the fixed magnitude (RandAugment)."""
        if self.policy == "trivial":
            return p["level"][:, r]
        return torch.full_like(p["level"][:, r], self.magnitude / 10)

    def _geometry(self, p: dict, r: int, H: int, W: int) -> torch.Tensor:
        """The policy's shear/translate/rotate of round `r` as (B, 3, 3) matrices (identity for other ops)."""
        op = p["op"][:, r]
        top = MAX_LEVEL[self.policy]
        v = self._level(p, r) * p["sign"][:, r]
        m = _affine(len(op), op.device)
        is_op = {name: op == OPS.index(name) for name in GEOMETRIC}
        m[:, 0, 1] = torch.where(is_op["shear_x"], v * top["shear"] * H / W, m[:, 0, 1])
        m[:, 1, 0] = torch.where(is_op["shear_y"], v * top["shear"] * W / H, m[:, 1, 0])
        m[:, 0, 2] = torch.where(is_op["translate_x"], 2 * v * top["translate"], m[:, 0, 2])
        m[:, 1, 2] = torch.where(is_op["translate_y"], 2 * v * top["translate"], m[:, 1, 2])
        angle = torch.deg2rad(v * top["rotate"])
        cos, sin = torch.cos(angle), torch.sin(angle)
        rot = is_op["rotate"]
        m[:, 0, 0] = torch.where(rot, cos, m[:, 0, 0])
        m[:, 0, 1] = torch.where(rot, -sin * H / W, m[:, 0, 1])
        m[:, 1, 0] = torch.where(rot, sin * W / H, m[:, 1, 0])
        m[:, 1, 1] = torch.where(rot, cos, m[:, 1, 1])
        return m

    def _colour(self, x: torch.Tensor, op: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Each image's colour op (`op` indices, signed level `v` in [-1, 1]); geometric ops were done in the warp."""
        top = MAX_LEVEL[self.policy]
        out = x.clone()
        for k, name in enumerate(OPS):
            if name == "identity" or name in GEOMETRIC:
                continue
            rows = (op == k).nonzero().flatten()
            if len(rows):
                level = v[rows]
                out[rows] = COLOUR_OPS[name](x[rows], level, top).clamp(0, 255)
        return out

    def _erase(self, x: torch.Tensor, p: dict) -> torch.Tensor:
        """One rectangle of Gaussian noise per chosen image; the noise comes from each image's own seed."""
        _, C, H, W = x.shape
        u = p["erase"]
        lo, hi = self.erase_area
        area = (lo + (hi - lo) * u[:, 1]) * H * W
        aspect = torch.exp(math.log(0.3) + (math.log(1 / 0.3) - math.log(0.3)) * u[:, 2])
        h = torch.sqrt(area * aspect).round().long().clamp(1, H)
        w = torch.sqrt(area / aspect).round().long().clamp(1, W)
        top = (u[:, 3] * (H - h + 1)).long()
        left = (u[:, 4] * (W - w + 1)).long()
        for i in (u[:, 0] < self.erase).nonzero().flatten().tolist():
            g = torch.Generator().manual_seed(int(p["erase_seed"][i]))
            hi_, wi = int(h[i]), int(w[i])
            noise = torch.randn(C, hi_, wi, generator=g).to(x.device, x.dtype)
            x[i, :, int(top[i]):int(top[i]) + hi_, int(left[i]):int(left[i]) + wi] = noise
        return x


def _affine(n: int, device) -> torch.Tensor:
    return torch.eye(3, device=device).repeat(n, 1, 1)


def _per_image(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return degenerate + _per_image(factor) * (x - degenerate)


def _sharpness(x: torch.Tensor, v, top) -> torch.Tensor:
    C = x.shape[1]
    kernel = torch.ones(3, 3, device=x.device)
    kernel[1, 1] = 5.0
    kernel = (kernel / 13).expand(C, 1, 3, 3)
    smooth = x.clone()
    smooth[:, :, 1:-1, 1:-1] = F.conv2d(x, kernel, groups=C)  # the border keeps its pixels, as in PIL
    return _blend(smooth, x, 1 + v * top["enhance"])


def _posterize(x: torch.Tensor, v, top) -> torch.Tensor:
    bits = 8 - (v.abs() * top["posterize"]).round()
    step = _per_image(2.0 ** (8 - bits))
    return torch.floor(x.round() / step) * step


def _solarize(x: torch.Tensor, v, top) -> torch.Tensor:
    threshold = _per_image(top["solarize"] * (1 - v.abs()))
    return torch.where(x >= threshold, 255 - x, x)


def _autocontrast(x: torch.Tensor, v, top) -> torch.Tensor:
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    scale = torch.where(hi > lo, 255 / (hi - lo).clamp(min=1e-6), torch.ones_like(hi))
    return torch.where(hi > lo, (x - lo) * scale, x)


def _equalize(x: torch.Tensor, v, top) -> torch.Tensor:
    """Histogram equalization per image and channel, PIL's lookup table."""
    B, C, H, W = x.shape
    flat = x.round().clamp(0, 255).long().view(B * C, H * W)  # (BC, HW)
    hist = torch.zeros(B * C, 256, device=x.device).scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.float))
    last = hist.gather(1, (255 - (hist.flip(1) > 0).float().argmax(1, keepdim=True)))  # count of the top value
    step = torch.div(hist.sum(1, keepdim=True) - last, 255, rounding_mode="floor")
    cum = torch.cumsum(hist, 1)
    lut = torch.div(cum + torch.div(step, 2, rounding_mode="floor"), step.clamp(min=1), rounding_mode="floor")
    lut = torch.cat([torch.zeros_like(lut[:, :1]), lut[:, :-1]], 1).clamp(0, 255)
    out = lut.gather(1, flat).view(B, C, H, W)
    return torch.where(step.view(B, C, 1, 1) > 0, out, x)  # a one-valued channel stays as it is


COLOUR_OPS = {
    "brightness": lambda x, v, top: x * _per_image(1 + v * top["enhance"]),
    "color": lambda x, v, top: _blend(_gray(x), x, 1 + v * top["enhance"]),
    "contrast": lambda x, v, top: _blend(_gray(x).mean(dim=(1, 2, 3), keepdim=True), x, 1 + v * top["enhance"]),
    "sharpness": _sharpness,
    "posterize": _posterize,
    "solarize": _solarize,
    "autocontrast": _autocontrast,
    "equalize": _equalize,
}


@dataclass
class Mix:
    """MixUp and CutMix on a batch: with probability `prob`, CutMix (chance `switch`) or MixUp mixes each image with
    its partner (the batch reversed); targets mix the same way, label-smoothed first."""

    mixup: float = 0.0  # Beta(alpha, alpha) for MixUp's lambda; 0: no MixUp
    cutmix: float = 0.0  # Beta(alpha, alpha) for CutMix's box area; 0: no CutMix
    prob: float = 1.0
    switch: float = 0.5
    smoothing: float = 0.0

    def __bool__(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    def draw(self, generator: torch.Generator) -> dict:
        """One draw per (global) batch: whether to mix, which kind, lambda and the CutMix box corners."""
        u = torch.rand(6, generator=generator)
        use_cutmix = self.cutmix > 0 and (self.mixup == 0 or float(u[1]) < self.switch)
        alpha = self.cutmix if use_cutmix else self.mixup
        seed = int(torch.randint(2 ** 62, (1,), generator=generator))
        lam = _beta(alpha, seed) if alpha > 0 else 1.0
        return {"mix": float(u[0]) < self.prob, "cutmix": use_cutmix, "lam": lam, "cy": float(u[2]),
                "cx": float(u[3])}

    def apply(self, x: torch.Tensor, partner: torch.Tensor, y: torch.Tensor, y_partner: torch.Tensor,
              num_classes: int, d: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(mixed images, soft targets (B, num_classes): smoothed one-hots that sum to one, or mixed multi-hot rows)."""
        lam = d["lam"] if d["mix"] else 1.0
        if d["mix"] and d["cutmix"]:
            H, W = x.shape[-2:]
            cut_h, cut_w = int(H * math.sqrt(1 - lam)), int(W * math.sqrt(1 - lam))
            cy, cx = int(d["cy"] * H), int(d["cx"] * W)
            y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, H)
            x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, W)
            x = x.clone()
            x[:, :, y0:y1, x0:x1] = partner[:, :, y0:y1, x0:x1]
            lam = 1 - (y1 - y0) * (x1 - x0) / (H * W)  # the box was clipped: lambda follows the pixels
        elif d["mix"]:
            x = lam * x + (1 - lam) * partner
        def soft(labels):  # multi-hot rows (multi-label) mix as they are, class indices become smoothed one-hots
            if labels.ndim == 2:
                return labels.float()
            return F.one_hot(labels, num_classes).float() * (1 - self.smoothing) + self.smoothing / num_classes

        target = soft(y)
        if lam < 1.0:
            target = lam * target + (1 - lam) * soft(y_partner)
        return x, target


def _beta(alpha: float, seed: int) -> float:
    """A Beta(alpha, alpha) draw from its own seed (torch's Beta sampler takes no generator)."""
    return float(np.random.default_rng(seed).beta(alpha, alpha))
