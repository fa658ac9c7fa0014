"""State dicts in other projects' layouts, to and from timm's, which is ours.

    transformers  ViT / DeiT (`from_transformers`, `to_transformers`), DINOv2 (`from_transformers_dinov2`), DINOv3
                  (`from_transformers_dinov3`), CLIP and SigLIP vision towers (`from_transformers_clip`)
    timm          wrapper prefixes stripped, Eva's LayerScale names (`to_timm_layout`, `to_eva_layout`)
    JAX           Google's original ViT and big_vision .npz files (`from_jax`, `to_jax`)

`to_timm_layout` recognizes the layout of a state dict by its names and converts it; `models/pretrained.py` reads
the files and adapts the result to the model being built.
"""
from __future__ import annotations

import re

import numpy as np
import torch

from ..errors import UserError

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
