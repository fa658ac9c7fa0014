"""The `vitkit` command: each subcommand is a short function over the Python API.

Every error a user can cause is a `VitkitError` and ends in one line on stderr with its exit code: 2 for mistakes
and out of memory, 1 for a non-finite loss or an export that disagrees with PyTorch, 130 for Ctrl-C and 143 for
SIGTERM (during training, after saving a resumable state). Anything else is a bug: one line, or the traceback with
`-v`. Torch is imported only when a command runs, so `vitkit --help` answers at once.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import typing
from pathlib import Path

from .config import SECTIONS, Option, ServeSettings, declared, options
from .errors import UserError, VitkitError, out_of_memory
from .version import __version__

log = logging.getLogger("vitkit")


# ------------------------------------------------------------------------------------------------------ train
def cmd_train(args: argparse.Namespace) -> int:
    from .config import build_config, describe_keys, resume_config
    from .console import out

    if args.help_config:
        out.print(describe_keys(), markup=False)
        return 0
    if args.nproc is not None and args.nproc < 1:
        raise UserError(f"--nproc must be at least 1, not {args.nproc}")
    flags = {o.key: getattr(args, o.key) for o in options().values() if o.flag}
    if args.resume:  # the run's config, with the changes the flags make checked against each option's resume policy
        cfg = resume_config(args.resume, flags, args.set)
    else:
        cfg = build_config(args.config, {"data.source": _images_or_data(args), **flags}, args.set)
    from . import api  # torch, once the config is known to be valid
    from .data.images import allow_pixels

    allow_pixels(cfg.data.max_image_pixels)
    if args.nproc and args.nproc > 1 and "WORLD_SIZE" not in os.environ:  # the config is valid: start the workers
        from .engine.launch import launch

        return launch(args.nproc, args.argv)
    result = api.train(cfg, resume=args.resume, show_progress=not args.no_progress)
    if os.environ.get("RANK", "0") != "0":
        return 0
    score = "mAP" if result.multi_label else "top-1"
    best = (f"best val {score} {result.best_val_top1:.4f} (epoch {result.best_epoch})"
            if not math.isnan(result.best_val_top1) else "no validation split: best is the last epoch")
    out.print(f"{best}, {result.epochs} epochs in {result.seconds:.0f}s")
    out.print(f"run directory: {result.run_dir}")
    out.print(f"best model:    {result.best_checkpoint}")
    out.print(f"next: vitkit evaluate {result.best_checkpoint} {cfg.data.source}", markup=False)
    return 0


LABEL_FLAGS = ("data.labels", "data.file_column", "data.label_column", "data.label_sep", "data.label_columns",
               "data.group_column", "data.no_label", "data.label_delimiter")  # data.labels.LABEL_OPTIONS' flags


def _label_flags(args: argparse.Namespace) -> dict:
    """The label-file flags given (evaluate: the run's own are used for the rest)."""
    return {k.split(".")[1]: getattr(args, k.split(".")[1]) for k in LABEL_FLAGS
            if getattr(args, k.split(".")[1], None) is not None}


def _images_or_data(args: argparse.Namespace) -> str | None:
    """DATA, or the image folder given as --images (for a label file): one of them."""
    if args.images and args.data and args.images != args.data:
        raise UserError(f"give the image folder once: DATA ({args.data}) or --images ({args.images}), not both")
    if args.func is cmd_data_check and not (args.images or args.data):
        raise UserError("give DATA (an image folder or a named dataset), or --images DIR with --labels FILE")
    return args.images or args.data


# --------------------------------------------------------------------------------------------------- evaluate
def cmd_evaluate(args: argparse.Namespace) -> int:
    from .console import out, print_json, print_multilabel_report, print_report
    from .engine.evaluate import evaluation_report, prepare_evaluation
    from .fileio import atomic_write

    evaluation = prepare_evaluation(args.checkpoint, _images_or_data(args), args.split, args.data_root, args.device,
                                    args.precision, args.tta, args.compile, _label_flags(args))
    report = evaluation_report(evaluation, args.checkpoint, args.batch_size)
    text = json.dumps(report, indent=2)
    json_path = Path(args.output) if args.output else Path(args.checkpoint).with_name(
        f"{Path(args.checkpoint).stem}-eval-{report['split']}{'' if args.tta == 'none' else '-tta-' + args.tta}.json")
    atomic_write(json_path, text + "\n")
    if args.report:
        from .report import build_report

        report_path = build_report(args.checkpoint, out_dir=args.report, evaluation=evaluation)
    if args.json or args.format == "json":
        print_json(report)
        return 0
    (print_multilabel_report if report.get("task") == "multi-label" else print_report)(report)
    out.print(f"written: {json_path}")
    if args.report:
        out.print(f"report: {report_path}")
    return 0


# ------------------------------------------------------------------------------------------------------ probe
def cmd_probe(args: argparse.Namespace) -> int:
    from .console import out, print_json, print_probe
    from .engine.probe import probe
    from .fileio import atomic_write

    result = probe(args.source, args.data, args.model, args.split, args.data_root, args.img_size, tuple(args.k),
                   args.temperature, args.c, args.device, args.precision, args.batch_size)
    if args.output:
        atomic_write(args.output, json.dumps(result, indent=2) + "\n")
    if args.json:
        print_json(result)
        return 0
    print_probe(result)
    if args.output:
        out.print(f"written: {args.output}")
    return 0


# ---------------------------------------------------------------------------------------------------- predict
def cmd_predict(args: argparse.Namespace) -> int:
    from .console import print_predictions
    from .engine.predict import collect_images, load_classifier

    clf = load_classifier(args.checkpoint, args.runtime, device=args.device, precision=args.precision,
                          compile=args.compile)
    if args.explain and clf.model is None:
        raise UserError("--explain needs the PyTorch checkpoint (.safetensors): attention maps are not in an exported "
                        "graph")
    if args.explain and not clf.explainable:
        raise UserError(f"--explain shows a ViT's attention maps; {clf.meta['model']} is timm's model and has none: "
                        "drop --explain")
    files = collect_images(args.paths)
    if not files:
        raise UserError("no image files found in the given paths: give image files or folders of images")
    results = clf.predict(files, top_k=args.top_k, batch_size=args.batch_size)
    print_predictions(results, "json" if args.json else args.format, min(args.top_k, len(clf.classes)),
                      dict(zip(clf.classes, clf.thresholds)) if clf.multi_label else None)
    if args.explain:
        from .report import explain_files

        written = explain_files(clf, files, args.explain, args.top_k)
        log.info("attention overlays of %d image(s) in %s", len(written), args.explain)
    bad = [r for r in results if r.top is None]
    for r in bad:
        log.warning("could not read %s: %s", r.source, r.error)
    return 1 if len(bad) == len(results) else 0


# ----------------------------------------------------------------------------------------------------- export
def cmd_export(args: argparse.Namespace) -> int:
    from .console import out, print_json

    if args.samples < 2:
        raise UserError("--samples must be at least 2 (batch sizes 1 and more are both checked)")
    if args.format in ("timm", "transformers"):
        if args.quantize != "none":
            raise UserError(f"--quantize is for the onnx and openvino formats, not {args.format}")
        return _export_folder(args)
    from .export import export_onnx

    if args.quantize != "none":  # refused before the fp32 export rather than after it
        from .engine.checkpoint import read_meta, single_label_only
        from .export.quantize import INT8_INSTEAD

        single_label_only(read_meta(args.checkpoint), "int8 quantization", INT8_INSTEAD)
    if args.quantize == "int8-dynamic" and args.format == "openvino":
        log.warning("OpenVINO runs a dynamically quantized model at about half its fp32 speed (measured); "
                    "--quantize int8 gives it a fast int8 model")
    onnx_out = args.out if args.format == "onnx" else None
    result = export_onnx(args.checkpoint, onnx_out, opset=args.opset, samples=args.samples,
                         atol=args.atol if args.atol is not None else 1e-3)
    lines = [f"wrote {result.path} (opset {result.opset}) and {result.sidecar}",
             f"checked with ONNX Runtime on {result.samples} images: largest logit difference "
             f"{result.max_abs_diff:.2e}, top-1 agreement {result.top1_agreement:.1%}"]
    report, graph = {"onnx": result.to_dict()}, result.path
    if args.quantize != "none":
        from .export.quantize import quantize_int8

        method = "dynamic" if args.quantize == "int8-dynamic" else "static"
        q = quantize_int8(args.checkpoint, result.path, args.calibrate, args.data_root, args.calibration_images,
                          args.check_images, args.max_drop, method=method)
        report["int8"], graph = q.to_dict(), q.path
        how = "activations quantized per batch" if method == "dynamic" else \
            f"calibrated on {q.calibration_images} training images"
        lines += [f"wrote {q.path} ({q.mb_int8:.1f} MB, fp32 {q.mb_fp32:.1f} MB), {how}",
                  f"checked on {q.check_images} {q.split} images: top-1 {q.top1_int8:.2%} int8, {q.top1_fp32:.2%} "
                  f"fp32, the same top-1 on {q.top1_agreement:.1%}"]
    if args.format == "openvino":
        from .export.openvino import export_openvino

        ov = export_openvino(graph, args.out, samples=args.samples)
        report["openvino"] = ov.to_dict()
        lines += [f"wrote {ov.path} (+ .bin) and {ov.sidecar}",
                  f"checked with OpenVINO against ONNX Runtime on {ov.samples} images: largest logit difference "
                  f"{ov.max_abs_diff:.2e}, top-1 agreement {ov.top1_agreement:.1%}"]
    if args.json:
        print_json(report if len(report) > 1 else report["onnx"])
        return 0
    for line in lines:
        out.print(line, markup=False)
    return 0


def _export_folder(args: argparse.Namespace) -> int:
    from .console import out, print_json
    from .export import export_folder

    folder = export_folder(args.checkpoint, args.format, args.out, samples=args.samples,
                           atol=args.atol if args.atol is not None else 1e-4)
    if args.json:
        print_json(folder.to_dict())
        return 0
    out.print(f"wrote {folder.path}/ for {args.format}", markup=False)
    out.print(f"loaded back with {args.format} on {folder.samples} images: largest logit difference "
              f"{folder.max_abs_diff:.2e}, top-1 agreement {folder.top1_agreement:.1%}", markup=False)
    return 0


# ------------------------------------------------------------------------------------------------------ bench
def cmd_bench(args: argparse.Namespace) -> int:
    from .config import parse_assignment
    from .console import print_bench, print_json
    from .engine.bench import BenchSettings, run_bench

    overrides = dict(parse_assignment(a, none_is_null=True) for a in args.set)
    if args.img_size:
        overrides["img_size"] = args.img_size
    modes = ("train", "infer") if args.mode == "both" else (args.mode,)
    result = run_bench(BenchSettings(args.model, args.batch_size, args.precision, args.device, modes, args.steps,
                                     args.warmup, args.repeats, args.compare, args.compile, args.bf16_weights,
                                     overrides, args.grad_checkpointing))
    if args.json:
        print_json(result)
        return 0
    print_bench(result)
    return 0


# ------------------------------------------------------------------------------------------------------ serve
def cmd_serve(args: argparse.Namespace) -> int:
    settings = ServeSettings(**{o.name: getattr(args, flag_dest(o)) for o in declared(ServeSettings) if o.flag})
    from .serve import serve  # torch, once the settings are known to be valid

    serve(args.checkpoint, settings, device=args.device, precision=args.precision, access_log=args.access_log,
          compile=args.compile, runtime=args.runtime)
    return 0


# ----------------------------------------------------------------------------------------------------- report
def cmd_report(args: argparse.Namespace) -> int:
    from .console import out
    from .report import build_report

    path = build_report(args.target, args.data, args.split, args.out, args.data_root, args.device, args.precision,
                        args.samples)
    out.print(f"report: {path}")
    return 0


# ------------------------------------------------------------------------------------------------------- data
def cmd_data_shard(args: argparse.Namespace) -> int:
    from .console import out
    from .data.shards import write_shards

    index = write_shards(args.folder, args.out, args.shard_size, args.val_fraction, args.test_fraction, args.seed)
    for split, info in index["splits"].items():
        out.print(f"{split}: {info['count']:,} images in {len(info['shards'])} shard(s)")
    if index["bad_files"]:
        out.print(f"left out: {len(index['bad_files'])} unreadable file(s), listed in {Path(args.out) / 'dataset.json'}")
    out.print(f"next: vitkit train {args.out} --model MODEL", markup=False)
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from .console import print_check, print_json
    from .data.check import check_data
    from .data.images import allow_pixels
    from .data.labels import label_spec

    allow_pixels(args.max_image_pixels)
    report = check_data(_images_or_data(args), data_root=args.data_root, val_fraction=args.val_fraction,
                        test_fraction=args.test_fraction, seed=args.seed, allow_empty_classes=args.allow_empty_classes,
                        max_bad_fraction=args.max_bad_fraction, near_duplicate_bits=args.near_bits,
                        show_progress=not args.json, max_image_pixels=args.max_image_pixels,
                        labels=label_spec({**_label_flags(args), "task": args.task, "uncertain": args.uncertain}))
    if args.json:
        print_json(report.to_dict())
    else:
        print_check(report, args.limit)
    return 0 if report.ok else 1


# ------------------------------------------------------------------------------------------------------- runs
def cmd_runs(args: argparse.Namespace) -> int:
    from .console import print_json, print_runs
    from .runs import list_runs

    if args.paths[:1] == ["compare"]:
        return cmd_runs_compare(args.paths[1:], args.out, args.json)
    if len(args.paths) > 1:
        raise UserError("vitkit runs takes one folder; to compare runs: vitkit runs compare RUN1 RUN2 [...]")
    folder = args.paths[0] if args.paths else "runs"
    runs, skipped = list_runs(folder, args.sort)
    if args.json:
        print_json({"runs": [r.to_dict() for r in runs], "skipped": skipped})
    else:
        print_runs(runs, skipped, folder)
    return 0


def cmd_runs_compare(paths: list[str], out: str, as_json: bool) -> int:
    from .console import print_json
    from .report.compare import FIGURE_DIR, compare_runs

    page = compare_runs(paths, out)
    if as_json:
        print_json({"page": str(page), "figures": sorted(str(p) for p in (page.parent / FIGURE_DIR).glob("*.png"))})
    else:
        print(f"comparison: {page}  (figures: {page.parent / FIGURE_DIR}/)")
    return 0


# ------------------------------------------------------------------------------------------------ models, info
def cmd_models(args: argparse.Namespace) -> int:
    from .console import print_models
    from .models import get_spec, list_models, model_size
    from .models.pretrained import default_timm_weights
    from .models.registry import FAMILIES

    if args.family and args.family not in FAMILIES:
        raise UserError(f"unknown family {args.family!r}: choose one of {', '.join(FAMILIES)}")
    rows = []
    for name in list_models():
        if args.family and get_spec(name).family != args.family:
            continue
        params, flops, _ = model_size(name, **({"num_classes": args.num_classes} if args.num_classes else {}))
        weights = default_timm_weights(name)
        rows.append((name, params, flops, get_spec(name), f"timm:{weights}" if weights else None))
    print_models(rows)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .config import parse_assignment
    from .console import out
    from .models import model_kwargs, model_size

    overrides = dict(parse_assignment(a, none_is_null=True) for a in args.set)
    if args.model.startswith("timm:"):
        return _info_foreign(args.model, overrides)
    kwargs = model_kwargs(args.model, **overrides)
    params, flops, n_tokens = model_size(args.model, **overrides)
    out.print(f"[bold]{args.model}[/bold]")
    for key, value in kwargs.items():
        out.print(f"  {key}: {value}", markup=False)
    out.print(f"  tokens: {n_tokens}  parameters: {params:,}  FLOPs/image: {flops / 1e9:.3f} G")
    return 0


def _info_foreign(name: str, overrides: dict) -> int:
    """`vitkit info timm:NAME`: timm's model, what vitkit trains of it, and what does not apply."""
    from .console import out
    from .models import create_timm, model_flops, num_params
    from .models.foreign import VIT_ONLY, default_img_size, timm_kwargs

    size = int(overrides.get("img_size") or default_img_size(name))
    model = create_timm(name, timm_kwargs(size, int(overrides.get("in_chans") or 3),
                                          int(overrides.get("num_classes") or 1000)))
    out.print(f"[bold]{name}[/bold]: timm's model, not a vitkit ViT", markup=True)
    out.print(f"  {type(model).__name__} from {type(model).__module__}", markup=False)
    out.print(f"  input: {size} px  parameters: {num_params(model):,}  FLOPs/image: {model_flops(model) / 1e9:.3f} G")
    out.print(f"  vitkit trains, evaluates, reports, serves and exports it to ONNX; {VIT_ONLY} do not apply")
    return 0


# --------------------------------------------------------------------------------------------------- parser
def _yes_no(text: str) -> bool:
    if text.lower() in ("true", "yes", "1", "on"):
        return True
    if text.lower() in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def _comma_list(text: str) -> list[str]:
    """'tensorboard,mlflow' -> ['tensorboard', 'mlflow'] (a list option's flag); '' -> []."""
    return [item.strip() for item in text.split(",") if item.strip()]


def _base_type(hint) -> type:
    """int for `int | None`, str for `str`, ... (argparse's `type`)."""
    for kind in (bool, int, float, str):
        if hint is kind or kind in getattr(hint, "__args__", ()):
            return kind
    return str


def flag_dest(o: Option) -> str:
    """Where argparse puts a flag's value: '--data-root' -> 'data_root'."""
    return o.flag.lstrip("-").replace("-", "_")


def add_declared(p: argparse.ArgumentParser, declared_options: list[Option], defaults: bool) -> None:
    """One CLI flag per declared option that has one, with its help, type and choices. `defaults`: the declared
    default is the flag's default and the value lands under the option's name; otherwise an absent flag is None
    (the config file decides) and the value lands under its key ('train.lr')."""
    for o in declared_options:
        if not o.flag:
            continue
        kind = _base_type(o.hint)
        kw = {"dest": flag_dest(o) if defaults else o.key, "default": o.default if defaults else None}
        help = o.help + (f" (default {o.default})" if defaults and o.default not in (None, False, "") else "")
        if kind is bool and o.default is False:
            p.add_argument(o.flag, action="store_const", const=True, help=help, **kw)
            continue
        if kind is bool:
            kw.update(type=_yes_no, metavar="true|false")
        elif typing.get_origin(o.hint) is list:  # comma-separated; the config checks each item against the choices
            p.add_argument(o.flag, help=help, type=_comma_list, metavar=o.metavar or "A,B", **kw)
            continue
        else:
            kw.update(type=kind, metavar=o.metavar or flag_dest(o).upper())
        if o.choices is not None:
            kw.update(choices=[c for c in o.choices if c is not None], metavar=None)
        p.add_argument(o.flag, help=help, **kw)


def _config_flags(p: argparse.ArgumentParser, *keys: str) -> None:
    """Flags of run-config options outside `train`, with the declared defaults (data check, shard, inference)."""
    known = options()
    add_declared(p, [known[k] for k in keys], defaults=True)


def _runtime_flags(p: argparse.ArgumentParser, compile_help: str | None = None) -> None:
    _config_flags(p, "train.device", "train.precision")
    if compile_help:
        p.add_argument("--compile", action="store_true", help=compile_help)


DATA_HELP = ("image folder (class subfolders, or train/ val/ [test/]), shard folder, or "
             "fashion-mnist|mnist|cifar10|cifar100")
CHECKPOINT_HELP = "a model file written by 'vitkit train' (best.safetensors, last.safetensors)"
SPLIT_HELP = "default: test if the data has one, else val"
COMPILE_HELP = ("compile the model for inference first, with frozen weights: tens of seconds, then faster batches "
                "(pays off over thousands of images)")


def _train_parser(sub) -> None:
    t = sub.add_parser("train", help="train a model on an image folder or a named dataset")
    t.add_argument("data", nargs="?", metavar="DATA", help=DATA_HELP)
    t.add_argument("--images", metavar="DIR", help="the image folder a label file (--labels) lists, instead of DATA")
    t.add_argument("--config", metavar="FILE", help="YAML config (see configs/); the flags below override it")
    for section, cls in SECTIONS.items():
        add_declared(t, declared(cls, section), defaults=False)
    t.add_argument("--nproc", type=int, metavar="N", help="train with N processes on this machine (runs torchrun; "
                   "the global batch size and learning rate stay as given)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config key, e.g. train.lr=3e-4")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from where it stopped")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--help-config", action="store_true", help="list every config key with its default and meaning")
    t.set_defaults(func=cmd_train)


