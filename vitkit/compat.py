"""The oldest PyTorch vitkit runs on, checked at import so that an old install fails with the fix, not later."""
from __future__ import annotations

MIN_TORCH = (2, 4)  # torch.load(weights_only=True) with its allow-list, torch.amp.autocast on CPU and CUDA


def check_torch(version: str) -> None:
    """Raise `ImportError` naming the upgrade when `version` (torch.__version__) is older than MIN_TORCH."""
    numbers = []
    for part in version.split("+")[0].split(".")[:2]:
        digits = "".join(ch for ch in part if ch.isdigit())  # '0a0' or '1rc1' still compare by their number
        numbers.append(int(digits) if digits else 0)
    if tuple(numbers) < MIN_TORCH:
        need = ".".join(map(str, MIN_TORCH))
        raise ImportError(f"vitkit needs PyTorch {need} or newer, but {version} is installed: "
                          f"pip install --upgrade 'torch>={need}'")


def require_torch() -> None:
    """Import torch and check its version; the packages that use torch call this first."""
    import torch

    check_torch(torch.__version__)
