"""HTTP serving of a model folder: ``bertsent serve`` (FastAPI + uvicorn), with dynamic micro-batching.

API (OpenAPI docs at ``/docs``):

- ``POST /predict`` ``{"inputs": "text"}`` or ``{"inputs": ["a", "b"]}`` → one ``{"label", "score"}``
  per input, always in a list (a single string gives a list of one, like Hugging Face Inference
  Endpoints). With ``"parameters": {"top_k": N}`` each input gets a list of its N best
  ``{"label", "score"}``, best first; ``"top_k": null`` gives every label. ``"explain": true`` adds
  the best label's ``"explanation"`` (``[{"word", "start", "end", "score"}]``, Captum, PyTorch folders).
- ``GET /health`` → ``{"status": "ok"}``; ``GET /info`` → model folder name, labels, backend, settings, counters.
- ``GET /`` → a one-file web page (``bertsent/static/index.html``) that calls the API.
- ``GET /metrics`` → Prometheus metrics (:class:`ServeMetrics`), out of the OpenAPI document.

Micro-batching: the Predictor belongs to one background worker (an asyncio task started in the app's
lifespan). A request puts each of its texts on a queue with a future; the worker takes the first
waiting text, then keeps taking texts until it holds ``max_batch_size`` or ``max_wait_ms`` have passed
since that first text arrived, and runs ``Predictor.predict_proba`` on the batch in a dedicated
inference thread. The event loop therefore keeps accepting requests while the model runs, and the
texts that arrive meanwhile make up the next batch: under concurrent load the model sees batches,
not single texts. Each text's probability row goes back to its own future, so a request's texts may
be split over two batches. One bad request never fails another: when the model raises on a batch
holding texts of several requests, the worker runs the two halves of those requests apart (and so on),
so only the requests whose texts fail get the error.

Errors are JSON ``{"error": "<one line>"}`` (422 adds ``detail``): 401 without the API key (when
``--api-key`` is set), 413 for a body, list or text over the limits, 422 for a body that is not JSON
or not the expected shape (text that is not valid Unicode included), 500 when inference fails on a
request's own texts (the worker goes on), 503 while the worker is not running.

Shutdown (SIGTERM, Ctrl-C): uvicorn stops accepting connections and waits up to ``graceful_timeout``
for the requests already accepted; the worker runs what is still queued before the app stops.
"""

import argparse
import asyncio
import contextlib
import dataclasses
import hmac
import itertools
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np

from bertsent.config import DEFAULT_HOST, InferenceSettings, ServeSettings
from bertsent.errors import InferenceError, ServeError, SettingsError, first_line

if TYPE_CHECKING:
    from bertsent.predict import Predictor

log = logging.getLogger("bertsent.serve")

PAGE = ("static", "index.html")
"""The web page, as package data of ``bertsent`` (found with importlib.resources, so it works installed)."""
BODY_EXAMPLE = '{"inputs": "a review"}'
API_KEY_ENV = "BERTSENT_API_KEY"
"""The environment variable ``bertsent serve`` reads its API key from when ``--api-key`` is not given."""
SHUTTING_DOWN = "the server is shutting down"


# --------------------------------------------------------------------------------------------------
# Micro-batching (plain asyncio: no web framework needed)


@dataclass
class _Item:
    text: str
    future: asyncio.Future
    arrived: float
    request: int = 0
    """Which ``submit`` call the text came from: a failed batch is retried request by request."""


@dataclass
class BatchStats:
    """Counters of a :class:`MicroBatcher`, shown by ``/info``."""

    requests: int = 0
    texts: int = 0
    batches: int = 0
    largest_batch: int = 0
    errors: int = 0
    """Model calls that raised (a failed batch of several requests is retried in halves, which count too)."""


