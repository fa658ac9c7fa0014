"""What the MLP's activation costs in a training step, and whether running the MLP over blocks of rows helps.

    python benchmarks/mlp_step.py [--model vit_small_patch16_224] [--batch-size 32] [--rows 512 2048]
                                  [--rounds 5] [--steps 3]

Builds the model once per variant, alike, and times `vitkit bench`'s training step (bf16 weight copy where
`vitkit train` uses one), the variants taking turns for `--rounds` rounds of `--steps` steps; prints the median
seconds per step of each and its ratio to the model as it is:

- `gelu`: the model as it is (exact GELU);
- `relu`, `identity`: the activation swapped, to bound what a cheaper or fused GELU could save;
- `blocked-N`: the MLP (fc1, GELU, fc2 and their backward) run over blocks of N token rows by one autograd
  function, so that each block's pre-activation and activation stay in cache; weight gradients over all rows.

Speed only: the swapped activations change the model.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from vitkit.engine import allocator
from vitkit.engine.bench import BenchSettings, _inputs, make_step
from vitkit.engine.device import resolve_device, resolve_precision
from vitkit.engine.master import use_bf16_weights
from vitkit.models import create_model, model_kwargs
from vitkit.models.vit import Mlp


class BlockedMlpFunction(torch.autograd.Function):
    """fc2(gelu(fc1(x))) over blocks of `rows` rows of the flattened tokens, forward and backward."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, rows):
        flat = x.reshape(-1, x.shape[-1])
        z = flat.new_empty(len(flat), w1.shape[0])
        h = torch.empty_like(z)
        out = flat.new_empty(len(flat), w2.shape[0])
        for s in range(0, len(flat), rows):
            torch.addmm(b1, flat[s:s + rows], w1.t(), out=z[s:s + rows])
            torch.ops.aten.gelu.out(z[s:s + rows], out=h[s:s + rows])
            torch.addmm(b2, h[s:s + rows], w2.t(), out=out[s:s + rows])
        ctx.save_for_backward(flat, w1, w2, z, h)
        ctx.rows = rows
        return out.view(*x.shape[:-1], -1)

    @staticmethod
    def backward(ctx, grad):
        flat, w1, w2, z, h = ctx.saved_tensors
        rows, g = ctx.rows, grad.reshape(-1, grad.shape[-1]).contiguous()
        gz, gx = torch.empty_like(z), torch.empty_like(flat)
        for s in range(0, len(g), rows):
            torch.ops.aten.gelu_backward.grad_input(g[s:s + rows] @ w2, z[s:s + rows], grad_input=gz[s:s + rows])
            torch.mm(gz[s:s + rows], w1, out=gx[s:s + rows])
        return gx.view(*grad.shape[:-1], -1), gz.t() @ flat, gz.sum(0), g.t() @ h, g.sum(0), None


class BlockedMlp(Mlp):
    rows = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return BlockedMlpFunction.apply(x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias, self.rows)


def variant(name: str, model_name: str) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(model_name)
    for mlp in (m for m in model.modules() if isinstance(m, Mlp)):
        if name in ("relu", "identity"):
            mlp.act = nn.ReLU() if name == "relu" else nn.Identity()
        elif name.startswith("blocked-"):
            mlp.__class__ = type("BlockedMlp", (BlockedMlp,), {"rows": int(name.split("-")[1])})
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rows", type=int, nargs="*", default=[512, 2048])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    allocator.tune()
    device = resolve_device("cpu")
    amp_dtype = resolve_precision("auto", device)
    x, y = _inputs(BenchSettings(model=args.model, batch_size=args.batch_size), model_kwargs(args.model), device)
    bf16_weights = use_bf16_weights(None, device, amp_dtype)
    names = ["gelu", "relu", "identity"] + [f"blocked-{r}" for r in args.rows]
    steps = {n: make_step(variant(n, args.model), "train", x, y, device, amp_dtype, bf16_weights) for n in names}
    for step in steps.values():
        step()
        step()
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - start) / args.steps)
    print(f"{args.model}, batch {args.batch_size}, {'bf16' if amp_dtype else 'fp32'}, bf16 weight copy: "
          f"{bf16_weights}, {torch.get_num_threads()} threads; median s/step of {args.rounds} rounds")
    base = statistics.median(times["gelu"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:>14}  {median:.4f} s/step  {base / median:.3f}x")


if __name__ == "__main__":
    main()
