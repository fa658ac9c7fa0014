"""The Vision Transformer, top to bottom as in Dosovitskiy et al., "An Image is Worth 16x16 Words" (ICLR 2021).

An image is cut into patches by a strided convolution, a learnable class token is prepended, a learnable position
embedding is added, and pre-norm Transformer blocks (multi-head self-attention, then a GELU MLP, each with a
residual) mix the tokens. A final LayerNorm and a linear head on the class token (or the mean of the patch tokens)
give the logits. With the class token, `forward` runs the last block for that token's row alone: the other rows
would never reach the head.

Parameter names are those of timm's `VisionTransformer`, so state dicts load in both directions by a plain copy.
`stem="conv"` swaps the patchify conv for a small stack of 3x3 convs (Xiao et al. 2021), which timm's ViT lacks.

The newer families are options of the same model, under timm's names: LayerScale (CaiT, DeiT-III, DINOv2), register
tokens (Darcet et al. 2024), DeiT's distillation token and second head, a LayerNorm before the blocks (CLIP), gated
SwiGLU MLPs, mean or attention pooling instead of the class token (SigLIP's MAP head), any input size the patch
divides with the position embeddings interpolated on the fly (DINOv2), and rotary position embeddings in attention
instead of learned ones added to the tokens (DINOv3's, and the axial ones of EVA-02 and timm's `vit_*_rope_*`).
Their rotary embeddings, activations, gated MLPs and LayerScale live in `layers.py`; this file composes them.
"""
from __future__ import annotations

from typing import Literal

import math

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from ..errors import UserError
from .layers import ACTIVATIONS, LayerScale, RotaryAxial, RotaryDinoV3, SwiGLU, SwiGLUPacked, rotate

AttnImpl = Literal["auto", "sdpa", "math"]


# --------------------------------------------------------------------------------------------------- helpers
def _to_pair(x: int | tuple[int, int]) -> tuple[int, int]:
    return (x, x) if isinstance(x, int) else (int(x[0]), int(x[1]))


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch per sample, rescaling survivors to keep the expectation."""
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)  # (B, 1, 1)
    return x * mask / keep


def _check_size(x: torch.Tensor, img_size: tuple[int, int]) -> None:
    if tuple(x.shape[-2:]) != img_size:
        raise UserError(
            f"input images are {x.shape[-2]}x{x.shape[-1]} but the model expects {img_size[0]}x{img_size[1]}: "
            "resize the images (vitkit's loaders do this from the checkpoint's img_size)"
        )


def resample_pos_embed(pos: torch.Tensor, new_grid: tuple[int, int], num_prefix: int = 1,
                       old_grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Position embeddings (1, prefix + h*w, D) to another patch grid: 2D bicubic (antialiased, as timm), the
    prefix tokens' rows kept. `old_grid` defaults to a square grid."""
    prefix, grid = pos[:, :num_prefix], pos[:, num_prefix:]
    if old_grid is None:
        side = math.isqrt(grid.shape[1])
        if side * side != grid.shape[1]:
            raise UserError(f"position embeddings of {grid.shape[1]} patches are not a square grid: cannot resample")
        old_grid = (side, side)
    if tuple(old_grid) == tuple(new_grid):
        return pos
    grid = grid.reshape(1, old_grid[0], old_grid[1], -1).permute(0, 3, 1, 2)  # (1, D, h, w)
    grid = F.interpolate(grid.float(), size=tuple(new_grid), mode="bicubic", antialias=True, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], -1)  # (1, h'*w', D)
    return torch.cat([prefix, grid.to(pos.dtype)], dim=1)


class DropPath(nn.Module):
    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


