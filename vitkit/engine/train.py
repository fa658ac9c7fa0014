"""`train(config)`: data, model, run directory and trainer put together; the CLI's `train` calls this."""
from __future__ import annotations

import dataclasses
import logging
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import Config, resume_config  # noqa: F401 (resume_config: where earlier versions had it)
from ..data import MANIFEST, DataBundle, is_named, load_data
from ..data.dataset import adapt_stats, check_bad_files, resize_images
from ..data.labels import label_spec
from ..data.splits import is_multi_label
from ..errors import DataError, UserError, out_of_memory
from ..fileio import DirectoryLock
from ..models import create_timm, get_spec, is_foreign, model_flops, model_kwargs, num_params
from ..models.foreign import VIT_ONLY, default_img_size, timm_kwargs
from ..models.pretrained import Pretrained, load_pretrained, read_source
from ..models.vit import VisionTransformer
from ..tracking import RunOutputs, Trackers, experiment_name, open_trackers
from ..version import __version__
from . import allocator, dist
from .checkpoint import MODEL_FILE, STATE_FILE, load_model, load_state, model_meta, read_meta
from .device import device_name, resolve_device, resolve_precision
from .evaluate import source_key
from .interrupt import Interrupted
from .master import use_bf16_weights
from .parts import build_parts, check_feature_cache
from .run_writer import RunWriter
from .trainer import Trainer

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: Path
    best_checkpoint: Path
    best_val_top1: float
    best_epoch: int
    epochs: int
    seconds: float
    multi_label: bool = False  # then best_val_top1 is the best validation mAP


def new_run_dir(cfg: Config) -> Path:
    """A new run directory, claimed atomically (`mkdir` succeeds for one process only): DATA-MODEL-DATE-TIME, with
    -2, -3, ... when that exists, or `output.name`, which may exist only without a run in it."""
    parent = Path(cfg.output.dir)
    parent.mkdir(parents=True, exist_ok=True)
    if cfg.output.name:
        run_dir = parent / cfg.output.name
        if (run_dir / STATE_FILE).exists() or (run_dir / "config.yaml").exists():
            raise UserError(f"run directory {run_dir} already holds a run: resume it with --resume {run_dir}, "
                            "or choose another --name")
        run_dir.mkdir(exist_ok=True)
        return run_dir
    model = cfg.model.name.replace(":", "-")  # timm:resnet18 -> timm-resnet18: no colon in a folder name
    base = parent / f"{experiment_name(cfg)}-{model}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir, n = base, 1
    while True:
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:  # taken, perhaps a moment ago by a run started in the same second
            n += 1
            run_dir = base.with_name(f"{base.name}-{n}")


def lock_run_dir(run_dir: Path, resume: bool) -> DirectoryLock:
    """Hold `run_dir` for this process while it trains; another process training there is an error."""
    lock = DirectoryLock(run_dir)
    if not lock.acquire():
        raise UserError(f"run directory {run_dir} is in use by {lock.holder()}, which is training into it: wait for "
                        "it to end" + (" before resuming" if resume else ", or choose another --name"))
    if not resume and ((run_dir / STATE_FILE).exists() or (run_dir / "config.yaml").exists()):
        lock.release()  # it began between our check and our lock
        raise UserError(f"run directory {run_dir} already holds a run: resume it with --resume {run_dir}, or "
                        "choose another --name")
    return lock


def check_foreign(cfg: Config) -> None:
    """`--model timm:NAME`: a one-line error for each option only our ViT has; our model names are checked here too,
    so that a misspelt one fails before any data is read or downloaded."""
    if not is_foreign(cfg.model.name):
        get_spec(cfg.model.name)
        return
    m, t = cfg.model, cfg.train
    vit = [f"model.{f.name}" for f in dataclasses.fields(m) if f.name in VIT_OPTIONS and getattr(m, f.name) is not None]
    vit += ["model.init"] * bool(m.init) + ["train.freeze=backbone"] * (t.freeze == "backbone")
    vit += ["train.layer_decay"] * (t.layer_decay != 1.0) + ["model.attn_impl"] * (m.attn_impl != "auto")
    vit += ["model.attn_drop_rate"] * (m.attn_drop_rate != 0.0)
    if vit:
        raise UserError(f"{', '.join(vit)} {'is' if len(vit) == 1 else 'are'} for vitkit's ViT, not {m.name}: drop "
                        f"{'it' if len(vit) == 1 else 'them'} ({VIT_ONLY} do not apply to timm's models)")


