"""Where a ViT looks: attention rollout and the class token's last-layer attention, as maps over the patch grid.

Attention probabilities come from the model's explicit attention path (`attention_maps`), computed only when asked,
so training and inference keep the fused kernel.

Rollout (Abnar & Zuidema, 2020): average each layer's attention over heads, add the residual connection as the
identity, renormalize rows, multiply the layers together; the class token's row, over the patches, says how much
each patch flowed into the class token. A model without a class token (mean pooling) reads the mean of the patch
tokens' rows instead: how much each patch flowed into what is pooled.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def attention_rollout(maps: list[torch.Tensor], num_prefix_tokens: int = 1, residual: float = 0.5,
                      class_token: bool = True) -> torch.Tensor:
    """Layers' attention (B, heads, T, T) to rollout maps (B, grid, grid) of the class token's attention to the
    patches (without one: the patch tokens' mean attention).

    Not normalized: a model whose attention is the identity gives zeros (nothing flows between tokens).
    """
    result = None
    for attn in maps:
        a = attn.float().mean(dim=1)  # (B, T, T)
        eye = torch.eye(a.shape[-1], device=a.device).expand_as(a)
        a = residual * eye + (1 - residual) * a
        a = a / a.sum(dim=-1, keepdim=True)
        result = a if result is None else a @ result
    return _to_grid(_query_row(result, num_prefix_tokens, class_token))  # (B, N) to (B, g, g)


def cls_attention(maps: list[torch.Tensor], num_prefix_tokens: int = 1, class_token: bool = True) -> torch.Tensor:
    """The last layer's class-token attention to the patches, per head: (B, heads, grid, grid)."""
    return _to_grid(_query_row(maps[-1].float(), num_prefix_tokens, class_token))  # (B, heads, N) to (.., g, g)


def _query_row(attn: torch.Tensor, num_prefix_tokens: int, class_token: bool) -> torch.Tensor:
    """(..., T, T) to the attention (..., N) to the patches of the class token, or of the patch tokens on average."""
    rows = attn[..., :1, :] if class_token else attn[..., num_prefix_tokens:, :]
    return rows.mean(dim=-2)[..., num_prefix_tokens:]


def _to_grid(row: torch.Tensor) -> torch.Tensor:
    n = row.shape[-1]
    side = int(round(n ** 0.5))
    if side * side != n:
        raise ValueError(f"{n} patches do not form a square grid")
    return row.reshape(*row.shape[:-1], side, side)


@torch.inference_mode()
def explain(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits (B, K), rollout (B, g, g), last-layer CLS attention (B, heads, g, g)) for normalized images x."""
    model.eval()
    maps = model.attention_maps(x)
    prefix, cls = model.num_prefix_tokens, model.cls_token is not None
    return model(x).float(), attention_rollout(maps, prefix, class_token=cls), cls_attention(maps, prefix, cls)


def normalize_map(m: torch.Tensor) -> np.ndarray:
    """Scale a map to [0, 1] (a constant map becomes all zeros)."""
    m = m.float()
    lo, hi = float(m.min()), float(m.max())
    return ((m - lo) / (hi - lo)).numpy() if hi > lo else np.zeros(tuple(m.shape), np.float32)


def overlay(image: np.ndarray, heat: torch.Tensor, alpha: float = 0.5) -> Image.Image:
    """A uint8 (C, H, W) image with a heat map (g, g) upsampled over it in the 'inferno' colours."""
    from matplotlib import colormaps

    rgb = np.repeat(image, 3, axis=0) if image.shape[0] == 1 else image[:3]
    rgb = rgb.transpose(1, 2, 0).astype(np.float32) / 255.0
    h, w = rgb.shape[:2]
    up = F.interpolate(torch.as_tensor(normalize_map(heat))[None, None], size=(h, w), mode="bilinear",
                       align_corners=False)[0, 0].clamp(0, 1).numpy()
    colour = colormaps["inferno"](up)[..., :3]
    mixed = (1 - alpha) * rgb + alpha * colour
    return Image.fromarray((mixed * 255).round().clip(0, 255).astype(np.uint8))
