"""Who may ask the server: an access token, the Host header and the Origin of browser requests.

A pure ASGI middleware in front of the application, checked before any body is read:
- **token**: with a token set, every path but `/health` and the page itself needs `Authorization: Bearer TOKEN`
  (compared in constant time), else 401 with `WWW-Authenticate: Bearer`;
- **Host**: a server bound to loopback answers only requests addressed to a loopback name, so a web page whose
  domain was rebound to 127.0.0.1 (DNS rebinding) gets 421; `--allowed-hosts` names others;
- **Origin**: a browser's cross-site POST (a form or `fetch` on another site) carries that site's Origin and gets
  403; requests from the server's own page, and from clients that send no Origin (curl, scripts), pass.
"""
from __future__ import annotations

import hmac
import os
import secrets

from ..config import ServeSettings
from ..errors import UserError
from .limits import send_json

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
OPEN_PATHS = ("/health", "/")  # liveness for load balancers; the page, which asks for the token itself
TOKEN_ENV = "VITKIT_TOKEN"


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_NAMES or host.startswith("127.")


def access_token(s: ServeSettings, environ=os.environ) -> tuple[str | None, bool]:
    """(the token the server asks for or None, whether it was made up now): `--token`, else $VITKIT_TOKEN, else a
    new one when the server is reachable beyond loopback, unless `--no-token`."""
    token = s.token or environ.get(TOKEN_ENV) or None
    if token is not None and s.no_token:
        raise UserError(f"--no-token, but a token is set ({'--token' if s.token else '$' + TOKEN_ENV}): drop one")
    if token is not None and len(token) < 16:
        raise UserError("the access token must be at least 16 characters; `python -c 'import secrets; "
                        "print(secrets.token_urlsafe())'` makes one")
    if token is None and not s.no_token and not is_loopback(s.host):
        return secrets.token_urlsafe(24), True
    return token, False


def allowed_hosts(s: ServeSettings) -> list[str] | None:
    """Host names to answer to: `--allowed-hosts`, else the loopback names when bound to loopback, else any."""
    if s.allowed_hosts:
        return s.allowed_hosts
    return list(LOOPBACK_NAMES) if is_loopback(s.host) else None


def host_name(value: str) -> str:
    """'example.org:8000' -> 'example.org', '[::1]:8000' -> '::1' (a Host header or an origin's authority)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class Guard:
    def __init__(self, app, token: str | None = None, allowed_hosts: list[str] | None = None):
        """`allowed_hosts`: host names the server answers to (without ports); None or '*' in it: any."""
        self.app = app
        self.token = token.encode() if token else None
        self.hosts = None if not allowed_hosts or "*" in allowed_hosts else {h.lower() for h in allowed_hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        host = headers.get(b"host", b"").decode("latin-1")
        if self.hosts is not None and host_name(host) not in self.hosts:
            return await send_json(send, 421, {"error": f"this server does not answer to the host name {host!r}; "
                                                        "start it with --allowed-hosts to allow it"})
        origin = headers.get(b"origin")
        if origin is not None and scope["method"] not in ("GET", "HEAD", "OPTIONS") and not self._same_site(
                origin.decode("latin-1"), host):
            return await send_json(send, 403, {"error": "cross-site requests are refused: call the API from the "
                                                        "server's own page or without an Origin header"})
        if self.token is not None and scope["path"] not in OPEN_PATHS and not self._authorized(headers):
            return await send_json(send, 401, {"error": "this server needs its access token: send the header "
                                                        "'Authorization: Bearer TOKEN'"},
                                   {"WWW-Authenticate": "Bearer"})
        return await self.app(scope, receive, send)

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token)

    @staticmethod
    def _same_site(origin: str, host: str) -> bool:
        """The Origin ('http://name:port') names the host the request was sent to, port included."""
        authority = origin.split("://", 1)[1] if "://" in origin else ""
        return bool(authority) and authority.lower() == host.strip().lower()
