"""The `vitkit` command: each subcommand is a short function over the Python API.

Errors a user can cause end in one line on stderr and exit code 2; a non-finite loss exits 1; Ctrl-C exits 130 and
SIGTERM 143 (during training, after saving a resumable state).
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import sys
from pathlib import Path

from rich.table import Table

from . import __version__
from .console import out, print_bench, print_check, print_report, setup_logging
from .engine.interrupt import Interrupted
from .errors import UserError

log = logging.getLogger("vitkit")


# ------------------------------------------------------------------------------------------------------ train
def cmd_train(args: argparse.Namespace) -> int:
    from .config import build_config, describe_keys
    from .engine.train import resume_config, train

    if args.help_config:
        out.print(describe_keys(), markup=False)
        return 0
    if args.nproc is not None and args.nproc < 1:
        raise UserError(f"--nproc must be at least 1, not {args.nproc}")
    options = {"data.source": args.data, "model.name": args.model, "model.img_size": args.img_size,
               "train.epochs": args.epochs, "train.batch_size": args.batch_size, "train.lr": args.lr,
               "train.optimizer": args.optimizer, "train.precision": args.precision, "train.device": args.device,
               "train.seed": args.seed, "train.patience": args.patience, "data.root": args.data_root,
               "output.dir": args.out, "output.name": args.name,
               "data.allow_empty_classes": True if args.allow_empty_classes else None, "model.init": args.init,
               "model.init_strict": args.init_strict, "train.freeze": args.freeze,
               "train.layer_decay": args.layer_decay, "train.balance": args.balance,
               "train.accum_steps": args.accum_steps, "train.ema": args.ema}
    if args.resume:
        cfg = resume_config(args.resume, {k: v for k, v in options.items() if k.startswith("train.")}, args.set)
    else:
        cfg = build_config(args.config, options, args.set)
    if args.nproc and args.nproc > 1 and "WORLD_SIZE" not in os.environ:  # the config is valid: start the workers
        from .engine.launch import launch

        return launch(args.nproc, args.argv)
    result = train(cfg, resume=args.resume, show_progress=not args.no_progress)
    if os.environ.get("RANK", "0") != "0":
        return 0
    best = (f"best val top-1 {result.best_val_top1:.4f} (epoch {result.best_epoch})"
            if not math.isnan(result.best_val_top1) else "no validation split: best is the last epoch")
    out.print(f"{best}, {result.epochs} epochs in {result.seconds:.0f}s")
    out.print(f"run directory: {result.run_dir}")
    out.print(f"best model:    {result.best_checkpoint}")
    out.print(f"next: vitkit evaluate {result.best_checkpoint} {cfg.data.source}", markup=False)
    return 0


# --------------------------------------------------------------------------------------------------- evaluate
def cmd_evaluate(args: argparse.Namespace) -> int:
    from .engine.evaluate import evaluation_report, prepare_evaluation
    from .fileio import atomic_write

    evaluation = prepare_evaluation(args.checkpoint, args.data, args.split, args.data_root, args.device,
                                    args.precision, args.tta, args.compile)
    report = evaluation_report(evaluation, args.checkpoint, args.batch_size)
    text = json.dumps(report, indent=2)
    json_path = Path(args.json) if args.json else Path(args.checkpoint).with_name(
        f"{Path(args.checkpoint).stem}-eval-{report['split']}{'' if args.tta == 'none' else '-tta-' + args.tta}.json")
    atomic_write(json_path, text + "\n")
    if args.report:
        from .report import build_report

        report_path = build_report(args.checkpoint, out_dir=args.report, evaluation=evaluation)
    if args.format == "json":
        print(text)  # raw: a console would wrap long lines inside JSON strings
        return 0
    print_report(report)
    out.print(f"written: {json_path}")
    if args.report:
        out.print(f"report: {report_path}")
    return 0


# ---------------------------------------------------------------------------------------------------- predict
def cmd_predict(args: argparse.Namespace) -> int:
    from .engine.predict import collect_images, load_classifier

    clf = load_classifier(args.checkpoint, args.runtime, device=args.device, precision=args.precision,
                          compile=args.compile)
    if args.explain and clf.model is None:
        raise UserError("--explain needs the PyTorch checkpoint (.safetensors): attention maps are not in the ONNX graph")
    files = collect_images(args.paths)
    if not files:
        raise UserError("no image files found in the given paths: give image files or folders of images")
    results = clf.predict(files, top_k=args.top_k, batch_size=args.batch_size)
    if args.format == "json":
        print(json.dumps([r.to_dict() for r in results], indent=2, ensure_ascii=False))
    elif args.format == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(["file", "rank", "class", "probability", "error"])
        for r in results:
            for rank, (c, p) in enumerate(r.top or [], 1):
                writer.writerow([r.source, rank, c, f"{p:.6f}", ""])
            if r.top is None:
                writer.writerow([r.source, "", "", "", r.error])
    else:
        table = Table("file", *[f"top-{i + 1}" for i in range(min(args.top_k, len(clf.classes)))])
        for r in results:
            cells = [f"{c} {p:.1%}" for c, p in r.top] if r.top is not None else [f"[red]unreadable: {r.error}[/red]"]
            table.add_row(r.source, *cells)
        out.print(table)
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
    from .engine.export import export_onnx

    if args.samples < 2:
        raise UserError("--samples must be at least 2 (batch sizes 1 and more are both checked)")
    result = export_onnx(args.checkpoint, args.out, opset=args.opset, samples=args.samples, atol=args.atol)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    out.print(f"wrote {result.path} (opset {result.opset}) and {result.sidecar}", markup=False)
    out.print(f"checked with ONNX Runtime on {result.samples} images: largest logit difference "
              f"{result.max_abs_diff:.2e}, top-1 agreement {result.top1_agreement:.1%}", markup=False)
    return 0


# ------------------------------------------------------------------------------------------------------ bench
def cmd_bench(args: argparse.Namespace) -> int:
    from .config import parse_assignment
    from .engine.bench import BenchSettings, run_bench

    overrides = dict(parse_assignment(a) for a in args.set)
    if args.img_size:
        overrides["img_size"] = args.img_size
    modes = ("train", "infer") if args.mode == "both" else (args.mode,)
    result = run_bench(BenchSettings(args.model, args.batch_size, args.precision, args.device, modes, args.steps,
                                     args.warmup, args.repeats, args.compare, args.compile, args.bf16_weights,
                                     overrides))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print_bench(result)
    return 0


# ------------------------------------------------------------------------------------------------------ serve
def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import ServeSettings, serve

    for option in ("top_k", "max_batch", "max_queue", "max_images", "max_image_pixels", "max_connections"):
        if getattr(args, option) < 1:
            raise UserError(f"--{option.replace('_', '-')} must be at least 1")
    if min(args.max_body_mb, args.timeout) <= 0 or args.max_wait_ms < 0:
        raise UserError("--max-body-mb and --timeout must be positive, --max-wait-ms not negative")
    if args.max_queue < args.max_images:
        raise UserError("--max-queue must hold at least --max-images images, or large requests could never fit")
    settings = ServeSettings(host=args.host, port=args.port, top_k=args.top_k, max_batch=args.max_batch,
                             max_wait_ms=args.max_wait_ms, max_queue=args.max_queue, max_body_mb=args.max_body_mb,
                             max_images=args.max_images, max_image_pixels=args.max_image_pixels,
                             timeout_s=args.timeout, max_connections=args.max_connections)
    serve(args.checkpoint, settings, device=args.device, precision=args.precision, access_log=args.access_log,
          compile=args.compile)
    return 0


# ----------------------------------------------------------------------------------------------------- report
def cmd_report(args: argparse.Namespace) -> int:
    from .report import build_report

    path = build_report(args.target, args.data, args.split, args.out, args.data_root, args.device, args.precision,
                        args.samples)
    out.print(f"report: {path}")
    return 0


# ------------------------------------------------------------------------------------------------------- data
def cmd_data_shard(args: argparse.Namespace) -> int:
    from .data.shards import write_shards

    index = write_shards(args.folder, args.out, args.shard_size, args.val_fraction, args.test_fraction, args.seed)
    for split, info in index["splits"].items():
        out.print(f"{split}: {info['count']:,} images in {len(info['shards'])} shard(s)")
    if index["bad_files"]:
        out.print(f"left out: {len(index['bad_files'])} unreadable file(s), listed in {Path(args.out) / 'dataset.json'}")
    out.print(f"next: vitkit train {args.out} --model MODEL", markup=False)
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from .data.check import check_data
    from .data.images import set_max_pixels

    set_max_pixels(args.max_image_pixels)
    report = check_data(args.data, data_root=args.data_root, val_fraction=args.val_fraction,
                        test_fraction=args.test_fraction, seed=args.seed, allow_empty_classes=args.allow_empty_classes,
                        max_bad_fraction=args.max_bad_fraction, near_duplicate_bits=args.near_bits,
                        show_progress=not args.json)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        print_check(report, args.limit)
    return 0 if report.ok else 1


# ------------------------------------------------------------------------------------------------ models, info
def cmd_models(args: argparse.Namespace) -> int:
    from .models import get_spec, list_models, model_size

    table = Table("model", "params", "GFLOPs", "image", "patch", "description")
    for name in list_models():
        spec = get_spec(name)
        params, flops, _ = model_size(name, **({"num_classes": args.num_classes} if args.num_classes else {}))
        table.add_row(name, f"{params / 1e6:.2f}M", f"{flops / 1e9:.3f}",
                      f"{spec.kwargs['img_size']}", str(spec.kwargs["patch_size"]), spec.description)
    out.print(table)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .config import parse_assignment
    from .models import model_kwargs, model_size

    overrides = dict(parse_assignment(a) for a in args.set)
    kwargs = model_kwargs(args.model, **overrides)
    params, flops, n_tokens = model_size(args.model, **overrides)
    out.print(f"[bold]{args.model}[/bold]")
    for key, value in kwargs.items():
        out.print(f"  {key}: {value}", markup=False)
    out.print(f"  tokens: {n_tokens}  parameters: {params:,}  FLOPs/image: {flops / 1e9:.3f} G")
    return 0


# --------------------------------------------------------------------------------------------------- parser
def _yes_no(text: str) -> bool:
    if text.lower() in ("true", "yes", "1", "on"):
        return True
    if text.lower() in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


COMPILE_HELP = ("compile the model for inference first, with frozen weights: tens of seconds, then faster batches "
                "(pays off over thousands of images)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vitkit", description="Train, evaluate and use Vision Transformer classifiers.")
    p.add_argument("--version", action="version", version=f"vitkit {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    t = sub.add_parser("train", help="train a model on an image folder or a named dataset")
    t.add_argument("data", nargs="?", metavar="DATA",
                   help="image folder (class subfolders, or train/ val/ [test/]) or fashion-mnist|mnist|cifar10|cifar100")
    t.add_argument("--config", metavar="FILE", help="YAML config (see configs/); options below override it")
    t.add_argument("--model", help="registered model name (vitkit models)")
    t.add_argument("--img-size", type=int, help="input size in pixels")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float, help="peak learning rate")
    t.add_argument("--optimizer", choices=["adamw", "sgd"])
    t.add_argument("--precision", choices=["auto", "bf16", "fp32"])
    t.add_argument("--device", choices=["auto", "cpu", "cuda"])
    t.add_argument("--seed", type=int)
    t.add_argument("--patience", type=int, help="early stopping patience in epochs (0: off)")
    t.add_argument("--data-root", help="folder holding named datasets' files")
    t.add_argument("--out", help="parent folder of run directories (default runs)")
    t.add_argument("--name", help="run directory name")
    t.add_argument("--allow-empty-classes", action="store_true", help="warn about empty class folders instead of failing")
    t.add_argument("--init", metavar="SOURCE", help="initial weights: timm:NAME[.TAG], a Hugging Face repo id or "
                   "folder, a .safetensors/.pth/.bin/.npz file or a vitkit checkpoint")
    t.add_argument("--init-strict", type=_yes_no, metavar="true|false",
                   help="false: keep random weights for what the init weights lack (default true: error)")
    t.add_argument("--freeze", choices=["none", "backbone"], help="backbone: train the head only (linear probe)")
    t.add_argument("--layer-decay", type=float, help="layer-wise learning-rate decay, e.g. 0.75 (1: off)")
    t.add_argument("--balance", choices=["none", "loss", "sampler"],
                   help="imbalanced classes: class-weighted loss or a balanced sampler")
    t.add_argument("--accum-steps", type=int, help="passes per batch (gradient accumulation; same result, less memory)")
    t.add_argument("--ema", type=float, metavar="DECAY", help="keep a weight average, e.g. 0.999 (0: off)")
    t.add_argument("--nproc", type=int, metavar="N", help="train with N processes on this machine (runs torchrun; "
                   "the global batch size and learning rate stay as given)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config key, e.g. train.lr=3e-4")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last completed epoch")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--help-config", action="store_true", help="list every config key with its default and meaning")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="metrics of a checkpoint on a data split")
    e.add_argument("checkpoint", metavar="CHECKPOINT")
    e.add_argument("data", metavar="DATA")
    e.add_argument("--split", choices=["train", "val", "test"], help="default: test if the data has one, else val")
    e.add_argument("--data-root")
    e.add_argument("--json", metavar="FILE", help="where to write the JSON report (default: beside the checkpoint)")
    e.add_argument("--format", choices=["table", "json"], default="table")
    e.add_argument("--batch-size", type=int, default=512)
    e.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    e.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    e.add_argument("--report", metavar="DIR", help="also write report.html and its figures into DIR")
    e.add_argument("--tta", choices=["none", "flip"], default="none",
                   help="test-time augmentation: flip averages each image's and its mirror's logits "
                        "(its JSON is written as NAME-eval-SPLIT-tta-flip.json)")
    e.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    e.set_defaults(func=cmd_evaluate)

    rp = sub.add_parser("report", help="report.html: curves, confusion, ROC/PR, calibration, attention maps")
    rp.add_argument("target", metavar="RUN_DIR_OR_CHECKPOINT")
    rp.add_argument("data", nargs="?", metavar="DATA", help="default: the data the model was trained on")
    rp.add_argument("--split", choices=["train", "val", "test"], help="default: test if the data has one, else val")
    rp.add_argument("--out", metavar="DIR", help="default: the run directory (or the checkpoint's folder)")
    rp.add_argument("--data-root")
    rp.add_argument("--samples", type=int, default=8, help="images shown with attention maps")
    rp.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    rp.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    rp.set_defaults(func=cmd_report)

    r = sub.add_parser("predict", help="top-k classes of image files and folders")
    r.add_argument("checkpoint", metavar="CHECKPOINT")
    r.add_argument("paths", nargs="+", metavar="PATH")
    r.add_argument("--top-k", type=int, default=5)
    r.add_argument("--format", choices=["table", "json", "csv"], default="table")
    r.add_argument("--batch-size", type=int, default=256)
    r.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    r.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    r.add_argument("--explain", metavar="DIR", help="write an attention overlay beside the top-k of each image")
    r.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    r.add_argument("--runtime", choices=["auto", "torch", "onnx"], default="auto",
                   help="onnx: run an exported MODEL.onnx with ONNX Runtime (auto: by the file's suffix)")
    r.set_defaults(func=cmd_predict)

    x = sub.add_parser("export", help="export a checkpoint to ONNX, checked against PyTorch with ONNX Runtime")
    x.add_argument("checkpoint", metavar="CHECKPOINT")
    x.add_argument("--format", choices=["onnx"], default="onnx")
    x.add_argument("--out", metavar="FILE", help="default: the checkpoint's path with .onnx")
    x.add_argument("--opset", type=int, default=18, help="ONNX opset version")
    x.add_argument("--samples", type=int, default=32, help="seeded test images compared after export")
    x.add_argument("--atol", type=float, default=1e-3, help="largest accepted logit difference from PyTorch")
    x.add_argument("--json", action="store_true", help="print the result as JSON")
    x.set_defaults(func=cmd_export)

    b = sub.add_parser("bench", help="training and inference speed, MFU and peak memory; --compare timm")
    b.add_argument("--model", default="vit_mini_patch4_28")
    b.add_argument("--img-size", type=int)
    b.add_argument("--batch-size", type=int, default=256)
    b.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    b.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    b.add_argument("--mode", choices=["train", "infer", "both"], default="both")
    b.add_argument("--steps", type=int, default=10, help="timed batches per run")
    b.add_argument("--warmup", type=int, default=3, help="untimed batches before the first run")
    b.add_argument("--repeats", type=int, default=5, help="runs per model and mode (medians reported)")
    b.add_argument("--compare", choices=["timm"], help="also time timm's model with the same configuration")
    b.add_argument("--compile", action="store_true", help="torch.compile vitkit's model (timm's stays eager)")
    b.add_argument("--bf16-weights", action=argparse.BooleanOptionalAction,
                   help="vitkit's training step on a bf16 copy of the weights, fp32 master weights (default: as "
                        "vitkit train, on for bf16 on a CPU)")
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="model option, e.g. depth=8")
    b.add_argument("--json", action="store_true", help="print the results as JSON")
    b.set_defaults(func=cmd_bench)

    v = sub.add_parser("serve", help="an HTTP API and web page for a checkpoint (FastAPI, batched)")
    v.add_argument("checkpoint", metavar="CHECKPOINT")
    v.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("--top-k", type=int, default=5)
    v.add_argument("--max-batch", type=int, default=32, help="images per forward pass (1: no batching)")
    v.add_argument("--max-wait-ms", type=float, default=2.0, help="how long a batch waits to fill")
    v.add_argument("--max-queue", type=int, default=256, help="images waiting; beyond, requests get 503")
    v.add_argument("--max-body-mb", type=float, default=16.0, help="largest request body")
    v.add_argument("--max-images", type=int, default=16, help="images per request")
    v.add_argument("--max-image-pixels", type=int, default=40_000_000, help="refuse larger images (decompression bombs)")
    v.add_argument("--timeout", type=float, default=30.0, help="seconds per request, upload included")
    v.add_argument("--max-connections", type=int, default=64, help="concurrent connections; beyond, 503")
    v.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    v.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    v.add_argument("--access-log", action="store_true", help="log every request")
    v.add_argument("--compile", action="store_true",
                   help="compile the model with frozen weights for each power-of-two batch size up to --max-batch "
                        "before serving: a slower start, then faster batches")
    v.set_defaults(func=cmd_serve)

    d = sub.add_parser("data", help="inspect a dataset before training")
    dsub = d.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    c = dsub.add_parser("check", help="report unreadable, odd and duplicate images, per-class counts and leaks")
    c.add_argument("data", metavar="DATA", help="image folder or fashion-mnist|mnist|cifar10|cifar100")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.add_argument("--data-root", help="folder holding named datasets' files")
    c.add_argument("--val-fraction", type=float, default=0.1, help="as in training (class-folder data)")
    c.add_argument("--test-fraction", type=float, default=0.0, help="as in training (class-folder data)")
    c.add_argument("--seed", type=int, default=0, help="split seed, as in training")
    c.add_argument("--allow-empty-classes", action="store_true", help="empty class folders are warnings")
    c.add_argument("--max-bad-fraction", type=float, default=0.1, help="share of unusable files training accepts")
    c.add_argument("--max-image-pixels", type=int, default=89_478_485, help="refuse larger images (decompression bombs)")
    c.add_argument("--near-bits", type=int, default=8, help="near duplicates differ in at most this many of 256 hash bits")
    c.add_argument("--limit", type=int, default=50, help="findings shown (0: all)")
    c.set_defaults(func=cmd_data_check)
    h = dsub.add_parser("shard", help="write an image folder as WebDataset tar shards, streamed by 'vitkit train'")
    h.add_argument("folder", metavar="FOLDER", help="image folder (class subfolders, or train/ val/ [test/])")
    h.add_argument("out", metavar="OUT", help="new folder for the shards and dataset.json")
    h.add_argument("--shard-size", type=int, default=1000, help="images per shard (default 1000)")
    h.add_argument("--val-fraction", type=float, default=0.1, help="held out per class when FOLDER has no val/")
    h.add_argument("--test-fraction", type=float, default=0.0, help="held out per class when FOLDER has no test/")
    h.add_argument("--seed", type=int, default=0, help="split and shuffle seed")
    h.set_defaults(func=cmd_data_shard)

    m = sub.add_parser("models", help="list the registered models")
    m.add_argument("--num-classes", type=int, help="count parameters for this many classes")
    m.set_defaults(func=cmd_models)

    i = sub.add_parser("info", help="a model's configuration, parameters and FLOPs")
    i.add_argument("model", metavar="MODEL")
    i.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. img_size=384")
    i.set_defaults(func=cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    setup_logging(args.verbose)
    try:
        return args.func(args)
    except UserError as err:
        print(f"vitkit: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vitkit: interrupted", file=sys.stderr)
        return 130
    except Interrupted as err:  # a signal during training, after the state was saved
        print(f"vitkit: {err}", file=sys.stderr)
        return err.exit_code
    except RuntimeError as err:
        from .engine.export import ExportMismatch
        from .engine.trainer import NonFiniteLoss

        if isinstance(err, (NonFiniteLoss, ExportMismatch)):
            print(f"vitkit: error: {err}", file=sys.stderr)
            return 1
        from .engine.device import out_of_memory

        detail = out_of_memory(err)
        if detail is None:
            raise
        smaller = "--max-batch" if args.func is cmd_serve else "--batch-size"
        print(f"vitkit: error: out of memory ({detail}): try a smaller {smaller}", file=sys.stderr)
        return 2
