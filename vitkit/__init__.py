"""vitkit: train, evaluate and use Vision Transformer image classifiers.

    import vitkit
    model = vitkit.create_model("vit_small_patch16_224", num_classes=10)
    result = vitkit.train(vitkit.build_config(options={"data.source": "fashion-mnist", "train.epochs": 5}))
    clf = vitkit.load(result.best_checkpoint)
    clf.predict(["shoe.png"])

The names below are imported on first use, so `import vitkit` (and `vitkit --help`) does not import PyTorch.
"""
from __future__ import annotations

import importlib

from .version import __version__

_WHERE = {
    "Classifier": "engine.predict", "Config": "config", "build_config": "config", "RunResult": "engine.train",
    "DataError": "errors", "UserError": "errors", "VitkitError": "errors", "VisionTransformer": "models",
    "create_model": "models", "list_models": "models", "train": "api", "evaluate": "api", "load": "api",
}


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vitkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])


__all__ = ["Classifier", "Config", "DataError", "RunResult", "UserError", "VisionTransformer", "VitkitError",
           "__version__", "build_config", "create_model", "evaluate", "list_models", "load", "train"]