def _evaluate_parser(sub) -> None:
    e = sub.add_parser("evaluate", help="metrics of a checkpoint on a data split")
    e.add_argument("checkpoint", metavar="CHECKPOINT", help=CHECKPOINT_HELP)
    e.add_argument("data", nargs="?", metavar="DATA", help=DATA_HELP + " (default: the data the model was trained on)")
    e.add_argument("--images", metavar="DIR", help="the image folder a label file (--labels) lists, instead of DATA")
    e.add_argument("--split", choices=["train", "val", "test"], help=SPLIT_HELP)
    _config_flags(e, "data.root", *LABEL_FLAGS)
    e.add_argument("--output", metavar="FILE", help="where to write the JSON report (default: beside the checkpoint, "
                   "NAME-eval-SPLIT.json)")
    e.add_argument("--json", action="store_true", help="print the report as JSON instead of tables")
    e.add_argument("--format", choices=["table", "json"], default="table", help="table, or json (as --json)")
    e.add_argument("--batch-size", type=int, default=512, help="images per forward pass")
    _runtime_flags(e, COMPILE_HELP)
    e.add_argument("--report", metavar="DIR", help="also write report.html and its figures into DIR")
    e.add_argument("--tta", choices=["none", "flip"], default="none",
                   help="test-time augmentation: flip averages each image's and its mirror's logits "
                        "(its JSON is written as NAME-eval-SPLIT-tta-flip.json)")
    e.set_defaults(func=cmd_evaluate)