class MicroBatcher:
    """Queues texts from concurrent requests and runs them through ``predict`` in batches, off the event loop.

    ``predict(texts) -> array (len(texts), k)`` is only ever called from one dedicated thread, one batch
    at a time (the Predictor is thread-compatible, not thread-safe). When it raises on a batch holding
    texts of several requests, the requests are run again in two halves, recursively, so that only the
    requests whose own texts fail get an :class:`InferenceError`.
    """

    def __init__(
        self,
        predict: Callable[[list[str]], np.ndarray],
        max_batch_size: int,
        max_wait_ms: float,
        metrics: "ServeMetrics | None" = None,
    ) -> None:
        self.predict = predict
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.stats = BatchStats()
        self.metrics = metrics
        if metrics is not None:
            # Read at scrape time, so the gauge is exact without counting puts and gets; the app makes a
            # new batcher per lifespan, and the newest one takes the gauge over.
            metrics.queue_depth.set_function(lambda: self.queued)
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._request_ids = itertools.count()
        self._closing = False

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def queued(self) -> int:
        """Texts waiting for a batch now."""
        return self._queue.qsize() if self._queue is not None else 0

    def start(self) -> None:
        """Start the worker on the running event loop (from the app's lifespan)."""
        if self.running:
            return
        self._closing = False
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bertsent-inference")
        self._task = asyncio.get_running_loop().create_task(self._work(), name="bertsent-batcher")

    async def stop(self, drain: float = 0.0) -> None:
        """Stop the worker; new texts are refused at once.

        With ``drain`` > 0 the texts already queued (and the batch running) are answered first, for at
        most ``drain`` seconds; whatever is still waiting then gets a ``ServeError`` instead of hanging.
        """
        self._closing = True
        if drain > 0 and self.running and self._queue is not None:
            try:
                await asyncio.wait_for(self._queue.join(), drain)
            except TimeoutError:
                log.warning("shutdown: %d texts still queued after %g s are refused", self.queued, drain)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._queue is not None and not self._queue.empty():
            _fail([self._queue.get_nowait()], ServeError(SHUTTING_DOWN))
        if self._executor is not None:
            # A batch already running finishes in its thread; nothing waits for it any more.
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._task = self._executor = None

    async def submit(self, texts: Sequence[str]) -> np.ndarray:
        """Probabilities for ``texts`` (rows in input order), once the worker has run them."""
        if not self.running or self._queue is None or self._closing:
            raise ServeError("the batching worker is not running (server starting or shutting down)")
        loop = asyncio.get_running_loop()
        now = loop.time()
        request = next(self._request_ids)
        futures = [loop.create_future() for _ in texts]
        for text, future in zip(texts, futures, strict=True):
            self._queue.put_nowait(_Item(text, future, now, request))
        self.stats.requests += 1
        # return_exceptions: when a batch fails, the other futures' exceptions are still collected
        # (no "exception was never retrieved" noise); a cancelled request cancels its futures, which
        # the worker then skips.
        rows = await asyncio.gather(*futures, return_exceptions=True)
        for row in rows:
            if isinstance(row, BaseException):
                raise row
        return np.stack(rows)

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            batch = await self._next_batch()
            try:
                await self._run(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()  # what stop(drain=...) waits on

    async def _next_batch(self) -> list[_Item]:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        # Wait up to max_wait from now (not from the first text's arrival): the clients answered by
        # the previous batch need a moment to send their next request, and without this pause every
        # batch would only hold the texts that arrived while the previous one ran (measured: mean
        # batch 8 of 16 clients, 66% of offline throughput).
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _run(self, batch: list[_Item]) -> None:
        live = [item for item in batch if not item.future.done()]  # skip requests that went away
        if not live:
            return
        try:
            await self._score(live)
        except asyncio.CancelledError:
            _fail(live, ServeError(SHUTTING_DOWN))
            raise

    async def _score(self, items: list[_Item]) -> None:
        """Run ``items`` as one batch; on failure, isolate the requests whose texts fail (see the class)."""
        try:
            probs = await self._predict([item.text for item in items])
        except Exception as e:
            self.stats.errors += 1
            if self.metrics is not None:
                self.metrics.batch_errors.inc()
            groups = list(_by_request(items).values())
            if len(groups) == 1:
                log.error("inference failed on %d texts of one request", len(items), exc_info=e)
                _fail(items, InferenceError(f"{type(e).__name__}: {e}"))
                return
            log.warning(
                "inference failed on a batch of %d texts from %d requests (%s: %s): running them in two halves",
                len(items),
                len(groups),
                type(e).__name__,
                first_line(e),
            )
            half = len(groups) // 2
            for part in (groups[:half], groups[half:]):
                live = [item for group in part for item in group if not item.future.done()]
                if live:
                    await self._score(live)
            return
        self.stats.batches += 1
        self.stats.texts += len(items)
        self.stats.largest_batch = max(self.stats.largest_batch, len(items))
        if self.metrics is not None:
            self.metrics.batch(len(items))
        log.debug("batch of %d texts", len(items))
        for item, row in zip(items, probs, strict=True):
            if not item.future.done():
                item.future.set_result(row)

    async def _predict(self, texts: list[str]) -> np.ndarray:
        loop = asyncio.get_running_loop()
        probs = np.asarray(await loop.run_in_executor(self._executor, self.predict, texts))
        if probs.ndim != 2 or len(probs) != len(texts):
            raise ValueError(f"predict returned shape {probs.shape} for {len(texts)} texts")
        return probs


def _by_request(items: list[_Item]) -> dict[int, list[_Item]]:
    groups: dict[int, list[_Item]] = {}
    for item in items:
        groups.setdefault(item.request, []).append(item)
    return groups


def _fail(items: list[_Item], error: Exception) -> None:
    for item in items:
        if not item.future.done():
            item.future.set_exception(error)


# --------------------------------------------------------------------------------------------------
# Body size limit and API key (pure ASGI: they see the request before FastAPI parses anything)


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
                await _send_json(send, 400, {"error": "invalid Content-Length header"})
                return
            if size > self.max_bytes:
                await _send_json(send, 413, {"error": self._too_large(f"{size:,} bytes")})
                return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _send_json(send, 413, {"error": self._too_large(f"over {self.max_bytes:,} bytes")})
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
        if scope["type"] == "http" and _route_path(scope) not in self.open_paths:
            problem = self.problem(scope["headers"])
            if problem is not None:
                await _send_json(send, 401, {"error": problem}, {"www-authenticate": 'Bearer realm="bertsent"'})
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


def _route_path(scope) -> str:
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


async def _send_json(send, status: int, payload: dict, headers: Mapping[str, str] | None = None) -> None:
    body = json.dumps(payload).encode()
    extra = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in (headers or {}).items()]
    headers_out = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers_out})
    await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------------------------------
# Prometheus metrics (GET /metrics): prometheus_client's types, fed by a middleware and the batcher


