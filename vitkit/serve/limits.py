"""Request limits that must hold before the application sees a request: body size and total time.

A pure ASGI middleware, outermost, so that it can answer before the body is read:
- a `Content-Length` above the limit is answered 413 at once, without reading the body;
- a body without a length (chunked) is read up to the limit and answered 413 as soon as it goes beyond;
- a request that takes longer than the timeout (a slow upload or a stalled prediction) is cancelled and answered 408
  while its body was still arriving, else 503 with `Retry-After`.
"""
from __future__ import annotations

import asyncio
import json
import logging

log = logging.getLogger(__name__)


async def send_json(send, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
           (b"connection", b"close")]
    raw += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


class Limits:
    def __init__(self, app, max_body: int, timeout_s: float):
        self.app, self.max_body, self.timeout_s = app, max_body, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = {"error": f"request body larger than {self.max_body:,} bytes: send smaller or fewer images"}
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and not length.strip().isdigit():
            return await send_json(send, 400, {"error": "invalid Content-Length header"})
        if length is not None and int(length) > self.max_body:
            return await send_json(send, 413, too_large)
        state = {"body_done": False, "started": False}

        async def tracked_send(message):
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        async def handle():
            inner_receive = receive
            if length is None and scope["method"] in ("POST", "PUT", "PATCH"):
                body = await self._read_body(receive, state)
                if body is None:
                    return await send_json(send, 413, too_large)
                inner_receive = _replay(body, receive)
            else:
                inner_receive = _tracking(receive, state)
            await self.app(scope, inner_receive, tracked_send)

        try:
            await asyncio.wait_for(handle(), self.timeout_s)
        except asyncio.TimeoutError:
            if state["started"]:
                return  # the answer had begun; the connection is closed short of its end
            if state["body_done"]:
                await send_json(send, 503, {"error": f"prediction took longer than {self.timeout_s:g} s: retry later"},
                                {"Retry-After": "1"})
            else:
                await send_json(send, 408, {"error": f"request body not received within {self.timeout_s:g} s"})

    async def _read_body(self, receive, state) -> bytes | None:
        """The whole body (at most max_body bytes), or None as soon as it is longer."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                state["body_done"] = True
                return b"".join(chunks)


def _tracking(receive, state):
    async def inner():
        message = await receive()
        if message["type"] == "http.request" and not message.get("more_body", False):
            state["body_done"] = True
        return message
    return inner


def _replay(body: bytes, receive):
    sent = False

    async def inner():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for the disconnect, as the server would
    return inner


def header_deadline(protocol_class, timeout_s: float):
    """uvicorn's HTTP protocol class with a deadline from connect.

    uvicorn arms no timer before a request's headers are complete, and counts every open connection against its
    connection limit: sockets that send half a request line and then nothing would lock every other client out.
    Here a connection that has no request in progress and started none within `timeout_s` (since it opened, or since
    the last check) is closed; once the headers are in, `Limits` times the rest of the request."""

    class DeadlineProtocol(protocol_class):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._seen_cycle = None
            self._deadline = asyncio.get_running_loop().call_later(timeout_s, self._check_deadline)

        def _check_deadline(self) -> None:
            cycle = getattr(self, "cycle", None)
            busy = cycle is not None and not cycle.response_complete
            if busy or cycle is not self._seen_cycle:  # a request in progress, or one started since: progress
                self._seen_cycle = cycle
                self._deadline = asyncio.get_running_loop().call_later(timeout_s, self._check_deadline)
                return
            log.debug("closing a connection that sent no complete request headers within %g s", timeout_s)
            self.transport.close()

        def connection_lost(self, exc) -> None:
            self._deadline.cancel()
            super().connection_lost(exc)

    DeadlineProtocol.__name__ = DeadlineProtocol.__qualname__ = f"Deadline{protocol_class.__name__}"
    return DeadlineProtocol