def _probe_parser(sub) -> None:
    p = sub.add_parser("probe", help="k-NN and logistic-regression accuracy of frozen features on DATA")
    p.add_argument("source", metavar="CKPT_OR_INIT", help="a vitkit checkpoint, or weights as --init takes them "
                   "(timm:NAME.TAG, a Hugging Face repo or folder, a weights file)")
    p.add_argument("data", metavar="DATA", help=DATA_HELP)
    p.add_argument("--model", metavar="NAME", help="the registered model the weights are for (default: NAME of "
                   "timm:NAME.TAG; a checkpoint knows its own)")
    p.add_argument("--split", choices=["val", "test"], help=SPLIT_HELP)
    p.add_argument("--img-size", type=int, help="input size for --init weights (default: the model's)")
    p.add_argument("--k", type=int, nargs="+", default=[10, 20], help="neighbours for k-NN (default: 10 20)")
    p.add_argument("--temperature", type=float, default=0.07, help="k-NN vote weights exp(similarity / T)")
    p.add_argument("--c", type=float, default=1.0, help="logistic regression's inverse L2 strength")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    p.add_argument("--output", metavar="FILE", help="also write the results as JSON to FILE")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    _config_flags(p, "data.root")
    _runtime_flags(p)
    p.set_defaults(func=cmd_probe)


