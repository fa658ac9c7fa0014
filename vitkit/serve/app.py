"""`vitkit serve`: a trained classifier behind an HTTP API and a web page.

    POST /predict   multipart images (field `file`, repeatable) -> top-k classes per image (multi-label models: also
                    the labels that pass their thresholds); `?explain=1` adds an attention overlay (PNG data URI)
    GET  /health    liveness and queue length
    GET  /model     classes, input size, runtime, limits
    GET  /          the web page: drop images, see top-k bars and where the model looked
    GET  /docs      interactive API documentation (with `--docs`; /openapi.json always)

Who may ask is checked first (`guard.py`: token, Host, Origin), then the size and time limits (`limits.py`).
Every error is JSON `{"error": reason}` with a status that says whose fault it is: 400 undecodable image or malformed
request, 401 no token, 403 cross-site or refused overlay, 413 too large (body, image count, pixels), 415 not an image,
421 unknown host, 408/503 timeouts, 503 full queue (with
`Retry-After`), 500 without internals. The model runs on one thread; images are decoded on a few others.
"""

import base64
import io
import logging
import time
import warnings
from dataclasses import asdict
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..config import ServeSettings
from ..data.images import BadImage, allow_pixels, decode
from ..data.loader import Normalize
from ..engine.predict import Classifier, Prediction, load_classifier
from ..errors import UserError
from ..version import __version__
from .batcher import Batcher, DecodePool, QueueFull
from .guard import Guard, access_token, allowed_hosts, is_loopback
from .limits import Limits, header_deadline

log = logging.getLogger(__name__)
OVERLAY_SIZE = 224  # pixels per side of the attention overlay shown on the page
LIMITS = ("top_k", "max_batch", "max_wait_ms", "max_queue", "max_body_mb", "max_images", "max_image_pixels",
          "timeout_s", "decode_threads", "max_connections")  # the settings /model shows (never the token)
# /docs: Swagger UI from a CDN, pinned to one version and checked by the browser against these hashes (Subresource
# Integrity), so a changed file on the CDN is refused rather than run; the hashes are npm's swagger-ui-dist 5.35.0
SWAGGER = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5.35.0/"
SWAGGER_JS = ("swagger-ui-bundle.js", "sha384-gjRm0bEPMeTmMh5jT2cHccIwCUZSTd8YC+j0d0sXw0MdGEfScduGpSyF3ZSSLkX9")
SWAGGER_CSS = ("swagger-ui.css", "sha384-WlYgdmXYOOBWL5apwjDEZwN+U3HmXSSu5R6V5aGxEcf7z+KuRNwBhoxKVN1i3D5I")


class UploadError(Exception):
    def __init__(self, status: int, reason: str, file: str | None = None):
        super().__init__(reason)
        self.status, self.reason, self.file = status, reason, file


UPLOAD_STATUS = {"empty": 400, "too-large": 413, "not-an-image": 415, "truncated": 400, "unreadable": 400}


def decode_upload(data: bytes, size: int, channels: int, max_pixels: int | None = None) -> np.ndarray:
    """Uploaded bytes to the model's uint8 (C, size, size) input, or `UploadError` with the status and reason."""
    try:
        return decode(data, size, channels, max_pixels)
    except BadImage as err:
        damaged = err.reason in ("truncated", "unreadable")
        raise UploadError(UPLOAD_STATUS.get(err.reason, 400), f"cannot decode the image: {err}" if damaged else str(err)
                          ) from None


def make_infer(clf: Classifier, top_k: int):
    """The batch function the batcher runs: top-k per image, and an attention overlay where asked."""
    def infer(images: list[np.ndarray], explain: list[bool]) -> list[dict]:
        answers = clf.classify(torch.from_numpy(np.stack(images)), top_k, batch_size=len(images))  # (B, C, H, W)
        # multi-label models: "labels" (those at or above their threshold) before "top" (sigmoid probabilities)
        results = [{k: v for k, v in Prediction("", top, labels=labels).to_dict().items() if k != "file"}
                   for top, labels in answers]
        wanted = [i for i, flag in enumerate(explain) if flag]
        if wanted and clf.explainable:
            for i, uri in zip(wanted, overlays(clf, [images[i] for i in wanted])):
                results[i]["overlay"] = uri
        return results
    return infer


