"""bf16 training with fp32 master weights.

Under autocast the weights stay fp32 and every linear layer casts its input and weight to bf16 and back, while
LayerNorm, the residual additions and their gradients run in fp32: a tenth or more of a CPU training step goes to
those casts and to fp32 elementwise work. Here the training passes run on a bf16 copy of the model instead, without
autocast (activations, residual stream and gradients in bf16; LayerNorm, softmax and the loss accumulate in fp32
inside their kernels), while the fp32 model stays the master copy: the optimizer updates it from the bf16 gradients
cast to fp32, and its new weights are copied back into the bf16 copy after each step. The fp32 model is what is
evaluated, averaged (EMA) and saved, exactly as with autocast.

BatchNorm layers (the conv stem) keep fp32 parameters in the copy and share their running statistics with the
master model, so the statistics accumulate in fp32 where they are saved.
With `train.accum_steps` > 1 the passes' gradients add up in bf16 before they reach the master (under DDP the
processes average them there too), which rounds each sum to bf16's 8-bit mantissa.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import UserError


class Bf16Weights:
    """`module` is the bf16 working copy of `master` that training passes run on.

    After backward: `grads_to_master()`; then clip and step the optimizer on the master's parameters; then `sync()`.
    """

    def __init__(self, master: nn.Module):
        self.master = master
        self.module = copy.deepcopy(master)
        for work, main in zip(self.module.modules(), master.modules()):
            if isinstance(work, nn.modules.batchnorm._BatchNorm):
                for name, buf in main.named_buffers(recurse=False):
                    work._buffers[name] = buf  # one set of running statistics, the master's
            else:
                for p in work.parameters(recurse=False):
                    p.data = p.data.to(torch.bfloat16)
        self.pairs = list(zip(master.parameters(), self.module.parameters()))

    def zero_grad(self) -> None:
        for _, work in self.pairs:
            work.grad = None

    def grads_to_master(self) -> None:
        """The working copy's gradients, in fp32, as the master's (which the optimizer reads)."""
        for main, work in self.pairs:
            main.grad = None if work.grad is None else work.grad.float()
            work.grad = None

    @torch.no_grad()
    def sync(self) -> None:
        """Copy the master's weights into the working copy (after an optimizer step or a resume)."""
        torch._foreach_copy_([w for _, w in self.pairs], [m for m, _ in self.pairs])

    def follow_modes(self) -> None:
        """Give each module of the working copy the master's training mode (e.g. a frozen stem's BatchNorm in eval
        mode), after `master.train()` and its exceptions."""
        for work, main in zip(self.module.modules(), self.master.modules()):
            work.training = main.training


def use_bf16_weights(setting: bool | None, device: torch.device, amp_dtype: torch.dtype | None) -> bool:
    """`train.bf16_weights`: null (auto) turns the working copy on for bf16 training on a CPU, where it was measured
    faster than autocast (docs/benchmarks.md); GPUs keep autocast unless it is set to true."""
    if setting is None:
        return amp_dtype == torch.bfloat16 and device.type == "cpu"
    if setting and amp_dtype != torch.bfloat16:
        raise UserError("train.bf16_weights=true needs bf16 training: drop --precision fp32, or set "
                        "train.bf16_weights=false")
    return bool(setting)
