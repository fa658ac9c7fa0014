"""The layers the newer ViT families add to the paper's model, under timm's names; `vit.py` composes them.

Rotary position embeddings (DINOv3's, and the axial ones of EVA-02 and timm's `vit_*_rope_*`) and the rotation
they apply to queries and keys; the GELU variants of CLIP and SigLIP; gated SwiGLU MLPs (DINOv2's giant, DINOv3's
"plus" sizes, EVA-02); and LayerScale (CaiT, DeiT-III, DINOv2).
"""
from __future__ import annotations

from typing import Literal

import math

import torch
from torch import nn

from ..errors import UserError


# ------------------------------------------------------------------------------------------- rotary positions
class RotaryDinoV3(nn.Module):
    """2-D rotary position embedding as DINOv3 computes it (Simeoni et al. 2025; timm's `RotaryEmbeddingDinoV3`).

    Each patch's centre, as a fraction of the grid's height and width mapped to [-1, 1], gives angles
    2 pi * coordinate / period for head_dim / 4 periods temperature^(2i / (head_dim / 2)) per axis; queries and
    keys of the patches are rotated by them (the two halves of each head's vector as the pairs), so attention
    depends on the patches' relative positions. Returns (sin, cos), each (N, head_dim), and False (that layout).
    """

    def __init__(self, head_dim: int, temperature: float = 100.0):
        super().__init__()
        if head_dim % 4:
            raise UserError(f"rotary position embeddings need a head size divisible by 4, not {head_dim}: choose "
                            "embed_dim / num_heads accordingly")
        self.head_dim, self.temperature = head_dim, float(temperature)
        exponents = 2.0 * torch.arange(head_dim // 4, dtype=torch.float32) / (head_dim // 2)
        self.register_buffer("periods", self.temperature ** exponents, persistent=False)

    def forward(self, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, bool]:
        device = self.periods.device
        axes = [(torch.arange(0.5, side, dtype=torch.float32, device=device)) / side for side in grid]
        coords = 2.0 * torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 2) - 1.0  # (N, 2)
        angles = (2 * math.pi * coords[:, :, None] / self.periods.float()).flatten(1)  # (N, head_dim / 2)
        angles = torch.cat([angles, angles], dim=-1)  # (N, head_dim): the same angle for both halves
        return angles.sin(), angles.cos(), False


class RotaryAxial(nn.Module):
    """2-D rotary position embedding by patch index, as EVA-02, RoPE-ViT's axial variant (Heo et al. 2024) and timm's
    `vit_*_rope_*` models compute it (timm's `RotaryEmbeddingCat`).

    Each patch's row and column index (rescaled to `ref_grid` when one is given, so that a model fine-tuned at
    another size sees its pretraining angles) times head_dim / 4 frequencies temperature^(-i / (head_dim / 4)) per
    axis gives the angles; with `indexing="xy"` the column's angles come first. Neighbouring pairs (x[2i], x[2i+1])
    of each head's vector are rotated. Returns (sin, cos), each (N, head_dim), and True for that interleaved layout.
    """

    def __init__(self, head_dim: int, temperature: float = 10000.0, ref_grid: tuple[int, int] | None = None,
                 indexing: Literal["ij", "xy"] = "ij"):
        super().__init__()
        if head_dim % 4:
            raise UserError(f"rotary position embeddings need a head size divisible by 4, not {head_dim}: choose "
                            "embed_dim / num_heads accordingly")
        self.ref_grid, self.indexing = (tuple(ref_grid) if ref_grid else None), indexing
        bands = head_dim // 4
        exponents = torch.arange(bands, dtype=torch.float32) / bands
        self.register_buffer("frequencies", 1.0 / float(temperature) ** exponents, persistent=False)

    def forward(self, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, bool]:
        device = self.frequencies.device
        axes = [torch.arange(side, dtype=torch.float32, device=device) for side in grid]
        if self.ref_grid is not None:
            axes = [a / side * ref for a, side, ref in zip(axes, grid, self.ref_grid)]
        coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 2)  # (N, 2): row, column
        if self.indexing == "xy":
            coords = coords.flip(-1)
        angles = (coords[:, :, None] * self.frequencies.float()).flatten(1)  # (N, head_dim / 2)
        angles = angles.repeat_interleave(2, dim=-1)  # (N, head_dim): each angle for one neighbouring pair
        return angles.sin(), angles.cos(), True


def rotate(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    """Rotate each pair of the last dimension by the pair's angle: the pairs are (x[i], x[i + d/2]), or with
    `interleaved` (x[2i], x[2i+1])."""
    if interleaved:
        turned = torch.stack([-x[..., 1::2], x[..., ::2]], dim=-1).reshape(x.shape)
    else:
        first, second = x.chunk(2, dim=-1)
        turned = torch.cat([-second, first], dim=-1)
    return (x * cos + turned * sin).to(x.dtype)


# ------------------------------------------------------------------------------------------------ activations
class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation OpenAI's CLIP was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class GELUTanh(nn.GELU):
    """GELU with the tanh approximation, as SigLIP (big_vision) and transformers' `gelu_pytorch_tanh` compute it."""

    def __init__(self):
        super().__init__(approximate="tanh")


ACTIVATIONS = {"gelu": nn.GELU, "gelu_tanh": GELUTanh, "quick_gelu": QuickGELU, "silu": nn.SiLU}  # act_layer


# ----------------------------------------------------------------------------------------------- gated MLPs
class SwiGLUPacked(nn.Module):
    """Gated MLP (Shazeer 2020) with the value and gate in one matrix, as DINOv2's giant model and timm's
    `SwiGLUPacked` store them: fc1 gives 2h features, act(first half) * second half, then fc2 from h."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0, act_layer: str = "silu"):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = ACTIVATIONS[act_layer]()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features // 2, in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.fc1(x).chunk(2, dim=-1)
        return self.drop2(self.fc2(self.drop1(self.act(gate) * value)))


class SwiGLU(nn.Module):
    """Gated MLP with separate gate and value matrices (timm's `SwiGLU`: fc1_g, fc1_x), h hidden features; with
    `norm_eps`, a LayerNorm of the hidden features before fc2 (EVA-02's `scale_mlp`)."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0, act_layer: str = "silu",
                 norm_eps: float | None = None):
        super().__init__()
        self.fc1_g = nn.Linear(in_features, hidden_features)
        self.fc1_x = nn.Linear(in_features, hidden_features)
        self.act = ACTIVATIONS[act_layer]()
        self.drop1 = nn.Dropout(drop)
        self.norm = nn.LayerNorm(hidden_features, eps=norm_eps) if norm_eps is not None else nn.Identity()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1_g(x)) * self.fc1_x(x)))))


# ------------------------------------------------------------------------------------------------ LayerScale
class LayerScale(nn.Module):
    """A learned per-channel scale of a residual branch, starting small (CaiT, DeiT-III, DINOv2): deep models train
    stably because each block starts close to the identity."""

    def __init__(self, dim: int, init_values: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma
