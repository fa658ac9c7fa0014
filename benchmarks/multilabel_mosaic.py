"""Multi-label learning end to end on a generated set a model can learn: 2x2 mosaics of Fashion-MNIST garments.

    python benchmarks/multilabel_mosaic.py [--images 6000] [--epochs 12] [--out /tmp/mosaic] [--model vit_micro_patch7_28]
                                           [--loss bce|asl]

Writes (once) OUT/images/ of 56x56 PNGs, each four cells that hold a Fashion-MNIST garment with probability 0.4 or
stay black, so an image shows zero to four garments of up to four classes; its labels are the classes present
(`Finding Labels`, joined by '|', `No Finding` when empty). Images come in "patients" of three that share their
garments (the same pictures, shuffled to other cells): a split that separates a patient's images would leak. The
labels file is laid out as the chest X-ray one (`Image Index`, `Finding Labels`, `Patient ID`).

Then, through the CLI, `vitkit train` with the chest X-ray flags (patients kept whole, 20% test, 10% validation),
and the test split scored twice from the same logits: at the per-label thresholds the run chose on validation, and
at 0.5 for every label (binary cross-entropy without threshold tuning). Prints mAP, mean per-label F1 and the
training time.

The rest of the way, on the test split's files: `vitkit report` (timed), `vitkit export` to ONNX, the labels that
pass predicted by the checkpoint (PyTorch) and by the ONNX model, and each test image posted to `vitkit serve`:
how many images get the same labels from all three.
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image


def write_mosaics(out: Path, n: int, seed: int = 0, data_root: str | None = None) -> None:
    """n mosaics in patients of three, and Data_Entry.csv; `data_root`: where fashion-mnist/ is (default: vitkit's
    search, Debian's dataset-fashion-mnist among them)."""
    from vitkit.data.named import load_named

    arrays, classes = load_named("fashion-mnist", data_root)
    x, y = arrays["train"]
    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for patient in range(0, n, 3):
        pool = rng.choice(len(y), 4, replace=False)  # this patient's garments
        for k in range(min(3, n - patient)):
            canvas = np.zeros((56, 56), np.uint8)
            present = set()
            for cell, source in enumerate(rng.permutation(pool)):
                if rng.random() < 0.4:
                    r, c = divmod(cell, 2)
                    canvas[28 * r:28 * r + 28, 28 * c:28 * c + 28] = x[source].reshape(28, 28)
                    present.add(classes[int(y[source])])
            name = f"{patient + k:06d}.png"
            Image.fromarray(canvas).save(out / "images" / name)
            rows.append([name, "|".join(sorted(present)) or "No Finding", f"P{patient // 3:05d}"])
    with open(out / "Data_Entry.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["Image Index", "Finding Labels", "Patient ID"], *rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--model", default="vit_micro_patch7_28")
    parser.add_argument("--out", type=Path, default=Path("/tmp/mosaic"))
    parser.add_argument("--loss", choices=("bce", "asl"), default="bce", help="vitkit train's --multi-label-loss")
    args = parser.parse_args()
    if not (args.out / "Data_Entry.csv").exists():
        write_mosaics(args.out, args.images)
    name = f"mosaic-{time.strftime('%H%M%S')}"
    cmd = [sys.executable, "-m", "vitkit", "train", "--images", str(args.out / "images"), "--labels",
           str(args.out / "Data_Entry.csv"), "--file-column", "Image Index", "--label-column", "Finding Labels",
           "--label-sep", "|", "--no-label", "No Finding", "--group-column", "Patient ID", "--model", args.model,
           "--img-size", "56", "--epochs", str(args.epochs), "--out", str(args.out / "runs"), "--name", name,
           "--no-progress", "--set", "data.test_fraction=0.2", "--set", "data.hflip=0", "--multi-label-loss", args.loss,
           "--set", "output.report=false"]
    start = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{run.stderr[-3000:]}")
    minutes = (time.perf_counter() - start) / 60

    from vitkit.engine.evaluate import prepare_evaluation
    from vitkit.metrics import multilabel_report

    ev = prepare_evaluation(args.out / "runs" / name / "best.safetensors", split="test")
    logits = ev.logits()
    print(f"{args.model}, {args.images} mosaics at 56 px, {args.epochs} epochs, {args.loss} loss, {minutes:.1f} min "
          "of training")
    for label, thresholds in (("thresholds chosen on val", ev.meta["thresholds"]), ("0.5 for every label", None)):
        r = multilabel_report(logits, ev.data.labels, ev.meta["classes"], thresholds)
        f1 = np.mean([v["f1"] for v in r["per_label"].values()])
        print(f"  test, {label}: mAP {r['mAP']:.4f}, micro mAP {r['mAP_micro']:.4f}, mean per-label F1 {f1:.4f}, "
              f"subset accuracy {r['subset_accuracy']:.4f}, Hamming loss {r['hamming_loss']:.4f}")
    end_to_end(args.out / "runs" / name, args.out / "images")


def end_to_end(run: Path, images: Path) -> None:
    """Report, ONNX export, predict with both runtimes and serve, on the run's test files."""
    from serve_load import multipart, start_server  # benchmarks/serve_load.py

    from vitkit.engine.predict import load_classifier

    with open(run / "split.csv", newline="") as fh:
        files = [images / row["id"] for row in csv.DictReader(fh) if row["split"] == "test"]
    for step in (["report", str(run), "--split", "test"], ["export", str(run / "best.safetensors")]):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "vitkit", *step], check=True, capture_output=True)
        print(f"  vitkit {step[0]}: {time.perf_counter() - start:.1f} s")
    answers = {}
    for runtime, path in (("torch", run / "best.safetensors"), ("onnx", run / "best.onnx")):
        start = time.perf_counter()
        predictions = load_classifier(path, runtime).predict(files)
        answers[runtime] = [[c for c, _, _ in r.labels] for r in predictions]
        print(f"  predict ({runtime}): {len(files) / (time.perf_counter() - start):.0f} images/s")
    proc, port = start_server(run / "best.safetensors", 8, ["--precision", "fp32"])
    served = []
    try:
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for f in files:
            body, content_type = multipart(f.read_bytes())
            conn.request("POST", "/predict", body, {"Content-Type": content_type})
            answer = json.loads(conn.getresponse().read())
            served.append([x["label"] for x in answer["predictions"][0]["labels"]])
    finally:
        proc.terminate()
        proc.wait(30)
    same = sum(a == b == c for a, b, c in zip(answers["torch"], answers["onnx"], served))
    print(f"  the same labels from PyTorch, ONNX Runtime and the server: {same} of {len(files)} test images; "
          f"{sum(map(bool, answers['torch']))} with at least one label")


if __name__ == "__main__":
    main()
