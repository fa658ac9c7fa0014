"""One AdamW step over a model's parameters: torch's per-tensor loop, its foreach kernels and its fused kernel.

    python benchmarks/optimizer.py [--models vit_mini_patch4_28 vit_small_patch16_224 vit_base_patch16_224]
                                   [--repeats 5]

`vitkit train` (and `vitkit bench`'s training step) use the fused kernel on CPUs and GPUs
(`vitkit.engine.optim.fused_adamw`); on a CPU torch's default is the per-tensor loop. Each figure is the best of
`repeats` steps after two warm-up steps, with random gradients in place, weight decay 0.05, in one process.
"""
from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+",
                        default=["vit_mini_patch4_28", "vit_small_patch16_224", "vit_base_patch16_224"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import torch

    from vitkit.engine import allocator
    from vitkit.models import create_model, num_params

    allocator.tune()
    kinds = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}; ms per AdamW step (best of {args.repeats})")
    for name in args.models:
        model = create_model(name)
        params = list(model.parameters())
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        ms = {}
        for kind, options in kinds.items():
            optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05, **options)
            for _ in range(2):
                optimizer.step()
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                optimizer.step()
                best = min(best, time.perf_counter() - start)
            ms[kind] = 1000 * best
        print(f"  {name} ({num_params(model) / 1e6:.1f}M parameters): " +
              ", ".join(f"{kind} {t:.1f}" for kind, t in ms.items()) + f"; fused/loop {ms['loop'] / ms['fused']:.1f}x")


if __name__ == "__main__":
    main()
