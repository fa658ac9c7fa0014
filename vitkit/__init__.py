"""vitkit: train, evaluate and use Vision Transformer image classifiers.

    import vitkit
    model = vitkit.create_model("vit_small_patch16_224", num_classes=10)
    result = vitkit.train(vitkit.build_config(options={"data.source": "fashion-mnist", "train.epochs": 5}))
    clf = vitkit.load(result.best_checkpoint)
    clf.predict(["shoe.png"])
"""
__version__ = "0.1.0"

import torch  # noqa: E402

from .compat import check_torch  # noqa: E402

check_torch(torch.__version__)

from .config import Config, build_config  # noqa: E402
from .engine.evaluate import evaluate_checkpoint as evaluate  # noqa: E402
from .engine.predict import Classifier  # noqa: E402
from .engine.train import RunResult, train  # noqa: E402
from .errors import DataError, UserError  # noqa: E402
from .models import VisionTransformer, create_model, list_models  # noqa: E402


def load(checkpoint, device: str = "auto", precision: str = "auto") -> Classifier:
    """Load a trained model file; the result's `.predict(images)` returns top-k classes per image."""
    return Classifier(checkpoint, device=device, precision=precision)


__all__ = ["Classifier", "Config", "DataError", "RunResult", "UserError", "VisionTransformer", "__version__",
           "build_config", "create_model", "evaluate", "list_models", "load", "train"]
