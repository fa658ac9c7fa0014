"""Where a training or inference step goes: the torch profiler over `vitkit bench`'s step, by operator.

    python benchmarks/profile_step.py [--model vit_small_patch16_224] [--batch-size 32] [--mode train|infer]
                                      [--precision auto|bf16|fp32] [--steps 2] [--warmup 2] [--rows 25]

Runs the step `vitkit bench` times (for training: the trainer's step, on the bf16 weight copy where `vitkit train`
would use one) `--warmup` times, then `--steps` times under `torch.profiler.profile(record_shapes=True)`, and prints
the operators by their own time, then by their own time and input shapes. The profiler adds its own overhead: read
the shares, not the absolute times.
"""
from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--mode", choices=("train", "infer"), default="train")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    from vitkit.engine import allocator
    from vitkit.engine.bench import BenchSettings, _inputs, make_step
    from vitkit.engine.device import cpu_has_fast_bf16, resolve_device, resolve_precision
    from vitkit.engine.master import use_bf16_weights
    from vitkit.models import create_model, model_kwargs

    allocator.tune()
    device = resolve_device("cpu")
    amp_dtype = resolve_precision(args.precision, device)
    x, y = _inputs(BenchSettings(model=args.model, batch_size=args.batch_size), model_kwargs(args.model), device)
    torch.manual_seed(0)
    bf16_weights = args.mode == "train" and use_bf16_weights(None, device, amp_dtype)
    step = make_step(create_model(args.model), args.mode, x, y, device, amp_dtype, bf16_weights)
    print(f"{args.model}, batch {args.batch_size}, {args.mode}, {'bf16' if amp_dtype else 'fp32'} "
          f"(fast bf16: {cpu_has_fast_bf16()}), bf16 weight copy: {bf16_weights}, {torch.get_num_threads()} threads")
    for _ in range(args.warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(args.steps):
            step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=40))
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=args.rows,
                                                             max_name_column_width=30, max_shapes_column_width=70))


if __name__ == "__main__":
    main()
