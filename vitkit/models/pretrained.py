"""Initial weights from elsewhere: timm, Hugging Face transformers, Google's .npz files and vitkit checkpoints.

Every source is first read into timm's layout, which is ours (`read_source`; the conversions are in `layouts.py`),
then adapted to the model being built (`adapt`): a head for another number of classes is dropped (the model keeps
its new one), position embeddings are resampled to another patch grid (2D bicubic, class token kept), patch kernels
to another patch size (FlexiViT's pseudo-inverse resize, so a patch gives the same response), RGB kernels summed for
one channel. Each change is one log line. What is still missing after that, other than the head, is an error
unless `strict=False`.

    source                                   read as
    timm:vit_base_patch16_224[.TAG]          huggingface.co/timm/NAME.TAG, model.safetensors (cached by huggingface_hub)
    google/vit-base-patch16-224 (repo id)    a transformers ViTForImageClassification / ViTModel on the Hub
    DIR (config.json + weights)              a transformers checkpoint saved with save_pretrained
    FILE.safetensors / .pth / .bin / .pt     a timm- or transformers-layout state dict (torch files: weights_only)
    FILE.npz                                 Google's original ViT / big_vision layout (JAX arrays)
    FILE.safetensors with vitkit metadata    a vitkit checkpoint
"""
from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError
from .layouts import HF_ACTIVATIONS, from_jax, to_timm_layout
from .registry import get_spec, list_models
from .vit import VisionTransformer, resample_pos_embed  # noqa: F401  (resample_pos_embed: also this module's API)

log = logging.getLogger(__name__)


@dataclass
class Pretrained:
    """Weights in timm's layout, with what the source says about its inputs."""
    state: dict[str, torch.Tensor]
    source: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    classes: list[str] | None = None
    norm_eps: float | None = None  # LayerNorm epsilon the weights were trained with, where it is not timm's 1e-6
    act_layer: str | None = None  # the MLPs' activation the weights were trained with (transformers' configs say)


@dataclass
class InitResult:
    source: str
    notes: list[str] = field(default_factory=list)  # every adaptation, one line each
    missing: list[str] = field(default_factory=list)  # model parameters the source did not have (new)
    unexpected: list[str] = field(default_factory=list)  # source tensors the model has no place for (ignored)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    model_overrides: dict = field(default_factory=dict)  # constructor arguments changed to match the source

    def to_meta(self) -> dict:
        return {"source": self.source, "notes": self.notes, "missing": self.missing, "unexpected": self.unexpected}


# ----------------------------------------------------------------------------------------------- the sources
def read_source(source: str) -> Pretrained:
    """Any supported source to timm-layout tensors (see the module docstring)."""
    if source.startswith("timm:"):
        return _read_timm_hub(source[len("timm:"):])
    path = Path(source).expanduser()
    if path.is_dir():
        return _read_transformers_dir(path, source)
    if path.is_file():
        return _read_file(path, source)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", source) and not source.startswith((".", "/")):
        return _read_transformers_hub(source)
    raise UserError(f"--init {source}: no such file or folder; give a weights file (.safetensors, .pth, .bin, .npz), "
                    "a transformers folder, a Hugging Face repo id (owner/name) or timm:MODEL[.TAG]")


