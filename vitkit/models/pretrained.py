"""Initial weights from elsewhere: timm, Hugging Face transformers, Google's .npz files and vitkit checkpoints.

Every source is first read into timm's layout, which is ours (`read_source`), then adapted to the model being built
(`adapt`): a head for another number of classes is dropped (the model keeps its new one), position embeddings are
resampled to another patch grid (2D bicubic, class token kept), patch kernels to another patch size (FlexiViT's
pseudo-inverse resize, so a patch gives the same response), RGB kernels summed for one channel. Each change is one
log line. What is still missing after that, other than the head, is an error unless `strict=False`.

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


# ----------------------------------------------------------------------------------------------- the layouts
HF_ACTIVATIONS = {"gelu": "gelu", "quick_gelu": "quick_gelu", "gelu_pytorch_tanh": "gelu_tanh",
                  "gelu_new": "gelu_tanh", "silu": "silu"}  # transformers' hidden_act to our act_layer


def to_timm_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm layout as it is (wrapper prefixes stripped, the LayerScale of timm's Eva models, DINOv3's, under
    VisionTransformer's names); transformers' ViT, DINOv2, CLIP and SigLIP vision towers converted."""
    if any(k.endswith("attention.attention.query.weight") for k in state):
        return from_transformers(state)
    if "embeddings.patch_embeddings.weight" in state or "model.embeddings.patch_embeddings.weight" in state:
        return from_transformers_dinov3(state)
    if any(".attention.q_proj." in k for k in state) and any(k.startswith("embeddings.") for k in state):
        return from_transformers_dinov2(state)
    if any(".self_attn.q_proj." in k for k in state):
        return from_transformers_clip(state)
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod.", "model."):
            key = key[len(prefix):] if key.startswith(prefix) else key
        key = re.sub(r"^(blocks\.\d+)\.gamma_([12])$", r"\1.ls\2.gamma", key)  # timm's Eva (DINOv3)
        out[key] = value
    return out


def to_eva_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our names to timm's Eva (DINOv3): LayerScale as blocks.N.gamma_1 and gamma_2."""
    return {re.sub(r"^(blocks\.\d+)\.ls([12])\.gamma$", r"\1.gamma_\2", k): v for k, v in state.items()}


_HF_BLOCK = {"layernorm_before": "norm1", "layernorm_after": "norm2", "attention.output.dense": "attn.proj",
             "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2"}


# DINOv2's files (Dinov2Model, Dinov2WithRegistersModel) keep ViT's attention names but their own for the rest
_HF_DINOV2_FILE = {"norm1": "norm1", "norm2": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
                   "mlp.weights_in": "mlp.fc1", "mlp.weights_out": "mlp.fc2"}


def from_transformers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' ViTModel / ViTForImageClassification names (and DINOv2's and DeiT's files, which share them)
    to timm's; query, key, value joined into qkv."""
    out, qkv = {}, {}
    for key, value in state.items():
        for prefix in ("vit.", "dinov2.", "deit."):
            key = key[len(prefix):] if key.startswith(prefix) else key
        if m := re.fullmatch(r"encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1", key):
            out[f"blocks.{m.group(1)}.ls{m.group(2)}.gamma"] = value
        elif key.startswith("embeddings."):
            name = {"embeddings.cls_token": "cls_token", "embeddings.register_tokens": "reg_token",
                    "embeddings.distillation_token": "dist_token",
                    "embeddings.position_embeddings": "pos_embed",
                    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
                    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias"}.get(key)
            if name:
                out[name] = value  # the mask token (pretraining only) has no place here
        elif m := re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)", key):
            i, part, kind = m.groups()
            if part.startswith("attention.attention."):
                qkv.setdefault((i, kind), {})[part.rsplit(".", 1)[1]] = value
            elif part in _HF_BLOCK or part in _HF_DINOV2_FILE:
                out[f"blocks.{i}.{_HF_BLOCK.get(part) or _HF_DINOV2_FILE[part]}.{kind}"] = value
            else:
                out[key] = value
        elif key.startswith("layernorm."):
            out["norm." + key.split(".", 1)[1]] = value
        elif key.startswith(("classifier.", "cls_classifier.")):
            out["head." + key.split(".", 1)[1]] = value
        elif key.startswith("distillation_classifier."):  # DeiT's distillation head
            out["head_dist." + key.split(".", 1)[1]] = value
        else:
            out[key] = value  # e.g. the pooler: reported as unexpected
    for (i, kind), parts in qkv.items():
        out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return _fold_class_position(out)


