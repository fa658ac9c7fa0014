"""Model folders that timm and transformers load, each checked by loading it with that library.

    --format timm          DIR/config.json + DIR/model.safetensors, timm's Hub layout:
                           timm.create_model("local-dir:DIR", pretrained=True) (where timm has local-dir:), or
                           timm.create_model(ARCH, pretrained=True, **config["model_args"], pretrained_cfg_overlay=
                                             dict(config["pretrained_cfg"], file=DIR/model.safetensors))
                           (the overlay's num_classes keeps timm from dropping the head as another task's)
    --format transformers  DIR/config.json + DIR/model.safetensors + DIR/preprocessor_config.json:
                           transformers.ViTForImageClassification.from_pretrained(DIR), id2label included

Our parameter names are timm's, so the timm folder holds the checkpoint's tensors as they are; the transformers folder
holds them under transformers' names, query, key and value split. The folder is written beside, loaded back with the
library, and its logits compared with ours on seeded images; only a folder that agrees is moved into place.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from ..engine.checkpoint import load_model
from ..errors import ExportMismatch, UserError
from ..models import is_foreign
from ..models.layouts import to_transformers
from ..optional import require
from ..version import __version__
from .onnx import compare_logits, sample_images

log = logging.getLogger(__name__)

TIMM_ARCHITECTURE = "vit_base_patch16_224"  # a timm VisionTransformer; config.json's model_args set every size
# Options of our ViT (timm's names and defaults) that transformers' ViT lacks; timm takes them as they are
PLAIN_VIT = {"class_token": True, "reg_tokens": 0, "no_embed_class": False, "pre_norm": False, "init_values": None,
             "act_layer": "gelu", "fc_norm": None, "dist_token": False, "dynamic_img_size": False}
EVA_ONLY = {"rope": None, "abs_pos_embed": True}  # options of timm's Eva that its VisionTransformer lacks
TIMM_DISTILLED = "deit_base_distilled_patch16_224"  # timm's class with the distillation token
FOLDER_FORMATS = ("timm", "transformers")


@dataclass
class FolderExport:
    path: str
    format: str
    samples: int
    max_abs_diff: float  # largest |logit(library) - logit(vitkit)| over the samples
    top1_agreement: float

    def to_dict(self) -> dict:
        return asdict(self)


def export_folder(checkpoint: str | os.PathLike, fmt: str, out: str | os.PathLike | None = None, samples: int = 16,
                  atol: float = 1e-4, seed: int = 0) -> FolderExport:
    """Write a `fmt` ('timm' or 'transformers') folder for a checkpoint, checked by loading it with that library."""
    if fmt not in FOLDER_FORMATS:
        raise UserError(f"unknown folder format {fmt!r}: choose one of {', '.join(FOLDER_FORMATS)}")
    library = require("timm" if fmt == "timm" else "transformers", "interop")
    model, meta = load_model(checkpoint, "cpu")
    if is_foreign(meta["model"]):
        raise UserError(f"{checkpoint} holds timm's {meta['model'][5:]} with timm's tensor names already: load it with "
                        f"timm.create_model('{meta['model'][5:]}', num_classes={len(meta['classes'])}, in_chans="
                        f"{meta['in_chans']}) and load_state_dict, or export it with --format onnx")
    model.float().eval()
    kwargs = meta["model_kwargs"]
    _check_exportable(kwargs, fmt)
    out = Path(out) if out else Path(checkpoint).with_name(f"{Path(checkpoint).stem}-{fmt}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists: remove it or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        write = _write_timm if fmt == "timm" else _write_transformers
        write(staging, model, meta)
        images = sample_images(max(samples, 2), meta["in_chans"], meta["img_size"], seed + 1).float() / 255
        mean = torch.tensor(meta["mean"]).view(1, -1, 1, 1)
        std = torch.tensor(meta["std"]).view(1, -1, 1, 1)
        x = (images - mean) / std
        with torch.inference_mode():
            ours = model(x).numpy()
            theirs = _load_back(library, fmt, staging)(x)
        diff, agreement = compare_logits(ours, theirs)
        if not np.isfinite(theirs).all() or diff > atol:
            raise ExportMismatch(f"{fmt} loads the folder but its logits differ from vitkit's by {diff:.3g} (> "
                                 f"{atol:g}; top-1 agreement {agreement:.1%}); nothing was kept. Please report this "
                                 f"with the model name and the vitkit, torch and {fmt} versions")
        if out.is_dir():
            out.rmdir()
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return FolderExport(str(out), fmt, len(x), diff, agreement)


def _check_exportable(kwargs: dict, fmt: str) -> None:
    if kwargs.get("stem", "patch") != "patch":
        raise UserError(f"this model has a conv stem, which {fmt}'s ViT does not have: only models with the patch "
                        "stem export to timm or transformers (ONNX takes any)")
    if fmt == "timm" and kwargs.get("norm_eps", 1e-6) != 1e-6:
        raise UserError(f"timm's ViT uses LayerNorm epsilon 1e-6, this model {kwargs['norm_eps']:g}: export it "
                        "with --format transformers or onnx")
    if fmt == "transformers" and kwargs.get("global_pool", "token") != "token":
        how = "its tokens by attention (MAP)" if kwargs["global_pool"] == "map" else "the mean of its tokens"
        raise UserError("transformers' ViTForImageClassification classifies from the class token; this model pools "
                        f"{how}: export it with --format timm or onnx")
    eva = [k for k, plain in EVA_ONLY.items() if kwargs.get(k, plain) != plain] + \
        ["qkv_bias"] * (kwargs.get("qkv_bias") == "qv")
    if eva:
        raise UserError(f"timm's and transformers' ViT have no {', '.join(eva)} (timm's Eva has): export this model "
                        "with --format onnx, or load its model.safetensors in timm's model of the same name")
    if fmt == "timm" and kwargs.get("mlp_layer", "mlp") != "mlp":
        raise UserError(f"timm's config.json cannot name the {kwargs['mlp_layer']} MLP layer: export this model "
                        "with --format onnx, or load its model.safetensors in timm's model of the same name")
    extras = [k for k, plain in {**PLAIN_VIT, "mlp_layer": "mlp"}.items() if kwargs.get(k, plain) != plain]
    if fmt == "transformers" and extras:
        raise UserError(f"transformers' ViT has no {', '.join(extras)}: export this model with --format timm or onnx")


def _task(meta: dict) -> dict:
    """A multi-label model's task and per-label thresholds (apply a sigmoid to each logit), for config.json."""
    if meta.get("task") != "multi-label":
        return {}
    return {"vitkit_task": "multi-label", "vitkit_thresholds": meta.get("thresholds") or [0.5] * len(meta["classes"])}


