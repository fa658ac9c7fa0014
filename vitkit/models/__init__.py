"""Our Vision Transformer and its named sizes."""
from ..compat import require_torch

require_torch()

from .factory import create_model  # noqa: E402
from .registry import get_spec, list_models, model_kwargs, model_size  # noqa: E402
from .vit import Attention, Block, DropPath, Mlp, PatchEmbed, VisionTransformer, count_flops, num_params  # noqa: E402

__all__ = ["Attention", "Block", "DropPath", "Mlp", "PatchEmbed", "VisionTransformer", "count_flops",
           "create_model", "get_spec", "list_models", "model_kwargs", "model_size", "num_params"]
