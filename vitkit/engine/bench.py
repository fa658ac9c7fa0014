"""`vitkit bench`: how fast a model trains and predicts here, against the machine's own matmul rate and timm.

For each mode (training step: forward, loss, backward, gradient clipping, fused AdamW; inference: forward under
`inference_mode`) it times `steps` batches after `warmup` batches, `repeats` times, and reports medians: images/s,
milliseconds per batch, peak memory, achieved FLOP/s and MFU, the share of the device's bf16 or fp32 matmul rate
measured by the command itself (a large square matmul, best of several, before and after the timed runs: the
higher of the two, so that a busy moment does not lower the peak). A training step counts 3x the forward FLOPs,
each implementation's own: with token pooling vitkit's forward skips the last block's rows that the head never
reads, and timm's computes them.
With `compare="timm"`, timm's VisionTransformer with the same configuration, precision, batch and optimizer runs in
the same process, alternating with ours run by run, so that drift of a shared machine hits both alike.
`compile` applies `torch.compile` to vitkit's model only (for inference with frozen weights, as `vitkit predict
--compile` and `vitkit evaluate --compile` run it); timm's stays eager, the reference the targets name. vitkit's
training step is the trainer's: with bf16 on a CPU it runs on a bf16 copy of the weights with fp32 master weights
(`bf16_weights`, as `train.bf16_weights`; see `vitkit.engine.master`), timm's under autocast.
"""
from __future__ import annotations

import logging
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from ..models import count_flops, create_model, model_kwargs
from . import allocator
from .device import autocast, device_name, resolve_device, resolve_precision
from .evaluate import compiled_for_inference
from .master import Bf16Weights, use_bf16_weights
from .optim import fused_adamw

log = logging.getLogger(__name__)


@dataclass
class BenchSettings:
    model: str = "vit_mini_patch4_28"
    batch_size: int = 256
    precision: str = "auto"
    device: str = "auto"
    modes: tuple[str, ...] = ("train", "infer")
    steps: int = 10  # timed batches per run
    warmup: int = 3  # untimed batches before each run
    repeats: int = 5  # runs per model and mode; medians are reported
    compare: str | None = None  # "timm"
    compile: bool = False  # torch.compile vitkit's model (timm's stays eager: the reference)
    bf16_weights: bool | None = None  # vitkit's training step on a bf16 copy of the weights; None: as vitkit train
    overrides: dict = field(default_factory=dict)  # model arguments, e.g. img_size
    grad_checkpointing: bool = False  # training steps recompute each block in the backward pass (both models)


@dataclass
class Result:
    implementation: str  # "vitkit" or "timm"
    mode: str  # "train" or "infer"
    gflop_per_image: float  # forward FLOPs this implementation computes (timm's last block runs every token)
    img_per_s: float
    ms_per_batch: float
    peak_mem_mib: float
    tflop_per_s: float
    mfu: float  # achieved FLOP/s over the measured matmul rate of this precision
    runs_img_per_s: list[float]


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int | None = None, repeats: int = 5) -> float:
    """The device's FLOP/s on an n x n matmul in `dtype` (best of `repeats`), the denominator of MFU. `n`: 2048,
    or less where one such matmul would take over a second (bf16 on a CPU without bf16 instructions runs ~100x
    slower than fp32; the probe must not take minutes there)."""
    if n is None:
        n, small = 2048, _mm_seconds(device, dtype, 256)
        while n > 256 and small * (n / 256) ** 3 > MATMUL_PROBE_S:
            n //= 2
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        _sync(device)
        best = min(best, (time.perf_counter() - start) / 4)
    return 2 * n ** 3 / best


MATMUL_PROBE_S = 0.25  # the longest one matmul of the rate probe may take (2048² in fp32 on 2 cores: ~0.2 s)


def _mm_seconds(device: torch.device, dtype: torch.dtype, n: int) -> float:
    a = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, a)  # the first call pays for lazy initialization
    _sync(device)
    start = time.perf_counter()
    torch.mm(a, a)
    _sync(device)
    return time.perf_counter() - start


