"""Security headers on every HTTP response of every Loa process (streamer, relay, speaker).

``add_security_headers(app)`` hooks ``on_response_prepare``, which aiohttp runs for every
routed response just before its headers go out: JSON, metrics, SDP, the Ogg listen-in stream,
static files, and errors, aiohttp's own 404/405 and 500 included. Each response gets
``NOSNIFF_HEADERS``; HTML pages (``text/html``) also get ``PAGE_CSP``. The ``Server`` header,
which would name aiohttp and its version, is removed. A handler that sets one of these headers
itself keeps its value: that is how a route relaxes one on purpose (the listen-in sets
``Cross-Origin-Resource-Policy: cross-origin`` so that a web page on another origin may play
it). A process that serves HTTPS (``tls_cert``/``tls_key``, ``common/tls.py``) passes
``hsts=True`` and every response also carries ``Strict-Transport-Security``; over plain HTTP it
must not (a browser ignores it there, and it would promise what the port does not do). aiohttp
answers a request it cannot parse (a malformed request line) before routing, so that bare
``400`` gets none of this; it carries no page or data.
"""

from __future__ import annotations

from aiohttp import hdrs, web

#: headers every response carries
SECURITY_HEADERS: dict[str, str] = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Resource-Policy": "same-origin",
}

#: the Content-Security-Policy of HTML pages: everything from this origin only, no inline
#: script or style, never framed. The studio page needs nothing more: its script, style and
#: API calls are same-origin, its favicon is ``data:,``, and WebRTC and the microphone are
#: not governed by CSP.
PAGE_CSP = "; ".join([
    "default-src 'self'",
    "img-src 'self' data:",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])

#: HTTPS only: browsers keep to HTTPS for this host for a year. No ``includeSubDomains``: a
#: relay or speaker certificate says nothing about the other names under its domain.
HSTS = "max-age=31536000"


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    headers = response.headers
    for name, value in SECURITY_HEADERS.items():
        headers.setdefault(name, value)
    if response.content_type == "text/html":
        headers.setdefault("Content-Security-Policy", PAGE_CSP)
    headers.popall(hdrs.SERVER, None)


def add_security_headers(app: web.Application, *, hsts: bool = False) -> web.Application:
    """Give every response of ``app`` (and of its sub-apps) the security headers, and
    ``Strict-Transport-Security`` too if ``hsts`` (only when ``app`` is served over TLS)."""
    app.on_response_prepare.append(_on_prepare)
    if hsts:
        app.on_response_prepare.append(_on_prepare_https)
    return app


async def _on_prepare_https(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("Strict-Transport-Security", HSTS)