def _report_parser(sub) -> None:
    rp = sub.add_parser("report", help="report.html: curves, confusion, ROC/PR, calibration, attention maps")
    rp.add_argument("target", metavar="RUN_DIR_OR_CHECKPOINT", help="a run directory or a model file")
    rp.add_argument("data", nargs="?", metavar="DATA", help="default: the data the model was trained on")
    rp.add_argument("--split", choices=["train", "val", "test"], help=SPLIT_HELP)
    rp.add_argument("--out", metavar="DIR", help="default: the run directory (or the checkpoint's folder)")
    _config_flags(rp, "data.root")
    rp.add_argument("--samples", type=int, default=8, help="images shown with attention maps")
    _runtime_flags(rp)
    rp.set_defaults(func=cmd_report)


def _predict_parser(sub) -> None:
    r = sub.add_parser("predict", help="top-k classes of image files and folders")
    r.add_argument("checkpoint", metavar="CHECKPOINT", help=CHECKPOINT_HELP + ", or an exported MODEL.onnx")
    r.add_argument("paths", nargs="+", metavar="PATH", help="image files and folders of images")
    r.add_argument("--top-k", type=int, default=5, help="classes shown per image")
    r.add_argument("--format", choices=["table", "json", "csv"], default="table", help="how to print the results")
    r.add_argument("--json", action="store_true", help="print the results as JSON (as --format json)")
    r.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    _runtime_flags(r, COMPILE_HELP)
    r.add_argument("--explain", metavar="DIR", help="write an attention overlay beside the top-k of each image")
    _runtime_choice(r)
    r.set_defaults(func=cmd_predict)