# ----------------------------------------------------------------------------------------------- patch embed
class PatchEmbed(nn.Module):
    """Image to patch tokens: a conv with kernel = stride = patch size is a linear map of each flattened patch.
    `dynamic`: any image size the patch divides is taken, not only `img_size`."""

    def __init__(self, img_size: int | tuple[int, int], patch_size: int, in_chans: int, embed_dim: int,
                 bias: bool = True, dynamic: bool = False):
        super().__init__()
        self.dynamic = dynamic
        self.img_size = _to_pair(img_size)
        self.patch_size = _to_pair(patch_size)
        for side, patch in zip(self.img_size, self.patch_size):
            if side % patch:
                raise UserError(
                    f"image size {self.img_size[0]}x{self.img_size[1]} is not divisible by patch size "
                    f"{self.patch_size[0]}: choose an img_size that is a multiple of the patch size"
                )
        self.grid_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.dynamic:
            _check_size(x, self.img_size)
        elif x.shape[-2] % self.patch_size[0] or x.shape[-1] % self.patch_size[1]:
            raise UserError(f"input images are {x.shape[-2]}x{x.shape[-1]}, which {self.patch_size[0]}x"
                            f"{self.patch_size[1]} patches do not divide: resize them to a multiple of the patch size")
        x = self.proj(x)  # (B, D, H/p, W/p)
        return x.flatten(2).transpose(1, 2)  # (B, N, D)


