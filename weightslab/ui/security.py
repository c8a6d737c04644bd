"""Who may read the UI: loopback by default; anywhere else only with the server's token.

- Bound to a loopback address (the default, 127.0.0.1), the server answers only
  requests whose ``Host`` is a loopback name (Starlette's ``TrustedHostMiddleware``),
  so a web page elsewhere cannot reach it through DNS rebinding.
- Bound to any other address, every request must carry the token: generated at
  start and printed in the URL to open, or taken from ``$WEIGHTSLAB_UI_TOKEN``
  (which also turns the check on for loopback). ``?token=…`` sets an HttpOnly,
  SameSite=Strict cookie and redirects to the same URL without it; programs may
  send ``Authorization: Bearer …``. Tokens are compared in constant time.
- Every response carries a Content-Security-Policy that allows scripts, styles and
  connections from the server itself only (no inline script), and headers that
  forbid framing, MIME sniffing and referrers. Pages escape what they show
  (Jinja2's autoescape; JSON for the charts through ``tojson``; charts draw text
  on a canvas), so a hostile name or payload in the store stays text.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlencode

__all__ = ["CSP", "TOKEN_ENV", "SecurityHeaders", "TokenGate", "is_loopback", "new_token", "resolve_token"]

TOKEN_ENV = "WEIGHTSLAB_UI_TOKEN"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "font-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` serves this machine only."""
    if host.strip("[]") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def new_token() -> str:
    return secrets.token_urlsafe(24)


def resolve_token(host: str, environ: MutableMapping[str, str] | None = None) -> str | None:
    """The token the server requires: ``$WEIGHTSLAB_UI_TOKEN`` if set; else a new one unless ``host`` is
    loopback (None: no token)."""
    env = os.environ if environ is None else environ
    given = env.get(TOKEN_ENV, "").strip()
    if given:
        return given
    return None if is_loopback(host) else new_token()


class TokenGate:
    """ASGI middleware: every HTTP request must carry ``token`` (see the module docstring)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from starlette.requests import Request
        from starlette.responses import HTMLResponse, RedirectResponse

        request = Request(scope)
        cookie = f"weightslab-ui-{(scope.get('server') or ('', 0))[1]}"  # one per port: servers side by side
        given = request.query_params.get("token")
        if given is not None and self._matches(given):
            rest = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
            response = RedirectResponse(request.url.path + (f"?{rest}" if rest else ""), status_code=303)
            response.set_cookie(cookie, given, httponly=True, samesite="strict", path="/")
            await response(scope, receive, send)
            return
        bearer = request.headers.get("authorization", "")
        presented = bearer[7:] if bearer.lower().startswith("bearer ") else request.cookies.get(cookie, "")
        if presented and self._matches(presented):
            await self.app(scope, receive, send)
            return
        await HTMLResponse(_REFUSED, status_code=401, headers={"Cache-Control": "no-store"})(scope, receive, send)

    def _matches(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self._token)


_REFUSED = ("<!doctype html><title>WeightsLab: token needed</title><h1>This WeightsLab UI needs its token</h1>"
            "<p>Open the address that <code>weightslab ui</code> printed when it started (it ends in "
            "<code>?token=…</code>), or send <code>Authorization: Bearer TOKEN</code>. The token is set by "
            "<code>$WEIGHTSLAB_UI_TOKEN</code>, or new at every start.</p>")


class SecurityHeaders:
    """ASGI middleware: the Content-Security-Policy and the other headers of every response."""

    HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
               (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer"),
               (b"cross-origin-opener-policy", b"same-origin")]

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (k, v) for k, v in self.HEADERS if k not in names]
            await send(message)

        await self.app(scope, receive, with_headers)
