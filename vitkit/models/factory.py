"""Build a registered model by name, with initial weights from any source `pretrained` reads.

Apart from the registry so that `pretrained` can consult the registry (which models fit a set of weights) without an
import cycle.
"""
from __future__ import annotations

from .pretrained import load_pretrained
from .registry import model_kwargs
from .vit import VisionTransformer


def create_model(name: str, init: str | None = None, init_strict: bool = True, **overrides) -> VisionTransformer:
    """Build a registered model by name, e.g. `create_model("vit_small_patch16_224", num_classes=10)`.

    `init` loads initial weights (timm:NAME[.TAG], a Hugging Face repo id or folder, a .safetensors/.pth/.bin/.npz
    file or a vitkit checkpoint), adapting head, position embeddings and patch size; see `vitkit.models.pretrained`.
    """
    model = VisionTransformer(**model_kwargs(name, **overrides))
    if init:
        load_pretrained(model, init, strict=init_strict)
    return model
