"""glibc's malloc as it comes against vitkit's thresholds (`vitkit.engine.allocator`): speed and page faults.

    python benchmarks/allocator.py [--model vit_mini_patch4_28] [--batch-size 256] [--mode train|infer]
                                   [--impl vitkit|timm] [--rounds 3] [--steps 4]

The allocator's settings hold for a whole process, so each measurement is a fresh process: `rounds` pairs, one with
glibc's default thresholds (VITKIT_MALLOC=default) and one with vitkit's, alternating which goes first. Each
process times `steps` batches four times after two warm-up batches (the step is `vitkit bench`'s: the trainer's
training step, or inference) and reports the median images/s and the minor page faults per batch.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def measure(model: str, batch_size: int, mode: str, impl: str, steps: int) -> dict:
    import torch

    from vitkit.engine import allocator
    from vitkit.engine.bench import BenchSettings, _inputs, make_step, timm_twin
    from vitkit.engine.device import resolve_precision
    from vitkit.engine.master import use_bf16_weights
    from vitkit.models import create_model, model_kwargs

    malloc = allocator.tune()
    device = torch.device("cpu")
    s = BenchSettings(model=model, batch_size=batch_size)
    kwargs = model_kwargs(model)
    torch.manual_seed(0)
    net = create_model(model) if impl == "vitkit" else timm_twin(kwargs)
    amp_dtype = resolve_precision("auto", device)
    bf16_weights = impl == "vitkit" and use_bf16_weights(None, device, amp_dtype)
    x, y = _inputs(s, kwargs, device)
    step = make_step(net, mode, x, y, device, amp_dtype, bf16_weights)
    for _ in range(2):
        step()
    speeds, faults = [], []
    for _ in range(4):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        for _ in range(steps):
            step()
        seconds = time.perf_counter() - start
        faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / steps)
        speeds.append(batch_size * steps / seconds)
    return {"malloc": malloc, "img_per_s": statistics.median(speeds), "faults_per_batch": statistics.median(faults)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="vit_mini_patch4_28")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--mode", choices=("train", "infer"), default="train")
    p.add_argument("--impl", choices=("vitkit", "timm"), default="vitkit")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(args.model, args.batch_size, args.mode, args.impl, args.steps)))
        return
    command = [sys.executable, __file__, "--child", "--model", args.model, "--batch-size", str(args.batch_size),
               "--mode", args.mode, "--impl", args.impl, "--steps", str(args.steps)]
    results: dict[str, list[dict]] = {"default": [], "vitkit": []}
    for r in range(args.rounds):
        for setting in ("default", "vitkit") if r % 2 == 0 else ("vitkit", "default"):
            env = {**os.environ, "VITKIT_MALLOC": "default" if setting == "default" else "vitkit"}
            run = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            results[setting].append(json.loads(run.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1} {setting:8s} {results[setting][-1]['img_per_s']:8.1f} img/s "
                  f"{results[setting][-1]['faults_per_batch']:10.0f} page faults/batch", flush=True)
    speed = {k: statistics.median(x["img_per_s"] for x in v) for k, v in results.items()}
    faults = {k: statistics.median(x["faults_per_batch"] for x in v) for k, v in results.items()}
    print(f"{args.impl} {args.mode}, {args.model}, batch {args.batch_size}: glibc default {speed['default']:.1f} "
          f"img/s ({faults['default']:,.0f} faults/batch), vitkit's thresholds {speed['vitkit']:.1f} img/s "
          f"({faults['vitkit']:,.0f} faults/batch): {speed['vitkit'] / speed['default']:.2f}x")


if __name__ == "__main__":
    main()
