"""Reports: report.html with learning curves, metrics, confusion, ROC/PR, calibration and attention maps; and
compare.html of several runs. Names load on first use, so that `vitkit runs compare` needs no torch."""
from ..optional import lazy_names

_WHERE = {"REPORT_FILE": "build", "build_report": "build", "explain_files": "build", "training_report": "build",
          "attention_rollout": "attention", "cls_attention": "attention", "explain": "attention",
          "overlay": "attention",
          "compare_runs": "compare"}


__getattr__, __dir__ = lazy_names(__name__, _WHERE)


__all__ = ["REPORT_FILE", "attention_rollout", "build_report", "cls_attention", "compare_runs", "explain",
           "explain_files", "overlay", "training_report"]