class ServeMetrics:
    """The server's Prometheus metrics, in a registry of the app's own.

    Not prometheus_client's global registry: two apps in one process (the tests, a program serving two
    folders) would register the same names twice and fail. Every series carries the labels ``model``
    (the folder's name) and ``backend``, so dashboards over several servers need no join;
    ``bertsent_model_info`` adds how the model runs.
    """

    def __init__(self, model: str, backend: str, max_batch_size: int, info: Mapping[str, object]) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

        self.registry = r = CollectorRegistry()
        self.labels = {"model": model, "backend": backend}
        names = tuple(self.labels)
        self.requests = Counter(
            "bertsent_http_requests_total", "HTTP requests answered", [*names, "path", "status"], registry=r
        )
        self.latency = Histogram(
            "bertsent_http_request_duration_seconds", "HTTP request latency", [*names, "path"], registry=r
        )

        def series(kind, name: str, documentation: str, **kwargs):
            # The labelled child, made now: each series exists (at 0) from the start, as rate() needs.
            return kind(name, documentation, names, registry=r, **kwargs).labels(**self.labels)

        self.texts = series(Counter, "bertsent_texts_scored_total", "Texts run through the model")
        self.batch_errors = series(
            Counter,
            "bertsent_batch_errors_total",
            "Model calls that raised (a failed batch of several requests is retried in halves, which count too)",
        )
        self.batch_size = series(
            Histogram, "bertsent_batch_size", "Texts per model call", buckets=batch_buckets(max_batch_size)
        )
        self.queue_depth = series(Gauge, "bertsent_queue_depth", "Texts waiting for a batch")
        series(Info, "bertsent_model", "The served model and how it runs").info({k: str(v) for k, v in info.items()})

    def request(self, path: str, status: int, seconds: float) -> None:
        self.requests.labels(**self.labels, path=path, status=str(status)).inc()
        self.latency.labels(**self.labels, path=path).observe(seconds)

    def batch(self, size: int) -> None:
        """One model call on ``size`` texts that succeeded."""
        self.batch_size.observe(size)
        self.texts.inc(size)

    def exposition(self, accept: str) -> tuple[bytes, str]:
        """The scrape's body and content type: OpenMetrics when the ``Accept`` header asks for it, else text."""
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


def batch_buckets(max_batch_size: int) -> tuple[float, ...]:
    """Powers of two up to ``max_batch_size``, which is a bucket too (batches are never larger)."""
    sizes = {2**i for i in range(max_batch_size.bit_length()) if 2**i < max_batch_size} | {max_batch_size}
    return tuple(float(size) for size in sorted(sizes))


class MetricsMiddleware:
    """Counts and times every HTTP request, by path and status, until the app has sent its answer.

    Outermost, so the 401s and 413s of the middlewares inside it count too. ``path`` is one of the app's
    routes, else ``other``: a scanner probing random paths must not create a series per path.
    """

    def __init__(self, app, metrics: ServeMetrics, routes: Sequence) -> None:
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
            path = _route_path(scope)
            known = any(getattr(route, "path", None) == path for route in self.routes)
            self.metrics.request(path if known else "other", status, time.perf_counter() - start)


# --------------------------------------------------------------------------------------------------
# Request/response models (pydantic comes with FastAPI, so they are built on first use)