def _runtime_choice(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runtime", choices=["auto", "torch", "onnx", "openvino"], default="auto",
                   help="torch: a .safetensors checkpoint; onnx: an exported MODEL.onnx (or MODEL.int8.onnx) run by "
                        "ONNX Runtime; openvino: MODEL.xml run by OpenVINO (auto: by the file's suffix)")


def _export_parser(sub) -> None:
    x = sub.add_parser("export", help="export a checkpoint to ONNX, or to a folder timm or transformers loads; "
                                      "each checked against PyTorch")
    x.add_argument("checkpoint", metavar="CHECKPOINT", help=CHECKPOINT_HELP)
    x.add_argument("--format", choices=["onnx", "openvino", "timm", "transformers"], default="onnx",
                   help="onnx: MODEL.onnx for ONNX Runtime; openvino: MODEL.xml + .bin (OpenVINO IR, converted from "
                        "the ONNX export); timm, transformers: a folder (config.json, model.safetensors) that "
                        "library loads")
    x.add_argument("--out", metavar="PATH", help="default: beside the checkpoint, MODEL.onnx, MODEL.xml or "
                                                 "MODEL-FORMAT/")
    x.add_argument("--quantize", choices=["none", "int8", "int8-dynamic"], default="none",
                   help="int8: also MODEL.int8.onnx (static quantization calibrated on training images, checked on "
                        "the evaluation split); int8-dynamic: activations quantized per batch instead, no "
                        "calibration; with --format openvino, an int8 IR")
    x.add_argument("--calibrate", metavar="DATA", help="int8: the data to calibrate and check on (default: the data "
                                                       "the checkpoint was trained on, its own split)")
    x.add_argument("--data-root", metavar="DIR", help="where named datasets' files are")
    x.add_argument("--calibration-images", type=int, default=256, help="int8: training images that set the ranges")
    x.add_argument("--check-images", type=int, default=2000, help="int8: evaluation images compared in fp32 and int8")
    x.add_argument("--max-drop", type=float, default=1.0,
                   help="int8: largest accepted top-1 drop from fp32, in points; beyond, nothing is kept")
    x.add_argument("--opset", type=int, default=23, help="ONNX opset version: from 23 on attention is one Attention "
                   "node (ONNX Runtime 1.24+, OpenVINO 2026.3+); 17-22 write it as MatMul and Softmax")
    x.add_argument("--samples", type=int, default=32, help="seeded test images compared after export")
    x.add_argument("--atol", type=float, help="largest accepted logit difference from PyTorch (default 1e-3 for "
                                              "ONNX, 1e-4 for the folders)")
    x.add_argument("--json", action="store_true", help="print the result as JSON")
    x.set_defaults(func=cmd_export)


