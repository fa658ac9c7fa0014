"""How good are a backbone's features for my data: k-NN and logistic-regression probes on frozen features.

The quick number before any fine-tuning, for a vitkit checkpoint or any `--init` source: the backbone embeds the
training split and the evaluated split once (cached like `--freeze backbone`'s features), then

- k-NN: each evaluated image votes among its k most cosine-similar training images, each vote weighted by
  exp(similarity / T), as in DINO (Caron et al. 2021: k = 20, T = 0.07);
- logistic regression: scikit-learn's multinomial model on standardized features.

Both report top-1 and per-class precision, recall and F1 through the same metrics as `vitkit evaluate`.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import load_data
from ..data.dataset import adapt_stats, check_bad_files
from ..errors import UserError
from ..metrics import classification_report
from ..models import create_model, get_spec, is_foreign, list_models
from ..models.pretrained import read_source
from . import allocator
from .checkpoint import load_model, read_header, single_label_only
from .device import resolve_device, resolve_precision
from .evaluate import default_split
from .features import frozen_features

log = logging.getLogger(__name__)


@dataclass
class Backbone:
    model: torch.nn.Module
    name: str
    mean: tuple[float, ...] | None  # None: the data's own statistics
    std: tuple[float, ...] | None


def _is_checkpoint(source: str) -> bool:
    path = Path(source)
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    try:
        return "vitkit" in read_header(path).get("__metadata__", {})
    except UserError:
        return False


def load_backbone(source: str, model_name: str | None = None, img_size: int | None = None,
                  device: torch.device | str = "cpu") -> Backbone:
    """A vitkit checkpoint, or a registered model (`model_name`; for `timm:NAME.TAG` the NAME by default) with
    `source`'s weights, and the normalization its weights were trained with."""
    if _is_checkpoint(source):
        model, meta = load_model(source, device)
        single_label_only(meta, "probing")
        if is_foreign(meta["model"]):
            raise UserError(f"{source} holds timm's {meta['model'][5:]}: vitkit probe reads a ViT's features; give a "
                            "vitkit ViT checkpoint or a registered model")
        if img_size and img_size != meta["img_size"]:
            raise UserError(f"{source} takes {meta['img_size']} px images: drop --img-size")
        return Backbone(model, meta["model"], tuple(meta["mean"]), tuple(meta["std"]))
    if model_name is None and source.startswith("timm:"):
        model_name = source[5:].split(".", 1)[0]
    if model_name is None:
        raise UserError(f"{source} is not a vitkit checkpoint: name the model its weights are for with --model "
                        "(`vitkit models` lists them)")
    if model_name not in list_models():
        get_spec(model_name)  # the one-line error with a suggestion
    pretrained = read_source(source)
    model = create_model(model_name, num_classes=0, img_size=img_size, init=pretrained)
    return Backbone(model.to(device).eval(), model_name, pretrained.mean, pretrained.std)


