"""int8 ONNX for CPU inference: ONNX Runtime's static quantization, calibrated on training images, or its dynamic
quantization, then checked.

    vitkit export CHECKPOINT --quantize int8           MODEL.onnx (fp32, checked) and MODEL.int8.onnx (+ .json sidecar)
    vitkit export CHECKPOINT --quantize int8-dynamic   the same file, activations quantized per batch

The fp32 graph is prepared (shape inference, graph optimizations), then its matrix products and convolutions are
quantized in QDQ form: weights per output channel to int8 within a 7-bit range (on CPUs without VNNI, ONNX Runtime's
int8 kernels add products in 16 bits, and the full range saturates them: 1.5 points of Fashion-MNIST top-1 lost on
the demo model, none with 7 bits), activations to uint8 with ranges measured on `calibration` training images of the
run's own split. LayerNorm, GELU and the Attention nodes (q times k, softmax, times v) stay in float. Dynamic
quantization (`method="dynamic"`) keeps the same int8 weights of the matrix products, leaves the convolutions in float
and quantizes each batch's activations with that batch's range, so it needs no calibration images. Either int8 model
is then run beside the fp32 one on the evaluation split (test, else val) of the run's data: a top-1 drop beyond
`max_drop` points keeps nothing.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..engine.checkpoint import read_meta, single_label_only
from ..engine.evaluate import prepare_evaluation
from ..engine.predict import sidecar_path
from ..errors import ExportMismatch, UserError
from ..fileio import atomic_write
from ..optional import require

log = logging.getLogger(__name__)

QUANTIZED_OPS = ["MatMul", "Gemm", "Conv"]
DYNAMIC_OPS = ["MatMul", "Gemm"]  # the conv stem stays float: ONNX Runtime's ConvInteger is slower than its float conv
INT8_INSTEAD = "export in fp32 (--quantize none), which runs with onnxruntime or openvino"  # its check is top-1


@dataclass
class QuantizeResult:
    path: str
    sidecar: str
    calibration_images: int
    split: str
    check_images: int
    top1_fp32: float  # of the fp32 ONNX model on the checked images
    top1_int8: float
    top1_agreement: float  # share of checked images with the same top-1 class in both
    mb_fp32: float
    mb_int8: float

    def to_dict(self) -> dict:
        return asdict(self)


def int8_path(onnx_path: str | os.PathLike) -> Path:
    """MODEL.onnx -> MODEL.int8.onnx"""
    path = Path(onnx_path)
    return path.with_name(f"{path.stem}.int8{path.suffix}")


def quantize_int8(checkpoint: str | os.PathLike, onnx_path: str | os.PathLike, data: str | None = None,
                  data_root: str | None = None, calibration: int = 256, check_images: int = 2000,
                  max_drop: float = 1.0, seed: int = 0, method: str = "static") -> QuantizeResult:
    """Quantize the checked fp32 export `onnx_path` of `checkpoint` to int8 beside it and check it on the evaluation
    split of `data` (default: the data the checkpoint was trained on). `method`: 'static' (activation ranges
    calibrated on training images of `data`) or 'dynamic' (activations quantized per batch, no calibration)."""
    if method not in ("static", "dynamic"):
        raise UserError(f"int8 quantization method {method!r}: use 'static' (calibrated) or 'dynamic'")
    require("onnxruntime", "export")
    single_label_only(read_meta(checkpoint), "int8 quantization", INT8_INSTEAD)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = int8_path(onnx_path)
    with tempfile.TemporaryDirectory(dir=Path(onnx_path).parent, prefix=".quantize.") as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        # ONNX Runtime's symbolic shape inference reads an opset-23 Attention node as its own contrib op and fails;
        # ONNX's shape inference, which the pre-processing runs as well, knows it
        quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=has_attention_op(onnx_path))
        if method == "dynamic":
            calibrated = quantize_per_batch(prepared, quantized)
        else:
            calibrated = quantize_calibrated(prepared, quantized, checkpoint, data, data_root, calibration, seed)
        check = check_int8(checkpoint, onnx_path, quantized, data, data_root, check_images, seed)
        if check["top1_fp32"] - check["top1_int8"] > max_drop / 100:
            raise ExportMismatch(f"the int8 model's top-1 is {check['top1_int8']:.2%} against {check['top1_fp32']:.2%} "
                                 f"in fp32 on {check['check_images']} {check['split']} images, more than "
                                 f"{max_drop:g} points lower; nothing was kept"
                                 + (" (more --calibration-images may help)" if method == "static" else ""))
        atomic_write(out, quantized.read_bytes())
    side = json.loads(sidecar_path(onnx_path).read_text(encoding="utf-8"))
    side["quantization"] = {"weights": "int8 per output channel (7-bit range)", "method": method,
                            "activations": "uint8, ranges per batch" if method == "dynamic" else "uint8",
                            "format": "QDQ" if method == "static" else "integer MatMul",
                            "ops": QUANTIZED_OPS if method == "static" else DYNAMIC_OPS,
                            "calibration_images": calibrated, "check": check}
    atomic_write(sidecar_path(out), json.dumps(side, indent=2, ensure_ascii=False) + "\n")
    return QuantizeResult(str(out), str(sidecar_path(out)), calibrated, mb_fp32=Path(onnx_path).stat().st_size / 1e6,
                          mb_int8=out.stat().st_size / 1e6, **check)


def quantize_calibrated(prepared: Path, quantized: Path, checkpoint, data, data_root, calibration: int,
                        seed: int) -> int:
    """Static QDQ quantization, activation ranges measured on `calibration` training images: how many."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    rng = np.random.default_rng(seed)
    train = prepare_evaluation(checkpoint, data, "train", data_root, device="cpu", precision="fp32").data.images
    picked = train[np.sort(rng.choice(len(train), min(calibration, len(train)), replace=False))].numpy()
    log.info("calibrating int8 ranges on %d training images", len(picked))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"image": picked[i:i + 32]} for i in range(0, len(picked), 32)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(prepared), str(quantized), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                    op_types_to_quantize=QUANTIZED_OPS)
    return len(picked)