def _bench_parser(sub) -> None:
    b = sub.add_parser("bench", help="training and inference speed, MFU and peak memory; --compare timm")
    b.add_argument("--model", default="vit_mini_patch4_28", help="registered model name (vitkit models)")
    b.add_argument("--img-size", type=int, help="input size in pixels (default: the model's)")
    b.add_argument("--batch-size", type=int, default=256, help="images per step")
    _runtime_flags(b)
    b.add_argument("--mode", choices=["train", "infer", "both"], default="both", help="which steps to time")
    b.add_argument("--steps", type=int, default=10, help="timed batches per run")
    b.add_argument("--warmup", type=int, default=3, help="untimed batches before the first run")
    b.add_argument("--repeats", type=int, default=5, help="runs per model and mode (medians reported)")
    b.add_argument("--compare", choices=["timm"], help="also time timm's model with the same configuration")
    b.add_argument("--compile", action="store_true", help="torch.compile vitkit's model (timm's stays eager)")
    b.add_argument("--bf16-weights", action=argparse.BooleanOptionalAction,
                   help="vitkit's training step on a bf16 copy of the weights, fp32 master weights (default: as "
                        "vitkit train, on for bf16 on a CPU)")
    b.add_argument("--grad-checkpointing", action="store_true", help="training steps recompute each block's "
                   "activations in the backward pass (both models with --compare timm): less memory, more time")
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="model option, e.g. depth=8")
    b.add_argument("--json", action="store_true", help="print the results as JSON")
    b.set_defaults(func=cmd_bench)