def timm_twin(kwargs: dict) -> nn.Module:
    """timm's VisionTransformer (or its distilled DeiT) with our model's configuration."""
    try:
        from timm.layers import SwiGLU, SwiGLUPacked
        from timm.models.deit import VisionTransformerDistilled
        from timm.models.vision_transformer import VisionTransformer as TimmViT
    except ImportError:
        raise UserError("--compare timm needs timm: pip install timm") from None
    keys = ("img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth", "num_heads", "mlp_ratio",
            "qkv_bias", "global_pool", "drop_rate", "attn_drop_rate", "drop_path_rate", "class_token", "reg_tokens",
            "no_embed_class", "pre_norm", "init_values", "act_layer", "fc_norm", "dynamic_img_size")
    if kwargs.get("rope") or not kwargs.get("abs_pos_embed", True) or kwargs.get("qkv_bias") == "qv":
        raise UserError("--compare timm builds timm's VisionTransformer, which has no rotary positions or query and "
                        "value biases alone: compare a model without them")
    args = {k: kwargs[k] for k in keys if k in kwargs}
    mlp = kwargs.get("mlp_layer", "mlp")
    if mlp != "mlp":
        args["mlp_layer"] = {"swiglu": SwiGLU, "swiglu_packed": SwiGLUPacked}[mlp]
    return (VisionTransformerDistilled if kwargs.get("dist_token") else TimmViT)(**args)


def cpu_peak_mib(s: BenchSettings, implementation: str, mode: str) -> float:
    """Peak resident memory of `steps` batches in a fresh process, over its level before the model was built.

    A process of its own, because freed memory stays with the allocator: in-process figures of a second model would
    reuse the first one's pages.
    """
    import json
    import subprocess
    import sys
    import tempfile

    spec = json.dumps({**asdict(s), "modes": [mode], "implementation": implementation})
    with tempfile.TemporaryDirectory() as tmp:
        answer = Path(tmp) / "peak_mib"
        r = subprocess.run([sys.executable, "-m", "vitkit.engine.bench", spec, str(answer)], capture_output=True,
                           text=True, timeout=600)
        if r.returncode != 0 or not answer.is_file():
            log.warning("memory measurement failed: %s", r.stderr.strip().splitlines()[-1:] or r.returncode)
            return float("nan")
        return float(answer.read_text())


def _measure_own_peak(spec: dict) -> float:
    """Run in the child process of `cpu_peak_mib`: MiB of peak RSS growth over warmup + one timed run (sampled
    every millisecond; the high-water mark of the kernel would include the imports' own peak)."""
    import threading

    implementation, mode = spec.pop("implementation"), spec["modes"][0]
    s = BenchSettings(**{**spec, "modes": tuple(spec["modes"])})
    allocator.tune()  # as in the parent
    device = resolve_device(s.device)
    amp_dtype = resolve_precision(s.precision, device)
    kwargs = model_kwargs(s.model, **s.overrides)
    x, y = _inputs(s, kwargs, device)
    base = peak = _rss()
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.wait(0.001):
            peak = max(peak, _rss())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    model = create_model(s.model, **s.overrides) if implementation == "vitkit" else timm_twin(kwargs)
    model.set_grad_checkpointing(s.grad_checkpointing)
    bf16_weights = implementation == "vitkit" and use_bf16_weights(s.bf16_weights, device, amp_dtype)
    step = make_step(model.to(device), mode, x, y, device, amp_dtype, bf16_weights)
    for _ in range(s.warmup + s.steps):
        step()
    done.set()
    sampler.join()
    return (max(peak, _rss()) - base) / 2 ** 20


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def _inputs(s: BenchSettings, kwargs: dict, device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(s.batch_size, kwargs["in_chans"], kwargs["img_size"], kwargs["img_size"], generator=g)
    y = torch.randint(0, kwargs["num_classes"], (s.batch_size,), generator=g)
    return x.to(device), y.to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(model: nn.Module, mode: str, x: torch.Tensor, y: torch.Tensor, device, amp_dtype,
              bf16_weights: bool = False, compile: bool = False):
    """A closure running one batch: a full training step as the trainer runs it, or an inference forward pass.
    `compile` compiles the module that runs the training passes (the bf16 copy with `bf16_weights`)."""
    if mode == "infer":
        model.eval()

        def infer():
            with torch.inference_mode(), autocast(device, amp_dtype):
                model(x)
        return infer
    model.train()
    work = Bf16Weights(model) if bf16_weights else None
    net = work.module if work else model
    net = torch.compile(net) if compile else net
    inputs, casts = (x.to(torch.bfloat16), None) if work else (x, amp_dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, fused=fused_adamw(model))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)

    def train():
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, casts):
            loss = loss_fn(net(inputs).float(), y)
        loss.backward()
        if work:
            work.grads_to_master()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if work:
            work.sync()
    return train


def time_run(step, steps: int, warmup: int, device: torch.device) -> float:
    """Seconds for `steps` batches after `warmup` untimed ones."""
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return time.perf_counter() - start


def _models(s: BenchSettings, kwargs: dict, device: torch.device) -> dict[str, nn.Module]:
    """vitkit's model, and timm's twin with --compare timm, seeded alike, gradient checkpointing as asked."""
    torch.manual_seed(0)
    models = {"vitkit": create_model(s.model, **s.overrides).to(device)}
    if s.compare == "timm":
        models["timm"] = timm_twin(kwargs).to(device)
    for model in models.values():
        model.set_grad_checkpointing(s.grad_checkpointing)
    return models