def knn_logits(train: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, num_classes: int, k: int,
               temperature: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """Log class scores (M, K) of weighted k-NN on cosine similarity (DINO's vote: weights exp(sim / T))."""
    train = torch.nn.functional.normalize(train.float(), dim=1)
    query = torch.nn.functional.normalize(query.float(), dim=1)
    k = min(k, len(train))
    out = []
    for start in range(0, len(query), chunk):
        sim, idx = (query[start:start + chunk] @ train.T).topk(k, dim=1)  # (m, k)
        votes = torch.zeros(len(sim), num_classes).scatter_add_(1, labels[idx], (sim / temperature).exp())
        out.append((votes / votes.sum(1, keepdim=True)).clamp_min(1e-12).log())
    return torch.cat(out) if out else torch.empty(0, num_classes)


def logreg_logits(train: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, num_classes: int,
                  c: float = 1.0, max_iter: int = 1000) -> torch.Tensor:
    """Log class probabilities (M, K) of a multinomial logistic regression fitted on standardized features."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train.numpy())
    fit = LogisticRegression(C=c, max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the iteration cap is the budget; the score says it
        fit.fit(scaler.transform(train.numpy()), labels.numpy())
    proba = fit.predict_proba(scaler.transform(query.numpy()))
    out = torch.full((len(query), num_classes), 1e-12, dtype=torch.float64)
    out[:, torch.as_tensor(fit.classes_)] = torch.as_tensor(proba, dtype=torch.float64).clamp_min(1e-12)
    return out.log().float()


def _flat(features: torch.Tensor) -> torch.Tensor:
    """A distilled model's two tokens (N, 2, D) to their mean, as its pre-logits are."""
    return features.mean(dim=1) if features.ndim == 3 else features


def probe(source: str, data: str, model_name: str | None = None, split: str | None = None,
          data_root: str | None = None, img_size: int | None = None, ks: tuple[int, ...] = (10, 20),
          temperature: float = 0.07, c: float = 1.0, device: str = "auto", precision: str = "auto",
          batch_size: int = 256, val_fraction: float | None = None, seed: int = 0) -> dict:
    """k-NN and logistic-regression accuracy of `source`'s frozen features on `data`: fitted on the training
    split, scored on `split` (default: test where the data has one, else val, held out by `val_fraction`)."""
    if not ks or min(ks) < 1 or temperature <= 0 or c <= 0:
        raise UserError("--k needs positive neighbour counts, --temperature and --c positive values")
    allocator.tune()
    dev = resolve_device(device)
    amp = resolve_precision(precision, dev)
    backbone = load_backbone(source, model_name, img_size, dev)
    model = backbone.model
    size = model.patch_embed.img_size[0]
    chans = next(model.patch_embed.parameters()).shape[1]  # the first conv's input channels, either stem
    split = split or default_split(data, None, 0.0)
    if val_fraction is None:  # scored on test, nothing needs holding out of the training split
        val_fraction = 0.0 if split == "test" else 0.1
    bundle = load_data(data, img_size=size, channels=chans, data_root=data_root, val_fraction=val_fraction,
                       seed=seed, splits=("train", split), allow_empty_classes=True)
    for name in ("train", split):
        if name not in bundle.splits or len(bundle.splits[name]) == 0:
            raise UserError(f"{data} has no {name!r} split to probe with: choose another --split")
    check_bad_files(bundle.bad_files, sum(len(s) for s in bundle.splits.values()) + len(bundle.bad_files), 0.1)
    mean, std = (adapt_stats(backbone.mean, backbone.std, chans) if backbone.mean is not None
                 else (bundle.mean, bundle.std))
    splits = {"train": bundle.splits["train"], split: bundle.splits[split]}  # as training names them: one cache
    feats = frozen_features(model, splits, mean, std, dev, amp, batch_size)
    train, query = _flat(feats.train[0]), _flat(feats.others[split])
    train_labels, labels = bundle.splits["train"].labels, bundle.splits[split].labels
    num_classes, result = len(bundle.classes), {}
    for k in ks:
        start = time.perf_counter()
        report = classification_report(knn_logits(train, train_labels, query, num_classes, k, temperature), labels,
                                       bundle.classes)
        result[f"knn{k}"] = {**_brief(report), "seconds": round(time.perf_counter() - start, 3)}
    start = time.perf_counter()
    report = classification_report(logreg_logits(train, train_labels, query, num_classes, c), labels, bundle.classes)
    result["logreg"] = {**_brief(report), "seconds": round(time.perf_counter() - start, 3)}
    return {"source": source, "model": backbone.name, "data": data, "split": split, "classes": bundle.classes,
            "train_images": len(train), "eval_images": len(query), "feature_dim": int(train.shape[1]),
            "img_size": size, "feature_seconds": round(feats.seconds, 2), "features_cached": feats.cached,
            "temperature": temperature, "probes": result,
            "skipped_files": [{"path": p, "reason": r} for p, r in bundle.bad_files]}


def _brief(report: dict) -> dict:
    """The parts of `classification_report` a probe shows: top-1 and the per-class table."""
    return {"top1": report["top1"], "top5": report["top5"], "macro_f1": report["macro"]["f1"], "mcc": report["mcc"],
            "per_class": report["per_class"]}
