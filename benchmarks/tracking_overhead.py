"""What experiment tracking costs: the demo recipe trained without trackers and with TensorBoard, MLflow (a SQLite
store) and W&B (offline) all on, alternating run by run so that a drifting machine hits both alike.

    python benchmarks/tracking_overhead.py [--epochs 3] [--repeats 2] [--out /tmp/tracking-bench]

Training throughput is each run's images per second over its epochs after the first (the first compiles), from
metrics.csv; the fixed costs (importing the trackers, creating the store, logging and registering the model at the
end) are the difference in wall time beyond that, reported apart. A tracked run also says how many seconds its
training thread spent in the trackers ("tracking took ..." in its log): the cost measured directly, free of the
run-to-run noise of a shared machine.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOGGERS = "tensorboard,mlflow,wandb"


def run(out: Path, name: str, epochs: int, tracked: bool) -> dict:
    cmd = [sys.executable, "-m", "vitkit", "train", "--config", str(ROOT / "configs" / "demo.yaml"), "--epochs",
           str(epochs), "--out", str(out), "--name", name, "--no-progress", "--set", "output.report=false"]
    if tracked:
        cmd += ["--log", LOGGERS, "--mlflow-uri", f"sqlite:///{out / 'mlflow.db'}"]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "offline"})
    wall = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
    with open(out / name / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    later = rows[1:] or rows
    images = sum(float(r["img_per_s"]) * float(r["seconds"]) for r in later)
    seconds = sum(float(r["seconds"]) for r in later)
    said = re.search(r"tracking took ([0-9.]+) s of the ([0-9.]+) s", done.stderr)
    return {"name": name, "tracked": tracked, "img_per_s": images / seconds, "epoch_seconds": seconds,
            "all_epochs_seconds": sum(float(r["seconds"]) for r in rows), "wall_seconds": wall,
            **({"tracking_seconds": float(said.group(1)), "training_seconds": float(said.group(2))} if said else {})}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default="/tmp/tracking-bench")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%H%M%S")
    results = []
    for i in range(args.repeats):
        for tracked in (False, True):
            r = run(out, f"{'tracked' if tracked else 'plain'}-{i}-{stamp}", args.epochs, tracked)
            print(f"{r['name']:<22} {r['img_per_s']:8.1f} img/s after epoch 1   wall {r['wall_seconds']:6.1f} s",
                  flush=True)
            results.append(r)
    plain = [r for r in results if not r["tracked"]]
    tracked = [r for r in results if r["tracked"]]
    ratio = statistics.median(r["img_per_s"] for r in tracked) / statistics.median(r["img_per_s"] for r in plain)
    fixed = statistics.median(r["wall_seconds"] - r["all_epochs_seconds"] for r in tracked) - \
        statistics.median(r["wall_seconds"] - r["all_epochs_seconds"] for r in plain)
    in_run = [100 * r["tracking_seconds"] / r["training_seconds"] for r in tracked if "tracking_seconds" in r]
    summary = {"epochs": args.epochs, "repeats": args.repeats, "loggers": LOGGERS, "runs": results,
               "throughput_ratio_tracked_to_plain": round(ratio, 4),
               "throughput_cost_percent": round(100 * (1 - ratio), 2),
               "plain_img_per_s_spread_percent": round(100 * (max(r["img_per_s"] for r in plain) /
                                                             min(r["img_per_s"] for r in plain) - 1), 2),
               "training_thread_in_trackers_percent": [round(x, 3) for x in in_run],
               "fixed_cost_seconds": round(fixed, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"throughput with all three trackers: {ratio:.4f} of without ({100 * (1 - ratio):+.2f}% cost; untracked "
          f"runs alone spread {summary['plain_img_per_s_spread_percent']}%); training thread in the trackers: "
          f"{', '.join(f'{x:.2f}%' for x in in_run)}; fixed cost per run {fixed:.1f} s (imports, store, model "
          "registration)")


if __name__ == "__main__":
    main()
