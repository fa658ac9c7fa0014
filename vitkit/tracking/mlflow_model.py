"""The MLflow pyfunc model of a vitkit checkpoint, logged as code by the MLflow tracker (MLflow runs this file when
it loads the model; vitkit must be installed there).

    model = mlflow.pyfunc.load_model("models:/fashion-mnist-vit_mini_patch4_32/1")
    model.predict(images)  # uint8 (N, C, H, W) at the model's size, as vitkit.load(...).preprocess(path) gives

returns a DataFrame with each image's class, its probability, and one probability column per class; for a multi-label
model the probabilities are each label's sigmoid, and a `labels` column joins (with '|') those that reach their
thresholds.
"""
from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import torch


class VitkitModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from vitkit.engine.predict import Classifier

        self.classifier = Classifier(context.artifacts["checkpoint"], device="auto")

    def predict(self, context, model_input: np.ndarray, params=None) -> pd.DataFrame:
        images = np.asarray(model_input, dtype=np.uint8)
        if images.ndim == 3:  # one image
            images = images[None]
        probs = self.classifier.probabilities(torch.from_numpy(np.ascontiguousarray(images))).numpy()
        classes = self.classifier.classes
        best = probs.argmax(axis=1)
        table = {"class": [classes[i] for i in best], "probability": probs[np.arange(len(best)), best]}
        if self.classifier.multi_label:
            passing = probs >= np.asarray(self.classifier.thresholds)
            table["labels"] = ["|".join(c for c, hit in zip(classes, row) if hit) for row in passing]
        table.update({f"p_{c}": probs[:, k] for k, c in enumerate(classes)})
        return pd.DataFrame(table)


mlflow.models.set_model(VitkitModel())
