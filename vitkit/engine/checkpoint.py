"""Model files and training state.

A model file is safetensors with one JSON metadata entry that says everything inference needs (architecture, class
names, image size, channels, mean/std, vitkit version), so `evaluate`, `predict` and `vitkit.load` need nothing
else and never unpickle. Training state (optimizer, scheduler, RNG, epoch) is a torch file read with
`weights_only=True`. Both are written atomically.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..errors import NonFiniteLoss, UserError
from ..fileio import atomic_write
from ..models import VisionTransformer, create_timm, is_foreign, model_kwargs
from ..version import __version__

FORMAT = "vitkit-model/1"
MODEL_FILE = {"best": "best.safetensors", "last": "last.safetensors"}
EMA_FILE = "ema.safetensors"  # the weight average's latest weights (train.ema)
STATE_FILE = "state.pt"


def single_label_only(meta: dict, what: str, instead: str = "") -> None:
    """A one-line error where a command does not handle multi-label models (its check is top-1 or its probe a
    softmax); `instead`: what to do."""
    if meta.get("task") == "multi-label":
        raise UserError(f"{what} of multi-label models is not in this version" + (f": {instead}" if instead else ""))


def model_meta(name: str, kwargs: dict, classes: list[str], mean, std, **extra) -> dict:
    return {"format": FORMAT, "vitkit_version": __version__, "model": name, "model_kwargs": kwargs,
            "classes": list(classes), "img_size": kwargs["img_size"], "in_chans": kwargs["in_chans"],
            "mean": list(mean), "std": list(std), "preprocess": "resize-shorter-side-center-crop", **extra}


def save_model(paths: str | os.PathLike | list, model: torch.nn.Module, meta: dict) -> None:
    """Write the model to one path or to several (serialized once)."""
    model = getattr(model, "module", model)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for key, value in tensors.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise NonFiniteLoss(f"the weights became non-finite ({key}): lower the learning rate or try --precision "
                                "fp32; the previous checkpoint is kept")
    payload = st_save(tensors, metadata={"vitkit": json.dumps(meta)})
    for path in paths if isinstance(paths, list) else [paths]:
        atomic_write(path, payload)


def read_header(path: str | os.PathLike) -> dict:
    """The safetensors header: {tensor name: {"dtype", "shape", "data_offsets"}, "__metadata__": {...}}, read without
    the tensors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found: give the .safetensors file written by 'vitkit train' "
                        "(e.g. runs/NAME/best.safetensors)")
    try:
        with open(path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            if not 0 < header_len < 100_000_000:
                raise ValueError
            header = json.loads(f.read(header_len))
        if not isinstance(header, dict):
            raise ValueError
        return header
    except (ValueError, json.JSONDecodeError):
        raise UserError(f"{path} is not a vitkit model file (safetensors with vitkit metadata): "
                        "give a checkpoint written by 'vitkit train'") from None


def read_meta(path: str | os.PathLike) -> dict:
    try:
        meta = json.loads(read_header(path)["__metadata__"]["vitkit"])
    except (ValueError, KeyError, TypeError, json.JSONDecodeError):
        raise UserError(f"{path} is not a vitkit model file (safetensors with vitkit metadata): "
                        "give a checkpoint written by 'vitkit train'") from None
    if not isinstance(meta, dict) or not str(meta.get("format", "")).startswith("vitkit-model/"):
        raise UserError(f"{path} has unknown format {meta.get('format') if isinstance(meta, dict) else meta!r}: "
                        "upgrade vitkit")
    return meta


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[VisionTransformer, dict]:
    """Build the model a checkpoint describes and load its weights: (model in eval mode, metadata). The metadata is
    checked against the tensors the file holds before any memory is spent on the model it describes."""
    meta = read_meta(path)
    if not isinstance(meta.get("model"), str) or not isinstance(meta.get("model_kwargs"), dict):
        raise UserError(f"{path} is damaged: its metadata names no model; use another checkpoint")
    if is_foreign(meta["model"]):  # timm's model, rebuilt by timm
        model = create_timm(meta["model"], meta["model_kwargs"])
        _same_tensors(path, model.state_dict(), read_header(path))
    else:
        kwargs = model_kwargs(meta["model"], **meta["model_kwargs"])
        check_architecture(path, kwargs, read_header(path))
        model = VisionTransformer(**kwargs)
    try:
        state = st_load(Path(path).read_bytes())
    except SafetensorError as err:
        raise UserError(f"{path} is damaged ({err}): use another checkpoint, e.g. last.safetensors") from None
    model.load_state_dict(state)
    return model.to(device).eval(), meta


def check_architecture(path, kwargs: dict, header: dict) -> None:
    """The model `kwargs` describe has exactly the tensors (names and shapes) of the file's header. Its blocks are
    counted from the header first, and the model is then built on the meta device (no memory), so metadata that
    claims a larger model than the file holds is refused cheaply."""
    damaged = f"{path} is damaged: its metadata describes another model than its weights"
    tensors = {k: tuple(v.get("shape", ())) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}
    blocks = {k.split(".")[1] for k in tensors if k.startswith("blocks.")}
    if not isinstance(kwargs.get("depth"), int) or kwargs["depth"] != len(blocks):
        raise UserError(f"{damaged} ({kwargs.get('depth')} blocks described, {len(blocks)} stored)")
    try:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in VisionTransformer(**kwargs).state_dict().items()}
    except (TypeError, ValueError, RuntimeError) as err:
        raise UserError(f"{damaged} ({err})") from None
    _same_tensors(path, expected, header)


def _same_tensors(path, expected: dict, header: dict) -> None:
    """The tensors a model expects (name -> tensor or shape) are exactly the file's."""
    tensors = {k: tuple(v.get("shape", ())) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}
    expected = {k: tuple(getattr(v, "shape", v)) for k, v in expected.items()}
    if expected != tensors:
        wrong = sorted(set(expected) ^ set(tensors)) or [k for k in expected if expected[k] != tensors[k]]
        raise UserError(f"{path} is damaged: its metadata describes another model than its weights (first "
                        f"difference: {wrong[0]})")


def save_state(path: str | os.PathLike, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, buffer.getvalue())


def load_state(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found: the run has no completed epoch to resume from; start it again")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors come in many types; none of them may run code with weights_only
        raise UserError(f"{path} cannot be loaded safely ({type(err).__name__}): it was not written by vitkit "
                        "or is damaged") from None