# the ViT's own model options (`--model timm:NAME` takes img_size, in_chans, drop_rate and drop_path_rate)
VIT_OPTIONS = ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "global_pool", "stem", "stem_depth",
               "class_token", "reg_tokens", "no_embed_class", "pre_norm", "init_values", "act_layer", "mlp_layer",
               "fc_norm", "dist_token", "dynamic_img_size", "abs_pos_embed", "rope")


def build_model_for(cfg: Config, data: DataBundle) -> tuple[VisionTransformer, dict]:
    m = cfg.model
    if is_foreign(m.name):  # timm's model of that name, random weights
        kwargs = timm_kwargs(data.img_size, data.channels, len(data.classes), m.drop_rate, m.drop_path_rate)
        torch.manual_seed(cfg.train.seed)
        return create_timm(m.name, kwargs), kwargs
    kwargs = model_kwargs(m.name, img_size=data.img_size, in_chans=data.channels, num_classes=len(data.classes),
                          patch_size=m.patch_size, embed_dim=m.embed_dim, depth=m.depth, num_heads=m.num_heads,
                          mlp_ratio=m.mlp_ratio, global_pool=m.global_pool, drop_rate=m.drop_rate,
                          attn_drop_rate=m.attn_drop_rate, drop_path_rate=m.drop_path_rate, attn_impl=m.attn_impl,
                          stem=m.stem, stem_depth=m.stem_depth, class_token=m.class_token, reg_tokens=m.reg_tokens,
                          no_embed_class=m.no_embed_class, pre_norm=m.pre_norm, init_values=m.init_values,
                          act_layer=m.act_layer, mlp_layer=m.mlp_layer, fc_norm=m.fc_norm, dist_token=m.dist_token,
                          dynamic_img_size=m.dynamic_img_size, abs_pos_embed=m.abs_pos_embed, rope=m.rope)
    torch.manual_seed(cfg.train.seed)
    return VisionTransformer(**kwargs), kwargs


def _load_bundle(cfg: Config, manifest: Path, show_progress: bool = True) -> DataBundle:
    if not cfg.data.source:
        raise UserError("no DATA given: pass an image folder or a named dataset (fashion-mnist, mnist, cifar10, "
                        "cifar100)")
    img_size = cfg.model.img_size
    if img_size is None and not is_named(cfg.data.source):
        img_size = default_img_size(cfg.model.name) if is_foreign(cfg.model.name) else \
            get_spec(cfg.model.name).kwargs.get("img_size", 224)
    return load_data(cfg.data.source, img_size=img_size, channels=cfg.model.in_chans, data_root=cfg.data.root,
                     val_fraction=cfg.data.val_fraction, test_fraction=cfg.data.test_fraction, seed=cfg.train.seed,
                     manifest=manifest, splits=("train", "val"), allow_empty_classes=cfg.data.allow_empty_classes,
                     use_cache=cfg.data.cache, show_progress=show_progress, max_image_pixels=cfg.data.max_image_pixels,
                     labels=label_spec(dataclasses.asdict(cfg.data)), decode_scale=cfg.data.decode_scale)


def _report_bad_files(data: DataBundle, writer: RunWriter, max_fraction: float) -> None:
    if not data.bad_files:
        return
    listed_in = writer.bad_files(data.bad_files)
    total = sum(len(s) for s in data.splits.values()) + len(data.bad_files)
    check_bad_files(data.bad_files, total, max_fraction, str(listed_in))


ReportHook = Callable[[Path, DataBundle, torch.device, "torch.dtype | None"], None]