def _read_file(path: Path, source: str) -> Pretrained:
    suffix = path.suffix.lower()
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                return Pretrained(from_jax({k: npz[k] for k in npz.files}), source, (0.5,) * 3, (0.5,) * 3)
        except (OSError, ValueError) as err:
            raise UserError(f"{path} is not a readable .npz file ({err})") from None
    if suffix == ".safetensors":
        return _read_safetensors(path, source)
    if suffix in (".pth", ".pt", ".bin", ".ckpt"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # unpickling errors have many types; weights_only never runs code
            raise UserError(f"{path} cannot be read as tensors only ({type(err).__name__}); vitkit never unpickles "
                            "code: save the weights as a plain state dict or .safetensors") from None
        return Pretrained(to_timm_layout(_unwrap(obj, path)), source)
    raise UserError(f"--init {path}: unknown file type {suffix!r}; give .safetensors, .pth, .bin or .npz")


def _unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside a training checkpoint ({'state_dict': ...}, {'model': ...}) or the dict itself."""
    for key in ("state_dict", "model", "model_state_dict", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} holds no state dict of tensors")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _read_safetensors(path: Path, source: str) -> Pretrained:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = (f.metadata() or {}).get("vitkit")
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as err:
        raise UserError(f"{path} is not a readable .safetensors file ({err})") from None
    if meta:  # a vitkit checkpoint: it knows its normalization and classes
        info = json.loads(meta)
        return Pretrained(state, source, tuple(info["mean"]), tuple(info["std"]), info.get("classes"))
    return Pretrained(to_timm_layout(state), source)


def _hub_download(repo: str, filename: str, how: str) -> Path:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise UserError("downloading weights needs huggingface_hub: pip install huggingface_hub") from None
    try:
        return Path(hf_hub_download(repo_id=repo, filename=filename))
    except Exception as err:  # offline, unknown repo, missing file, gated: each its own exception type
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot get {filename} of huggingface.co/{repo} ({reason}); offline, download it "
                        f"elsewhere and {how}") from None


def _read_timm_hub(name: str) -> Pretrained:
    if "." not in name:
        default = default_timm_weights(name)
        if default is None:
            raise UserError(f"timm:{name} needs a pretrained tag, e.g. timm:{name}.augreg_in21k_ft_in1k "
                            "(the tags are listed on https://huggingface.co/timm)")
        name = default
    _check_timm_tag(name)
    repo = f"timm/{name}"
    how = f"pass --init path/to/model.safetensors (from https://huggingface.co/{repo})"
    weights = _hub_download(repo, "model.safetensors", how)
    pretrained = _read_safetensors(weights, f"timm:{name}")
    try:
        cfg = json.loads(_hub_download(repo, "config.json", how).read_text()).get("pretrained_cfg", {})
        pretrained.mean, pretrained.std = tuple(cfg["mean"]), tuple(cfg["std"])
    except (UserError, KeyError, ValueError):
        log.warning("no normalization found for %s: the data's own mean and std are used", repo)
    return pretrained


def default_timm_weights(name: str) -> str | None:
    """timm's default pretrained weights for a model name, as NAME.TAG (`--init timm:NAME.TAG`), or None (no
    weights, or timm is not installed): read from timm's own table, no download."""
    try:
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(name)
    except Exception:  # timm missing, or the name unknown to it
        return None
    hub = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    return hub.split("/", 1)[1] if hub and "/" in hub else None


def _check_timm_tag(name: str) -> None:
    """A tag that timm does not know for a model it knows is a one-line error that lists the known tags (where
    timm is installed; without it the Hub's answer is the check)."""
    try:
        import timm

        known = timm.list_pretrained(name.split(".", 1)[0] + ".*")
    except Exception:  # timm missing
        return
    if known and name not in known:
        tags = ", ".join(k.split(".", 1)[1] for k in known)
        raise UserError(f"timm has no weights {name!r}: the tags of {name.split('.', 1)[0]} are {tags}")


def _read_transformers_dir(path: Path, source: str) -> Pretrained:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            weights = _read_file(path / name, source)
            break
    else:
        raise UserError(f"{path} holds neither model.safetensors nor pytorch_model.bin: give a folder written by "
                        "transformers' save_pretrained")
    return _with_hf_preprocessing(weights, path / "preprocessor_config.json", path / "config.json")


def _read_transformers_hub(repo: str) -> Pretrained:
    how = (f"pass --init with a folder holding config.json and model.safetensors from https://huggingface.co/{repo} "
           f"(if {repo} was meant as a local folder: it does not exist)")
    config = _hub_download(repo, "config.json", how)
    weights = _read_file(_hub_download(repo, "model.safetensors", how), repo)
    try:
        processor = _hub_download(repo, "preprocessor_config.json", how)
    except UserError:
        processor = config.parent / "missing"
    return _with_hf_preprocessing(weights, processor, config)


def _with_hf_preprocessing(weights: Pretrained, processor: Path, config: Path) -> Pretrained:
    if processor.is_file():
        info = json.loads(processor.read_text())
        if "image_mean" in info and "image_std" in info:
            weights.mean, weights.std = tuple(info["image_mean"]), tuple(info["image_std"])
    if config.is_file():
        info = json.loads(config.read_text())
        weights.norm_eps = info.get("layer_norm_eps") or info.get("vision_config", {}).get("layer_norm_eps")
        act = info.get("hidden_act") or info.get("vision_config", {}).get("hidden_act")
        weights.act_layer = HF_ACTIVATIONS.get(act)
        labels = info.get("id2label")
        if labels:
            weights.classes = [labels[k] for k in sorted(labels, key=int)]
    return weights


