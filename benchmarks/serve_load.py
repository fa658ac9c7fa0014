"""Load benchmark for `vitkit serve`: N concurrent clients for a fixed time, batched against unbatched.

    python benchmarks/serve_load.py --model vit_micro_patch7_28 --img-size 28 --in-chans 1 --clients 16
    python benchmarks/serve_load.py --checkpoint runs/demo/best.safetensors --duration 30 --json out.json
    python benchmarks/serve_load.py --model vit_small_patch16_224 --img-size 224 --in-chans 3 --compile

Bounded and loopback only: the server listens on 127.0.0.1, every client sends one image per request over its own
keep-alive connection, for `--duration` seconds after a warm-up. Reported per mode: requests/s, p50/p99 latency,
errors (any answer but 200, or a failed connection), and the server's mean batch size from /health. `--compile`
adds a third mode, batched with `vitkit serve --compile` (frozen weights, compiled before the server answers). Without
`--checkpoint`, a model with random weights is written to a temporary folder (speed does not depend on the weights).
"""
from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image


def random_checkpoint(folder: Path, model: str, img_size: int, in_chans: int) -> Path:
    import vitkit
    from vitkit.engine.checkpoint import model_meta, save_model
    from vitkit.models import model_kwargs

    kwargs = model_kwargs(model, img_size=img_size, in_chans=in_chans, num_classes=10)
    path = folder / f"{model}.safetensors"
    save_model(path, vitkit.create_model(model, **kwargs),
               model_meta(model, kwargs, [f"class{i}" for i in range(10)], [0.5] * in_chans, [0.25] * in_chans))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint: Path, max_batch: int, extra: list[str]) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "vitkit", "serve", str(checkpoint), "--port", str(port),
                             "--max-batch", str(max_batch), "--max-queue", "1024", "--max-connections", "512", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 900  # --compile compiles every batch size first
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not start")


def multipart(data: bytes) -> tuple[bytes, str]:
    boundary = "bench-boundary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
            "Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def client(port: int, body: bytes, content_type: str, start: float, stop: float, out: list, errors: list) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    while (now := time.perf_counter()) < stop:
        try:
            conn.request("POST", "/predict", body, {"Content-Type": content_type})
            response = conn.getresponse()
            response.read()
            ok = response.status == 200
        except OSError:
            ok = False
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        if now >= start:  # requests begun after the warm-up count
            (out if ok else errors).append(time.perf_counter() - now)
    conn.close()


def run_mode(checkpoint: Path, max_batch: int, clients: int, duration: float, warmup: float, image: bytes,
             extra: list[str]) -> dict:
    proc, port = start_server(checkpoint, max_batch, extra)
    try:
        body, content_type = multipart(image)
        latencies, errors = [], []
        begin = time.perf_counter()
        start, stop = begin + warmup, begin + warmup + duration
        threads = [threading.Thread(target=client, args=(port, body, content_type, start, stop, latencies, errors))
                   for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/health")
        health = json.loads(conn.getresponse().read())
    finally:
        proc.terminate()
        proc.wait(30)
    ms = sorted(x * 1000 for x in latencies)
    return {"max_batch": max_batch, "clients": clients, "duration_s": duration, "requests": len(ms),
            "requests_per_s": round(len(ms) / duration, 1), "p50_ms": round(statistics.median(ms), 1) if ms else None,
            "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 1) if ms else None, "errors": len(errors),
            "mean_batch": round(health["images"] / max(health["batches"], 1), 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, help="default: random weights of --model")
    p.add_argument("--model", default="vit_micro_patch7_28")
    p.add_argument("--img-size", type=int, default=28)
    p.add_argument("--in-chans", type=int, default=1)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--duration", type=float, default=20.0, help="seconds measured per mode")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--batch", type=int, default=32, help="--max-batch of the batched mode")
    p.add_argument("--precision", default="auto")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--compile", action="store_true", help="also measure the batched server with --compile")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(buffer, "PNG")  # a photo-sized upload
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or random_checkpoint(Path(tmp), args.model, args.img_size, args.in_chans)
        extra = ["--precision", args.precision]
        modes = [("batched", args.batch, []), ("unbatched", 1, [])]
        if args.compile:
            modes.insert(1, ("compiled", args.batch, ["--compile"]))
        results = [run_mode(checkpoint, b, args.clients, args.duration, args.warmup, buffer.getvalue(), extra + more)
                   for _, b, more in modes]
        for r, (mode, _, _) in zip(results, modes):
            r["mode"] = mode
    print(f"{'mode':<10} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'mean batch':>11}")
    for r in results:
        print(f"{r['mode']:<10} {r['requests_per_s']:>8} {r['p50_ms']:>8} {r['p99_ms']:>8} {r['errors']:>7} "
              f"{r['mean_batch']:>11}")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "cpu_count": os.cpu_count(), "results": results},
                                        indent=2))


if __name__ == "__main__":
    main()
