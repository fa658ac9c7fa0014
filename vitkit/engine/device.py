"""Choosing the device and the numeric precision."""
from __future__ import annotations

import contextlib
import logging

import torch

from ..errors import UserError

log = logging.getLogger(__name__)


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible: use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise UserError(f"device must be auto, cpu or cuda, not {name!r}")
    return torch.device(name)


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX-512 BF16: bf16 matmuls are several times faster than fp32 there."""
    cpu = torch.cpu
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(cpu, probe, None)
        if fn is not None and fn():
            return True
    return False


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (torch.bfloat16) or None for plain fp32."""
    if name == "fp32":
        return None
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
    else:
        supported = cpu_has_fast_bf16()
    if name == "bf16":
        if not supported:
            log.warning("bf16 was asked for but this %s has no fast bf16 support; it will run, slowly", device.type)
        return torch.bfloat16
    return torch.bfloat16 if supported else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def compiled(model: torch.nn.Module, **options):
    """`torch.compile(model, **options)`. Where compiling fails (no C++ compiler, an unsupported op) PyTorch runs
    those parts eagerly instead, with a warning, rather than stopping a run or a server: the one place that asks
    torch for it (a process-wide dynamo setting)."""
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True
    if not options:
        log.info("train.compile: the first steps compile the model (a minute or two on a small CPU)")
    return torch.compile(model, **options)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's with the threads torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "CPU")
    except OSError:
        name = "CPU"
    return f"{name} ({torch.get_num_threads()} threads)"