def quantize_per_batch(prepared: Path, quantized: Path) -> int:
    """Dynamic quantization: int8 weights, each batch's activations quantized with that batch's range (ONNX Runtime
    fuses it into integer matrix products); nothing to calibrate, so 0 calibration images."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(prepared), str(quantized), op_types_to_quantize=DYNAMIC_OPS, per_channel=True,
                     reduce_range=True, weight_type=QuantType.QInt8)
    return 0


def has_attention_op(onnx_path: str | os.PathLike) -> bool:
    """Whether the graph holds ONNX's own Attention node (opset 23 and later)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return any(node.op_type == "Attention" and node.domain in ("", "ai.onnx") for node in graph.node)


def check_int8(checkpoint, fp32_path, int8_file, data, data_root, limit: int, seed: int) -> dict:
    """Top-1 of both ONNX models, and their agreement, on up to `limit` images of the evaluation split."""
    import onnxruntime as ort

    ev = prepare_evaluation(checkpoint, data, None, data_root, device="cpu", precision="fp32")
    images, labels = ev.data.images.numpy(), ev.data.labels.numpy()
    if len(images) > limit:
        keep = np.sort(np.random.default_rng(seed + 1).choice(len(images), limit, replace=False))
        images, labels = images[keep], labels[keep]
    predictions = []
    for path in (fp32_path, int8_file):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        logits = np.concatenate([session.run(None, {"image": images[i:i + 64]})[0] for i in range(0, len(images), 64)])
        predictions.append(logits.argmax(1))
    fp32, int8 = predictions
    return {"split": ev.split, "check_images": len(images), "top1_fp32": float((fp32 == labels).mean()),
            "top1_int8": float((int8 == labels).mean()), "top1_agreement": float((fp32 == int8).mean())}