def overlays(clf: Classifier, images: list[np.ndarray]) -> list[str]:
    """Attention rollout over each image, as PNG data URIs of OVERLAY_SIZE pixels."""
    from ..report.attention import explain, overlay

    normalize = Normalize(clf.meta["mean"], clf.meta["std"], clf.device)
    _, rollout, _ = explain(clf.model, normalize(torch.from_numpy(np.stack(images)).to(clf.device)))
    uris = []
    for image, heat in zip(images, rollout.cpu()):
        big = Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0))
        big = np.asarray(big.resize((OVERLAY_SIZE, OVERLAY_SIZE), Image.Resampling.BICUBIC))
        big = big[None] if big.ndim == 2 else big.transpose(2, 0, 1)
        buf = io.BytesIO()
        overlay(big, heat).save(buf, format="PNG")
        uris.append("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode())
    return uris


def error_response(status: int, reason: str, headers: dict | None = None, **extra):
    """Every error the server sends: JSON {"error": reason, ...} with its status."""
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": reason, **extra}, status_code=status, headers=headers)


def create_app(clf: Classifier, settings: ServeSettings | None = None, name: str = "model", token: str | None = None):
    """The ASGI application serving `clf`: FastAPI inside the size and time limits, behind the token, Host and
    Origin checks. `token`: the access token to ask for (None: no token)."""
    from fastapi import FastAPI

    s = settings or ServeSettings()
    batcher = Batcher(make_infer(clf, s.top_k), s.max_batch, s.max_wait_ms / 1000, s.max_queue)
    decoders = DecodePool(s.decode_threads, s.max_queue)

    async def lifespan(app):
        await batcher.start()
        yield
        await batcher.stop()
        decoders.shutdown()

    app = FastAPI(title="vitkit", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description=f"Image classification with the Vision Transformer `{name}`.")
    _add_error_handlers(app)
    _add_info_routes(app, clf, s, name, batcher)
    _add_predict_route(app, clf, s, name, batcher, decoders)
    if s.docs:
        _add_docs_route(app)
    return Guard(Limits(app, int(s.max_body_mb * 1024 * 1024), s.timeout_s), token, allowed_hosts(s))


def _add_error_handlers(app) -> None:
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request, exc: RequestValidationError):
        return error_response(400, "invalid request: " + "; ".join(str(e.get("msg")) for e in exc.errors()))

    @app.exception_handler(Exception)
    async def internal_error(request, exc: Exception):  # logged with its traceback here, never sent
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal server error (logged on the server)")


def _add_info_routes(app, clf: Classifier, s: ServeSettings, name: str, batcher: Batcher) -> None:
    from fastapi.responses import HTMLResponse

    started = time.monotonic()

    @app.get("/health")
    async def health() -> dict:
        """Liveness: answers while the server runs, with the images waiting for the model."""
        return {"status": "ok", "queue": batcher.waiting, "uptime_s": round(time.monotonic() - started, 1),
                "batches": batcher.batches, "images": batcher.images}

    @app.get("/model")
    async def model_info() -> dict:
        """What the server runs: model, classes, input size, runtime and the request limits."""
        task = {"task": "multi-label", "thresholds": clf.thresholds} if clf.multi_label else {"task": "single-label"}
        return {"name": name, "model": clf.meta.get("model"), "classes": clf.classes, **task, "img_size": clf.img_size,
                "in_chans": clf.in_chans, "runtime": clf.runtime, "explain": explainable(clf, s),
                "vitkit_version": __version__, "limits": {k: v for k, v in asdict(s).items() if k in LIMITS}}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8"))


def explainable(clf: Classifier, s: ServeSettings) -> bool:
    """Whether `?explain=1` is answered: the model runs in torch (not ONNX) and `--no-explain` was not given."""
    return clf.explainable and not s.no_explain


def _add_docs_route(app) -> None:
    from fastapi.responses import HTMLResponse

    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>vitkit API</title>
