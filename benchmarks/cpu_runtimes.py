"""CPU inference runtimes side by side: PyTorch, ONNX Runtime fp32 and int8, OpenVINO fp32 and int8.

    python benchmarks/cpu_runtimes.py CHECKPOINT [CHECKPOINT ...] [--vit-s-224] [--out /tmp/runtimes]

Each checkpoint (trained on Fashion-MNIST) is exported with the CLI, as a user would: `vitkit export --format openvino`
(MODEL.onnx + MODEL.xml) and `vitkit export --format openvino --quantize int8` (MODEL.int8.onnx calibrated on 256
training images, + MODEL.int8.xml). Then every runtime classifies the whole Fashion-MNIST test set (top-1), and its
throughput is timed on batches of `--batch` test images for at least a second per runtime and round, the runtimes
taking turns round by round so that a drifting machine hits all alike (median of the rounds). `--vit-s-224` adds a
ViT-S/16 at 224 px with random weights (speed only; its int8 ranges are calibrated on Fashion-MNIST images scaled to
224 px). `--baseline-opset 18` adds ONNX Runtime fp32 and int8 of an export at that opset (attention as MatMul and
Softmax, before opset 23's Attention node) to the same rounds; `--quantize int8-dynamic` makes the int8 exports with
dynamic quantization.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vitkit.data import load_data  # noqa: E402
from vitkit.engine.predict import load_classifier  # noqa: E402


def cli(*args) -> dict:
    done = subprocess.run([sys.executable, "-m", "vitkit", *map(str, args), "--json"], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"vitkit {' '.join(map(str, args))} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def export_all(checkpoint: Path, extra: list[str], baseline_opset: int | None, quantize: str) -> dict[str, str]:
    fp32 = cli("export", checkpoint, "--format", "openvino", *extra)
    int8 = cli("export", checkpoint, "--format", "openvino", "--quantize", quantize, "--check-images", "10000", *extra)
    print(f"  int8 check: {json.dumps(int8['int8'])}", flush=True)
    files = {"torch fp32": str(checkpoint), "onnxruntime fp32": fp32["onnx"]["path"],
             "onnxruntime int8": int8["int8"]["path"], "openvino fp32": fp32["openvino"]["path"],
             "openvino int8": int8["openvino"]["path"]}
    if baseline_opset:
        out = checkpoint.with_name(f"{checkpoint.stem}.opset{baseline_opset}.onnx")
        old = cli("export", checkpoint, "--quantize", quantize, "--check-images", "10000", "--opset", baseline_opset,
                  "--out", out, *extra)
        files.update({f"onnxruntime fp32, opset {baseline_opset}": old["onnx"]["path"],
                      f"onnxruntime int8, opset {baseline_opset}": old["int8"]["path"]})
    return files


def measure(files: dict[str, str], images: torch.Tensor, labels: torch.Tensor | None, batch: int, rounds: int,
            batches: int) -> dict:
    runners = {name: load_classifier(path, precision="fp32") for name, path in files.items()}
    result = {name: {} for name in runners}
    if labels is not None:
        for name, clf in runners.items():
            top = clf.logits(images, batch_size=256).argmax(1)
            result[name]["top1"] = float((top == labels).float().mean())
    timed = images[:batch * batches]
    for clf in runners.values():  # warm-up: first-call allocations, thread pools
        clf.logits(timed[:batch], batch_size=batch)
    speeds = {name: [] for name in runners}
    for _ in range(rounds):
        for name, clf in runners.items():  # at least a second each, so that a runtime's idle threads spinning
            start, done = time.perf_counter(), 0  # down after its turn take little of the next one's
            while done == 0 or time.perf_counter() - start < 1.0:
                clf.logits(timed, batch_size=batch)
                done += len(timed)
            speeds[name].append(done / (time.perf_counter() - start))
    for name in runners:
        result[name]["img_per_s"] = statistics.median(speeds[name])
    return result


def vit_s_224(out: Path, test: torch.Tensor) -> tuple[Path, list[str]]:
    """A ViT-S/16 at 224 px (random weights, 10 classes, 1 channel) and a folder of 600 Fashion-MNIST test images at
    224 px (60 per class) to calibrate and check it on."""
    import vitkit
    from vitkit.engine.checkpoint import model_meta, save_model
    from vitkit.models import model_kwargs

    name = "vit_small_patch16_224"
    kwargs = model_kwargs(name, in_chans=1, num_classes=10)
    torch.manual_seed(0)
    model = vitkit.create_model(name, **kwargs)
    torch.nn.init.normal_(model.head.weight, std=0.3)  # classes apart: int8 checks compare top-1 classes
    checkpoint = out / "vit_s16_224" / "best.safetensors"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    save_model(checkpoint, model, model_meta(name, kwargs, [str(i) for i in range(10)], [0.286], [0.353]))
    folder = out / "fmnist-224"
    for k in range(10):
        (folder / str(k)).mkdir(parents=True, exist_ok=True)
    labels = load_data("fashion-mnist", img_size=28, channels=1, splits=("test",)).splits["test"].labels
    for k in range(10):
        for j, i in enumerate(np.flatnonzero(labels.numpy() == k)[:60]):
            Image.fromarray(test[i, 0].numpy()).resize((224, 224), Image.Resampling.BICUBIC).save(
                folder / str(k) / f"{j:03d}.png")
    return checkpoint, ["--calibrate", str(folder)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="*", type=Path)
    p.add_argument("--vit-s-224", action="store_true")
    p.add_argument("--out", type=Path, default=Path("/tmp/runtimes"))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--baseline-opset", type=int, help="also time ONNX Runtime on an export at this opset")
    p.add_argument("--quantize", choices=["int8", "int8-dynamic"], default="int8", help="the int8 export's method")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"torch": torch.__version__, "threads": torch.get_num_threads(), "models": {}}
    for checkpoint in args.checkpoints:
        meta = load_classifier(checkpoint).meta
        data = load_data("fashion-mnist", img_size=meta["img_size"], channels=1, splits=("test",)).splits["test"]
        print(f"{checkpoint} ({meta['model']}):", flush=True)
        files = export_all(checkpoint, [], args.baseline_opset, args.quantize)
        report["models"][str(checkpoint)] = measure(files, data.images, data.labels, args.batch, args.rounds, 8)
        print(json.dumps(report["models"][str(checkpoint)], indent=1), flush=True)
    if args.vit_s_224:
        test = load_data("fashion-mnist", img_size=28, channels=1, splits=("test",)).splits["test"].images
        checkpoint, extra = vit_s_224(args.out, test)
        print(f"{checkpoint} (ViT-S/16, 224 px, random weights):", flush=True)
        files = export_all(checkpoint, extra, args.baseline_opset, args.quantize)
        images = torch.from_numpy(np.stack([np.asarray(Image.open(f))[None] for f in
                                            sorted((args.out / "fmnist-224").rglob("*.png"))[:args.batch * 2]]))
        report["models"]["vit_s16_224"] = measure(files, images, None, args.batch, args.rounds, 2)
        print(json.dumps(report["models"]["vit_s16_224"], indent=1), flush=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out / 'report.json'}")


if __name__ == "__main__":
    main()