def _write_timm(folder: Path, model, meta: dict) -> None:
    k = meta["model_kwargs"]
    model_args = {"img_size": k["img_size"], "patch_size": k["patch_size"], "in_chans": k["in_chans"],
                  "num_classes": len(meta["classes"]), "embed_dim": k["embed_dim"], "depth": k["depth"],
                  "num_heads": k["num_heads"], "mlp_ratio": k.get("mlp_ratio", 4.0),
                  "qkv_bias": k.get("qkv_bias", True), "global_pool": k.get("global_pool", "token"),
                  **{key: k[key] for key, plain in PLAIN_VIT.items() if k.get(key, plain) != plain}}
    architecture = TIMM_DISTILLED if model_args.pop("dist_token", False) else TIMM_ARCHITECTURE
    config = {"architecture": architecture, "num_classes": len(meta["classes"]), "num_features": k["embed_dim"],
              "global_pool": model_args["global_pool"], "model_args": model_args, "label_names": meta["classes"],
              "pretrained_cfg": {"input_size": [k["in_chans"], k["img_size"], k["img_size"]], "fixed_input_size": True,
                                 "interpolation": "bicubic", "crop_pct": 1.0, "crop_mode": "center",
                                 "mean": meta["mean"], "std": meta["std"], "num_classes": len(meta["classes"]),
                                 "first_conv": "patch_embed.proj", "classifier": "head"},
              "exported_by": f"vitkit {__version__}", "vitkit_model": meta["model"], **_task(meta)}
    tensors = {name: t.detach().contiguous() for name, t in model.state_dict().items()}
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_transformers(folder: Path, model, meta: dict) -> None:
    k = meta["model_kwargs"]
    classes = meta["classes"]
    config = {"architectures": ["ViTForImageClassification"], "model_type": "vit", "hidden_size": k["embed_dim"],
              "num_hidden_layers": k["depth"], "num_attention_heads": k["num_heads"],
              "intermediate_size": model.blocks[0].mlp.fc1.out_features, "hidden_act": "gelu",
              "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "initializer_range": 0.02,
              "layer_norm_eps": k.get("norm_eps", 1e-6), "image_size": k["img_size"], "patch_size": k["patch_size"],
              "num_channels": k["in_chans"], "qkv_bias": k.get("qkv_bias", True), "encoder_stride": k["patch_size"],
              "id2label": {str(i): c for i, c in enumerate(classes)}, "label2id": {c: i for i, c in enumerate(classes)},
              "torch_dtype": "float32", "exported_by": f"vitkit {__version__}", "vitkit_model": meta["model"],
              **({"problem_type": "multi_label_classification"} if meta.get("task") == "multi-label" else {}),
              **_task(meta)}
    processor = {"image_processor_type": "ViTImageProcessor", "do_resize": True,
                 "size": {"height": k["img_size"], "width": k["img_size"]}, "resample": 3, "do_rescale": True,
                 "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": meta["mean"], "image_std": meta["std"]}
    state = to_transformers({n: t.detach().contiguous() for n, t in model.state_dict().items()})
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    for name, content in (("config.json", config), ("preprocessor_config.json", processor)):
        (folder / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _load_back(library, fmt: str, folder: Path):
    """The library's model from the folder, as a function of normalized images to logits (numpy)."""
    if fmt == "timm":
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        net = library.create_model(config["architecture"], pretrained=True, **config["model_args"],
                                   pretrained_cfg_overlay={**config["pretrained_cfg"],
                                                           "file": str(folder / "model.safetensors")}).eval()
        return lambda x: net(x).numpy()
    library.utils.logging.disable_progress_bar()  # no "Loading weights" bar in the export's output
    net = library.ViTForImageClassification.from_pretrained(folder).eval()
    return lambda x: net(pixel_values=x).logits.numpy()
