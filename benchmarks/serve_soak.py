"""Soak test for `vitkit serve`: many requests from concurrent clients, mixing good, damaged and oversized uploads.

    python benchmarks/serve_soak.py CHECKPOINT [--requests 20000] [--clients 32] [--json out.json]

The server runs as a user would start it (loopback, default limits but a 1 MB body limit so that oversized bodies
stay cheap to send). Each client keeps one connection and opens a new one when the server closes it. The mix, drawn
from a seeded generator: 70% good images (PNG/JPEG of several sizes), 20% bad (cut short, random bytes, text, EPS,
damaged EXIF), 10% oversized (a body over the limit, a 200000x1 PNG, a decompression-bomb PNG header). Checked:
no 500, no lost response (every request gets a status), each kind gets the status it should, the server's resident
memory from the first thousand answers to the last, and the p99 latency per thousand.
"""
from __future__ import annotations

import argparse
import http.client
import io
import json
import random
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

EXPECTED = {"good": {200, 503}, "bad": {400, 415}, "oversized": {400, 413}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A PNG header claiming width x height, with one tiny IDAT: refused from the header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def payloads(rng: np.random.Generator) -> dict[str, list[bytes]]:
    good = []
    for i in range(24):
        size = (int(rng.integers(16, 120)), int(rng.integers(16, 120)))
        img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        good.append(encode(img, "PNG") if i % 2 else encode(img, "JPEG", quality=85))
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 6, "Camera"  # turned, and a Make tag that is then retagged as ImageWidth (text):
    broken_exif = encode(Image.new("RGB", (32, 32), (120, 30, 30)), "JPEG", exif=exif.tobytes()).replace(
        b"\x01\x0f\x00\x02", b"\x01\x00\x00\x02")  # Pillow reads it, then fails writing it back when turning
    bad = [good[1][:len(good[1]) // 2], good[2][:100], rng.integers(0, 256, 3000, dtype=np.uint8).tobytes(),
           b"just some text\n" * 20, b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n%%EOF\n",
           broken_exif]
    oversized = [b"\x89PNG" + bytes(1_200_000), encode(Image.new("L", (200_000, 1)), "PNG"), bomb_png(30000, 30000)]
    return {"good": good, "bad": bad, "oversized": oversized}


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = "soak-7d1f"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


class Client(threading.Thread):
    def __init__(self, port: int, jobs: list[tuple[str, bytes]], results: list, lock: threading.Lock):
        super().__init__(daemon=True)
        self.port, self.jobs, self.results, self.lock = port, jobs, results, lock
        self.conn = None

    def run(self) -> None:
        for kind, data in self.jobs:
            body, content_type = multipart(f"{kind}.bin", data)
            start = time.perf_counter()
            status = None
            for _ in range(2):  # a kept-alive connection the server has closed meanwhile is reopened once
                fresh = self.conn is None
                try:
                    if fresh:
                        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                    self.conn.request("POST", "/predict", body, {"Content-Type": content_type})
                    response = self.conn.getresponse()
                    response.read()
                    status = response.status
                    if response.getheader("connection", "").lower() == "close":
                        self.conn.close()
                        self.conn = None
                    break
                except (OSError, http.client.HTTPException):
                    if self.conn is not None:
                        self.conn.close()
                    self.conn = None
                    if fresh:
                        break  # a new connection that got no answer: a lost response
            with self.lock:
                self.results.append((kind, status, time.perf_counter() - start, time.monotonic()))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "vitkit", "serve", str(args.checkpoint), "--port", str(port),
                               "--max-body-mb", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        rng = np.random.default_rng(0)
        pool = payloads(rng)
        draw = random.Random(0)
        kinds = draw.choices(["good", "bad", "oversized"], weights=[70, 20, 10], k=args.requests)
        jobs = [(k, draw.choice(pool[k])) for k in kinds]
        results, lock = [], threading.Lock()
        clients = [Client(port, jobs[i::args.clients], results, lock) for i in range(args.clients)]
        memory, started = [], time.perf_counter()
        for c in clients:
            c.start()
        while any(c.is_alive() for c in clients):
            time.sleep(0.5)
            with lock:
                done = len(results)
            if done // 1000 > len(memory) - 1 or not memory:
                memory.append((done, rss_mb(server.pid)))
        wall = time.perf_counter() - started
        memory.append((len(results), rss_mb(server.pid)))
    finally:
        server.terminate()
        server.wait(30)
    report = summarize(results, memory, wall)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def summarize(results: list, memory: list, wall: float) -> dict:
    statuses: dict[str, dict] = {}
    for kind, status, _, _ in results:
        statuses.setdefault(kind, {}).setdefault(str(status), 0)
        statuses[kind][str(status)] += 1
    wrong = sum(1 for kind, status, _, _ in results if status not in EXPECTED[kind])
    ordered = sorted(results, key=lambda r: r[3])
    p99 = [round(1000 * float(np.percentile([r[2] for r in ordered[i:i + 1000]], 99)), 1)
           for i in range(0, len(ordered), 1000)]
    first = next(m for d, m in memory if d >= 1000)
    return {"requests": len(results), "wall_s": round(wall, 1), "req_per_s": round(len(results) / wall, 1),
            "statuses": statuses, "status_500": sum(1 for r in results if r[1] == 500),
            "lost": sum(1 for r in results if r[1] is None), "unexpected_status": wrong,
            "rss_mb_first_thousand": round(first, 1), "rss_mb_last": round(memory[-1][1], 1),
            "rss_growth_mb": round(memory[-1][1] - first, 1), "p99_ms_per_thousand": p99,
            "p50_ms": round(1000 * statistics.median(r[2] for r in results), 1)}


if __name__ == "__main__":
    main()
