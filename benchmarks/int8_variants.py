"""Which int8 quantization pays on this CPU: ONNX Runtime variants of one exported model, timed side by side.

    python benchmarks/int8_variants.py MODEL.onnx [--out /tmp/int8-variants]

MODEL.onnx is a `vitkit export` of a model trained on Fashion-MNIST (its sidecar gives the input size). Variants:
static QDQ on MatMul/Gemm/Conv (what `vitkit export --quantize int8` writes), the same with convolutions (a conv
stem) left in float, the same in QOperator form, static with only weight matrices (attention's activation products
left in float), static on every op, and dynamic quantization (weights int8, activations quantized per batch). All use
per-channel weights in the 7-bit range. Each is timed at batch 8, 32 and 128 (`--batches`; `--rounds` of 1.5 s,
default 3, runtimes taking turns, median) and its top-1 measured on 2,000 test images.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import onnxruntime as ort  # noqa: E402
from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,  # noqa: E402
                                      quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: E402

from vitkit.data import load_data  # noqa: E402
from vitkit.export.quantize import has_attention_op  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path)
    p.add_argument("--out", type=Path, default=Path("/tmp/int8-variants"))
    p.add_argument("--batches", type=int, nargs="+", default=[8, 32, 128])
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    side = json.loads(Path(f"{args.model}.json").read_text())
    size, channels = side["img_size"], side["in_chans"]
    data = load_data("fashion-mnist", img_size=size, channels=channels, splits=("train", "test"))
    calibration = data.splits["train"].images.numpy()[:256]
    test, labels = data.splits["test"].images.numpy()[:2000], data.splits["test"].labels.numpy()[:2000]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"image": calibration[i:i + 32]} for i in range(0, len(calibration), 32)])

        def get_next(self):
            return next(self.batches, None)

    prepared = args.out / "prepared.onnx"
    quant_pre_process(str(args.model), str(prepared), skip_symbolic_shape=has_attention_op(args.model))
    common = dict(per_channel=True, reduce_range=True, weight_type=QuantType.QInt8)
    static = dict(common, activation_type=QuantType.QUInt8)
    ops = ["MatMul", "Gemm", "Conv"]
    variants = {"fp32": args.model}
    for name, kwargs in {"static QDQ (vitkit)": dict(quant_format=QuantFormat.QDQ, op_types_to_quantize=ops),
                         "static QDQ, stem in float": dict(quant_format=QuantFormat.QDQ,
                                                           op_types_to_quantize=["MatMul", "Gemm"]),
                         "static QOperator": dict(quant_format=QuantFormat.QOperator, op_types_to_quantize=ops),
                         "static, weights only": dict(quant_format=QuantFormat.QDQ, op_types_to_quantize=ops,
                                                      extra_options={"MatMulConstBOnly": True}),
                         "static, every op": dict(quant_format=QuantFormat.QDQ)}.items():
        path = args.out / f"{name.replace(' ', '_').replace(',', '')}.onnx"
        quantize_static(str(prepared), str(path), Reader(), **static, **kwargs)
        variants[name] = path
    variants["dynamic"] = args.out / "dynamic.onnx"
    quantize_dynamic(str(prepared), str(variants["dynamic"]), op_types_to_quantize=["MatMul", "Gemm"], **common)
    sessions = {k: ort.InferenceSession(str(v), providers=["CPUExecutionProvider"]) for k, v in variants.items()}
    report = {}
    for name, session in sessions.items():
        top = np.concatenate([session.run(None, {"image": test[i:i + 250]})[0] for i in range(0, len(test), 250)])
        report[name] = {"top1": float((top.argmax(1) == labels).mean())}
    for batch in args.batches:
        x = test[:batch]
        for session in sessions.values():
            session.run(None, {"image": x})
        speeds = {k: [] for k in sessions}
        for _ in range(args.rounds):
            for name, session in sessions.items():
                start, n = time.perf_counter(), 0
                while time.perf_counter() - start < 1.5:
                    session.run(None, {"image": x})
                    n += batch
                speeds[name].append(n / (time.perf_counter() - start))
        base = statistics.median(speeds["fp32"])
        for name in sessions:
            report[name][f"batch {batch}"] = f"{statistics.median(speeds[name]):.1f} img/s " \
                                             f"({statistics.median(speeds[name]) / base:.2f}x)"
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
