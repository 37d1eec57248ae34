"""The server's pure-ASGI middleware: body size limit, API key, back-pressure, request metrics.

They see each request before FastAPI parses anything: a body over the limit is refused on its
Content-Length header (or while it is read), a request without the key is refused before its body is
read, a request past ``--max-concurrent-requests`` gets 429 at once, and every answer, these
refusals included, is counted and timed for ``/metrics``.
"""

import hmac
import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bertsent.serve.metrics import ServeMetrics

log = logging.getLogger(__name__)

RETRY_AFTER_S = 1
"""The ``Retry-After`` of a 429: seconds a refused client should wait before it tries again."""
API_KEY_ENV = "BERTSENT_API_KEY"
"""The environment variable ``bertsent serve`` reads its API key from when ``--api-key`` is not given."""


class BodyLimitMiddleware:
    """413 for a body over ``max_bytes``: refused on its Content-Length header, else counted while read.

    The body is read here in full (it is at most ``max_bytes``) and replayed to the app, so a body
    sent without Content-Length (chunked) or with a wrong one is limited too.
    """

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await send_json(send, 400, {"error": "invalid Content-Length header"})
                return
            if size > self.max_bytes:
                await send_json(send, 413, {"error": self._too_large(f"{size:,} bytes")})
                return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await send_json(send, 413, {"error": self._too_large(f"over {self.max_bytes:,} bytes")})
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls wait for the disconnect, as usual

        await self.app(scope, replay, send)

    def _too_large(self, size: str) -> str:
        return f"request body is {size}; the limit is {self.max_bytes:,} bytes (--max-body-bytes)"


class ApiKeyMiddleware:
    """401 unless the request has the header ``Authorization: Bearer KEY``, on every path but ``open_paths``.

    It runs before anything reads the body, and compares the key in constant time (``hmac.compare_digest``).
    """

    def __init__(self, app, key: str, open_paths: frozenset[str]) -> None:
        self.app = app
        self.key = key.encode("ascii")
        self.open_paths = open_paths

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and route_path(scope) not in self.open_paths:
            problem = self.problem(scope["headers"])
            if problem is not None:
                await send_json(send, 401, {"error": problem}, {"www-authenticate": 'Bearer realm="bertsent"'})
                return
        await self.app(scope, receive, send)

    def problem(self, headers: list[tuple[bytes, bytes]]) -> str | None:
        """Why the request is refused, or None when it carries the key."""
        given = next((value for name, value in headers if name == b"authorization"), None)
        if given is None:
            return "this server needs an API key: send the header Authorization: Bearer KEY"
        scheme, _, token = given.strip().partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
            return "wrong API key (send the header Authorization: Bearer KEY)"
        return None


class AdmissionMiddleware:
    """Back-pressure: at most ``limit`` requests to ``paths`` held at once (from their first byte to their
    answer); past it a request gets 429 with ``Retry-After`` at once, unread, and is counted as refused.

    One event loop runs every request, so the count needs no lock. Inside the API-key check (a request
    without the key takes no place) and outside the body limit (a refused body is never read).
    """

    def __init__(self, app, limit: int, paths: frozenset[str], metrics: "ServeMetrics | None" = None) -> None:
        self.app = app
        self.limit = limit
        self.paths = paths
        self.metrics = metrics
        self.held = 0
        if metrics is not None:
            metrics.in_flight.set_function(lambda: self.held)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or route_path(scope) not in self.paths:
            await self.app(scope, receive, send)
            return
        if self.held >= self.limit:
            if self.metrics is not None:
                self.metrics.refused.inc()
            message = (
                f"the server is at its limit of {self.limit:,} requests at once (--max-concurrent-requests); "
                f"retry after {RETRY_AFTER_S} s"
            )
            await send_json(send, 429, {"error": message}, {"retry-after": str(RETRY_AFTER_S)})
            return
        self.held += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.held -= 1


def route_path(scope) -> str:
    """The request's path inside the app (``root_path`` taken off): what routes and open paths are matched on."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


async def send_json(send, status: int, payload: dict, headers: Mapping[str, str] | None = None) -> None:
    """Answer with ``payload`` as JSON straight on the ASGI ``send`` (before any app has seen the request)."""
    body = json.dumps(payload).encode()
    extra = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in (headers or {}).items()]
    headers_out = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers_out})
    await send({"type": "http.response.body", "body": body})


class MetricsMiddleware:
    """Counts and times every HTTP request, by path and status, until the app has sent its answer.

    Outermost, so the 401s and 413s of the middlewares inside it count too. ``path`` is one of the app's
    routes, else ``other``: a scanner probing random paths must not create a series per path.
    """

    def __init__(self, app, metrics: "ServeMetrics", routes: Sequence) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes  # the app's live list: routes added after the middleware count too

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # an exception before any answer: Starlette's outermost handler then sends a 500

        async def watched(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            path = route_path(scope)
            known = any(getattr(route, "path", None) == path for route in self.routes)
            self.metrics.request(path if known else "other", status, time.perf_counter() - start)
