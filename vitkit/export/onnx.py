"""ONNX export: uint8 images in, logits out, checked against the PyTorch model before the file is kept.

The exported graph contains the normalization the checkpoint records, so another runtime only has to decode, resize
(shorter side, bicubic) and centre-crop the image to the model's size, as `vitkit/data/images.py` does. A JSON sidecar
(`MODEL.onnx.json`) carries the class names and that preprocessing. After export, ONNX Runtime and PyTorch run the
same seeded inputs; an export whose logits differ beyond the tolerance is deleted and reported, never kept.

From opset 23 on, attention is written as ONNX's `Attention` node rather than MatMul/Softmax, and each block's
split into heads is folded into it (`fold_heads`): ONNX Runtime and OpenVINO run it as one fused kernel.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..engine.checkpoint import load_model
from ..engine.predict import ONNX_FORMAT, sidecar_path
from ..errors import ExportMismatch
from ..fileio import atomic_write
from ..optional import require
from ..version import __version__

log = logging.getLogger(__name__)

DEFAULT_OPSET = 23
ATTENTION_OPSET = 23  # the first opset with an Attention op (ONNX Runtime 1.24 for its int8 too, OpenVINO 2026.3)
SINGLE_FILE_LIMIT = 1_800_000_000  # bytes of weights; protobuf stops at 2 GiB, larger models use external data


class ImageModel(nn.Module):
    """uint8 images (N, C, H, W) to logits (N, K): the checkpoint's normalization, then the ViT."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model((image.float() - self.mean) / self.std)


@dataclass
class ExportResult:
    path: str
    sidecar: str
    opset: int
    samples: int
    max_abs_diff: float  # largest |logit(ONNX Runtime) - logit(PyTorch)| over the samples
    top1_agreement: float  # share of samples whose top-1 class is the same in both

    def to_dict(self) -> dict:
        return asdict(self)


def onnx_sidecar(meta: dict, opset: int) -> dict:
    """What a runtime needs besides the graph: classes and preprocessing (normalization is inside the graph); for a
    multi-label model also the task and each label's threshold on its sigmoid probability."""
    multi = meta.get("task") == "multi-label"
    task = {"task": "multi-label", "thresholds": meta.get("thresholds") or [0.5] * len(meta["classes"])} if multi \
        else {"task": "single-label"}
    note = ("a sigmoid of each logit gives that label's probability; a label is present where it reaches its "
            "threshold" if multi else "softmax gives probabilities")
    return {"format": ONNX_FORMAT, "vitkit_version": __version__, "model": meta["model"], "classes": meta["classes"],
            **task, "img_size": meta["img_size"], "in_chans": meta["in_chans"], "opset": opset,
            "input": {"name": "image", "dtype": "uint8", "shape": ["batch", meta["in_chans"], meta["img_size"],
                                                                  meta["img_size"]], "layout": "NCHW, RGB or gray"},
            "output": {"name": "logits", "shape": ["batch", len(meta["classes"])], "note": note},
            "preprocess": meta.get("preprocess", "resize-shorter-side-center-crop"),
            "normalization_in_graph": {"mean": meta["mean"], "std": meta["std"]}}


