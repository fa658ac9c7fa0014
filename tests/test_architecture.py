"""The shape of the package: layers that only point down, options declared once, help on every flag, one error
family through the real CLI, short functions."""
import argparse
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from vitkit.cli import build_parser
from vitkit.config import SECTIONS, ServeSettings, declared, describe_keys, options

from .conftest import run_cli

PACKAGE = Path(__file__).parents[1] / "vitkit"

# Lower numbers are lower layers; a module may import its own layer or lower ones, never a higher one.
LAYERS = {
    0: ("vitkit.errors", "vitkit.fileio", "vitkit.console", "vitkit.compat", "vitkit.version", "vitkit.optional"),
    1: ("vitkit.models", "vitkit.data", "vitkit.config", "vitkit.metrics", "vitkit.runs"),
    2: ("vitkit.engine", "vitkit.tracking"),
    3: ("vitkit.report", "vitkit.serve", "vitkit.export"),
    4: ("vitkit.cli", "vitkit.api", "vitkit.__main__", "vitkit"),
}


def layer_of(module: str) -> int:
    best = None
    for layer, prefixes in LAYERS.items():
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > len(best[1]):
                    best = (layer, prefix)
    assert best is not None, f"{module} is in no layer: add it to LAYERS and docs/architecture.md"
    return best[0]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_in(source: str, name: str, is_package: bool = False) -> set[str]:
    """Every vitkit module the module `name` with `source` imports, function-local imports included (a hidden cycle
    is still a cycle)."""
    package = name if is_package else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            target = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else node.module
            for alias in node.names:  # `from . import dist` names a module; `from .x import y` names x
                candidate = f"{target}.{alias.name}"
                is_module = (PACKAGE.parent / (candidate.replace(".", "/") + ".py")).exists()
                found.add(candidate if is_module else target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m == "vitkit" or m.startswith("vitkit.")}


def imports_of(path: Path) -> set[str]:
    return imports_in(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py")


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) - {module_name(p)} for p in PACKAGE.rglob("*.py")}


def test_no_module_imports_a_higher_layer():
    upward = [f"{m} (layer {layer_of(m)}) imports {d} (layer {layer_of(d)})"
              for m, deps in import_graph().items() for d in deps if layer_of(d) > layer_of(m)]
    assert not upward, "\n".join(upward)


def test_the_imports_have_no_cycle():
    graph = import_graph()
    # A package's __init__ re-exporting its own modules is not a cycle of design: skip the edge module -> its package.
    edges = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(edges.get(m, ())):
            if state.get(d) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_the_walk_sees_function_local_and_relative_imports():
    found = imports_in("import os\ndef f():\n    from ..report import build_report\n    from . import dist\n",
                       "vitkit.engine.x")
    assert found == {"vitkit.report", "vitkit.engine.dist"}
    assert layer_of("vitkit.report") > layer_of("vitkit.engine.x")
    assert imports_in("from .build import training_report\n", "vitkit.report", True) == {"vitkit.report.build"}


# ------------------------------------------------------------------------------------------- options, help
def test_every_config_key_is_settable_and_documented_with_help():
    from vitkit.config import build_config

    text = describe_keys()
    for key, o in options().items():
        assert o.help.strip(), key
        assert f"  {o.name}: " in text, key
        cfg = build_config(assignments=[f"{key}={json.dumps(o.default) if o.default is not None else 'null'}"])
        section, name = key.split(".")
        assert getattr(getattr(cfg, section), name) == o.default


def test_every_declared_flag_reaches_the_config_through_the_cli(tmp_path):
    from vitkit.cli import _base_type
    from vitkit.config import build_config

    parser = build_parser()
    for o in options().values():
        if not o.flag:
            continue
        kind = _base_type(o.hint)
        value = o.choices[-1] if o.choices else {bool: "false", int: "4", float: "0.25", str: "x"}[kind]
        value = {"train.threshold_for": "sensitivity=0.9"}.get(o.key, value)  # a string with a form
        argv = ["train", o.flag] if o.default is False else ["train", o.flag, str(value)]
        args = parser.parse_args(argv)
        assert getattr(args, o.key) is not None, o.key
        if o.key not in ("train.device",):  # cuda needs a GPU at run time, not here
            cfg = build_config(options={o.key: getattr(args, o.key)})
            assert cfg.flat()[o.key] == getattr(args, o.key), o.key