def train(cfg: Config, resume: str | Path | None = None, show_progress: bool = True,
          report: ReportHook | None = None) -> RunResult:
    """Train a model as `cfg` says and write its run directory; with `resume`, continue that run. `report(run_dir,
    data, device, amp_dtype)` runs after the last epoch when `output.report` is on (`vitkit.train` passes the one
    that writes report.html)."""
    allocator.tune()
    device = dist.local_device(resolve_device(cfg.train.device))
    joined = dist.setup(device)
    together = False  # all processes got to the same point: the end, or a stop they agreed on
    try:
        result = _train(cfg, device, resume, show_progress, report)
        together = True
        return result
    except Interrupted:
        together = True
        raise
    finally:
        if joined:
            dist.teardown(wait=together)


def _train(cfg: Config, device: torch.device, resume: str | Path | None, show_progress: bool,
           report: ReportHook | None) -> RunResult:
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    amp_dtype = resolve_precision(cfg.train.precision, device)
    bf16_weights = use_bf16_weights(cfg.train.bf16_weights, device, amp_dtype)  # both may refuse: before any file
    check_foreign(cfg)
    check_feature_cache(cfg)
    pretrained = read_source(cfg.model.init) if cfg.model.init and not resume else None  # fail before any file
    if resume and not Path(resume).is_dir():
        raise UserError(f"{resume} is not a run directory: give the folder 'vitkit train' wrote (see 'vitkit runs')")
    run_dir = Path(resume) if resume else dist.broadcast(new_run_dir(cfg) if dist.is_main() else None)
    lock = lock_run_dir(run_dir, bool(resume)) if dist.is_main() else None
    try:
        trackers = open_trackers(cfg, run_dir, resumed=bool(resume)) if dist.is_main() else Trackers()
        with trackers.session():  # the tracked runs end as finished, killed (a signal) or failed (an error)
            trackers.save_ids(run_dir)
            return _run(cfg, device, (amp_dtype, bf16_weights), resume, run_dir, pretrained, trackers,
                        show_progress, report)
    except BaseException:
        if not resume and dist.is_main():
            _remove_if_unused(run_dir)
        raise
    finally:
        if lock is not None:
            lock.release()


def _remove_if_unused(run_dir: Path) -> None:
    """A new run directory that a failure left without a config (nothing trained, nothing to resume) is removed,
    so that it does not look like a run; anything else in it is kept."""
    if (run_dir / "config.yaml").exists():
        return
    leftovers = [p for p in run_dir.iterdir() if p.name != DirectoryLock.NAME]
    if not leftovers:
        shutil.rmtree(run_dir, ignore_errors=True)


def _run(cfg: Config, device: torch.device, precision: tuple, resume: str | Path | None, run_dir: Path,
         pretrained: Pretrained | None, trackers: Trackers, show_progress: bool, report: ReportHook | None
         ) -> RunResult:
    amp_dtype, bf16_weights = precision
    data = _load_bundle(cfg, run_dir / MANIFEST, show_progress)
    if "train" not in data.splits or len(data.splits["train"]) == 0:
        raise DataError(f"{cfg.data.source} has no training images")
    if resume:
        _check_same_classes(run_dir, data)
    model, kwargs = build_model_for(cfg, data)
    init, data = _initialize(cfg, model, kwargs, data, pretrained, run_dir if resume else None)
    multi_label = is_multi_label(data.splits["train"])
    meta = model_meta(cfg.model.name, kwargs, data.classes, data.mean, data.std, data_source=source_key(
        cfg.data.source), val_fraction=cfg.data.val_fraction, test_fraction=cfg.data.test_fraction,
        split_seed=cfg.train.seed, config=cfg.to_dict(), **({"init": init} if init else {}),
        **({"task": "multi-label"} if multi_label else {}))
    writer = RunWriter(run_dir, meta)
    _report_bad_files(data, writer, cfg.data.max_bad_fraction)
    trainer = Trainer(cfg, data, build_parts(cfg, data, model, device, bf16_weights, amp_dtype), writer, device, amp_dtype,
                      show_progress, trackers)
    if resume:
        _restore(trainer, run_dir, cfg)
    else:
        writer.start(cfg, data.manifest)
    facts = _run_facts(cfg, data, model, device, amp_dtype, bf16_weights)
    if trainer.feature_seconds is not None:  # filling the feature cache, apart from the epochs' times
        facts["run.feature_seconds"] = round(trainer.feature_seconds, 2)
    _log_start(cfg, data, run_dir, facts)
    trackers.start({**cfg.flat(), **facts}, trainer.state.history, len(trainer.train_loader))
    start = time.perf_counter()
    with writer.running():  # status.json: running, then finished, interrupted or failed
        state = _fit(trainer, cfg, run_dir)
    seconds = time.perf_counter() - start
    if cfg.output.report and report is not None and dist.is_main():
        report(run_dir, data, device, amp_dtype)
    if trackers:
        trackers.finish("finished", _outputs(run_dir, data, cfg))
    return RunResult(run_dir, run_dir / MODEL_FILE["best"], state.best_top1, state.best_epoch, state.epoch, seconds,
                     multi_label)


