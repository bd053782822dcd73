"""Access control and request limits as ASGI middleware, so they cover every route, websockets included.

Credentials accepted (any one): `Authorization: Bearer KEY`, `X-API-Key: KEY`, `?token=KEY` (for
websockets and browsers, which cannot set headers there), the `stablekit_token` cookie (set after a
browser's first `?token=` so the page's images load), and, with A1111's `--api-auth user:pass`,
HTTP Basic. Keys are compared in constant time. Without --api-key/--api-auth everything is open,
which is why binding beyond loopback without them prints a warning.

Request bodies larger than --max-body-mb are refused with 413, by Content-Length before reading
and by counting bytes for chunked bodies.
"""
from __future__ import annotations

import base64
import hmac
import json
from http.cookies import SimpleCookie
from urllib.parse import parse_qs

from fastapi import HTTPException

from stablekit.serve.settings import ServeSettings

COOKIE = "stablekit_token"


def bind_warning(settings: ServeSettings) -> str | None:
    """The warning to print when the server listens beyond this machine with no key."""
    if settings.loopback or settings.secured:
        return None
    return (f"warning: serving on {settings.host} without --api-key or --api-auth: anyone who can reach this "
            "address can run jobs and read outputs; add --api-key KEY or bind to 127.0.0.1")


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8", "replace"), b.encode("utf-8", "replace"))


class Credentials:
    """What a request presented, and whether it passes the settings."""

    def __init__(self, settings: ServeSettings):
        self.key = settings.api_key
        self.users = list(settings.api_auth)

    def check(self, headers: dict[str, str], query: str) -> tuple[bool, bool]:
        """(allowed, via_query_token)."""
        auth = headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        if self.key:
            candidates = [headers.get("x-api-key", "")]
            if scheme.lower() == "bearer":
                candidates.append(value.strip())
            cookie = SimpleCookie()
            try:
                cookie.load(headers.get("cookie", ""))
            except Exception:  # a malformed cookie header is just no cookie
                pass
            if COOKIE in cookie:
                candidates.append(cookie[COOKIE].value)
            if any(c and _same(c, self.key) for c in candidates):
                return True, False
            tokens = parse_qs(query).get("token", [])
            if any(_same(t, self.key) for t in tokens):
                return True, True
        if scheme.lower() == "basic" and (self.users or self.key):
            try:
                user, _, password = base64.b64decode(value.strip()).decode("utf-8").partition(":")
            except Exception:
                return False, False
            if any(_same(user, u) and _same(password, p) for u, p in self.users):
                return True, False
            if self.key and _same(password, self.key):  # any user name with the key as password
                return True, False
        return False, False


class SecurityMiddleware:
    """Pure ASGI: authenticates http and websocket scopes and caps request bodies."""

    def __init__(self, app, settings: ServeSettings):
        self.app = app
        self.settings = settings
        self.creds = Credentials(settings)
        self.max_body = settings.max_body_mb * 1024 * 1024

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        via_query = False
        if self.settings.secured:
            ok, via_query = self.creds.check(headers, scope.get("query_string", b"").decode("latin-1"))
            if not ok:
                return await self._deny(scope, receive, send)
        if scope["type"] == "http":
            length = headers.get("content-length", "")
            if length.isdigit() and int(length) > self.max_body:
                return await _json(send, 413, f"request body larger than {self.settings.max_body_mb} MB "
                                              "(the server's --max-body-mb)")
            receive = self._capped(receive)
            if via_query:
                send = self._set_cookie(send)
        return await self.app(scope, receive, send)

    async def _deny(self, scope, receive, send):
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008, "reason": "unauthorized"})
            return
        challenge = 'Basic realm="stablekit"' if self.settings.api_auth else "Bearer"
        await _json(send, 401, "unauthorized: send the API key as 'Authorization: Bearer KEY', 'X-API-Key: KEY' "
                               "or ?token=KEY" + (", or HTTP Basic user:pass" if self.settings.api_auth else ""),
                    [(b"www-authenticate", challenge.encode())])

    def _capped(self, receive):
        seen = 0
        limit = self.max_body

        async def wrapped():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(self.settings.max_body_mb)
            return message
        return wrapped

    def _set_cookie(self, send):
        cookie = f"{COOKIE}={self.settings.api_key}; Path=/; HttpOnly; SameSite=Strict".encode()

        async def wrapped(message):
            if message["type"] == "http.response.start" and self.settings.api_key:
                message = {**message, "headers": list(message.get("headers", [])) + [(b"set-cookie", cookie)]}
            await send(message)
        return wrapped


class BodyTooLarge(HTTPException):
    """A chunked body passed --max-body-mb: 413 (an HTTPException, so FastAPI's body parsing passes it on)."""

    def __init__(self, max_mb: int):
        super().__init__(413, f"request body larger than {max_mb} MB (the server's --max-body-mb)")


async def _json(send, status: int, message: str, extra_headers: list | None = None) -> None:
    body = json.dumps({"error": message, "detail": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                + (extra_headers or [])})
    await send({"type": "http.response.body", "body": body})
