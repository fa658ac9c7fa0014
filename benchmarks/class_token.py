"""The class-token shortcut of `VisionTransformer.forward`: speed against running every token through the last block.

    python benchmarks/class_token.py [--model vit_mini_patch4_28] [--batch-size 256] [--mode train|infer]
                                     [--rounds 6] [--steps 3]

With token pooling the head reads only the class token, so `forward` runs the last block for that row alone
(`Block.forward_prefix`). Here two copies of one model, with the same weights, run `vitkit bench`'s step (the
trainer's training step, or inference) in one process, alternating which goes first: one as it is, one whose forward
is `forward_head(forward_features(x))`, every token through every block (what timm's forward computes). Reports the
median images/s of each, the ratio, and the largest logit difference between the two in fp32.
"""
from __future__ import annotations

import argparse
import statistics
import types


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vit_mini_patch4_28")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--mode", choices=["train", "infer"], default="train")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    import torch

    from vitkit.engine import allocator
    from vitkit.engine.bench import BenchSettings, _inputs, make_step, time_run
    from vitkit.engine.device import resolve_precision
    from vitkit.engine.master import use_bf16_weights
    from vitkit.models import count_flops, create_model, model_kwargs

    allocator.tune()
    device = torch.device("cpu")
    kwargs = model_kwargs(args.model)
    x, y = _inputs(BenchSettings(model=args.model, batch_size=args.batch_size), kwargs, device)
    torch.manual_seed(0)
    short = create_model(args.model)
    every = create_model(args.model)
    every.load_state_dict(short.state_dict())
    every.forward = types.MethodType(lambda self, images: self.forward_head(self.forward_features(images)), every)
    with torch.no_grad():
        diff = (short.eval()(x[:16]) - every.eval()(x[:16])).abs().max().item()
    amp_dtype = resolve_precision("auto", device)
    bf16_weights = use_bf16_weights(None, device, amp_dtype)
    models = {"class token only": short, "every token": every}
    steps = {name: make_step(m, args.mode, x, y, device, amp_dtype, bf16_weights) for name, m in models.items()}
    runs: dict[str, list[float]] = {name: [] for name in models}
    for r in range(args.rounds):
        for name in (list(models) if r % 2 == 0 else list(models)[::-1]):
            seconds = time_run(steps[name], args.steps, 2 if r < 2 else 1, device)
            runs[name].append(args.batch_size * args.steps / seconds)
    median = {name: statistics.median(v) for name, v in runs.items()}
    print(f"{args.model}, batch {args.batch_size}, {args.mode}, {torch.get_num_threads()} threads; forward GFLOPs per "
          f"image {count_flops(short) / 1e9:.4f} against {count_flops(short, every_token=True) / 1e9:.4f}")
    for name, v in runs.items():
        print(f"  {name:>16}: {median[name]:8.1f} img/s (runs: {', '.join(f'{r:.1f}' for r in v)})")
    print(f"  speed-up {median['class token only'] / median['every token']:.3f}x; largest fp32 logit difference "
          f"{diff:.2e}")


if __name__ == "__main__":
    main()
