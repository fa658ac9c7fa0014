"""Named model sizes: the paper's ViT-Ti/S/B/L (timm's names) and presets for small images."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field

import torch

from ..errors import UserError
from .vit import VisionTransformer, count_flops, num_params


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kwargs: dict = field(default_factory=dict)
    description: str = ""

    @property
    def family(self) -> str:
        """'vit' (the paper's sizes), 'deit', 'deit3', 'dinov2', 'dinov3', 'rope' (axial rotary positions), 'clip',
        'siglip', 'reg-gap' (registers and mean pooling) or 'small' (presets for small images)."""
        for family, test in (("deit3", self.name.startswith("deit3_")), ("deit", self.name.startswith("deit_")),
                             ("dinov2", self.name.endswith("_dinov2")), ("dinov3", self.name.endswith("_dinov3")),
                             ("rope", "_rope_" in self.name or self.name.startswith("eva02_")),
                             ("clip", "_clip" in self.name),
                             ("siglip", "_siglip" in self.name), ("reg-gap", "_gap_" in self.name),
                             ("vit", self.name.endswith("_224"))):
            if test:
                return family
        return "small"


FAMILIES = ("vit", "deit", "deit3", "dinov2", "dinov3", "rope", "clip", "siglip", "reg-gap", "small")


_REGISTRY: dict[str, ModelSpec] = {}

# The arguments a user may override on any registered model.
MODEL_ARGS = ("img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth", "num_heads", "mlp_ratio",
              "qkv_bias", "global_pool", "drop_rate", "pos_drop_rate", "attn_drop_rate", "drop_path_rate",
              "attn_impl", "norm_eps", "stem", "stem_depth", "class_token", "reg_tokens", "no_embed_class", "pre_norm",
              "init_values", "act_layer", "mlp_layer", "fc_norm", "dist_token", "dynamic_img_size", "abs_pos_embed", "rope",
              "rope_temperature", "rope_grid_indexing", "rope_ref_grid", "qkv_fused", "scale_mlp", "scale_attn_inner")


def register(name: str, description: str, **kwargs) -> None:
    _REGISTRY[name] = ModelSpec(name, kwargs, description)


_SIZES = {  # (embed_dim, depth, num_heads) from the ViT and DeiT papers, and timm's medium
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "medium": (512, 12, 8),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}
for _size in ("tiny", "small", "base", "large"):
    _dim, _depth, _heads = _SIZES[_size]
    for _patch in (16, 32):
        register(f"vit_{_size}_patch{_patch}_224", f"ViT-{_size[0].upper()}/{_patch}, 224 px, RGB",
                 img_size=224, patch_size=_patch, in_chans=3, num_classes=1000, embed_dim=_dim, depth=_depth,
                 num_heads=_heads)

# Small-image presets: 6 blocks of width 192 on a 7x7 or 8x8 patch grid (Fashion-MNIST/MNIST, CIFAR).
register("vit_mini_patch4_28", "dim 192, depth 6, 3 heads, 28 px grayscale (Fashion-MNIST, MNIST)",
         img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=192, depth=6, num_heads=3)
register("vit_mini_patch4_32", "dim 192, depth 6, 3 heads, 32 px RGB (CIFAR-10/100, small photos)",
         img_size=32, patch_size=4, in_chans=3, num_classes=10, embed_dim=192, depth=6, num_heads=3)
# The demo preset: patch 7 gives 16 tokens, a few minutes per run on a 2-core CPU.
register("vit_micro_patch7_28", "dim 128, depth 4, 4 heads, 28 px grayscale: the fast demo preset",
         img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=128, depth=4, num_heads=4, mlp_ratio=2.0)


# The newer families under timm's names and sizes (their weights load with --init timm:NAME.TAG): DeiT is the
# paper's ViT trained on ImageNet-1k alone, its distilled models with a distillation token and a second head;
# DeiT-III adds LayerScale and position embeddings for the patches only; DINOv2 (self-supervised) trains at 518 px on
# 14-px patches with LayerScale, its reg4 models with 4 registers, its giant with a SwiGLU MLP; CLIP's image towers
# put a LayerNorm before the blocks (LayerNorm epsilon 1e-5), OpenAI's with QuickGELU; SigLIP's have no class token
# and pool by attention (MAP) or by the mean (gap); timm's reg-gap models pool the mean, with registers.
for _size in ("tiny", "small", "base"):
    _dim, _depth, _heads = _SIZES[_size]
    _cut = _size[0].upper()
    register(f"deit_{_size}_patch16_224", f"DeiT-{_cut}/16 (the ViT, ImageNet-1k training recipe)",
             img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=_dim, depth=_depth,
             num_heads=_heads)
    register(f"deit_{_size}_distilled_patch16_224", f"DeiT-{_cut}/16 distilled: distillation token, two heads",
             img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=_dim, depth=_depth,
             num_heads=_heads, dist_token=True)
for _size in ("small", "base", "large"):
    _dim, _depth, _heads = _SIZES[_size]
    _cut = _size[0].upper()
    register(f"deit3_{_size}_patch16_224", f"DeiT-III {_cut}/16: LayerScale 1e-6, patch-only position embeddings",
             img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=_dim, depth=_depth,
             num_heads=_heads, init_values=1e-6, no_embed_class=True)
    register(f"vit_{_size}_patch14_dinov2", f"DINOv2 ViT-{_cut}/14 at 518 px, LayerScale 1e-5 (features: "
             "num_classes 0)", img_size=518, patch_size=14, in_chans=3, num_classes=0, embed_dim=_dim,
             depth=_depth, num_heads=_heads, init_values=1e-5)
    register(f"vit_{_size}_patch14_reg4_dinov2", f"DINOv2 ViT-{_cut}/14 with 4 registers, 518 px (features)",
             img_size=518, patch_size=14, in_chans=3, num_classes=0, embed_dim=_dim, depth=_depth,
             num_heads=_heads, init_values=1e-5, reg_tokens=4, no_embed_class=True)
for _reg in ("", "_reg4"):
    register(f"vit_giant_patch14{_reg}_dinov2", f"DINOv2 ViT-g/14{' with 4 registers' * bool(_reg)}, SwiGLU MLP, "
             "518 px (features)", img_size=518, patch_size=14, in_chans=3, num_classes=0, embed_dim=1536, depth=40,
             num_heads=24, init_values=1e-5, mlp_ratio=2.66667 * 2, mlp_layer="swiglu_packed", act_layer="silu",
             **({"reg_tokens": 4, "no_embed_class": True} if _reg else {}))
for _size in ("small", "base", "large"):  # DINOv3: rotary positions, no learned ones; timm's Eva under these names
    _dim, _depth, _heads = _SIZES[_size]
    register(f"vit_{_size}_patch16_dinov3", f"DINOv3 ViT-{_size[0].upper()}/16: rotary positions, 4 registers, "
             "LayerScale, any size (features)", img_size=256, patch_size=16, in_chans=3, num_classes=0,
             embed_dim=_dim, depth=_depth, num_heads=_heads, qkv_bias=False, init_values=1e-5, reg_tokens=4,
             abs_pos_embed=False, rope="dinov3", rope_temperature=100.0, dynamic_img_size=True, global_pool="avg",
             fc_norm=False, norm_eps=1e-5)
_DINOV3_PLUS = {"small_plus": (384, 12, 6), "huge_plus": (1280, 32, 20)}
for _size, (_dim, _depth, _heads) in _DINOV3_PLUS.items():  # the "plus" sizes with a SwiGLU MLP
    register(f"vit_{_size}_patch16_dinov3", f"DINOv3 ViT-{_size[0].upper()}+/16: rotary positions, 4 registers, "
             "LayerScale, SwiGLU MLP, any size (features)", img_size=256, patch_size=16, in_chans=3, num_classes=0,
             embed_dim=_dim, depth=_depth, num_heads=_heads, qkv_bias=False, init_values=1e-5, reg_tokens=4,
             abs_pos_embed=False, rope="dinov3", rope_temperature=100.0, dynamic_img_size=True, global_pool="avg",
             fc_norm=False, norm_eps=1e-5, mlp_layer="swiglu", act_layer="silu")
# Axial rotary positions by patch index (timm's Eva): RoPE-ViT's ImageNet models (Heo et al. 2024; "ape": with learned
# positions too) and timm's own register models, whose angles are rescaled to the 16x16 grid they were trained on.
for _size in ("small", "base", "large"):
    _dim, _depth, _heads = _SIZES[_size]
    for _ape in ("", "_ape"):
        register(f"vit_{_size}_patch16_rope{_ape}_224", f"RoPE-ViT-{_size[0].upper()}/16 (axial rotary positions"
                 f"{', and learned ones' * bool(_ape)}), LayerScale, 224 px", img_size=224, patch_size=16,
                 in_chans=3, num_classes=1000, embed_dim=_dim, depth=_depth, num_heads=_heads,
                 init_values=1e-5, abs_pos_embed=bool(_ape), no_embed_class=bool(_ape), rope="cat",
                 rope_temperature=100.0, rope_grid_indexing="xy")
_ROPE_REG = {"medium_patch16_rope_reg1": (512, 12, 8, 1, "qv"), "mediumd_patch16_rope_reg1": (512, 20, 8, 1, False),
             "betwixt_patch16_rope_reg4": (640, 12, 10, 4, "qv"), "base_patch16_rope_reg1": (768, 12, 12, 1, "qv")}
for _name, (_dim, _depth, _heads, _reg, _bias) in _ROPE_REG.items():
    register(f"vit_{_name}_gap_256", f"ViT width {_dim}, depth {_depth}: axial rotary positions, {_reg} register"
             f"{'s' * (_reg > 1)}, LayerScale, mean pooling, 256 px", img_size=256, patch_size=16, in_chans=3,
             num_classes=1000, embed_dim=_dim, depth=_depth, num_heads=_heads, qkv_bias=_bias, init_values=1e-5,
             class_token=False, reg_tokens=_reg, global_pool="avg", abs_pos_embed=False, rope="cat",
             rope_temperature=10000.0, rope_ref_grid=(16, 16))
for _size in ("tiny", "small"):  # EVA-02's small sizes: axial rotary positions on top of learned ones, SwiGLU
    _dim, _depth, _heads = _SIZES[_size]
    for _img in (224, 336):
        register(f"eva02_{_size}_patch14_{_img}", f"EVA-02-{_size[0].upper()}/14 at {_img} px: axial rotary and "
                 "learned positions, SwiGLU MLP, mean pooling", img_size=_img, patch_size=14, in_chans=3,
                 num_classes=1000, embed_dim=_dim, depth=_depth, num_heads=_heads, mlp_ratio=4 * 2 / 3 * 2,
                 mlp_layer="swiglu_packed", act_layer="silu", qkv_bias="qv", global_pool="avg", rope="cat",
                 rope_temperature=10000.0, rope_ref_grid=(16, 16))
for _size in ("base", "large"):  # and its larger sizes: three attention projections, a LayerNorm inside the MLP
    _dim, _depth, _heads = _SIZES[_size]
    for _img in (224, 448):
        register(f"eva02_{_size}_patch14_{_img}", f"EVA-02-{_size[0].upper()}/14 at {_img} px: axial rotary and "
                 "learned positions, SwiGLU MLP with a norm inside, mean pooling", img_size=_img, patch_size=14,
                 in_chans=3, num_classes=1000, embed_dim=_dim, depth=_depth, num_heads=_heads, mlp_ratio=4 * 2 / 3,
                 mlp_layer="swiglu", act_layer="silu", scale_mlp=True, qkv_fused=False, qkv_bias="qv",
                 global_pool="avg", rope="cat", rope_temperature=10000.0, rope_ref_grid=(16, 16))
_CLIP = {"base_patch16": (768, 12, 12, 16), "base_patch32": (768, 12, 12, 32), "large_patch14": (1024, 24, 16, 14)}
for _name, (_dim, _depth, _heads, _patch) in _CLIP.items():
    _cut = f"{_name[0].upper()}/{_patch}"
    for _quick, _act, _classes in (("", "gelu", 1000), ("_quickgelu", "quick_gelu", {768: 512, 1024: 768}[_dim])):
        register(f"vit_{_name}_clip{_quick}_224", f"CLIP ViT-{_cut} image tower, pre-norm"
                 f"{', QuickGELU (OpenAI)' * bool(_quick)}", img_size=224, patch_size=_patch, in_chans=3,
                 num_classes=_classes, embed_dim=_dim, depth=_depth, num_heads=_heads, pre_norm=True,
                 norm_eps=1e-5, act_layer=_act)
_SIGLIP = {"base_patch16": (768, 12, 12, 16, 4.0, 224), "so400m_patch14": (1152, 27, 16, 14, 3.7362, 224),
           "large_patch16": (1024, 24, 16, 16, 4.0, 256)}
for _name, (_dim, _depth, _heads, _patch, _ratio, _img) in _SIGLIP.items():
    for _gap, _pool in (("", "map"), ("_gap", "avg")):
        register(f"vit_{_name}_siglip{_gap}_{_img}", f"SigLIP {_name.split('_')[0]}/{_patch} image tower, "
                 f"{'attention (MAP)' if _pool == 'map' else 'mean'} pooling, {_img} px (features)",
                 img_size=_img, patch_size=_patch, in_chans=3, num_classes=0, embed_dim=_dim, depth=_depth,
                 num_heads=_heads, mlp_ratio=_ratio, class_token=False, global_pool=_pool,
                 **({"fc_norm": False} if _pool == "avg" else {}))
register("vit_medium_patch16_reg4_gap_256", "ViT-M/16 with 4 registers, LayerScale, mean pooling, 256 px",
         img_size=256, patch_size=16, in_chans=3, num_classes=1000, embed_dim=512, depth=12, num_heads=8,
         init_values=1e-5, class_token=False, no_embed_class=True, reg_tokens=4, global_pool="avg")


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UserError(f"unknown model {name!r}: {hint}run 'vitkit models' to list them")
    return _REGISTRY[name]


def model_kwargs(name: str, **overrides) -> dict:
    """The full constructor arguments of a registered model with `overrides` applied (None values are ignored)."""
    spec = get_spec(name)
    kwargs = dict(spec.kwargs)
    for key, value in overrides.items():
        if key not in MODEL_ARGS:
            close = difflib.get_close_matches(key, MODEL_ARGS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(f"unknown model option {key!r}{hint}; valid options: {', '.join(MODEL_ARGS)}")
        if value is not None:
            kwargs[key] = value
    return kwargs


def model_size(name: str, **overrides) -> tuple[int, int, int]:
    """(parameters, forward FLOPs per image, tokens) of a registered model, counted on a copy without weights (the
    meta device): instant even for the largest sizes, whose random initialization takes seconds."""
    with torch.device("meta"):
        model = VisionTransformer(**model_kwargs(name, **overrides))
    return num_params(model), count_flops(model), model.patch_embed.num_patches + model.num_prefix_tokens