def _require(module: str):
    """Import a serving dependency, or fail with the install hint."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ServeError(f"bertsent serve needs {module}: pip install fastapi uvicorn") from e


def _json_type(value: object) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", dict: "an object", list: "a list"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def unicode_problem(text: str) -> str | None:
    """Why the tokenizer cannot take ``text`` (a lone UTF-16 surrogate, which JSON's ``\\ud800`` gives), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"not valid Unicode (unpaired surrogate U+{ord(text[e.start]):04X} at character {e.start})"
    return None


def check_inputs(value):
    """``inputs``' validator: one clear message instead of pydantic's per-union-member errors.

    Texts are named by their index, a lone string as ``inputs[0]`` (as the 413 limits name them).
    """
    from pydantic_core import PydanticCustomError

    if isinstance(value, list) and not value:
        raise PydanticCustomError("empty_inputs", "inputs is an empty list: send at least one text")
    if not isinstance(value, str | list):
        raise PydanticCustomError(
            "inputs_type", f"inputs must be a string or a list of strings, not {_json_type(value)}"
        )
    for i, text in enumerate([value] if isinstance(value, str) else value):
        if not isinstance(text, str):
            raise PydanticCustomError("text_type", f"inputs[{i}] is {_json_type(text)}, not a string")
        problem = unicode_problem(text)
        if problem is not None:
            raise PydanticCustomError("invalid_unicode", f"inputs[{i}]: {problem}")
    return value


def _whole_float_to_int(value):
    """``2.0`` -> ``2``: JSON Schema's integer includes numbers with a zero fraction (strings and booleans stay out)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


OWN_MESSAGES = ("empty_inputs", "text_type", "inputs_type", "invalid_unicode")
"""Error types of :func:`check_inputs`, whose messages already name the field."""

_MODELS: dict[str, Any] = {}


def api_models() -> SimpleNamespace:
    """The pydantic models of the API as attributes (built once: pydantic is imported only when serving)."""
    if not _MODELS:
        _require("fastapi")
        for build in (_request_models, _error_models, _info_models):
            _MODELS.update({cls.__name__: cls for cls in build()})
    return SimpleNamespace(**_MODELS)


def _request_models() -> tuple[type, ...]:
    from typing import Annotated, Literal

    from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt

    from bertsent.config import EXPLAIN_METHODS

    class Prediction(BaseModel):
        label: str = Field(description="class name (the model's id2label)")
        score: float = Field(description="probability of that class")

    class WordScore(BaseModel):
        word: str = Field(description="the word as the text has it: text[start:end]")
        start: int = Field(description="where the word starts in the text, in characters (Unicode code points)")
        end: int = Field(description="where it ends (exclusive)")
        score: float = Field(description="in [-1, 1]: > 0 the word supports the label, < 0 it speaks against it")

    class ExplainedPrediction(Prediction):
        explanation: list[WordScore] = Field(
            description="the words the model saw (truncated ones get no entry), in text order, scored for this label"
        )

    class PredictParameters(BaseModel):
        model_config = ConfigDict(extra="forbid")
        top_k: Annotated[StrictInt | None, BeforeValidator(_whole_float_to_int)] = Field(
            default=1,
            ge=1,
            description="when given, each input gets a list of its top_k labels, best first; null: all labels",
        )
        explain: StrictBool = Field(
            default=False,
            description="also explain each input's best label: its words scored by Captum on the word embeddings "
            "(PyTorch folders only, else 400); costs about explain_steps (32) forward and backward passes per text",
        )
        explain_method: Literal[EXPLAIN_METHODS] | None = Field(
            default=None, description="with explain: the attribution method (null: integrated-gradients)"
        )

    class PredictRequest(BaseModel):
        model_config = ConfigDict(
            extra="forbid",
            json_schema_extra={
                "examples": [
                    {"inputs": "A wonderful, moving film."},
                    {"inputs": ["Loved it.", "A waste of time."], "parameters": {"top_k": 2}},
                    {"inputs": "A wonderful, moving film.", "parameters": {"explain": True}},
                ]
            },
        )
        inputs: Annotated[str | Annotated[list[str], Field(min_length=1)], BeforeValidator(check_inputs)] = Field(
            description="a text, or a list of texts"
        )
        parameters: PredictParameters | None = None

    return Prediction, WordScore, ExplainedPrediction, PredictParameters, PredictRequest


def _error_models() -> tuple[type, ...]:
    from pydantic import BaseModel, Field

    class ErrorResponse(BaseModel):
        error: str = Field(description="what went wrong, on one line")

    class ValidationIssue(BaseModel):
        loc: list[str | int]
        msg: str
        type: str

    class ValidationErrorResponse(ErrorResponse):
        detail: list[ValidationIssue]

    return ErrorResponse, ValidationErrorResponse


def _info_models() -> tuple[type, ...]:
    from pydantic import BaseModel, Field

    class Health(BaseModel):
        status: str

    class Batching(BaseModel):
        max_batch_size: int
        max_wait_ms: float

    class Limits(BaseModel):
        max_inputs: int
        max_chars: int
        max_body_bytes: int

    class Stats(BaseModel):
        requests: int = Field(description="/predict requests queued since start")
        texts: int = Field(description="texts run through the model")
        batches: int = Field(description="model calls (fewer than requests when batching merged them)")
        largest_batch: int
        errors: int = Field(description="model calls that failed (a failed batch is retried in halves)")
        queued: int = Field(description="texts waiting now")

    class Info(BaseModel):
        model_dir: str = Field(description="the model folder's name (not its path on the server)")
        labels: dict[int, str] = Field(description="id2label")
        backend: str
        max_length: int
        truncation: str
        long_text: str = Field(
            description="truncate: one max_length window per text; chunk: overlapping windows averaged"
        )
        stride: int = Field(description="tokens shared by consecutive windows (long_text chunk)")
        batching: Batching
        limits: Limits
        stats: Stats
        version: str
        precision: str = Field(description="what the backend runs in (fp32, bf16, ...)")
        cpu: dict = Field(description="the server's CPU: model and the flags that decide the fastest route")

    return Health, Batching, Limits, Stats, Info


def validation_message(errors: Sequence[dict]) -> str:
    """One line from FastAPI's validation errors, worded for someone writing a request by hand."""
    messages = []
    for err in errors:
        loc = list(err.get("loc", ()))
        if loc and loc[0] == "body":
            loc = loc[1:]
        kind = err.get("type", "")
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
        if kind == "json_invalid":
            reason = (err.get("ctx") or {}).get("error", "invalid JSON")
            messages.append(f"request body is not valid JSON: {reason} (at character {loc[0] if loc else 0})")
        elif kind == "missing" and not loc:
            messages.append(f"request body is empty: send a JSON object like {BODY_EXAMPLE}")
        elif not loc and kind in ("model_attributes_type", "dict_type", "model_type"):
            messages.append(f"request body must be a JSON object like {BODY_EXAMPLE}")
        elif kind == "missing":
            messages.append(f"missing field '{path}'")
        elif kind == "string_unicode":  # pydantic's own check, on field names
            messages.append(f"{path or 'request body'}: not valid Unicode (unpaired surrogate in a field name)")
        elif kind == "extra_forbidden":
            hint = ' (pass it as "parameters": {"top_k": N})' if path == "top_k" else ""
            messages.append(f"unknown field '{path}'{hint}")
        else:
            # Our own checks already name the field (e.g. "inputs[1] is a number, not a string").
            msg = err.get("msg", "invalid value")
            messages.append(msg if kind in OWN_MESSAGES else f"{path or 'request body'}: {msg}")
    return "; ".join(dict.fromkeys(messages)) or "invalid request"


def document_limits(spec: dict, settings: ServeSettings) -> dict:
    """Write the server's limits into its OpenAPI document (``inputs``: maxItems, maxLength), in place.

    Clients, and tests generated from the document, then know them; over them the server answers 413.
    """
    inputs = spec["components"]["schemas"]["PredictRequest"]["properties"]["inputs"]
    for option in inputs.get("anyOf", []):
        if option.get("type") == "string":
            option["maxLength"] = settings.max_chars
        elif option.get("type") == "array":
            option["maxItems"] = settings.max_inputs
            option.setdefault("items", {})["maxLength"] = settings.max_chars
    inputs["description"] = (
        f"a text, or a list of texts: at most {settings.max_inputs} texts of {settings.max_chars:,} characters, "
        f"and a body of {settings.max_body_bytes:,} bytes (more: 413)"
    )
    return spec


# --------------------------------------------------------------------------------------------------
# The app


def json_error(status: int, payload: dict, headers: Mapping[str, str] | None = None):
    """A JSON error response, ASCII-escaped: should a message ever quote the request's text, a lone
    surrogate in it cannot be encoded as UTF-8 (Starlette's JSONResponse would fail: a 500, not the error)."""
    from starlette.responses import Response

    body = json.dumps(payload, ensure_ascii=True, separators=(",", ":"))
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def _error(status: int, message: str, **extra):
    return json_error(status, {"error": message, **extra})


def load_page() -> str | None:
    """The web page's HTML from the installed package, or None when it is missing from the install."""
    from importlib import resources

    page = resources.files("bertsent")
    for part in PAGE:
        page = page.joinpath(part)
    try:
        return page.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None


def load_predictor(
    model: "str | os.PathLike | Predictor", settings: ServeSettings, inference: InferenceSettings | None = None
) -> "Predictor":
    """``model`` itself when it is a ``Predictor`` (or has its interface), else a Predictor for the folder
    running with ``inference``, its batch size ``settings.max_batch_size`` (and ``settings.threads`` when set)."""
    if hasattr(model, "predict_proba"):
        if inference is not None:
            raise SettingsError("inference settings are for a model folder; a Predictor already has its own")
        return model
    from bertsent.predict import Predictor

    return Predictor(model, inference, batch_size=settings.max_batch_size, threads=settings.threads)


def create_app(
    model: "str | os.PathLike | Predictor",
    settings: ServeSettings | None = None,
    inference: InferenceSettings | None = None,
):
    """The FastAPI app serving ``model``: a model folder, or a ``Predictor`` (or anything with its interface).

    A folder runs with ``inference`` (:class:`InferenceSettings`: max length, long texts, backend, ...);
    its batch size is always ``settings.max_batch_size``, and ``settings.threads``, when set, wins.
    The model is loaded here, so a bad folder fails now, not at the first request; the batching
    worker starts with the app's lifespan (run it under uvicorn, or ``with TestClient(app)``).
    With ``settings.api_key``, every path but ``/health``, the page and the docs needs the key.
    """
    settings = settings or ServeSettings()
    _require("fastapi")
    from fastapi import FastAPI

    from bertsent import __version__

    predictor = load_predictor(model, settings, inference)
    page = load_page()
    if page is None:
        log.warning("the web page %s is missing from the bertsent install; the API still works", "/".join(PAGE))
    app = FastAPI(
        title="bertsent",
        version=__version__,
        summary="Sentiment classification with a fine-tuned BERT-family model folder.",
        lifespan=_lifespan,
    )
    app.state.predictor = predictor
    app.state.settings = settings
    app.state.metrics = _new_metrics(predictor, settings)
    # Counters before the first lifespan (and after a restart) read from a batcher that never ran.
    app.state.batcher = _new_batcher(predictor, settings, app.state.metrics)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.api_key is not None:  # outside the body limit: a request without the key is never read
        app.add_middleware(ApiKeyMiddleware, key=settings.api_key, open_paths=_open_paths(app))
    # Added last: outermost, so the 401s and 413s are counted too.
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics, routes=app.router.routes)
    _add_error_handlers(app)
    protected = _protected(settings)
    _add_page_and_health(app, page)
    _add_info(app, predictor, settings, protected)
    _add_predict(app, predictor, settings, protected)
    _add_metrics(app)
    _document_limits(app, settings)
    return app