def _serve_parser(sub) -> None:
    v = sub.add_parser("serve", help="an HTTP API and web page for a checkpoint (FastAPI, batched)")
    v.add_argument("checkpoint", metavar="CHECKPOINT", help=CHECKPOINT_HELP)
    add_declared(v, declared(ServeSettings), defaults=True)
    _runtime_flags(v, "compile the model with frozen weights for each power-of-two batch size up to --max-batch "
                      "before serving: a slower start, then faster batches")
    v.add_argument("--access-log", action="store_true", help="log every request")
    _runtime_choice(v)
    v.set_defaults(func=cmd_serve)


def _data_parser(sub) -> None:
    d = sub.add_parser("data", help="inspect a dataset before training, or write it as shards")
    dsub = d.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    c = dsub.add_parser("check", help="report unreadable, odd and duplicate images, per-class counts and leaks")
    c.add_argument("data", nargs="?", metavar="DATA", help=DATA_HELP)
    c.add_argument("--images", metavar="DIR", help="the image folder a label file (--labels) lists, instead of DATA")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    _config_flags(c, "data.root", "data.val_fraction", "data.test_fraction", "train.seed", "data.allow_empty_classes",
                  "data.max_bad_fraction", "data.max_image_pixels", *LABEL_FLAGS)
    c.add_argument("--task", choices=["auto", "single", "multi"], default="auto", help="label file: one label per "
                   "image, any number, or from the labels (data.task)")
    c.add_argument("--uncertain", choices=["ignore", "zeros", "ones"], default="ignore",
                   help="label file with 0/1 columns: what -1 or blank counts as (data.uncertain)")
    c.add_argument("--near-bits", type=int, default=8, help="near duplicates differ in at most this many of 256 hash bits")
    c.add_argument("--limit", type=int, default=50, help="findings shown (0: all)")
    c.set_defaults(func=cmd_data_check)
    h = dsub.add_parser("shard", help="write an image folder as WebDataset tar shards, streamed by 'vitkit train'")
    h.add_argument("folder", metavar="FOLDER", help="image folder (class subfolders, or train/ val/ [test/])")
    h.add_argument("out", metavar="OUT", help="new folder for the shards and dataset.json")
    h.add_argument("--shard-size", type=int, default=1000, help="images per shard (default 1000)")
    _config_flags(h, "data.val_fraction", "data.test_fraction", "train.seed")
    h.set_defaults(func=cmd_data_shard)


