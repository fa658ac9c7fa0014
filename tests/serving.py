"""Helpers for the serving tests: a tiny checkpoint, a real `vitkit serve` process on loopback, raw HTTP."""
from __future__ import annotations

import http.client
import io
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

CLASSES = ["ankle", "bag", "coat"]


def make_checkpoint(path: Path, in_chans: int = 3) -> Path:
    """A random tiny model (16 px, patch 4) whose head is scaled so that classes are well apart."""
    import vitkit
    from vitkit.engine.checkpoint import model_meta, save_model
    from vitkit.models import model_kwargs

    name = "vit_micro_patch7_28"
    kwargs = model_kwargs(name, img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, in_chans=in_chans,
                          num_classes=len(CLASSES))
    torch.manual_seed(0)
    model = vitkit.create_model(name, **kwargs)
    torch.nn.init.normal_(model.head.weight, std=0.3)
    save_model(path, model, model_meta(name, kwargs, CLASSES, [0.5] * in_chans, [0.25] * in_chans))
    return path


def image_bytes(seed: int, size=(40, 30), mode: str = "RGB", fmt: str = "PNG", **save) -> bytes:
    """A random image of `size` (width, height) in a Pillow mode, encoded as `fmt`."""
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    buffer = io.BytesIO()
    img.save(buffer, fmt, **save)
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server process on 127.0.0.1, started from a command, stopped with SIGTERM. `tls`: an SSL context that
    trusts its certificate (the server speaks HTTPS); `token`: sent with every request but `raw`."""

    def __init__(self, command: list[str], log: Path, timeout: float = 90, env: dict | None = None,
                 tls: ssl.SSLContext | None = None, token: str | None = None):
        self.port = free_port()
        self.tls, self.token = tls, token
        self.base = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.log = log
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([*command, "--port", str(self.port)], stdout=out, stderr=subprocess.STDOUT,
                                         env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{log.read_text()}")
            try:
                if self.get("/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not start:\n{log.read_text()}")

    def auth(self, headers: dict | None = None) -> dict:
        return {**({"Authorization": f"Bearer {self.token}"} if self.token else {}), **(headers or {})}

    def get(self, path: str, headers: dict | None = None) -> tuple[int, dict | str]:
        try:
            request = urllib.request.Request(self.base + path, headers=self.auth(headers))
            with urllib.request.urlopen(request, timeout=30, context=self.tls) as r:
                return r.status, _decode(r.read(), r.headers.get("content-type", ""))
        except urllib.error.HTTPError as err:
            return err.code, _decode(err.read(), err.headers.get("content-type", ""))

    def request(self, method: str, path: str, body: bytes = b"", headers: dict | None = None, timeout: float = 30):
        """(status, headers, parsed body) over a fresh connection."""
        if self.tls:
            conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=timeout, context=self.tls)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=self.auth(headers))
            r = conn.getresponse()
            return r.status, dict(r.getheaders()), _decode(r.read(), r.getheader("content-type", ""))
        finally:
            conn.close()

    def post_files(self, files: list[tuple[str, bytes]], query: str = "", field: str = "file", timeout: float = 30,
                   headers: dict | None = None):
        body, content_type = multipart(files, field)
        return self.request("POST", "/predict" + query, body, {"Content-Type": content_type, **(headers or {})},
                            timeout)

    def raw(self, head: bytes, body: bytes = b"", wait: float = 10) -> bytes:
        """Send bytes as they are (headers may lie about the body) and read what comes back."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=wait) as s:
            s.sendall(head + body)
            chunks = []
            try:
                while chunk := s.recv(65536):
                    chunks.append(chunk)
            except (TimeoutError, ConnectionResetError):
                pass
            return b"".join(chunks)

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def multipart(files: list[tuple[str, bytes]], field: str = "file") -> tuple[bytes, str]:
    boundary = "vitkit-test-boundary-7d1f"
    parts = []
    for name, data in files:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
                     "Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _decode(data: bytes, content_type: str):
    if "json" in content_type:
        return json.loads(data)
    return data.decode("utf-8", "replace")


def serve_command(checkpoint: Path, *options: str) -> list[str]:
    return [sys.executable, "-m", "vitkit", "serve", str(checkpoint), *options]


def browser_or_skip():
    """A factory for headless Chromium under Selenium (Debian's chromium and chromium-driver)."""
    required = os.environ.get("VITKIT_REQUIRE_BROWSER") == "1"
    chromium, driver = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    try:
        from selenium import webdriver
    except ImportError:
        webdriver = None
    if not (chromium and driver and webdriver):
        if required:
            pytest.fail("VITKIT_REQUIRE_BROWSER=1 but chromium, chromedriver or selenium is missing")
        pytest.skip("needs chromium, chromium-driver and selenium")

    def start():
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1200,800"):
            options.add_argument(flag)
        return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))
    return start