# ------------------------------------------------------------------------------------------------ adaptation
def resample_patch_kernel(weight: torch.Tensor, new_size: tuple[int, int]) -> torch.Tensor:
    """Patch-embedding kernels (D, C, p, p) to another patch size with FlexiViT's pseudo-inverse resize.

    With R the (bicubic) resize of a patch, the new kernel w' solves <R x, w'> = <x, w> for every patch x:
    w' = pinv(R^T) w. A patch resized with the image then gives the same embedding as before.
    """
    old = tuple(weight.shape[-2:])
    if old == tuple(new_size):
        return weight
    basis = torch.eye(old[0] * old[1]).reshape(-1, 1, *old)  # every one-pixel patch
    resize = F.interpolate(basis, size=tuple(new_size), mode="bicubic", antialias=True, align_corners=False)
    matrix = resize.reshape(old[0] * old[1], -1).T  # (new pixels, old pixels): R x = matrix @ x
    inverse = torch.linalg.pinv(matrix.T)  # (new pixels, old pixels)
    flat = weight.float().reshape(-1, old[0] * old[1])  # (D*C, old pixels)
    return (flat @ inverse.T).reshape(*weight.shape[:2], *new_size).to(weight.dtype)


def adapt(state: dict[str, torch.Tensor], model, other_classes: bool = False
          ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Make timm-layout tensors fit `model` where a documented change can: (state, one note per change).

    `other_classes`: the source names its classes and they are not the model's, so its head is dropped even when
    the number of classes is the same.
    """
    state, notes, target = dict(state), [], model.state_dict()
    if other_classes and "head.weight" in state:
        state.pop("head.weight")
        state.pop("head.bias", None)
        notes.append("head replaced: the source was trained on other classes (new head, random initial weights)")
    head = state.get("head.weight")
    if head is not None and ("head.weight" not in target or head.shape != target["head.weight"].shape):
        old = state.pop("head.weight").shape[0]
        state.pop("head.bias", None)
        new = target["head.weight"].shape[0] if "head.weight" in target else 0
        notes.append(f"head replaced: {old} classes in the source, {new} here (new head, random initial weights)")
    if "head.weight" not in state:  # the distillation head goes with the class head
        state.pop("head_dist.weight", None)
        state.pop("head_dist.bias", None)
    source_conv_stem = any(k.startswith("patch_embed.stem.") for k in state)
    target_conv_stem = any(k.startswith("patch_embed.stem.") for k in target)
    if "patch_embed.proj.weight" in state and source_conv_stem != target_conv_stem:
        for key in [k for k in state if k.startswith("patch_embed.")]:
            state.pop(key)
        kinds = ("a conv stem", "a patchify stem") if source_conv_stem else ("a patchify stem", "a conv stem")
        notes.append(f"patch embedding not loaded: the source has {kinds[0]}, this model {kinds[1]} (random initial "
                     "weights)")
    first = "patch_embed.stem.0.weight" if target_conv_stem else "patch_embed.proj.weight"  # sees the pixels
    w = state.get(first)
    want = target[first].shape
    if w is not None and w.shape[1] != want[1]:
        if want[1] == 1:
            notes.append(f"patch embedding: the {w.shape[1]}-channel kernels summed for 1-channel input")
            state[first] = w = w.sum(dim=1, keepdim=True)
        elif w.shape[1] == 1:
            state[first] = w = w.repeat(1, want[1], 1, 1) / want[1]
            notes.append(f"patch embedding: the 1-channel kernels spread over {want[1]} channels")
    if w is not None and w.shape[-2:] != want[-2:] and not target_conv_stem:
        state[first] = resample_patch_kernel(w, tuple(want[-2:]))
        notes.append(f"patch embedding: {w.shape[-1]}x{w.shape[-2]} kernels resampled to {want[-1]}x{want[-2]} "
                     "(pseudo-inverse resize)")
    pos = state.get("pos_embed")
    if pos is not None and "pos_embed" in target and pos.shape != target["pos_embed"].shape and pos.shape[-1] == target["pos_embed"].shape[-1]:
        grid = model.patch_embed.grid_size
        prefix = 0 if model.no_embed_class else model.num_prefix_tokens  # rows of the class token and registers
        if math.isqrt(pos.shape[1] - prefix) ** 2 != pos.shape[1] - prefix:
            raise UserError(f"the source's {pos.shape[1]} position embeddings are not {prefix} prefix rows and a "
                            "square grid, as this ViT's are: the weights are of another model family")
        state["pos_embed"] = resample_pos_embed(pos, grid, prefix)
        old = math.isqrt(pos.shape[1] - prefix)
        notes.append(f"position embeddings resampled from a {old}x{old} to a {grid[0]}x{grid[1]} patch grid (bicubic)")
    return state, notes


VIT_PARTS = ("cls_token", "dist_token", "reg_token", "pos_embed", "patch_embed", "norm_pre", "blocks", "norm",
             "fc_norm", "attn_pool")  # the top-level names of our ViT (timm's)


def _is_head(key: str) -> bool:
    return key.startswith(("head.", "head_dist."))


def _layout(state: dict) -> dict[str, tuple]:
    """What fixes a model's family and size: every tensor's shape but the heads' and, of what `adapt` resamples
    (learned positions, the patch kernel), only that it is there and its width."""
    resampled = {"pos_embed": -1, "patch_embed.proj.weight": 0}
    return {k: (v.shape[resampled[k]],) if k in resampled else tuple(v.shape) for k, v in state.items()
            if not _is_head(k)}


def matching_models(state: dict[str, torch.Tensor]) -> list[str]:
    """The registered models whose tensors (heads and resampled ones aside) are those of a state dict, counted on
    copies without weights; only those of the state's width and depth are built."""
    want = _layout(state)
    width = want.get("blocks.0.norm1.weight", (None,))[0]
    depth = len({k.split(".")[1] for k in want if k.startswith("blocks.")})
    found = []
    for name in list_models():
        kwargs = {**get_spec(name).kwargs, "num_classes": 0}
        if (kwargs["embed_dim"], kwargs["depth"]) != (width, depth):
            continue
        with torch.device("meta"):
            model = VisionTransformer(**kwargs)
        if _layout(model.state_dict()) == want:
            found.append(name)
    return found


def _check_family(source: str, state: dict, target: dict) -> None:
    """Weights of another family (tensors of our ViT's parts that this model lacks, or needs and the source lacks)
    are a one-line error that names the registered models they fit, rather than weights silently left out or left
    random. The heads and the patch embedding (which `adapt` reconciles) aside."""
    def parts(keys):
        return {k for k in keys if not _is_head(k) and k.split(".")[0] in VIT_PARTS and k.split(".")[0] != "patch_embed"}

    unexpected, missing = sorted(parts(state) - set(target)), sorted(parts(target) - set(state))
    if not unexpected and not missing:
        return
    fits = matching_models(state)
    differ = ", ".join((unexpected or missing)[:3]) + (", ..." if len(unexpected or missing) > 3 else "")
    has = f"has {differ}, which this model lacks" if unexpected else f"lacks {differ}, which this model needs"
    if fits:
        also = f" (or {', '.join(fits[1:3])})" if len(fits) > 1 else ""
        raise UserError(f"{source} holds weights of the {get_spec(fits[0]).family} family ({fits[0]}'s layout: it "
                        f"{has}): use --model {fits[0]}{also}")
    if unexpected:
        raise UserError(f"{source} {has}: the weights are of another model family; choose the matching --model "
                        "(`vitkit models --family`), or --init-strict false to leave them out")


def load_pretrained(model, source: str | Pretrained, strict: bool = True, classes: list[str] | None = None
                    ) -> InitResult:
    """Load `source` (or what `read_source` read from it) into `model` in place, adapting what differs.

    `classes`: the model's class names; a source with other named classes does not keep its head.
    """
    pretrained = source if isinstance(source, Pretrained) else read_source(source)
    source = pretrained.source
    other = bool(classes and pretrained.classes and list(pretrained.classes) != list(classes))
    if strict:
        _check_family(source, pretrained.state, model.state_dict())
    state, notes = adapt(pretrained.state, model, other)
    target = model.state_dict()
    wrong = [f"{k} is {tuple(v.shape)} there, {tuple(target[k].shape)} here" for k, v in state.items()
             if k in target and v.shape != target[k].shape]
    if wrong:
        raise UserError(f"the weights of {source} do not fit this model ({'; '.join(wrong[:3])}): choose the matching "
                        "--model (same width, depth and heads)")
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    not_head = [k for k in missing if not _is_head(k)]
    if not_head and strict:
        raise UserError(f"{source} lacks {len(not_head)} tensor(s) this model needs ({', '.join(not_head[:4])}"
                        f"{', ...' if len(not_head) > 4 else ''}): choose the matching --model, or "
                        "--init-strict false to keep random weights for them")
    model.load_state_dict({k: v for k, v in state.items() if k in target}, strict=False)
    result = InitResult(source, notes, missing, unexpected, pretrained.mean, pretrained.std)
    if pretrained.act_layer and model.act_layer != pretrained.act_layer:
        model.set_act_layer(pretrained.act_layer)
        result.model_overrides["act_layer"] = pretrained.act_layer
        notes.append(f"activation {pretrained.act_layer}, as the source was trained with")
    if pretrained.norm_eps and model.norm_eps != pretrained.norm_eps:
        model.set_norm_eps(pretrained.norm_eps)
        result.model_overrides["norm_eps"] = pretrained.norm_eps
        notes.append(f"layer norm epsilon {pretrained.norm_eps:g}, as the source was trained with")
    log.info("initial weights: %s (%d tensors)", source, len(state) - len(unexpected))
    for note in notes:
        log.info("  %s", note)
    if missing:
        log.info("  new (not in the source): %s", ", ".join(missing))
    if unexpected:
        log.info("  ignored (no place in this model): %s", ", ".join(unexpected))
    return result