class ConvStem(nn.Module):
    """Image to tokens through a few 3x3 convolutions, as in Xiao et al., "Early Convolutions Help Transformers
    See Better" (NeurIPS 2021): k stride-2 convs (BatchNorm, ReLU), widths doubling up to `embed_dim`, then a
    1x1 conv. With 2**k >= patch size the token grid is the patchify stem's; overlapping receptive fields give the
    tokens local features, which helps small models on small data. Not part of timm's ViT: `stem="patch"` is.

    `depth` 3x3 convs at each resolution, the first of them strided: depth 2 adds a stride-1 conv after each
    stride-2 one, a deeper local feature extractor for little compute when the token grid is small.
    """

    def __init__(self, img_size: int | tuple[int, int], patch_size: int, in_chans: int, embed_dim: int,
                 depth: int = 1):
        super().__init__()
        if int(depth) < 1:
            raise UserError(f"stem_depth must be a positive integer, not {depth}")
        self.img_size = _to_pair(img_size)
        self.patch_size = _to_pair(patch_size)
        self.dynamic = False  # the grid of strided convs is fixed by img_size
        k = max(1, (max(self.patch_size) - 1).bit_length())  # stride-2 convs: 2**k >= patch size
        self.grid_size = tuple(-(-side // 2 ** k) for side in self.img_size)  # each conv halves, rounding up
        if any(g * p != side for g, p, side in zip(self.grid_size, self.patch_size, self.img_size)):
            raise UserError(
                f"a conv stem cannot give {self.patch_size[0]}x{self.patch_size[1]} patches on "
                f"{self.img_size[0]}x{self.img_size[1]} images: use stem 'patch' or a patch size that is a power of "
                "two or that divides the image into a grid of ceil(side / 2**k)"
            )
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        widths = [in_chans] + [max(embed_dim // 2 ** (k - 1 - i), 8) for i in range(k)]
        layers = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            for i in range(depth):
                layers += [nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, stride=2 if i == 0 else 1, padding=1,
                                     bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        self.stem = nn.Sequential(*layers)
        self.proj = nn.Conv2d(widths[-1], embed_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_size(x, self.img_size)
        x = self.proj(self.stem(x))  # (B, D, grid_h, grid_w)
        return x.flatten(2).transpose(1, 2)  # (B, N, D)


# ------------------------------------------------------------------------------------------------- attention
class Attention(nn.Module):
    """Multi-head self-attention.

    `impl="sdpa"` uses PyTorch's fused `scaled_dot_product_attention`; `impl="math"` writes out
    softmax(QK^T / sqrt(d)) V, which is the path that can return the attention maps and which is faster for short
    sequences in bf16 on some CPUs. Both give the same result up to rounding.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool | str = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, impl: AttnImpl = "sdpa", qkv_fused: bool = True, inner_norm: bool = False,
                 norm_eps: float = 1e-6):
        super().__init__()
        if dim % num_heads:
            raise UserError(
                f"embed_dim {dim} is not divisible by num_heads {num_heads}: choose num_heads that divides embed_dim"
            )
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.impl = impl
        # qkv_bias "qv": biases for queries and values only, as timm's Eva and BEiT keep them (q_bias, v_bias; a
        # key bias would add the same amount to every key's score without rotary positions, and is held at zero)
        separate = qkv_bias == "qv" and qkv_fused
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias is True) if qkv_fused else None
        self.q_bias = nn.Parameter(torch.zeros(dim)) if separate else None
        self.register_buffer("k_bias", torch.zeros(dim) if separate else None, persistent=False)
        self.v_bias = nn.Parameter(torch.zeros(dim)) if separate else None
        # EVA-02's base and large: three projections (the key's without bias with "qv")
        self.q_proj = nn.Linear(dim, dim, bias=bool(qkv_bias)) if not qkv_fused else None
        self.k_proj = nn.Linear(dim, dim, bias=qkv_bias is True) if not qkv_fused else None
        self.v_proj = nn.Linear(dim, dim, bias=bool(qkv_bias)) if not qkv_fused else None
        self.attn_drop = nn.Dropout(attn_drop)
        self.norm = nn.LayerNorm(dim, eps=norm_eps) if inner_norm else nn.Identity()  # EVA-02 CLIP: before proj
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _use_sdpa(self, x: torch.Tensor) -> bool:
        if self.impl != "auto":
            return self.impl == "sdpa"
        # Measured on AMX CPUs: the fused kernel's backward dominates a bf16 training step for short sequences;
        # without a backward (inference) the fused kernel is as fast or faster (ViT-S/16, 197 tokens: 1.2x).
        return x.device.type != "cpu" or x.shape[1] > 256 or not torch.is_grad_enabled()

    def forward(self, x: torch.Tensor, return_attn: bool = False, num_queries: int | None = None,
                rope: tuple | None = None):
        """`num_queries`: only the first tokens attend (and are returned); all tokens still give keys and values.
        `rope`: (sin, cos, interleaved) of the patch tokens, the last ones, whose queries and keys are rotated."""
        B, N, C = x.shape
        if self.qkv is None:
            q, k, v = (p(x).reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)
                       for p in (self.q_proj, self.k_proj, self.v_proj))  # each (B, H, N, hd)
        else:
            qkv = self.qkv(x) if self.q_bias is None else \
                F.linear(x, self.qkv.weight, torch.cat([self.q_bias, self.k_bias, self.v_bias]))
            q, k, v = qkv.reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if rope is not None:
            p = N - rope[0].shape[0]  # the prefix tokens keep their vectors
            q = torch.cat([q[:, :, :p], rotate(q[:, :, p:], *rope)], dim=2)
            k = torch.cat([k[:, :, :p], rotate(k[:, :, p:], *rope)], dim=2)
        if num_queries is not None:
            q = q[:, :, :num_queries]  # (B, H, n, hd)
        attn = None
        if self._use_sdpa(x) and not return_attn:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, H, N, N), or (B, H, n, N)
            attn = attn.softmax(dim=-1)
            x = self.attn_drop(attn) @ v  # (B, H, N, hd)
        x = x.transpose(1, 2).reshape(B, q.shape[2], C)  # (B, N, C), or (B, n, C)
        x = self.proj_drop(self.proj(self.norm(x)))
        return (x, attn) if return_attn else x


# ------------------------------------------------------------------------------------------------------- MLP
class Mlp(nn.Module):
    """Position-wise feed-forward network: Linear, GELU, Linear."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0, act_layer: str = "gelu"):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = ACTIVATIONS[act_layer]()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


MLP_LAYERS = {"mlp": Mlp, "swiglu_packed": SwiGLUPacked, "swiglu": SwiGLU}


# ----------------------------------------------------------------------------------------------------- block
class Block(nn.Module):
    """Pre-norm Transformer encoder block: x + Attn(LN(x)), then x + MLP(LN(x)); with `init_values`, each branch
    is scaled by a LayerScale."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool | str = True,
                 proj_drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 attn_impl: AttnImpl = "sdpa", norm_eps: float = 1e-6, init_values: float | None = None,
                 act_layer: str = "gelu", mlp_layer: str = "mlp", qkv_fused: bool = True, scale_mlp: bool = False,
                 scale_attn_inner: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, proj_drop, attn_impl, qkv_fused, scale_attn_inner,
                              norm_eps)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MLP_LAYERS[mlp_layer](dim, int(dim * mlp_ratio), drop=proj_drop, act_layer=act_layer,
                                         **({"norm_eps": norm_eps} if scale_mlp else {}))
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor, return_attn: bool = False, rope: tuple | None = None):
        if return_attn:
            y, attn = self.attn(self.norm1(x), return_attn=True, rope=rope)
            x = x + self.drop_path1(self.ls1(y))
            return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x)))), attn
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), rope=rope)))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))

    def forward_prefix(self, x: torch.Tensor, n: int, rope: tuple | None = None) -> torch.Tensor:
        """`self(x)[:, :n]` for less work: every token gives keys and values, but only the first n attend and go
        through the MLP, which like the norms and residuals acts on each token's own row."""
        x = x[:, :n] + self.drop_path1(self.ls1(self.attn(self.norm1(x), num_queries=n, rope=rope)))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


# ------------------------------------------------------------------------------------------ attention pooling
class AttentionPoolLatent(nn.Module):
    """Multihead attention pooling (MAP, as in SigLIP and big_vision): one learned query (`latent`) attends over
    the patch tokens, then a pre-norm MLP with a residual refines the pooled vector. timm's parameter names."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, norm_eps: float = 1e-6,
                 act_layer: str = "gelu"):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.latent = nn.Parameter(torch.zeros(1, 1, dim))
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q = self.q(self.latent).reshape(1, self.num_heads, 1, self.head_dim).expand(B, -1, -1, -1)
        k, v = self.kv(x).reshape(B, N, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = self.proj(F.scaled_dot_product_attention(q, k, v).reshape(B, D))  # (B, D)
        return x + self.mlp(self.norm(x))


# ---------------------------------------------------------------------------------------- vision transformer
def _check_options(args: dict) -> None:
    """One-line errors for constructor arguments that cannot build a ViT."""
    choices = {"stem": ("patch", "conv"), "global_pool": ("token", "avg", "map"), "act_layer": tuple(ACTIVATIONS),
               "mlp_layer": tuple(MLP_LAYERS)}
    for name, allowed in choices.items():
        if args[name] not in allowed:
            raise UserError(f"{name} must be one of {', '.join(allowed)}, not {args[name]!r}")
    if args["global_pool"] == "token" and not args["class_token"]:
        raise UserError("global_pool 'token' needs the class token: use global_pool 'avg' or 'map' with class_token "
                        "false")
    if args["dist_token"] and (args["global_pool"] != "token" or not args["class_token"]):
        raise UserError("dist_token needs the class token and global_pool 'token': the two heads read those two tokens")
    if args["stem"] == "patch" and args["stem_depth"] != 1:
        raise UserError(f"stem_depth {args['stem_depth']} needs stem 'conv': the patchify stem is one conv")
    if args["rope"] not in (None, "dinov3", "cat"):
        raise UserError(f"rope must be 'dinov3', 'cat' or null, not {args['rope']!r}")
    if args["qkv_bias"] not in (True, False, "qv"):
        raise UserError(f"qkv_bias must be true, false or 'qv' (queries and values only), not {args['qkv_bias']!r}")
    if args["scale_mlp"] and args["mlp_layer"] != "swiglu":
        raise UserError("scale_mlp (a LayerNorm inside the MLP, EVA-02) needs mlp_layer 'swiglu'")
    if args["rope_grid_indexing"] not in ("ij", "xy"):
        raise UserError(f"rope_grid_indexing must be 'ij' or 'xy', not {args['rope_grid_indexing']!r}")
    if args["dynamic_img_size"] and args["stem"] != "patch":
        raise UserError("dynamic_img_size needs stem 'patch': a conv stem's grid is fixed by img_size")
    for name in ("num_classes", "embed_dim", "depth", "num_heads", "in_chans", "patch_size", "reg_tokens"):
        if int(args[name]) < (0 if name in ("num_classes", "reg_tokens") else 1):
            raise UserError(f"{name} must be a positive integer, not {args[name]}")


class VisionTransformer(nn.Module):
    """ViT classifier. `forward` = `forward_features` -> `pool` -> `forward_head`, so callers can stop early."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, num_classes: int = 1000,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 qkv_bias: bool | str = True, global_pool: Literal["token", "avg"] = "token", drop_rate: float = 0.0,
                 pos_drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 attn_impl: AttnImpl = "auto", norm_eps: float = 1e-6, stem: Literal["patch", "conv"] = "patch",
                 stem_depth: int = 1, class_token: bool = True, reg_tokens: int = 0, no_embed_class: bool = False,
                 pre_norm: bool = False, init_values: float | None = None, act_layer: str = "gelu",
                 mlp_layer: str = "mlp", fc_norm: bool | None = None, dist_token: bool = False,
                 dynamic_img_size: bool = False, abs_pos_embed: bool = True, rope: str | None = None,
                 rope_temperature: float = 100.0, rope_grid_indexing: Literal["ij", "xy"] = "ij",
                 rope_ref_grid: tuple[int, int] | None = None, qkv_fused: bool = True, scale_mlp: bool = False,
                 scale_attn_inner: bool = False):
        super().__init__()
        _check_options(locals())
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.embed_dim = embed_dim
        self.no_embed_class = no_embed_class
        # class token, distillation token, registers, then the patches
        self.num_prefix_tokens = int(class_token) + int(dist_token) + reg_tokens
        self.distilled_training = False  # with a distillation token, training returns both heads' logits
        self.grad_checkpointing = False  # recompute each block's activations in the backward pass (less memory)

        # Patches to tokens (a patch conv has no bias before a pre-norm, as in CLIP), prefix tokens, positions
        self.patch_embed = (PatchEmbed(img_size, patch_size, in_chans, embed_dim, not pre_norm, dynamic_img_size)
                            if stem == "patch" else ConvStem(img_size, patch_size, in_chans, embed_dim, stem_depth))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if dist_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, reg_tokens, embed_dim)) if reg_tokens else None
        positions = self.patch_embed.num_patches + (0 if no_embed_class else self.num_prefix_tokens)
        self.pos_embed = nn.Parameter(torch.zeros(1, positions, embed_dim)) if abs_pos_embed else None
        head_dim = embed_dim // num_heads
        self.rope = (RotaryDinoV3(head_dim, rope_temperature) if rope == "dinov3" else
                     RotaryAxial(head_dim, rope_temperature, rope_ref_grid, rope_grid_indexing) if rope == "cat" else None)
        self.pos_drop = nn.Dropout(pos_drop_rate)
        self.norm_pre = nn.LayerNorm(embed_dim, eps=norm_eps) if pre_norm else nn.Identity()
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()  # stochastic depth grows with depth
        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, rates[i], attn_impl, norm_eps,
                  init_values, act_layer, mlp_layer, qkv_fused, scale_mlp, scale_attn_inner)
            for i in range(depth)
        ])
        # timm's layout: the final norm sits before pooling for the class token and attention pooling, after it for
        # mean pooling (`fc_norm` chooses). norm_eps: 1e-6 as in timm and big_vision; transformers' ViT uses 1e-12.
        after_pool = global_pool == "avg" if fc_norm is None else fc_norm
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps) if not after_pool else nn.Identity()
        self.attn_pool = (AttentionPoolLatent(embed_dim, num_heads, mlp_ratio, norm_eps, act_layer)
                          if global_pool == "map" else None)
        self.fc_norm = nn.LayerNorm(embed_dim, eps=norm_eps) if after_pool else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        # DeiT: a second head on the distillation token learns from a teacher; at inference the two are averaged
        self.head_dist = (nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()) if dist_token else None
        self.init_weights()

    def init_weights(self) -> None:
        if self.patch_embed.proj.weight.is_meta:  # a copy without weights, for counting (`model_size`)
            return
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for token in (self.cls_token, self.reg_token):
            if token is not None:
                nn.init.normal_(token, std=1e-6)
        if self.dist_token is not None:
            nn.init.trunc_normal_(self.dist_token, std=0.02)
        if self.attn_pool is not None:
            nn.init.trunc_normal_(self.attn_pool.latent, std=self.embed_dim ** -0.5)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Keep only each block's input for the backward pass and recompute the rest there: the activations of one
        block in memory instead of all of them, for about one more forward pass of time (timm's name)."""
        self.grad_checkpointing = enable

    def _blocks(self, x: torch.Tensor, blocks: nn.Sequential, rope: tuple | None = None) -> torch.Tensor:
        checkpoint = self.grad_checkpointing and torch.is_grad_enabled()
        for block in blocks:  # checkpointed: the random draws (drop path, dropout) are replayed in the recomputation
            x = torch.utils.checkpoint.checkpoint(block, x, rope=rope, use_reentrant=False) if checkpoint else \
                block(x, rope=rope)
        return x

    def set_attn_impl(self, impl: AttnImpl) -> None:
        for block in self.blocks:
            block.attn.impl = impl

    @property
    def norm_eps(self) -> float:
        return self.blocks[0].norm1.eps if len(self.blocks) else 1e-6

    @property
    def act_layer(self) -> str:
        act = type(self.blocks[0].mlp.act) if len(self.blocks) else nn.GELU
        return next(name for name, cls in ACTIVATIONS.items() if cls is act)

    def set_act_layer(self, name: str) -> None:
        """Every MLP's activation (no parameters change), e.g. to match weights trained with another one."""
        if name not in ACTIVATIONS:
            raise UserError(f"act_layer must be one of {', '.join(ACTIVATIONS)}, not {name!r}")
        for m in self.modules():
            if isinstance(m, (Mlp, SwiGLUPacked, SwiGLU)):
                m.act = ACTIVATIONS[name]()

    def set_norm_eps(self, eps: float) -> None:
        """Every LayerNorm's epsilon (no parameters change), e.g. to match weights trained with another one."""
        for m in self.modules():
            if isinstance(m, nn.LayerNorm):
                m.eps = eps

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple | None]:
        """Images to the tokens the blocks take (B, P+N, D): the P prefix tokens (class token, distillation token,
        registers) before the N patch tokens, with position embeddings added to all (or, with `no_embed_class`, to
        the patches). An image of another size than `img_size` (with `dynamic_img_size`) gets the embeddings
        interpolated to its patch grid. With rotary positions instead, also their (sin, cos) for that grid."""
        grid = (x.shape[-2] // self.patch_embed.patch_size[0], x.shape[-1] // self.patch_embed.patch_size[1])
        x = self.patch_embed(x)  # (B, N, D)
        pos = self.pos_embed
        if pos is not None and self.patch_embed.dynamic and grid != self.patch_embed.grid_size:
            pos = resample_pos_embed(pos, grid, 0 if self.no_embed_class else self.num_prefix_tokens,
                                     self.patch_embed.grid_size)
        tokens = (self.cls_token, self.dist_token, self.reg_token)
        prefix = [t.expand(x.shape[0], -1, -1) for t in tokens if t is not None]
        if pos is None:
            x = torch.cat([*prefix, x], dim=1)
        elif self.no_embed_class:
            x = torch.cat([*prefix, x + pos], dim=1)
        else:
            x = torch.cat([*prefix, x], dim=1) + pos  # (B, P+N, D)
        return self.norm_pre(self.pos_drop(x)), self.rope(grid) if self.rope is not None else None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) to normalized tokens (B, P+N, D)."""
        x, rope = self._embed(x)
        return self.norm(self._blocks(x, self.blocks, rope))

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (B, P+N, D) to one vector per image (B, D): the class token, the mean of the patch tokens, or
        the patch tokens pooled by attention (MAP)."""
        if self.global_pool == "avg":
            return x[:, self.num_prefix_tokens:].mean(dim=1)
        if self.global_pool == "map":
            return self.attn_pool(x[:, self.num_prefix_tokens:])
        return x[:, 0]

    def head_features(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (B, P+N, D) to what the heads read: the pooled, normed vector (B, D), or with a distillation
        token the class and distillation tokens (B, 2, D). Frozen-feature training caches this."""
        if self.dist_token is not None:
            return x[:, :2]
        return self.fc_norm(self.pool(x))

    def heads(self, features: torch.Tensor):
        """`head_features` to logits. DeiT's two heads: training with `distilled_training` gives both logits (the
        second learns from the teacher); otherwise their mean."""
        features = self.head_drop(features)
        if self.dist_token is None:
            return self.head(features)
        x, x_dist = self.head(features[:, 0]), self.head_dist(features[:, 1])
        if self.distilled_training and self.training:
            return x, x_dist
        return (x + x_dist) / 2

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False):
        features = self.head_features(x)
        if pre_logits:
            features = self.head_drop(features)
            return features.mean(dim=1) if self.dist_token is not None else features
        return self.heads(features)

    def forward(self, x: torch.Tensor):
        if self.global_pool != "token":
            return self.forward_head(self.forward_features(x))
        # The head reads only the class (and distillation) token, and the last block's output for it is all the head
        # needs: the other rows are not computed (the same logits for ~12% fewer FLOPs at depth 6, ~6% at depth 12).
        read = 1 + int(self.dist_token is not None)
        x, rope = self._embed(x)
        x = self._blocks(x, self.blocks[:-1], rope)
        x = self.blocks[-1].forward_prefix(x, read, rope)  # (B, read, D): the tokens the heads read
        return self.forward_head(self.norm(x))

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every layer's attention probabilities, each (B, heads, P+N, P+N), through the explicit path."""
        x, rope = self._embed(x)
        maps = []
        for block in self.blocks:
            x, attn = block(x, return_attn=True, rope=rope)
            maps.append(attn)
        return maps


