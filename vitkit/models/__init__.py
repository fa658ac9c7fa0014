"""Our Vision Transformer and its named sizes."""
from .registry import create_model, get_spec, list_models, model_kwargs, model_size
from .vit import Attention, Block, DropPath, Mlp, PatchEmbed, VisionTransformer, count_flops, num_params

__all__ = ["Attention", "Block", "DropPath", "Mlp", "PatchEmbed", "VisionTransformer", "count_flops",
           "create_model", "get_spec", "list_models", "model_kwargs", "model_size", "num_params"]
