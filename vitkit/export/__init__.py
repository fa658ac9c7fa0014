"""Exports of a trained model for other runtimes: ONNX (uint8 images in, logits out), checked against PyTorch."""
from .onnx import ExportResult, export_onnx

__all__ = ["ExportResult", "export_onnx"]