def sample_images(n: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    """Seeded uint8 test inputs: half uniform noise, half smooth random blobs (closer to photographs)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randint(0, 256, (n - n // 2, channels, size, size), generator=g, dtype=torch.uint8)
    coarse = torch.rand(n // 2, channels, 4, 4, generator=g) * 255
    smooth = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return torch.cat([noise, smooth.clamp(0, 255).round().to(torch.uint8)])


def compare_logits(reference: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """(max |difference|, top-1 agreement). A top-1 flip needs a margin under twice the difference: a near tie."""
    if not reference.size:
        return 0.0, 1.0
    diff = float(np.abs(reference - other).max())
    return diff, float((reference.argmax(1) == other.argmax(1)).mean())


def export_onnx(checkpoint: str | os.PathLike, out: str | os.PathLike | None = None, opset: int = DEFAULT_OPSET,
                samples: int = 32, atol: float = 1e-3, seed: int = 0) -> ExportResult:
    """Export a checkpoint to ONNX (dynamic batch), check it against PyTorch with ONNX Runtime, write the sidecar."""
    ort = require("onnxruntime", "export")
    require("onnxscript", "export")
    model, meta = load_model(checkpoint, "cpu")
    model.float()
    if hasattr(model, "set_attn_impl"):  # our ViT (a timm model exports as timm wrote it)
        model.set_attn_impl("sdpa" if opset >= ATTENTION_OPSET else "math")  # one Attention node, or MatMul/Softmax
    wrapper = ImageModel(model, meta["mean"], meta["std"]).eval()
    out = Path(out) if out else Path(checkpoint).with_suffix(".onnx")
    c, s = meta["in_chans"], meta["img_size"]
    example = sample_images(2, c, s, seed)
    log.info("exporting %s to ONNX (opset %d)", checkpoint, opset)
    with torch.inference_mode(False), torch.no_grad():
        program = torch.onnx.export(wrapper, (example,), None, input_names=["image"], output_names=["logits"],
                                    opset_version=opset, dynamo=True, verbose=False,
                                    dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    folded = fold_heads(program.model)
    log.debug("%d attention nodes take (batch, tokens, heads x dim) directly", folded)
    large = sum(p.numel() * p.element_size() for p in model.parameters()) > SINGLE_FILE_LIMIT
    payload = None if large else program.model_proto.SerializeToString()
    check_path = out if large else payload
    if large:  # the weights go to OUT.data beside the graph, which ONNX Runtime finds by name
        out.parent.mkdir(parents=True, exist_ok=True)
        program.save(str(out), external_data=True)
    result = check_export(ort, check_path, wrapper, samples, c, s, atol, seed)
    if payload is not None:
        atomic_write(out, payload)
    atomic_write(sidecar_path(out), json.dumps(onnx_sidecar(meta, opset), indent=2, ensure_ascii=False) + "\n")
    return ExportResult(str(out), str(sidecar_path(out)), opset, *result)


def check_export(ort, model_file, wrapper: nn.Module, samples: int, channels: int, size: int, atol: float,
                 seed: int) -> tuple[int, float, float]:
    """Run ONNX Runtime and PyTorch on the same inputs, at batch sizes 1 and `samples`: (samples, max diff, top-1)."""
    session = ort.InferenceSession(model_file, providers=["CPUExecutionProvider"])
    images = sample_images(max(samples, 2), channels, size, seed + 1)
    with torch.inference_mode():
        reference = wrapper(images).numpy()
    got = np.concatenate([session.run(None, {"image": images[:1].numpy()})[0],
                          session.run(None, {"image": images[1:].numpy()})[0]])
    diff, agreement = compare_logits(reference, got)
    if not np.isfinite(got).all() or diff > atol:
        if isinstance(model_file, (str, Path)):
            for path in (Path(model_file), Path(f"{model_file}.data")):
                path.unlink(missing_ok=True)
        raise ExportMismatch(f"the ONNX model disagrees with PyTorch (largest logit difference {diff:.3g} > {atol:g}, "
                             f"top-1 agreement {agreement:.1%}); nothing was kept. Please report this with the "
                             "checkpoint's model name, vitkit, torch and onnxruntime versions")
    return len(images), diff, agreement


def fold_heads(model) -> int:
    """Fold the split into heads around each `Attention` node of an onnx_ir model (changed in place) into the node.

    The exporter writes multi-head attention in 4D: the fused qkv projection is reshaped to (B, N, 3, H, d),
    transposed, sliced and squeezed into q, k and v of (B, H, N, d), and the output is transposed and reshaped back.
    Opset 23's Attention takes (B, N, H*d) inputs with `q_num_heads` instead, so that chain becomes one Split and
    ONNX Runtime's kernel reads the heads in place. Attention in other shapes (a last block that computes the class
    token's row alone) is left as it is. Returns how many nodes were folded; the export's parity check runs after.
    """
    import onnx_ir as ir

    graph, folded = model.graph, 0
    for node in [n for n in graph if n.op_type == "Attention" and n.domain in ("", "ai.onnx")]:
        heads = [_head_of(v) for v in node.inputs]
        after = _merge_of(node.outputs[0])
        if len(heads) != 3 or None in heads or after is None or [h[1] for h in heads] != [0, 1, 2] \
                or len({id(h[0]) for h in heads}) != 1 or len(node.outputs) != 1:
            continue
        packed, num_heads = heads[0][0], heads[0][2]
        split = ir.node("Split", [packed], {"axis": -1, "num_outputs": 3}, num_outputs=3)
        attributes = {**{a.name: a.value for a in node.attributes.values()}, "q_num_heads": num_heads,
                      "kv_num_heads": num_heads}
        fused = ir.node("Attention", list(split.outputs), attributes, name=node.name)
        graph.insert_before(node, [split, fused])
        after.replace_all_uses_with(fused.outputs[0])
        fused.outputs[0].shape, fused.outputs[0].type = after.shape, after.type
        folded += 1
    if folded:
        ir.passes.common.RemoveUnusedNodesPass()(model)  # the chains that fed and followed the 4D nodes
    return folded


def _ints(value) -> list[int] | None:
    """The integers a constant onnx_ir value holds (an initializer or a Constant node's output), else None."""
    from onnx_ir.convenience import get_const_tensor

    tensor = None if value is None else get_const_tensor(value)
    return None if tensor is None else [int(i) for i in tensor.numpy().reshape(-1)]


def _perm(node) -> list[int] | None:
    """A Transpose node's permutation, else None."""
    if node is None or node.op_type != "Transpose" or "perm" not in node.attributes:
        return None
    return list(node.attributes["perm"].value)


def _head_of(value):
    """(packed, i, H) when `value` is Squeeze(Slice(Transpose(Reshape(packed, (B, N, 3, H, d)), perm (2, 0, 3, 1, 4)),
    i:i+1 on axis 0), axis 0): the i-th of q, k, v taken from a fused projection; else None."""
    squeeze = value.producer()
    if squeeze is None or squeeze.op_type != "Squeeze" or len(value.uses()) != 1 or len(squeeze.inputs) != 2:
        return None
    sliced = squeeze.inputs[0].producer()
    if _ints(squeeze.inputs[1]) != [0] or sliced is None or sliced.op_type != "Slice" or len(sliced.inputs) != 4:
        return None
    starts, ends, axes = (_ints(v) for v in sliced.inputs[1:])
    transpose = sliced.inputs[0].producer()
    if axes != [0] or not starts or ends != [starts[0] + 1] or _perm(transpose) != [2, 0, 3, 1, 4]:
        return None
    reshape = transpose.inputs[0].producer()
    shape = None if reshape is None or reshape.op_type != "Reshape" else reshape.outputs[0].shape
    packed = None if shape is None else reshape.inputs[0]
    if packed is None or packed.shape is None or len(packed.shape) != 3 or len(shape) != 5 or shape[2] != 3 \
            or not isinstance(shape[3], int):
        return None
    return packed, starts[0], shape[3]


def _merge_of(value):
    """The (B, N, H*d) value when `value` (B, H, N, d) is only transposed (0, 2, 1, 3) and reshaped to it, else None."""
    uses = value.uses()
    transpose = uses[0].node if len(uses) == 1 else None
    if _perm(transpose) != [0, 2, 1, 3] or len(transpose.outputs[0].uses()) != 1:
        return None
    reshape = transpose.outputs[0].uses()[0].node
    shape, merged = value.shape, reshape.outputs[0] if reshape.op_type == "Reshape" else None
    if merged is None or merged.is_graph_output() or shape is None or merged.shape is None or len(merged.shape) != 3 \
            or not all(isinstance(d, int) for d in (shape[1], shape[3], merged.shape[2])) \
            or merged.shape[2] != shape[1] * shape[3]:
        return None
    return merged
