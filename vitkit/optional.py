"""Optional dependencies (the `export`, `serve` and `track` extras): imported where used, with a one-line install
hint; and packages whose names load on first use."""
from __future__ import annotations

import importlib
import sys

from .errors import UserError


def require(module: str, extra: str):
    """Import an optional dependency, or say in one line how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"this needs the Python package '{module}': pip install 'vitkit[{extra}]'") from None


def lazy_names(package: str, where: dict[str, str]):
    """`__getattr__` and `__dir__` for `package` (PEP 562): each name of `where` is imported from its submodule
    (`{'train': 'api'}`) on first use, so that importing the package imports none of them."""
    module = sys.modules[package]

    def __getattr__(name: str):
        if name in where:
            value = getattr(importlib.import_module(f".{where[name]}", package), name)
            setattr(module, name, value)
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted([*vars(module), *where])

    return __getattr__, __dir__
