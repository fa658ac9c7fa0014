"""Serving a trained classifier over HTTP: FastAPI app, dynamic batching, request limits, web page."""
from .app import ServeSettings, create_app, decode_upload, serve

__all__ = ["ServeSettings", "create_app", "decode_upload", "serve"]
