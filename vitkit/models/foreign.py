"""Models that are not ours: `--model timm:NAME` trains timm's model of that name (a convnet teacher for
distillation, or a baseline) with the same trainer, data, recipes, checkpoints, reports and export.

A checkpoint of such a model records `model: timm:NAME` and the arguments it was built with (input size, channels,
classes, dropout), and is rebuilt from them with timm, which must then be installed. What only our ViT has does not
apply to it and says so in one line: attention maps, `--init` adaptation, frozen-feature training, layer-wise
learning-rate decay and the ViT's own options (`model.patch_size`, ...).
"""
from __future__ import annotations

import difflib

import torch
from torch import nn

from ..errors import UserError
from ..optional import require

PREFIX = "timm:"
# arguments most timm models take; a model that does not is built without them (a convnet has no img_size)
OPTIONAL = ("img_size", "drop_rate", "drop_path_rate")
VIT_ONLY = "attention maps, --init adaptation, --freeze backbone, layer decay and the ViT's model options"


def is_foreign(name: str) -> bool:
    """Whether a model name is timm's (`timm:NAME`) rather than one of our registry."""
    return isinstance(name, str) and name.startswith(PREFIX)


def timm_arch(name: str) -> str:
    """'timm:resnet18' -> 'resnet18', checked against timm's list; a pretrained tag is refused."""
    timm = require("timm", "interop")
    arch = name[len(PREFIX):]
    if "." in arch:
        raise UserError(f"--model {name} names pretrained weights; --model timm:NAME trains timm's architecture from "
                        f"scratch: use --model timm:{arch.split('.')[0]} (a pretrained timm model can be a --teacher)")
    if not arch or not timm.list_models(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        hint = f" (did you mean {', '.join('timm:' + c for c in close)}?)" if close else ""
        raise UserError(f"timm has no model {arch!r}{hint}: `python -c \"import timm; print(timm.list_models("
                        f"'*res*'))\"` lists them")
    return arch


def default_img_size(name: str) -> int:
    """The input size timm's default configuration of the model names (224 for most)."""
    timm = require("timm", "interop")
    try:
        size = timm.models.get_pretrained_cfg(timm_arch(name)).input_size[-1]
    except (AttributeError, RuntimeError, TypeError):
        size = None
    return int(size or 224)


def timm_kwargs(img_size: int, in_chans: int, num_classes: int, drop_rate: float = 0.0,
                drop_path_rate: float = 0.0) -> dict:
    """What a checkpoint of a timm model records to rebuild it."""
    return {"img_size": img_size, "in_chans": in_chans, "num_classes": num_classes, "drop_rate": drop_rate,
            "drop_path_rate": drop_path_rate}


def create_timm(name: str, kwargs: dict) -> nn.Module:
    """timm's model `timm:NAME` with random weights, built with the arguments of `kwargs` it takes."""
    timm = require("timm", "interop")
    arch = timm_arch(name)
    args = {k: v for k, v in kwargs.items() if k in ("in_chans", "num_classes", *OPTIONAL)}
    while True:
        try:
            model = timm.create_model(arch, pretrained=False, **args)
            break
        except TypeError as err:  # "... got an unexpected keyword argument 'img_size'"
            dropped = next((k for k in OPTIONAL if k in args and f"'{k}'" in str(err)), None)
            if dropped is None:
                raise UserError(f"timm cannot build {arch} ({err})") from None
            args.pop(dropped)
    model.vitkit_input_size = (kwargs["in_chans"], kwargs["img_size"], kwargs["img_size"])
    return model


def measured_flops(model: nn.Module) -> int:
    """Floating-point operations of one forward pass for one image, counted by PyTorch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    shape = getattr(model, "vitkit_input_size", None)
    if shape is None:
        return 0
    was_training = model.training
    model.eval()
    parameter = next(model.parameters())
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *shape, device=parameter.device, dtype=parameter.dtype))
    model.train(was_training)
    return int(counter.get_total_flops())


def model_flops(model: nn.Module) -> int:
    """`count_flops` for our ViT (as it computes), measured for a timm model."""
    from .vit import VisionTransformer, count_flops

    return count_flops(model) if isinstance(model, VisionTransformer) else measured_flops(model)


def has_attention_maps(model: nn.Module | None) -> bool:
    """Whether attention rollout can explain `model` (our ViT), as report, predict --explain and serve need."""
    return model is not None and hasattr(model, "attention_maps")