# ------------------------------------------------------------------------------------------ checkpoint mapping
def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: VisionTransformer) -> dict[str, torch.Tensor]:
    """Map a timm-layout state dict onto `model`: strip wrappers' prefixes and drop keys that hold no weights."""
    out = {}
    for key, value in state_dict.items():
        for prefix in ("module.", "_orig_mod.", "model."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        if key.endswith("attn.bias_k") or key.endswith("attn.bias_v"):
            continue
        out[key] = value
    return out


def count_flops(model: VisionTransformer, every_token: bool = False) -> int:
    """Floating-point operations (2 per multiply-add) of one forward pass for one image, matmuls and convs only.

    As `model(x)` computes them: with token pooling the last block runs only the class token's row. `every_token`:
    every token through every block, as `forward_features` (and timm's forward, and the published figures) do.
    """
    D = model.embed_dim
    N = model.patch_embed.num_patches
    T = N + model.num_prefix_tokens
    flops = 0
    if isinstance(model.patch_embed, ConvStem):
        h, w = model.patch_embed.img_size
        for conv in model.patch_embed.stem:
            if isinstance(conv, nn.Conv2d):
                h, w = -(-h // conv.stride[0]), -(-w // conv.stride[1])
                flops += 2 * h * w * conv.out_channels * conv.in_channels * 9
        flops += 2 * N * model.patch_embed.proj.in_channels * D  # the 1x1 projection
    else:
        ph, pw = model.patch_embed.patch_size
        flops += 2 * N * model.patch_embed.proj.in_channels * ph * pw * D  # patch embedding
    last = len(model.blocks) - 1
    shortcut = not every_token and model.global_pool == "token"
    read = 1 + int(model.dist_token is not None)
    for i, block in enumerate(model.blocks):
        Q = read if shortcut and i == last else T  # tokens that attend and go on (those the heads read)
        flops += 2 * T * D * 3 * D  # qkv: every token gives keys and values
        flops += 2 * 2 * Q * T * D  # QK^T and attn @ V
        flops += 2 * Q * D * D  # output projection
        flops += sum(2 * Q * m.in_features * m.out_features for m in block.mlp.modules() if isinstance(m, nn.Linear))
    if model.attn_pool is not None:  # one query over the N patch tokens, then its MLP
        pool = model.attn_pool
        flops += 2 * N * D * 2 * D + 2 * D * D * 2 + 2 * 2 * N * D
        flops += sum(2 * m.in_features * m.out_features for m in pool.mlp.modules() if isinstance(m, nn.Linear))
    for head in (model.head, model.head_dist):
        if isinstance(head, nn.Linear):
            flops += 2 * D * head.out_features
    return int(flops)


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