def _fit(trainer: Trainer, cfg: Config, run_dir: Path):
    """`trainer.fit()`, with what to do next said in the log on a signal and in the error on out-of-memory."""
    try:
        return trainer.fit()
    except KeyboardInterrupt:
        log.warning("interrupted: epochs 1-%d are saved in %s; continue with: vitkit train --resume %s",
                    trainer.state.epoch, run_dir, run_dir)
        raise
    except RuntimeError as err:
        smaller = f"--accum-steps {2 * cfg.train.accum_steps}"
        advice = (f": use a smaller --batch-size, or {smaller} to keep the batch and compute it in smaller passes"
                  if trainer.state.epoch == 0 else f"; epochs 1-{trainer.state.epoch} are saved in {run_dir}: "
                  f"continue in smaller passes with: vitkit train --resume {run_dir} {smaller}")
        oom = out_of_memory(err, advice, " while training")
        if oom is None:
            raise
        raise oom from None


def _outputs(run_dir: Path, data: DataBundle, cfg: Config) -> RunOutputs:
    """What the trackers get from a finished run: the best checkpoint and two images as the model takes them."""
    split = data.splits.get("val") or data.splits["train"]
    images = getattr(split, "images", None)
    example = None
    if isinstance(images, torch.Tensor) and len(images):
        example = resize_images(images[:2], data.img_size).numpy()  # training images may be larger (decode_scale)
    return RunOutputs(run_dir, run_dir / MODEL_FILE["best"], example,
                      f"{experiment_name(cfg)}-{cfg.model.name.replace(':', '-')}")


def _check_same_classes(run_dir: Path, data: DataBundle) -> None:
    """A resumed run trains on the classes it began with, in their order: a class folder added, removed or renamed
    since then would relabel the head."""
    last = run_dir / MODEL_FILE["last"]
    if not last.is_file():
        return
    before = list(read_meta(last)["classes"])
    if before == list(data.classes):
        return
    added, removed = sorted(set(data.classes) - set(before)), sorted(set(before) - set(data.classes))
    change = "; ".join(part for part in (f"added {', '.join(added)}" if added else "",
                                         f"gone {', '.join(removed)}" if removed else "") if part) or "reordered"
    raise DataError(f"the classes of {data.source} changed since {run_dir} began ({change}): a resume trains the "
                    f"classes it began with; restore them, or start a new run from this one with "
                    f"--init {run_dir / MODEL_FILE['best']}")


