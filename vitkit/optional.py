"""Optional dependencies (the `export` and `serve` extras): imported where used, with a one-line install hint."""
from __future__ import annotations

import importlib

from .errors import UserError


def require(module: str, extra: str):
    """Import an optional dependency, or say in one line how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"this needs the Python package '{module}': pip install 'vitkit[{extra}]'") from None