def _new_batcher(predictor, settings: ServeSettings, metrics: ServeMetrics | None = None) -> MicroBatcher:
    return MicroBatcher(predictor.predict_proba, settings.max_batch_size, settings.max_wait_ms, metrics)


def _new_metrics(predictor, settings: ServeSettings) -> ServeMetrics:
    from bertsent import __version__

    backend = getattr(predictor, "backend", None)
    info = {
        "version": __version__,
        "precision": getattr(backend, "precision", "unknown"),
        "max_length": getattr(predictor, "max_length", 0),
        "long_text": getattr(predictor, "long_text", "truncate"),
    }
    folder = Path(str(getattr(predictor, "model_dir", "") or "")).name  # as /info: not the path on disk
    return ServeMetrics(folder, getattr(backend, "name", "unknown"), settings.max_batch_size, info)


@contextlib.asynccontextmanager
async def _lifespan(app):
    settings: ServeSettings = app.state.settings
    batcher = _new_batcher(app.state.predictor, settings, app.state.metrics)
    app.state.batcher = batcher
    batcher.start()
    try:
        yield
    finally:
        # uvicorn has already waited for the requests in flight; what is still queued is answered too.
        await batcher.stop(drain=settings.graceful_timeout)


def _open_paths(app) -> frozenset[str]:
    """The paths that need no API key: health checks, the page (it asks for the key) and the docs."""
    docs = (app.openapi_url, app.docs_url, app.swagger_ui_oauth2_redirect_url, app.redoc_url)
    return frozenset({"/", "/health", *(path for path in docs if path)})


