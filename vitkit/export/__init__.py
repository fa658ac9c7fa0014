"""Exports of a trained model for other runtimes and libraries, each checked against PyTorch: ONNX (uint8 images in,
logits out) and folders that timm and transformers load."""
from .folders import FolderExport, export_folder
from .onnx import ExportResult, export_onnx

__all__ = ["ExportResult", "FolderExport", "export_folder", "export_onnx"]
