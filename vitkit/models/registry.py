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
        """'vit' (the paper's sizes), 'deit', 'deit3', 'dinov2', 'clip', or 'small' (presets for small images)."""
        for family, test in (("deit3", self.name.startswith("deit3_")), ("deit", self.name.startswith("deit_")),
                             ("dinov2", self.name.endswith("_dinov2")), ("clip", "_clip" in self.name),
                             ("vit", self.name.endswith("_224"))):
            if test:
                return family
        return "small"


FAMILIES = ("vit", "deit", "deit3", "dinov2", "clip", "small")


def pretrained_tag(name: str) -> str | None:
    """timm's default pretrained weights for a registered name (`--init timm:NAME.TAG`), or None (no weights, or
    timm is not installed): read from timm's own table, no download."""
    try:
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(name)
    except Exception:  # timm missing, or the name unknown to it
        return None
    hub = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    return f"timm:{hub.split('/', 1)[1]}" if hub and "/" in hub else None


_REGISTRY: dict[str, ModelSpec] = {}

# The arguments a user may override on any registered model.
MODEL_ARGS = ("img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth", "num_heads", "mlp_ratio",
              "qkv_bias", "global_pool", "drop_rate", "pos_drop_rate", "attn_drop_rate", "drop_path_rate",
              "attn_impl", "norm_eps", "stem", "stem_depth", "class_token", "reg_tokens", "no_embed_class", "pre_norm",
              "init_values", "act_layer")


def register(name: str, description: str, **kwargs) -> None:
    _REGISTRY[name] = ModelSpec(name, kwargs, description)


_SIZES = {  # (embed_dim, depth, num_heads) from the ViT and DeiT papers
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}
for _size, (_dim, _depth, _heads) in _SIZES.items():
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
# paper's ViT trained on ImageNet-1k alone; DeiT-III adds LayerScale and position embeddings for the patches only;
# DINOv2 (self-supervised) trains at 518 px on 14-px patches with LayerScale, its reg4 models with 4 registers;
# CLIP's image towers put a LayerNorm before the blocks (LayerNorm epsilon 1e-5), OpenAI's with QuickGELU.
for _size in ("tiny", "small", "base"):
    _dim, _depth, _heads = _SIZES[_size]
    register(f"deit_{_size}_patch16_224", f"DeiT-{_size[0].upper()}/16 (the ViT, ImageNet-1k training recipe)",
             img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=_dim, depth=_depth,
             num_heads=_heads)
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
for _quick, _act, _classes in (("", "gelu", 1000), ("_quickgelu", "quick_gelu", 512)):
    register(f"vit_base_patch16_clip{_quick}_224", f"CLIP ViT-B/16 image tower, pre-norm{', QuickGELU' * bool(_quick)}",
             img_size=224, patch_size=16, in_chans=3, num_classes=_classes, embed_dim=768, depth=12, num_heads=12,
             pre_norm=True, norm_eps=1e-5, act_layer=_act)


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


def create_model(name: str, init: str | None = None, init_strict: bool = True, **overrides) -> VisionTransformer:
    """Build a registered model by name, e.g. `create_model("vit_small_patch16_224", num_classes=10)`.

    `init` loads initial weights (timm:NAME[.TAG], a Hugging Face repo id or folder, a .safetensors/.pth/.bin/.npz
    file or a vitkit checkpoint), adapting head, position embeddings and patch size; see `vitkit.models.pretrained`.
    """
    model = VisionTransformer(**model_kwargs(name, **overrides))
    if init:
        from .pretrained import load_pretrained

        load_pretrained(model, init, strict=init_strict)
    return model


def model_size(name: str, **overrides) -> tuple[int, int, int]:
    """(parameters, forward FLOPs per image, tokens) of a registered model, counted on a copy without weights (the
    meta device): instant even for the largest sizes, whose random initialization takes seconds."""
    with torch.device("meta"):
        model = VisionTransformer(**model_kwargs(name, **overrides))
    return num_params(model), count_flops(model), model.patch_embed.num_patches + model.num_prefix_tokens
