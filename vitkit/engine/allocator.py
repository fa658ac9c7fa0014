"""Keeping freed memory in the process, so that every training step does not fault its pages in again.

PyTorch's CPU tensors come from the C library's `malloc`. glibc serves large blocks by `mmap` and gives memory at the
top of its heap back to the kernel on `free` once more than a threshold is free there; both thresholds adapt, but
a ViT's activations and gradients (tens of MiB each, freed and asked for again in every step) keep crossing them.
Each time, the kernel hands out fresh zeroed pages one fault at a time: about 80,000 page faults (over 300 MiB
of zeroed pages) per training step of the 28x28 preset at batch 256, which cost that step about 15% of its speed
on a 2-core CPU (`benchmarks/allocator.py`, docs/benchmarks.md). Fixed thresholds large enough for those blocks
(`mallopt`) bring the faults to about zero; the price is that up to `TRIM_THRESHOLD` of freed memory stays with the
process instead of going back to the system.

`tune()` does this once per process, on Linux with glibc, unless the environment already chose: `VITKIT_MALLOC=
default` leaves glibc as it is, and so does a threshold the user set through glibc's own variables
(`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`, `MALLOC_TOP_PAD_`, `MALLOC_MMAP_MAX_`) or `GLIBC_TUNABLES`.
An allocator loaded with `LD_PRELOAD` (jemalloc, tcmalloc) does not read these settings at all.
"""
from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers in <malloc.h>
MMAP_THRESHOLD = 256 * 2 ** 20  # blocks up to this size come from the heap, not from a fresh mmap
TRIM_THRESHOLD = 512 * 2 ** 20  # free memory at the heap's top kept before any is given back

_GLIBC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
_GLIBC_TUNABLES = ("mmap_threshold", "trim_threshold", "top_pad", "mmap_max")

_state: str | None = None  # what tune() found or did: "tuned", or why it left the allocator alone


def tune() -> str:
    """Set glibc's malloc thresholds for this process (once); returns "tuned" or why nothing was changed."""
    global _state
    if _state is None:
        _state = _tune()
        log.debug("malloc: %s", _state)
    return _state


def _tune() -> str:
    if os.environ.get("VITKIT_MALLOC", "").lower() in ("default", "0", "off"):
        return "left as glibc's default (VITKIT_MALLOC)"
    chosen = [k for k in _GLIBC_VARIABLES if k in os.environ]
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    chosen += ["GLIBC_TUNABLES"] if any(f"malloc.{name}" in tunables for name in _GLIBC_TUNABLES) else []
    if chosen:
        return f"left as the environment set it ({', '.join(chosen)})"
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only: other C libraries have other allocators
    except (OSError, AttributeError):
        return "left alone (not glibc)"
    if not (libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        return "left alone (mallopt refused the thresholds)"
    return "tuned"