def _protected(settings: ServeSettings) -> dict:
    """Route arguments that document the API key in OpenAPI (ApiKeyMiddleware enforces it), or none."""
    if settings.api_key is None:
        return {"dependencies": [], "responses": {}}
    from fastapi import Security
    from fastapi.security import HTTPBearer

    # auto_error=False: this only puts the scheme in the document (and an Authorize button in /docs).
    bearer = HTTPBearer(auto_error=False, description=f"the server's --api-key (or ${API_KEY_ENV})")
    unauthorized = {"model": api_models().ErrorResponse, "description": "missing or wrong API key"}
    return {"dependencies": [Security(bearer)], "responses": {401: unauthorized}}


def _add_error_handlers(app) -> None:
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request, exc: RequestValidationError):
        # Only loc/msg/type go back: the input may be large, or bytes that are not valid JSON.
        detail = [{key: e.get(key) for key in ("loc", "msg", "type")} for e in exc.errors()]
        return _error(422, validation_message(exc.errors()), detail=detail)

    @app.exception_handler(HTTPException)
    async def on_http_error(request, exc: HTTPException):
        if exc.status_code == 400 and isinstance(exc.__cause__, ValueError | RecursionError):
            # FastAPI turns a body json.loads cannot decode (bad UTF-8, absurd nesting or number size)
            # into a 400; it is the same client mistake as any other bad JSON, with the same schema.
            message = f"request body is not valid JSON: {first_line(exc.__cause__)}"
            return _error(422, message, detail=[{"loc": ["body"], "msg": message, "type": "json_invalid"}])
        return json_error(exc.status_code, {"error": str(exc.detail)}, exc.headers)

    @app.exception_handler(Exception)
    async def on_unexpected_error(request, exc: Exception):
        # A JSON answer for the client; Starlette re-raises afterwards, so uvicorn logs the traceback.
        return _error(500, f"internal error: {type(exc).__name__}: {first_line(exc)}")


def _add_page_and_health(app, page: str | None) -> None:
    from fastapi import Request
    from fastapi.responses import HTMLResponse

    m = api_models()

    @app.get("/", include_in_schema=False)
    async def index():
        if page is None:
            return _error(500, "the web page is missing from this bertsent install (reinstall it); the API works")
        return HTMLResponse(page)

    @app.get("/health", response_model=m.Health, responses={503: {"model": m.ErrorResponse}})
    async def health(request: Request):
        """``{"status": "ok"}`` while the batching worker runs (503 otherwise); never needs the API key."""
        if not request.app.state.batcher.running:
            return _error(503, "the batching worker is not running")
        return {"status": "ok"}


def _add_info(app, predictor, settings: ServeSettings, protected: dict) -> None:
    from fastapi import Request

    from bertsent import __version__
    from bertsent.runtime import cpu_summary

    id2label = {int(k): str(v) for k, v in predictor.id2label.items()}
    folder = Path(str(getattr(predictor, "model_dir", "") or "")).name  # not the path on the server's disk
    static = {
        "model_dir": folder,
        "labels": id2label,
        "backend": getattr(getattr(predictor, "backend", None), "name", "unknown"),
        "max_length": getattr(predictor, "max_length", 0),
        "truncation": getattr(predictor, "truncation", ""),
        "long_text": getattr(predictor, "long_text", "truncate"),
        "stride": getattr(predictor, "stride", 0),
        "batching": {"max_batch_size": settings.max_batch_size, "max_wait_ms": settings.max_wait_ms},
        "limits": {
            "max_inputs": settings.max_inputs,
            "max_chars": settings.max_chars,
            "max_body_bytes": settings.max_body_bytes,
        },
        "version": __version__,
        "precision": str(getattr(getattr(predictor, "backend", None), "precision", "unknown")),
        "cpu": cpu_summary(),
    }

    @app.get("/info", response_model=api_models().Info, **protected)
    async def info(request: Request):
        """The model folder's name, its labels, backend and input settings, the batching settings and counters."""
        batcher: MicroBatcher = request.app.state.batcher
        return static | {"stats": dataclasses.asdict(batcher.stats) | {"queued": batcher.queued}}


def _add_metrics(app) -> None:
    from fastapi import Request
    from starlette.responses import Response

    # Out of the OpenAPI document: it is for Prometheus, not API clients (and its body is not JSON).
    # It needs the API key when one is set, like /info, whose counters it repeats (see the README).
    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request):
        body, content_type = request.app.state.metrics.exposition(request.headers.get("accept", ""))
        return Response(body, media_type=content_type)