def run_bench(s: BenchSettings) -> dict:
    """Measure as `s` says; a JSON-ready dict with the settings, the device, the matmul rate and the results."""
    if s.batch_size < 1 or s.steps < 1 or s.repeats < 1 or s.warmup < 0:
        raise UserError("--batch-size, --steps and --repeats must be at least 1, --warmup at least 0")
    malloc = allocator.tune()  # process-wide: timm's model runs under the same allocator settings
    device = resolve_device(s.device)
    amp_dtype = resolve_precision(s.precision, device)
    precision = "bf16" if amp_dtype is not None else "fp32"
    bf16_weights = use_bf16_weights(s.bf16_weights, device, amp_dtype)  # a mistake fails before any measuring
    kwargs = model_kwargs(s.model, **s.overrides)
    x, y = _inputs(s, kwargs, device)  # a batch too large for memory fails here, before anything is measured
    models = _models(s, kwargs, device)
    # vitkit's forward skips the last block's rows that the head never reads; timm's computes every token
    flops = {"vitkit": count_flops(models["vitkit"]), "timm": count_flops(models["vitkit"], every_token=True)}
    eager = models["vitkit"]
    mm_dtype = torch.bfloat16 if amp_dtype is not None else torch.float32
    rates = [matmul_rate(device, mm_dtype)]  # measured again after the runs: a busy moment must not set the peak
    measured_runs = []
    for mode in s.modes:
        if s.compile and mode == "infer":  # compiled after training ran, so the frozen weights are the final ones
            models["vitkit"] = compiled_for_inference(eager)
        steps = {name: make_step(m, mode, x, y, device, amp_dtype, bf16_weights and name == "vitkit",
                                 s.compile and name == "vitkit") for name, m in models.items()}
        runs: dict[str, list[float]] = {name: [] for name in models}
        peaks = {}
        for r in range(s.repeats):
            for name in (list(models) if r % 2 == 0 else list(models)[::-1]):  # alternate who goes first
                if device.type == "cuda" and r == 0:
                    torch.cuda.reset_peak_memory_stats(device)
                runs[name].append(time_run(steps[name], s.steps, s.warmup if r == 0 else 1, device))
                if device.type == "cuda" and r == 0:
                    peaks[name] = torch.cuda.max_memory_allocated(device) / 2 ** 20
        for name, measured in runs.items():
            seconds = statistics.median(measured)
            img_s = s.batch_size * s.steps / seconds
            achieved = img_s * flops[name] * (3 if mode == "train" else 1)
            peak = peaks[name] if name in peaks else cpu_peak_mib(s, name, mode)
            measured_runs.append((name, mode, img_s, seconds, peak, achieved, measured))
    rates.append(matmul_rate(device, mm_dtype))
    if min(rates) < 0.8 * max(rates):
        log.warning("the matmul rate moved from %.3f to %.3f TFLOP/s during the benchmark (a busy machine?); MFU "
                    "uses the higher", rates[0] / 1e12, rates[1] / 1e12)
    results = [Result(name, mode, round(flops[name] / 1e9, 4), round(img_s, 1), round(1000 * seconds / s.steps, 2),
                      round(peak, 1), round(achieved / 1e12, 3), round(achieved / max(rates), 4),
                      [round(s.batch_size * s.steps / t, 1) for t in measured])
               for name, mode, img_s, seconds, peak, achieved, measured in measured_runs]
    out = {"model": s.model, "model_kwargs": kwargs, "batch_size": s.batch_size, "precision": precision,
           "device": device_name(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
           "compile": s.compile, "bf16_weights": bf16_weights, "grad_checkpointing": s.grad_checkpointing,
           "malloc": malloc,
           "gflop_per_image_forward": round(flops["vitkit"] / 1e9, 4),
           "matmul_tflop_per_s": round(max(rates) / 1e12, 3),
           "matmul_tflop_per_s_runs": [round(r / 1e12, 3) for r in rates], "steps": s.steps, "repeats": s.repeats,
           "results": [asdict(r) for r in results]}
    if s.compare == "timm":
        by = {(r.implementation, r.mode): r for r in results}
        out["speedup_vs_timm"] = {m: round(by["vitkit", m].img_per_s / by["timm", m].img_per_s, 3) for m in s.modes}
    return out


if __name__ == "__main__":  # the child process of cpu_peak_mib: settings in, MiB written to the file named
    import json
    import sys

    Path(sys.argv[2]).write_text(str(round(_measure_own_peak(json.loads(sys.argv[1])), 1)))