<link rel="stylesheet" href="{SWAGGER}{SWAGGER_CSS[0]}" integrity="{SWAGGER_CSS[1]}" crossorigin="anonymous">
</head><body><div id="swagger-ui"></div>
<script src="{SWAGGER}{SWAGGER_JS[0]}" integrity="{SWAGGER_JS[1]}" crossorigin="anonymous"></script>
<script>SwaggerUIBundle({{url: "openapi.json", dom_id: "#swagger-ui"}});</script>
</body></html>"""

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(page)


def _add_predict_route(app, clf: Classifier, s: ServeSettings, name: str, batcher: Batcher,
                       decoders: DecodePool) -> None:
    from fastapi import Request

    async def decode(upload) -> np.ndarray:
        data = await upload.read()
        try:
            return await decoders.run(decode_upload, data, clf.img_size, clf.in_chans, s.max_image_pixels)
        except UploadError as err:
            err.file = upload.filename
            raise

    @app.post("/predict", openapi_extra=UPLOAD_SCHEMA)
    async def predict(request: Request, explain: bool = False):
        """Top-k classes (with probabilities) of each uploaded image, in upload order."""
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return error_response(415, "send the images as multipart/form-data, one or more fields named 'file'")
        if explain and not explainable(clf, s):
            why = "are turned off on this server" if s.no_explain else \
                "need the torch runtime" if clf.model is None else "need a ViT (this model is timm's)"
            return error_response(403, f"attention overlays {why}: ask without ?explain")
        form = await request.form()
        uploads = [v for _, v in form.multi_items() if hasattr(v, "filename") and hasattr(v, "read")]
        try:
            if not uploads:
                return error_response(400, "no image in the request: add one or more file fields named 'file'")
            if len(uploads) > s.max_images:
                return error_response(413, f"{len(uploads)} images in one request; send at most {s.max_images}")
            images = [await decode(u) for u in uploads]
            results = await batcher.submit(images, explain)
        except UploadError as err:
            return error_response(err.status, err.reason, file=err.file)
        except QueueFull as err:
            return error_response(503, f"server busy ({err}): retry shortly", {"Retry-After": "1"})
        finally:
            await form.close()
        return {"model": name, "predictions": [{"file": u.filename, **r} for u, r in zip(uploads, results)]}


def quiet_server_logs(max_image_pixels: int) -> None:
    """Process-wide settings for a server process (set by `serve`, never by `create_app`): Pillow's own pixel limit
    made room for the server's, and no log line per damaged upload (each is answered 400/413/415)."""
    allow_pixels(max_image_pixels)
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)  # refused in decode_upload anyway
    warnings.filterwarnings("ignore", module="PIL")
    logging.getLogger("python_multipart").setLevel(logging.ERROR)  # the same for malformed multipart bodies


UPLOAD_SCHEMA = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"},
                            "description": "one or more images (PNG, JPEG, WebP, ...)"}}}}}}}


def serve(checkpoint: str | Path, settings: ServeSettings, device: str = "auto", precision: str = "auto",
          access_log: bool = False, compile: bool = False, runtime: str = "auto") -> None:
    """Load the checkpoint and serve it with uvicorn until SIGINT/SIGTERM. `compile`: compile the model with frozen
    weights for every padded batch size up to `settings.max_batch` before answering (see `FrozenCompiled`)."""
    from ..optional import require

    require("fastapi", "serve")
    require("multipart", "serve")
    uvicorn = require("uvicorn", "serve")
    from uvicorn.protocols.http.auto import AutoHTTPProtocol  # h11, or httptools where installed
    for path in (settings.ssl_certfile, settings.ssl_keyfile):
        if path is not None and not Path(path).is_file():
            raise UserError(f"{path}: no such file (--ssl-certfile/--ssl-keyfile take PEM files)")
    token, made_up = access_token(settings)
    quiet_server_logs(settings.max_image_pixels)
    clf = load_classifier(checkpoint, runtime, device=device, precision=precision, compile=compile)
    clf.warm_up(settings.max_batch)
    app = create_app(clf, settings, Path(checkpoint).name, token)
    scheme = "https" if settings.ssl_certfile else "http"
    if made_up:
        log.warning("serving on %s, reachable from other machines: clients must send 'Authorization: Bearer %s' "
                    "(choose the token with --token or $VITKIT_TOKEN)", settings.host, token)
    elif token is None and not is_loopback(settings.host):
        log.warning("serving on %s with --no-token: anyone who reaches this port may use the model", settings.host)
    log.info("serving %s (%s, %d classes) at %s://%s:%d", checkpoint, clf.meta["model"], len(clf.classes), scheme,
             settings.host, settings.port)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info", access_log=access_log,
                            limit_concurrency=settings.max_connections, timeout_keep_alive=5, server_header=False,
                            lifespan="on", ssl_certfile=settings.ssl_certfile, ssl_keyfile=settings.ssl_keyfile,
                            http=header_deadline(AutoHTTPProtocol, settings.timeout_s))
    uvicorn.Server(config).run()