def _add_predict(app, predictor, settings: ServeSettings, protected: dict) -> None:
    from fastapi import Request

    m = api_models()
    id2label = {int(k): str(v) for k, v in predictor.id2label.items()}
    too_large = {"model": m.ErrorResponse, "description": "too many inputs, a text too long or a body too big"}
    responses = {
        413: too_large,
        422: {"model": m.ValidationErrorResponse, "description": "not JSON, not the expected shape, or not Unicode"},
        500: {"model": m.ErrorResponse, "description": "inference failed on this request's texts (others go on)"},
        503: {"model": m.ErrorResponse, "description": "the batching worker is not running"},
        400: {"model": m.ErrorResponse, "description": "explain asked of a model that cannot explain (not PyTorch)"},
    }
    # One thread for explanations, off the event loop and out of the shared thread pool (see explained_answer).
    explaining = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bertsent-explain")
    answers = list[m.Prediction] | list[list[m.Prediction]]
    explained = list[m.ExplainedPrediction] | list[list[m.ExplainedPrediction | m.Prediction]]

    @app.post(
        "/predict",
        response_model=answers | explained,
        responses=responses | protected["responses"],
        dependencies=protected["dependencies"],
    )
    async def predict(body: m.PredictRequest, request: Request):
        """Classify one text or a list of texts.

        Returns one ``{"label", "score"}`` per input (in a list, even for a single string). With
        ``"parameters": {"top_k": N}`` each input gets a list of its N best labels instead, best first
        (``null``: all labels). With ``"explain": true`` each input's best label also holds its
        ``"explanation"``: ``[{"word", "start", "end", "score"}, ...]``.
        """
        texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
        problem = over_limits(texts, settings)
        if problem is not None:
            return _error(413, problem)
        params = body.parameters
        explain = params is not None and params.explain
        refusal = explain_refusal(predictor) if explain else None
        if refusal is not None:
            return _error(400, refusal)
        try:
            probs = await request.app.state.batcher.submit(texts)
        except InferenceError as e:
            return _error(500, f"inference failed: {first_line(e)}")
        except ServeError as e:
            return _error(503, str(e))
        ranked = params is not None and "top_k" in params.model_fields_set
        answer = ranked_predictions(probs, id2label, params.top_k) if ranked else predictions(probs, id2label)
        if not explain:
            return answer
        best = [item[0] for item in answer] if ranked else answer
        return await explained_answer(predictor, texts, probs, params.explain_method, best, answer, explaining)


def explain_refusal(predictor) -> str | None:
    """Why ``predictor`` cannot explain (a 400, before the model runs), or None; never the folder's path."""
    from bertsent.errors import BertsentError

    if not callable(getattr(predictor, "explain", None)):
        return "explain: this server's model cannot explain its predictions"
    try:
        getattr(predictor, "explainer", None)  # a Predictor builds its Explainer here, or says why it cannot
    except BertsentError as e:
        folder = str(getattr(predictor, "model_dir", "") or "")
        message = first_line(e)
        return f"explain: {message.replace(folder, Path(folder).name) if folder else message}"
    return None


async def explained_answer(predictor, texts, probs, method, best: list[dict], answer: list, executor):
    """``answer`` with each input's explanation in its ``best`` prediction, computed in ``executor``'s thread.

    Explanations bypass the micro-batcher: an explanation is ~100 forward passes of one text, batching
    them with predictions would stall every other request's batch. Running beside the batcher's thread
    is safe: ``Predictor.explainer`` attributes on a module tree of its own that only shares the
    (read-only) weight tensors, so the hook Captum puts on its embedding layer never reaches the
    batcher's forward pass, and no autograd state is shared. Explanations run one at a time (one
    thread here, and the Explainer's lock); while one runs it competes with the batcher for CPU cores.
    The label explained is the one the batcher returned (``targets``), so answer and explanation agree.
    """
    from starlette.responses import JSONResponse

    from bertsent.errors import BertsentError

    loop = asyncio.get_running_loop()
    try:
        explanations = await loop.run_in_executor(executor, predictor.explain, list(texts), method, probs.argmax(-1))
    except BertsentError as e:
        return _error(400, f"explain: {first_line(e)}")
    except Exception as e:  # the model failed on these texts: this request's 500, the server goes on
        log.error("explanation failed on %d texts", len(texts), exc_info=e)
        return _error(500, f"explanation failed: {type(e).__name__}: {first_line(e)}")
    for prediction, words in zip(best, explanations, strict=True):
        prediction["explanation"] = words
    return JSONResponse(answer)  # built here: the response model would validate ~10 fields per word again


def over_limits(texts: Sequence[str], settings: ServeSettings) -> str | None:
    """Why ``texts`` break the server's limits (a 413), or None."""
    if len(texts) > settings.max_inputs:
        return f"{len(texts)} inputs; the limit is {settings.max_inputs} per request (--max-inputs)"
    for i, text in enumerate(texts):
        if len(text) > settings.max_chars:
            return f"inputs[{i}] has {len(text):,} characters; the limit is {settings.max_chars:,} (--max-chars)"
    return None


def predictions(probs: np.ndarray, id2label: dict[int, str]) -> list[dict]:
    """The ``/predict`` answer without ``top_k``: one ``{"label", "score"}`` per row of ``probs``."""
    return [{"label": id2label[int(row.argmax())], "score": float(row.max())} for row in probs]


def ranked_predictions(probs: np.ndarray, id2label: dict[int, str], top_k: int | None) -> list[list[dict]]:
    """The ``/predict`` answer with ``top_k``: the ``top_k`` best labels of each row, best first (None: all)."""
    k = min(top_k or len(id2label), len(id2label))
    # Stable sort: ties go to the lower class id, as argmax does.
    return [
        [{"label": id2label[int(i)], "score": float(row[i])} for i in np.argsort(-row, kind="stable")[:k]]
        for row in probs
    ]


def _document_limits(app, settings: ServeSettings) -> None:
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = document_limits(generate(), settings)
        return app.openapi_schema

    app.openapi = openapi