def _fold_class_position(out: dict) -> dict:
    """DINOv2 with registers (transformers) adds the first position embedding to the class token and gives the
    registers none; timm's layout (`no_embed_class`) keeps position embeddings for the patches only: the class
    token takes its row, the same sum."""
    if "reg_token" in out and "cls_token" in out and "pos_embed" in out:
        out["cls_token"] = out["cls_token"] + out["pos_embed"][:, :1]
        out["pos_embed"] = out["pos_embed"][:, 1:]
    return out


def _join_qkv(out: dict, qkv: dict) -> dict:
    for (i, kind), parts in qkv.items():
        out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]])
    return out


_HF_DINOV2 = {"attention.o_proj": "attn.proj", "layer_scale1.lambda1": "ls1.gamma",
              "layer_scale2.lambda1": "ls2.gamma", "mlp.weights_in": "mlp.fc1", "mlp.weights_out": "mlp.fc2"}


def from_transformers_dinov2(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' Dinov2Model (and Dinov2WithRegistersModel) names to timm's."""
    out, qkv = {}, {}
    embeddings = {"embeddings.cls_token": "cls_token", "embeddings.register_tokens": "reg_token",
                  "embeddings.position_embeddings": "pos_embed",
                  "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
                  "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias"}
    for key, value in state.items():
        key = key[len("dinov2."):] if key.startswith("dinov2.") else key
        if key.startswith("embeddings."):
            if key in embeddings:
                out[embeddings[key]] = value  # the mask token (pretraining only) has no place here
        elif m := re.fullmatch(r"encoder\.layer\.(\d+)\.(.+?)(?:\.(weight|bias))?", key):
            i, part, kind = m.groups()
            if part.startswith("attention.") and part.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                qkv.setdefault((i, kind), {})[part.split(".")[1]] = value
            else:
                name = _HF_DINOV2.get(part, part)
                out[f"blocks.{i}.{name}" + (f".{kind}" if kind else "")] = value
        elif key.startswith("layernorm."):
            out["norm." + key.split(".", 1)[1]] = value
        elif key.startswith("classifier."):
            out["head." + key.split(".", 1)[1]] = value
        else:
            out[key] = value
    return _fold_class_position(_join_qkv(out, qkv))


_HF_DINOV3 = {"attention.o_proj": "attn.proj", "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
              "mlp.up_proj": "mlp.fc1", "mlp.down_proj": "mlp.fc2", "mlp.gate_proj": "mlp.fc1_g"}


def from_transformers_dinov3(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' DINOv3ViTModel names to timm's (its Eva, under VisionTransformer's names). DINOv3 has query and
    value biases but none for the keys: the joined qkv bias has zeros there, and is left out where all are zero (the
    released weights: timm's `vit_*_dinov3`, qkv_bias false)."""
    out, qkv = {}, {}
    embeddings = {"embeddings.cls_token": "cls_token", "embeddings.register_tokens": "reg_token",
                  "embeddings.patch_embeddings.weight": "patch_embed.proj.weight",
                  "embeddings.patch_embeddings.bias": "patch_embed.proj.bias"}
    for key, value in state.items():
        key = key[len("model."):] if key.startswith("model.") else key
        if key in embeddings:
            out[embeddings[key]] = value  # the mask token (pretraining only) has no place here
        elif m := re.fullmatch(r"layer\.(\d+)\.(.+?)(?:\.(weight|bias))?", key):
            i, part, kind = m.groups()
            if part.startswith("attention.") and part.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                qkv.setdefault(i, {})[(part.split(".")[1], kind)] = value
            else:
                out[f"blocks.{i}.{_HF_DINOV3.get(part, part)}" + (f".{kind}" if kind else "")] = value
        elif not key.startswith("embeddings."):
            out[key] = value  # norm.*; anything else is reported as unexpected
    for i, parts in qkv.items():
        out[f"blocks.{i}.attn.qkv.weight"] = torch.cat([parts[(n, "weight")] for n in ("q_proj", "k_proj", "v_proj")])
        q_bias = parts.get(("q_proj", "bias"))
        if q_bias is not None:
            bias = torch.cat([q_bias, parts.get(("k_proj", "bias"), torch.zeros_like(q_bias)),
                              parts.get(("v_proj", "bias"), torch.zeros_like(q_bias))])
            if bool(bias.any()):
                out[f"blocks.{i}.attn.qkv.bias"] = bias
    return out


_HF_CLIP_BLOCK = {"layer_norm1": "norm1", "layer_norm2": "norm2", "self_attn.out_proj": "attn.proj",
                  "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
_HF_SIGLIP_HEAD = {"head.probe": "attn_pool.latent", "head.attention.out_proj.weight": "attn_pool.proj.weight",
                   "head.attention.out_proj.bias": "attn_pool.proj.bias", "head.layernorm.weight": "attn_pool.norm.weight",
                   "head.layernorm.bias": "attn_pool.norm.bias", "head.mlp.fc1.weight": "attn_pool.mlp.fc1.weight",
                   "head.mlp.fc1.bias": "attn_pool.mlp.fc1.bias", "head.mlp.fc2.weight": "attn_pool.mlp.fc2.weight",
                   "head.mlp.fc2.bias": "attn_pool.mlp.fc2.bias"}


def from_transformers_clip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' CLIPVisionModel and SiglipVisionModel names (or a whole CLIPModel/SiglipModel's vision tower)
    to timm's: CLIP's class embedding and pre-LayerNorm, SigLIP's attention-pooling head (its packed in-projection
    split into the query's and the keys' and values')."""
    out, qkv = {}, {}
    for key, value in state.items():
        if key.startswith(("text_model.", "logit_", "text_projection", "visual_projection")):
            continue  # the text tower and the projections into the joint space
        key = key[len("vision_model."):] if key.startswith("vision_model.") else key
        if key == "embeddings.class_embedding":
            out["cls_token"] = value.reshape(1, 1, -1)
        elif key == "embeddings.position_embedding.weight":
            out["pos_embed"] = value.unsqueeze(0)
        elif key.startswith("embeddings.patch_embedding."):
            out["patch_embed.proj." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("pre_layrnorm."):
            out["norm_pre." + key.split(".", 1)[1]] = value
        elif key.startswith("post_layernorm."):
            out["norm." + key.split(".", 1)[1]] = value
        elif m := re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key):
            i, part, kind = m.groups()
            if part.startswith("self_attn.") and part.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                qkv.setdefault((i, kind), {})[part.split(".")[1]] = value
            else:
                out[f"blocks.{i}.{_HF_CLIP_BLOCK.get(part, part)}.{kind}"] = value
        elif key in ("head.attention.in_proj_weight", "head.attention.in_proj_bias"):
            kind = "weight" if key.endswith("weight") else "bias"
            q, kv = value[:value.shape[0] // 3], value[value.shape[0] // 3:]
            out[f"attn_pool.q.{kind}"], out[f"attn_pool.kv.{kind}"] = q, kv
        else:
            out[_HF_SIGLIP_HEAD.get(key, key)] = value
    return _join_qkv(out, qkv)


def to_transformers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's names to transformers' ViTForImageClassification (the inverse of `from_transformers`): qkv split into
    query, key and value."""
    embeddings = {"cls_token": "vit.embeddings.cls_token", "pos_embed": "vit.embeddings.position_embeddings",
                  "patch_embed.proj.weight": "vit.embeddings.patch_embeddings.projection.weight",
                  "patch_embed.proj.bias": "vit.embeddings.patch_embeddings.projection.bias"}
    block = {timm: hf for hf, timm in _HF_BLOCK.items()}
    out = {}
    for key, value in state.items():
        if key in embeddings:
            out[embeddings[key]] = value
        elif m := re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", key):
            i, part, kind = m.groups()
            layer = f"vit.encoder.layer.{i}"
            if part == "attn.qkv":
                for name, piece in zip(("query", "key", "value"), value.chunk(3)):
                    out[f"{layer}.attention.attention.{name}.{kind}"] = piece.contiguous()
            elif part in block:
                out[f"{layer}.{block[part]}.{kind}"] = value
            else:
                raise UserError(f"{key} has no counterpart in transformers' ViT")
        elif key.startswith("norm."):
            out["vit.layernorm." + key.split(".", 1)[1]] = value
        elif key.startswith("head."):
            out["classifier." + key.split(".", 1)[1]] = value
        else:
            raise UserError(f"{key} has no counterpart in transformers' ViT")
    return out


def from_jax(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Google's ViT .npz (original `vision_transformer` or big_vision names) to timm's layout."""
    a = {k.removeprefix("params/").removeprefix("opt/target/"): v for k, v in arrays.items()}
    if "embedding/kernel" not in a:
        raise UserError("the .npz file has no 'embedding/kernel': not a ViT checkpoint in Google's layout")
    t = lambda x: torch.from_numpy(np.ascontiguousarray(x)).float()  # noqa: E731
    big_vision = "Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel" in a
    mha, mlp, ln2 = ("MultiHeadDotProductAttention_0", "MlpBlock_0", "LayerNorm_1") if big_vision else \
        ("MultiHeadDotProductAttention_1", "MlpBlock_3", "LayerNorm_2")
    pos = a.get("Transformer/posembed_input/pos_embedding", a.get("pos_embedding"))
    out = {"patch_embed.proj.weight": t(a["embedding/kernel"]).permute(3, 2, 0, 1),  # (p, p, C, D) to (D, C, p, p)
           "patch_embed.proj.bias": t(a["embedding/bias"]), "pos_embed": t(pos),
           "norm.weight": t(a["Transformer/encoder_norm/scale"]), "norm.bias": t(a["Transformer/encoder_norm/bias"])}
    if "cls" in a:
        out["cls_token"] = t(a["cls"])
    if "head/kernel" in a:
        out["head.weight"], out["head.bias"] = t(a["head/kernel"]).T, t(a["head/bias"])
    i = 0
    while (p := f"Transformer/encoderblock_{i}/") + "LayerNorm_0/scale" in a:
        b = f"blocks.{i}."
        q, k, v = (t(a[f"{p}{mha}/{n}/kernel"]).flatten(1).T for n in ("query", "key", "value"))  # (D, H, hd)
        out[b + "attn.qkv.weight"] = torch.cat([q, k, v])
        out[b + "attn.qkv.bias"] = torch.cat([t(a[f"{p}{mha}/{n}/bias"]).flatten() for n in ("query", "key", "value")])
        out[b + "attn.proj.weight"] = t(a[f"{p}{mha}/out/kernel"]).flatten(0, 1).T  # (H, hd, D) to (D, D)
        out[b + "attn.proj.bias"] = t(a[f"{p}{mha}/out/bias"])
        for ours, theirs in (("norm1", "LayerNorm_0"), ("norm2", ln2)):
            out[b + ours + ".weight"], out[b + ours + ".bias"] = t(a[p + theirs + "/scale"]), t(a[p + theirs + "/bias"])
        for ours, theirs in (("fc1", "Dense_0"), ("fc2", "Dense_1")):
            out[f"{b}mlp.{ours}.weight"] = t(a[f"{p}{mlp}/{theirs}/kernel"]).T
            out[f"{b}mlp.{ours}.bias"] = t(a[f"{p}{mlp}/{theirs}/bias"])
        i += 1
    return out


def to_jax(state: dict[str, torch.Tensor], num_heads: int) -> dict[str, np.ndarray]:
    """timm layout to the original `vision_transformer` .npz names (class-token models): `np.savez(path, **arrays)`."""
    if any(key.startswith("patch_embed.stem.") for key in state):
        raise UserError("a model with a conv stem has no .npz layout: only patchify-stem models can be written so")
    n = lambda x: x.detach().float().cpu().numpy()  # noqa: E731
    dim = state["cls_token"].shape[-1]
    out = {"cls": n(state["cls_token"]), "embedding/kernel": n(state["patch_embed.proj.weight"].permute(2, 3, 1, 0)),
           "embedding/bias": n(state["patch_embed.proj.bias"]),
           "Transformer/posembed_input/pos_embedding": n(state["pos_embed"]),
           "Transformer/encoder_norm/scale": n(state["norm.weight"]),
           "Transformer/encoder_norm/bias": n(state["norm.bias"])}
    if "head.weight" in state:
        out["head/kernel"], out["head/bias"] = n(state["head.weight"].T), n(state["head.bias"])
    i = 0
    while (b := f"blocks.{i}.") + "norm1.weight" in state:
        p = f"Transformer/encoderblock_{i}/"
        q, k, v = state[b + "attn.qkv.weight"].chunk(3)
        qb, kb, vb = state[b + "attn.qkv.bias"].chunk(3)
        for name, w, bias in (("query", q, qb), ("key", k, kb), ("value", v, vb)):
            out[f"{p}MultiHeadDotProductAttention_1/{name}/kernel"] = n(w.T.reshape(dim, num_heads, -1))
            out[f"{p}MultiHeadDotProductAttention_1/{name}/bias"] = n(bias.reshape(num_heads, -1))
        out_kernel = state[b + "attn.proj.weight"].T.reshape(num_heads, -1, dim)  # (D, D) to (H, hd, D)
        out[f"{p}MultiHeadDotProductAttention_1/out/kernel"] = n(out_kernel)
        out[f"{p}MultiHeadDotProductAttention_1/out/bias"] = n(state[b + "attn.proj.bias"])
        for ours, theirs in (("norm1", "LayerNorm_0"), ("norm2", "LayerNorm_2")):
            out[p + theirs + "/scale"] = n(state[b + ours + ".weight"])
            out[p + theirs + "/bias"] = n(state[b + ours + ".bias"])
        for ours, theirs in (("fc1", "Dense_0"), ("fc2", "Dense_1")):
            out[f"{p}MlpBlock_3/{theirs}/kernel"] = n(state[f"{b}mlp.{ours}.weight"].T)
            out[f"{p}MlpBlock_3/{theirs}/bias"] = n(state[f"{b}mlp.{ours}.bias"])
        i += 1
    return out


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