def _initialize(cfg: Config, model: VisionTransformer, kwargs: dict, data: DataBundle, pretrained: Pretrained | None,
                resumed_run: Path | None) -> tuple[dict | None, DataBundle]:
    """Initial weights (`model.init`), their normalization and the frozen backbone: what the checkpoint records,
    and the data with the normalization that goes with the weights.

    A resumed run takes the normalization and model arguments its checkpoints recorded instead of reading the
    source again (its weights come from state.pt).
    """
    init = None
    if resumed_run is not None and (resumed_run / MODEL_FILE["last"]).is_file():
        previous = read_meta(resumed_run / MODEL_FILE["last"])
        init = previous.get("init")
        data = dataclasses.replace(data, mean=tuple(previous["mean"]), std=tuple(previous["std"]))
        if "norm_eps" in previous["model_kwargs"]:
            kwargs["norm_eps"] = previous["model_kwargs"]["norm_eps"]
            model.set_norm_eps(kwargs["norm_eps"])
    elif pretrained is not None:
        result = load_pretrained(model, pretrained, strict=cfg.model.init_strict, classes=data.classes)
        kwargs.update(result.model_overrides)
        if result.mean is not None:
            mean, std = adapt_stats(result.mean, result.std, data.channels)
            data = dataclasses.replace(data, mean=mean, std=std)
            log.info("normalization of the initial weights: mean %s, std %s", data.mean, data.std)
        init = result.to_meta()
    if cfg.train.freeze == "backbone":
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith(("head.", "head_dist."))
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log.info("backbone frozen: only the head trains (%s parameters)", f"{trainable:,}")
        if not cfg.model.init:
            log.warning("train.freeze=backbone without model.init trains a head on a random backbone")
    return init, data


def _restore(trainer: Trainer, run_dir: Path, cfg: Config) -> None:
    state = load_state(run_dir / STATE_FILE)
    if "model" not in state:  # written before state files carried the weights
        trainer.model.load_state_dict(load_model(run_dir / MODEL_FILE["last"])[0].state_dict())
    trainer.load_state_dict(state)
    if trainer.state.epoch >= cfg.train.epochs:
        log.info("the run already completed %d of %d epochs: pass --epochs N to train longer", trainer.state.epoch,
                 cfg.train.epochs)
    trainer.writer.config(cfg)
    partial = trainer.state.partial
    where = f"in epoch {partial['epoch']} after step {partial['step']}" if partial else f"after epoch {trainer.state.epoch}"
    log.info("resuming %s %s", run_dir, where)


def _run_facts(cfg: Config, data: DataBundle, model: VisionTransformer, device: torch.device, amp_dtype,
               bf16_weights: bool) -> dict[str, object]:
    """What a run is besides its config: the trackers' parameters and the start of the log."""
    return {"run.parameters": num_params(model), "run.gflops_per_image": round(model_flops(model) / 1e9, 4),
            **{f"run.{k}_images": len(v) for k, v in data.splits.items()}, "run.classes": len(data.classes),
            "run.image_size": data.img_size, "run.channels": data.channels, "run.device": device_name(device),
            "run.precision": "fp32" if amp_dtype is None else "bf16 weights, fp32 master copy" if bf16_weights
            else "bf16 autocast", "run.processes": dist.world_size(), "run.torch": torch.__version__,
            "run.vitkit": __version__, "run.python": platform.python_version(), "run.host": platform.node()}


def _log_start(cfg: Config, data: DataBundle, run_dir: Path, facts: dict) -> None:
    sizes = ", ".join(f"{k} {len(v)}" for k, v in data.splits.items())
    log.info("data: %s, %d classes, %s, %dx%d, %d channel(s)", cfg.data.source, len(data.classes), sizes,
             data.img_size, data.img_size, data.channels)
    log.info("model: %s, %.2fM parameters, %.3f GFLOPs/image; device %s, %s", cfg.model.name,
             facts["run.parameters"] / 1e6, facts["run.gflops_per_image"], facts["run.device"], facts["run.precision"])
    world, passes = dist.world_size(), cfg.train.accum_steps
    if world > 1 or passes > 1:
        log.info("global batch %d: %d process(es) x %d pass(es) of about %d images; lr %g as configured",
                 cfg.train.batch_size, world, passes, cfg.train.batch_size // (world * passes), cfg.train.lr)
    log.info("run directory: %s", run_dir)
