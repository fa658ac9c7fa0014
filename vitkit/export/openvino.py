"""OpenVINO IR from a checked ONNX export: MODEL.xml + MODEL.bin, and the sidecar MODEL.xml.json.

    vitkit export CHECKPOINT --format openvino                  fp32 IR (OpenVINO runs it in bf16 where the CPU
                                                                has bf16 units, unless --precision fp32 at run time)
    vitkit export CHECKPOINT --format openvino --quantize int8  the int8 QDQ graph, which OpenVINO runs in int8

The IR is converted with OpenVINO's own converter (`openvino.convert_model`) from the ONNX file vitkit exported and
checked, so it takes the same uint8 images and gives the same logits; it is then run by OpenVINO beside ONNX
Runtime on seeded images, and kept only when they agree.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..engine.predict import sidecar_path
from ..errors import ExportMismatch
from ..fileio import atomic_write
from ..optional import require
from .onnx import compare_logits, sample_images

log = logging.getLogger(__name__)


@dataclass
class OpenVinoResult:
    path: str
    sidecar: str
    samples: int
    max_abs_diff: float  # largest |logit(OpenVINO) - logit(ONNX Runtime)|, both on the same graph
    top1_agreement: float

    def to_dict(self) -> dict:
        return asdict(self)


def export_openvino(onnx_path: str | os.PathLike, out: str | os.PathLike | None = None, samples: int = 32,
                    atol: float = 1e-3, seed: int = 0) -> OpenVinoResult:
    """Convert an exported ONNX model (fp32 or int8) to OpenVINO IR beside it, checked against ONNX Runtime."""
    ov = require("openvino", "openvino")
    import onnxruntime as ort

    onnx_path = Path(onnx_path)
    out = Path(out) if out else onnx_path.with_suffix(".xml")
    side = json.loads(sidecar_path(onnx_path).read_text(encoding="utf-8"))
    log.info("converting %s to OpenVINO IR", onnx_path)
    model = ov.convert_model(str(onnx_path))
    staged = out.with_name(f".{out.stem}.{os.getpid()}.xml")
    try:
        ov.save_model(model, str(staged), compress_to_fp16=False)
        images = sample_images(max(samples, 2), side["in_chans"], side["img_size"], seed + 1).numpy()
        reference = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None,
                                                                                                 {"image": images})[0]
        compiled = ov.Core().compile_model(str(staged), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        got = np.concatenate([compiled(images[:1])[0], compiled(images[1:])[0]])
        diff, agreement = compare_logits(reference, got)
        quantized = "quantization" in side
        if not np.isfinite(got).all() or (diff > atol and not quantized) or (quantized and agreement < 0.95):
            raise ExportMismatch(f"OpenVINO and ONNX Runtime disagree on the converted model (largest logit "
                                 f"difference {diff:.3g}, top-1 agreement {agreement:.1%}); nothing was kept")
        os.replace(staged, out)
        os.replace(staged.with_suffix(".bin"), out.with_suffix(".bin"))
    finally:
        for path in (staged, staged.with_suffix(".bin")):
            path.unlink(missing_ok=True)
    side.update(format="vitkit-openvino/1", runtime="openvino", converted_from=onnx_path.name)
    atomic_write(sidecar_path(out), json.dumps(side, indent=2, ensure_ascii=False) + "\n")
    return OpenVinoResult(str(out), str(sidecar_path(out)), len(images), diff, agreement)
