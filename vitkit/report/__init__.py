"""Reports: report.html with learning curves, metrics, confusion, ROC/PR, calibration and attention maps; and
compare.html of several runs. Names load on first use, so that `vitkit runs compare` needs no torch."""
import importlib

_WHERE = {"REPORT_FILE": "build", "build_report": "build", "explain_files": "build", "training_report": "build",
          "attention_rollout": "attention", "cls_attention": "attention", "explain": "attention",
          "overlay": "attention",
          "compare_runs": "compare"}


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vitkit.report' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])


__all__ = ["REPORT_FILE", "attention_rollout", "build_report", "cls_attention", "compare_runs", "explain",
           "explain_files", "overlay", "training_report"]