def _runs_parser(sub) -> None:
    from .runs import SORT_KEYS

    r = sub.add_parser("runs", help="the training runs under a folder: model, data, epochs, best val, test, status; "
                       "'runs compare RUN...' compares runs on one page",
                       usage="vitkit runs [DIR] [--sort KEY] [--json]\n       vitkit runs compare RUN RUN [...] "
                             "[--out DIR] [--json]")
    r.add_argument("paths", nargs="*", metavar="DIR | compare RUN...",
                   help="the folder holding run directories (default runs), or one run directory; or 'compare' and "
                        "two or more run directories")
    r.add_argument("--out", default=".", metavar="DIR",
                   help="runs compare: where compare.html and compare/*.png go (default: the current folder)")
    r.add_argument("--sort", choices=SORT_KEYS, default="started",
                   help="column to sort by (best first for best_val and test, newest first for started)")
    r.add_argument("--json", action="store_true", help="print the runs as JSON")
    r.set_defaults(func=cmd_runs)


def _model_parsers(sub) -> None:
    m = sub.add_parser("models", help="list the registered models")
    m.add_argument("--num-classes", type=int, help="count parameters for this many classes")
    m.add_argument("--family", metavar="FAMILY", help="only this family's models: vit, deit, deit3, dinov2, dinov3, "
                   "clip, siglip, reg-gap or small")
    m.set_defaults(func=cmd_models)
    i = sub.add_parser("info", help="a model's configuration, parameters and FLOPs")
    i.add_argument("model", metavar="MODEL", help="registered model name (vitkit models), or timm:NAME")
    i.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. img_size=384")
    i.set_defaults(func=cmd_info)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vitkit", description="Train, evaluate and use Vision Transformer classifiers.")
    p.add_argument("--version", action="version", version=f"vitkit {__version__}", help="print the version")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging, and tracebacks of internal errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_train_parser, _evaluate_parser, _probe_parser, _report_parser, _predict_parser, _export_parser, _bench_parser,
                _serve_parser, _data_parser, _runs_parser, _model_parsers):
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    from .console import setup_logging

    setup_logging(args.verbose)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("vitkit: interrupted", file=sys.stderr)
        return 130
    except VitkitError as err:
        return _fail(err)
    except RuntimeError as err:
        smaller = "--max-batch" if args.func is cmd_serve else "--batch-size"
        oom = out_of_memory(err, f": try a smaller {smaller}")
        if oom is not None:
            return _fail(oom)
        return _bug(err, args.verbose)
    except BrokenPipeError:  # the reader of our output went away (`vitkit runs | head`): nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as err:  # the file system refused (permissions, a full disk): the user's to fix
        print(f"vitkit: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - a bug: one line unless -v asks for the traceback
        return _bug(err, args.verbose)


def _fail(err: VitkitError) -> int:
    print(f"vitkit: {err.prefix}{err}", file=sys.stderr)
    return err.exit_code


def _bug(err: Exception, verbose: bool) -> int:
    if verbose:
        raise err
    print(f"vitkit: internal error ({type(err).__name__}: {err}); run again with -v for the traceback and please "
          "report it", file=sys.stderr)
    return 1