def _all_parsers(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_parsers(sub)


def test_every_cli_option_has_help():
    missing = [f"{p.prog} {a.option_strings or a.dest}" for p in _all_parsers(build_parser()) for a in p._actions
               if not isinstance(a, argparse._SubParsersAction) and not (a.help or "").strip()]
    assert not missing, missing


def test_serve_flags_come_from_serve_settings_with_their_defaults():
    args = build_parser().parse_args(["serve", "m.safetensors"])
    for o in declared(ServeSettings):
        if o.flag:
            assert getattr(args, o.flag.lstrip("-").replace("-", "_")) == o.default


def test_resume_policy_is_declared_for_every_option():
    from vitkit.config import FREE, REFUSE, WARN

    for o in options().values():
        assert o.resume in (REFUSE, WARN, FREE), o.key
    assert options()["train.seed"].resume == REFUSE and options()["train.patience"].resume == FREE
    assert all(o.resume == REFUSE for o in options().values() if o.key.startswith("model.") and o.name not in
               ("attn_impl",)), "model options change the network: a resume may not change them"
    assert set(SECTIONS) == {"model", "data", "train", "output"}


# ------------------------------------------------------------------------------------- errors through the CLI
def _one_error_line(result, code: int, text: str):
    lines = [line for line in result.stderr.splitlines() if line.startswith("vitkit:")]
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr and len(lines) == 1 and text in lines[0], result.stderr


def test_user_and_data_errors_are_one_line_with_exit_code_2(tmp_path):
    _one_error_line(run_cli("train", tmp_path / "nowhere", "--epochs", "1", "--out", tmp_path / "runs"), 2,
                    "does not exist")
    (tmp_path / "photos" / "cats").mkdir(parents=True)  # a DataError: a class folder without images
    _one_error_line(run_cli("train", tmp_path / "photos", "--epochs", "1", "--out", tmp_path / "runs"), 2,
                    "empty class folder(s): cats")
    (tmp_path / "c.yaml").write_text("train:\n  epochs: 0\n")
    _one_error_line(run_cli("train", "--config", tmp_path / "c.yaml"), 2, "train.epochs must be greater than 0")
    _one_error_line(run_cli("serve", "m.safetensors", "--top-k", "0"), 2, "--top-k must be at least 1, not 0")
    _one_error_line(run_cli("train", "--set", "train.lrr=1"), 2, "did you mean 'train.lr'")


def test_out_of_memory_is_one_line_with_exit_code_2():
    big = run_cli("bench", "--batch-size", "100000000", "--device", "cpu", "--mode", "infer", "--precision", "fp32")
    _one_error_line(big, 2, "out of memory")
    assert "try a smaller --batch-size" in big.stderr


# A non-finite loss (NonFiniteLoss, exit 1, one line): test_reliability.py's
# test_a_non_finite_loss_exits_1_with_one_line_through_the_cli.


def test_an_export_that_disagrees_is_one_line_with_exit_code_1(exported):
    checkpoint, _ = exported
    r = run_cli("export", checkpoint, "--out", Path(checkpoint).with_name("strict.onnx"), "--atol", "1e-30")
    _one_error_line(r, 1, "disagrees with PyTorch")
    assert not Path(checkpoint).with_name("strict.onnx").exists()


def test_a_bug_is_one_line_with_exit_code_1_and_a_traceback_with_v():
    code = ("import sys, vitkit.cli as c\n"
            "def boom(args): raise TypeError('a bug')\n"
            "c.cmd_models = boom\n"
            "p = c.build_parser\n"
            "def patched():\n"
            "    parser = p()\n"
            "    for a in parser._actions:\n"
            "        if hasattr(a, 'choices') and isinstance(a.choices, dict) and 'models' in a.choices:\n"
            "            a.choices['models'].set_defaults(func=boom)\n"
            "    return parser\n"
            "c.build_parser = patched\n"
            "sys.exit(c.main(sys.argv[1:]))\n")
    quiet = subprocess.run([sys.executable, "-c", code, "models"], capture_output=True, text=True, timeout=120)
    _one_error_line(quiet, 1, "internal error (TypeError: a bug)")
    loud = subprocess.run([sys.executable, "-c", code, "-v", "models"], capture_output=True, text=True, timeout=120)
    assert loud.returncode == 1 and "Traceback" in loud.stderr and "TypeError: a bug" in loud.stderr


def test_every_error_class_has_its_exit_code():
    from vitkit import errors

    assert errors.UserError("x").exit_code == 2 and errors.DataError("x").exit_code == 2
    assert errors.BadImage("x", "empty").exit_code == 2 and errors.OutOfMemory("x").exit_code == 2
    assert errors.NonFiniteLoss("x").exit_code == 1 and errors.ExportMismatch("x").exit_code == 1
    assert errors.Interrupted(15, "x").exit_code == 143 and errors.Interrupted(2, "x").exit_code == 130
    for cls in (errors.UserError, errors.NonFiniteLoss, errors.ExportMismatch, errors.Interrupted, errors.BadImage):
        assert issubclass(cls, errors.VitkitError)


# ---------------------------------------------------------------------------------------------- code shape
def test_no_function_is_longer_than_60_lines():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} "
                            f"({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long


def test_help_and_import_vitkit_do_not_import_torch():
    code = "import sys, vitkit, vitkit.cli; vitkit.cli.build_parser(); print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr
    helped = subprocess.run([sys.executable, "-m", "vitkit", "train", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert helped.returncode == 0 and "--epochs" in helped.stdout


@pytest.mark.parametrize("name", ["train", "evaluate", "load", "create_model", "Config", "VitkitError"])
def test_the_facade_names_load_on_first_use(name):
    import vitkit

    assert getattr(vitkit, name) is not None and name in dir(vitkit)
