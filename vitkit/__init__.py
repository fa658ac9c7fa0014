"""vitkit: train, evaluate and use Vision Transformer image classifiers.

    import vitkit
    model = vitkit.create_model("vit_small_patch16_224", num_classes=10)
    result = vitkit.train(vitkit.build_config(options={"data.source": "fashion-mnist", "train.epochs": 5}))
    clf = vitkit.load(result.best_checkpoint)
    clf.predict(["shoe.png"])

The names below are imported on first use, so `import vitkit` (and `vitkit --help`) does not import PyTorch.
"""
from __future__ import annotations

from .optional import lazy_names
from .version import __version__

_WHERE = {
    "Classifier": "engine.predict", "Config": "config", "build_config": "config", "RunResult": "engine.train",
    "DataError": "errors", "UserError": "errors", "VitkitError": "errors", "VisionTransformer": "models",
    "create_model": "models", "list_models": "models", "train": "api", "evaluate": "api", "load": "api",
}


__getattr__, __dir__ = lazy_names(__name__, _WHERE)


__all__ = ["Classifier", "Config", "DataError", "RunResult", "UserError", "VisionTransformer", "VitkitError",
           "__version__", "build_config", "create_model", "evaluate", "list_models", "load", "train"]
