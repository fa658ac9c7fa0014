"""Reports: report.html with learning curves, metrics, confusion, ROC/PR, calibration and attention maps."""
from .build import REPORT_FILE, build_report, explain_files, training_report
from .explain import attention_rollout, cls_attention, explain, overlay

__all__ = ["REPORT_FILE", "attention_rollout", "build_report", "cls_attention", "explain", "explain_files", "overlay",
           "training_report"]
