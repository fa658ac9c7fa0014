"""Our Vision Transformer and its named sizes."""
from ..compat import require_torch

require_torch()

from .factory import create_model  # noqa: E402
from .foreign import create_timm, has_attention_maps, is_foreign, model_flops  # noqa: E402
from .registry import get_spec, list_models, model_kwargs, model_size  # noqa: E402
from .vit import Attention, Block, DropPath, Mlp, PatchEmbed, VisionTransformer, count_flops, num_params  # noqa: E402

__all__ = ["Attention", "Block", "DropPath", "Mlp", "PatchEmbed", "VisionTransformer", "count_flops",
           "create_model", "create_timm", "get_spec", "has_attention_maps", "is_foreign", "list_models",
           "model_flops", "model_kwargs", "model_size", "num_params"]