# --------------------------------------------------------------------------------------------------
# Running it


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (port 0: a free one), or a one-line ``ServeError``.

    Binding here, before uvicorn starts, turns "address in use" into a clear error and tells the real
    port when 0 was asked.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise ServeError(f"cannot resolve host {host!r}: {e.strerror}") from e
    sock = socket.socket(family, kind, proto)
    # Lets a restarted server take its port back at once (TIME_WAIT); two listeners still conflict.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _uvicorn_config(app, log_level: str, **kwargs):
    """uvicorn's config for ``app``: graceful shutdown waits ``graceful_timeout`` for accepted requests."""
    uvicorn = _require("uvicorn")
    settings = getattr(app.state, "settings", None) or ServeSettings()
    return uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=settings.graceful_timeout, **kwargs)


@contextlib.contextmanager
def background_server(app, host: str = DEFAULT_HOST, port: int = 0, timeout: float = 30.0) -> Iterator[str]:
    """Run ``app`` under uvicorn in a background thread; yields its base URL, stops it on exit."""
    uvicorn = _require("uvicorn")
    sock = bind_socket(host, port)
    server = uvicorn.Server(_uvicorn_config(app, "warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="bertsent-serve")
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise ServeError(f"the server did not start within {timeout:g} s (see the log)")
            time.sleep(0.01)
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


def settings_from_args(ns: argparse.Namespace) -> ServeSettings:
    """The server's settings from ``bertsent serve``'s flags."""
    from bertsent.argparsing import settings

    return settings(ns, ServeSettings)


def api_key_from_env(settings: ServeSettings, environ: Mapping[str, str] = os.environ) -> ServeSettings:
    """``settings`` with the API key of ``$BERTSENT_API_KEY`` when ``--api-key`` was not given."""
    if settings.api_key is not None or API_KEY_ENV not in environ:
        return settings
    if not environ[API_KEY_ENV]:
        raise SettingsError(f"${API_KEY_ENV} is set but empty: unset it, or set it to the key")
    try:
        return dataclasses.replace(settings, api_key=environ[API_KEY_ENV])
    except SettingsError as e:
        raise SettingsError(f"${API_KEY_ENV}: {e}") from None


class _Terminated(Exception):
    """SIGTERM, re-raised by uvicorn once it has shut down gracefully: a normal stop, like Ctrl-C."""


def _on_sigterm(signum, frame) -> None:
    raise _Terminated


def run_until_stopped(app, sock: socket.socket) -> None:
    """Serve ``app`` on ``sock`` until SIGINT (Ctrl-C) or SIGTERM; either stops it gracefully, and returns.

    uvicorn catches both signals itself: it stops accepting connections, answers the requests already
    accepted (up to ``graceful_timeout`` s), runs the lifespan's shutdown (the batcher finishes what is
    queued) and then re-raises the signal, which ends here instead of killing the process.
    """
    uvicorn = _require("uvicorn")
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main else None
    try:
        with contextlib.suppress(KeyboardInterrupt, _Terminated):
            uvicorn.Server(_uvicorn_config(app, "info")).run(sockets=[sock])
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


def cmd_serve(ns: argparse.Namespace) -> int:
    """``bertsent serve``: load the folder, bind, serve until Ctrl-C or SIGTERM, then print what was served."""
    from bertsent.argparsing import settings as from_flags

    flags = settings_from_args(ns)
    settings = api_key_from_env(flags)
    inference = from_flags(ns, InferenceSettings)
    sock = bind_socket(settings.host, settings.port)  # before loading: a busy port fails fast
    try:
        app = create_app(ns.model, settings, inference)
        print_banner(app, url_of(sock), key_from_env=flags.api_key is None and settings.api_key is not None)
        run_until_stopped(app, sock)
    finally:
        sock.close()
    s = app.state.batcher.stats
    print(f"served {s.requests} requests ({s.texts} texts) in {s.batches} batches; {s.errors} failed batches")
    return 0


def print_banner(app, url: str, key_from_env: bool = False) -> None:
    """What ``bertsent serve`` prints once bound (never the API key itself)."""
    predictor, settings = app.state.predictor, app.state.settings
    labels = ", ".join(predictor.id2label[i] for i in sorted(predictor.id2label))
    print(f"serving {predictor.model_dir} ({predictor.backend.name}; labels: {labels}) at {url}")
    print(f"web page: {url}/   API docs: {url}/docs   metrics: {url}/metrics")
    print(f"predict: POST {url}/predict {BODY_EXAMPLE}")
    print(
        f"micro-batching: up to {settings.max_batch_size} texts, waiting at most {settings.max_wait_ms:g} ms; "
        f"limits: {settings.max_inputs} texts, {settings.max_chars:,} characters, "
        f"{settings.max_body_bytes:,} bytes per request"
    )
    if settings.api_key is not None:
        source = f"${API_KEY_ENV}" if key_from_env else "--api-key"
        print(f"API key: required on /predict, /info and /metrics (Authorization: Bearer KEY; the key from {source})")
    elif settings.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "listening on %s without an API key: anyone who can reach it can use the API (--api-key or $%s)",
            settings.host,
            API_KEY_ENV,
        )


__all__ = [
    "API_KEY_ENV",
    "ApiKeyMiddleware",
    "BodyLimitMiddleware",
    "InferenceError",
    "MicroBatcher",
    "ServeError",
    "ServeSettings",
    "api_key_from_env",
    "api_models",
    "background_server",
    "bind_socket",
    "cmd_serve",
    "create_app",
]
