"""HTTP serving of a model folder: ``bertsent serve`` (FastAPI + uvicorn), with dynamic micro-batching.

API (OpenAPI docs at ``/docs``):

- ``POST /predict`` ``{"inputs": "text"}`` or ``{"inputs": ["a", "b"]}`` → one ``{"label", "score"}``
  per input, always in a list (a single string gives a list of one, like Hugging Face Inference
  Endpoints). With ``"parameters": {"top_k": N}`` each input gets a list of its N best
  ``{"label", "score"}``, best first; ``"top_k": null`` gives every label.
- ``GET /health`` → ``{"status": "ok"}``; ``GET /info`` → model, labels, backend, settings, counters.
- ``GET /`` → a one-file web page (``bertsent/static/index.html``) that calls the API.

Micro-batching: the Predictor belongs to one background worker (an asyncio task started in the app's
lifespan). A request puts each of its texts on a queue with a future; the worker takes the first
waiting text, then keeps taking texts until it holds ``max_batch_size`` or ``max_wait_ms`` have passed
since that first text arrived, and runs ``Predictor.predict_proba`` on the batch in a dedicated
inference thread. The event loop therefore keeps accepting requests while the model runs, and the
texts that arrive meanwhile make up the next batch: under concurrent load the model sees batches,
not single texts. Each text's probability row goes back to its own future, so a request's texts may
be split over two batches.

Errors are JSON ``{"error": "<one line>"}`` (422 adds ``detail``): 413 for a body, list or text over
the limits, 422 for a body that is not JSON or not the expected shape, 500 when inference fails (the
worker goes on with the next batch), 503 while the worker is not running.
"""

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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


# --------------------------------------------------------------------------------------------------
# Micro-batching (plain asyncio: no web framework needed)


@dataclass
class _Item:
    text: str
    future: asyncio.Future
    arrived: float


@dataclass
class BatchStats:
    """Counters of a :class:`MicroBatcher`, shown by ``/info``."""

    requests: int = 0
    texts: int = 0
    batches: int = 0
    largest_batch: int = 0
    errors: int = 0
    """Batches whose inference raised."""


class MicroBatcher:
    """Queues texts from concurrent requests and runs them through ``predict`` in batches, off the event loop.

    ``predict(texts) -> array (len(texts), k)`` is only ever called from one dedicated thread, one batch
    at a time (the Predictor is thread-compatible, not thread-safe).
    """

    def __init__(self, predict: Callable[[list[str]], np.ndarray], max_batch_size: int, max_wait_ms: float) -> None:
        self.predict = predict
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

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
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bertsent-inference")
        self._task = asyncio.get_running_loop().create_task(self._work(), name="bertsent-batcher")

    async def stop(self) -> None:
        """Stop the worker; texts still queued get a ``ServeError`` instead of hanging."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._queue is not None and not self._queue.empty():
            _fail([self._queue.get_nowait()], ServeError("the server is shutting down"))
        if self._executor is not None:
            # A batch already running finishes in its thread; nothing waits for it any more.
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._task = self._executor = None

    async def submit(self, texts: Sequence[str]) -> np.ndarray:
        """Probabilities for ``texts`` (rows in input order), once the worker has run them."""
        if not self.running or self._queue is None:
            raise ServeError("the batching worker is not running (server starting or shutting down)")
        loop = asyncio.get_running_loop()
        now = loop.time()
        futures = [loop.create_future() for _ in texts]
        for text, future in zip(texts, futures, strict=True):
            self._queue.put_nowait(_Item(text, future, now))
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
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            batch = [first]
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
            await self._run(batch)

    async def _run(self, batch: list[_Item]) -> None:
        live = [item for item in batch if not item.future.done()]  # skip requests that went away
        if not live:
            return
        texts = [item.text for item in live]
        loop = asyncio.get_running_loop()
        try:
            probs = await loop.run_in_executor(self._executor, self.predict, texts)
            probs = np.asarray(probs)
            if probs.ndim != 2 or len(probs) != len(texts):
                raise ValueError(f"predict returned shape {probs.shape} for {len(texts)} texts")
        except asyncio.CancelledError:
            _fail(live, ServeError("the server is shutting down"))
            raise
        except Exception as e:
            # Every request in the batch gets a 500; the worker goes on with the next batch.
            self.stats.errors += 1
            log.exception("inference failed on a batch of %d texts", len(texts))
            _fail(live, InferenceError(f"{type(e).__name__}: {e}"))
            return
        self.stats.batches += 1
        self.stats.texts += len(live)
        self.stats.largest_batch = max(self.stats.largest_batch, len(live))
        log.debug("batch of %d texts", len(live))
        for item, row in zip(live, probs, strict=True):
            if not item.future.done():
                item.future.set_result(row)


def _fail(items: list[_Item], error: Exception) -> None:
    for item in items:
        if not item.future.done():
            item.future.set_exception(error)


# --------------------------------------------------------------------------------------------------
# Body size limit (pure ASGI, so it sees the raw bytes before FastAPI parses anything)


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


async def _send_json(send, status: int, payload: dict) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


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


_MODELS: dict[str, Any] = {}


def api_models() -> SimpleNamespace:
    """The pydantic models of the API as attributes (built once: pydantic is imported only when serving)."""
    if _MODELS:
        return SimpleNamespace(**_MODELS)
    _require("fastapi")
    from typing import Annotated

    from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt
    from pydantic_core import PydanticCustomError

    def check_inputs(value):
        # One clear message instead of pydantic's per-union-member errors.
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            if not value:
                raise PydanticCustomError("empty_inputs", "inputs is an empty list: send at least one text")
            for i, text in enumerate(value):
                if not isinstance(text, str):
                    raise PydanticCustomError("text_type", f"inputs[{i}] is {_json_type(text)}, not a string")
            return value
        raise PydanticCustomError(
            "inputs_type", f"inputs must be a string or a list of strings, not {_json_type(value)}"
        )

    class Prediction(BaseModel):
        label: str = Field(description="class name (the model's id2label)")
        score: float = Field(description="probability of that class")

    class PredictParameters(BaseModel):
        model_config = ConfigDict(extra="forbid")
        top_k: StrictInt | None = Field(
            default=1,
            ge=1,
            description="when given, each input gets a list of its top_k labels, best first; null: all labels",
        )

    class PredictRequest(BaseModel):
        model_config = ConfigDict(
            extra="forbid",
            json_schema_extra={
                "examples": [
                    {"inputs": "A wonderful, moving film."},
                    {"inputs": ["Loved it.", "A waste of time."], "parameters": {"top_k": 2}},
                ]
            },
        )
        inputs: Annotated[str | Annotated[list[str], Field(min_length=1)], BeforeValidator(check_inputs)] = Field(
            description="a text, or a list of texts"
        )
        parameters: PredictParameters | None = None

    class ErrorResponse(BaseModel):
        error: str = Field(description="what went wrong, on one line")

    class ValidationIssue(BaseModel):
        loc: list[str | int]
        msg: str
        type: str

    class ValidationErrorResponse(ErrorResponse):
        detail: list[ValidationIssue]

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
        errors: int = Field(description="batches whose inference failed")
        queued: int = Field(description="texts waiting now")

    class Info(BaseModel):
        model_dir: str
        labels: dict[int, str] = Field(description="id2label")
        backend: str
        max_length: int
        truncation: str
        batching: Batching
        limits: Limits
        stats: Stats
        version: str

    _MODELS.update({cls.__name__: cls for cls in (Prediction, PredictParameters, PredictRequest, ErrorResponse)})
    _MODELS.update({cls.__name__: cls for cls in (ValidationErrorResponse, Health, Stats, Info, Batching, Limits)})
    return SimpleNamespace(**_MODELS)


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
        elif kind == "extra_forbidden":
            hint = ' (pass it as "parameters": {"top_k": N})' if path == "top_k" else ""
            messages.append(f"unknown field '{path}'{hint}")
        else:
            # Our own checks already name the field (e.g. "inputs[1] is a number, not a string").
            msg = err.get("msg", "invalid value")
            messages.append(msg if kind in ("empty_inputs", "text_type", "inputs_type") else f"{path}: {msg}")
    return "; ".join(dict.fromkeys(messages)) or "invalid request"


# --------------------------------------------------------------------------------------------------
# The app


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
    """
    settings = settings or ServeSettings()
    _require("fastapi")
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.exceptions import HTTPException

    from bertsent import __version__

    predictor = load_predictor(model, settings, inference)
    id2label = {int(k): str(v) for k, v in predictor.id2label.items()}
    m = api_models()
    page = load_page()
    if page is None:
        log.warning("the web page %s is missing from the bertsent install; the API still works", "/".join(PAGE))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher = MicroBatcher(predictor.predict_proba, settings.max_batch_size, settings.max_wait_ms)
        app.state.batcher = batcher
        batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(
        title="bertsent",
        version=__version__,
        summary="Sentiment classification with a fine-tuned BERT-family model folder.",
        lifespan=lifespan,
    )
    app.state.predictor = predictor
    app.state.settings = settings
    # Counters before the first lifespan (and after a restart) read from a batcher that never ran.
    app.state.batcher = MicroBatcher(predictor.predict_proba, settings.max_batch_size, settings.max_wait_ms)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Only loc/msg/type go back: the input may be large, or bytes that are not valid JSON.
        detail = [{key: e.get(key) for key in ("loc", "msg", "type")} for e in exc.errors()]
        return JSONResponse({"error": validation_message(exc.errors()), "detail": detail}, status_code=422)

    @app.exception_handler(HTTPException)
    async def on_http_error(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 400 and isinstance(exc.__cause__, ValueError | RecursionError):
            # FastAPI turns a body json.loads cannot decode (bad UTF-8, absurd nesting or number size)
            # into a 400; it is the same client mistake as any other bad JSON.
            return error(422, f"request body is not valid JSON: {first_line(exc.__cause__)}")
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def on_unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        # A JSON answer for the client; Starlette re-raises afterwards, so uvicorn logs the traceback.
        return error(500, f"internal error: {type(exc).__name__}: {first_line(exc)}")

    @app.get("/", include_in_schema=False)
    async def index():
        if page is None:
            return error(500, "the web page is missing from this bertsent install (reinstall it); the API works")
        return HTMLResponse(page)

    @app.get("/health", response_model=m.Health, responses={503: {"model": m.ErrorResponse}})
    async def health(request: Request):
        """``{"status": "ok"}`` while the batching worker runs (503 otherwise)."""
        if not request.app.state.batcher.running:
            return error(503, "the batching worker is not running")
        return {"status": "ok"}

    @app.get("/info", response_model=m.Info)
    async def info(request: Request):
        """The model served, its labels, backend and input settings, the batching settings and counters."""
        batcher: MicroBatcher = request.app.state.batcher
        return {
            "model_dir": str(getattr(predictor, "model_dir", "")),
            "labels": id2label,
            "backend": getattr(getattr(predictor, "backend", None), "name", "unknown"),
            "max_length": getattr(predictor, "max_length", 0),
            "truncation": getattr(predictor, "truncation", ""),
            "batching": {"max_batch_size": settings.max_batch_size, "max_wait_ms": settings.max_wait_ms},
            "limits": {
                "max_inputs": settings.max_inputs,
                "max_chars": settings.max_chars,
                "max_body_bytes": settings.max_body_bytes,
            },
            "stats": dataclasses.asdict(batcher.stats) | {"queued": batcher.queued},
            "version": __version__,
        }

    too_large = {"model": m.ErrorResponse, "description": "too many inputs, a text too long or a body too big"}

    @app.post(
        "/predict",
        response_model=list[m.Prediction] | list[list[m.Prediction]],
        responses={
            413: too_large,
            422: {"model": m.ValidationErrorResponse, "description": "not JSON, or not the expected shape"},
            500: {"model": m.ErrorResponse, "description": "inference failed (the server keeps serving)"},
            503: {"model": m.ErrorResponse, "description": "the batching worker is not running"},
        },
    )
    async def predict(body: m.PredictRequest, request: Request):
        """Classify one text or a list of texts.

        Returns one ``{"label", "score"}`` per input (in a list, even for a single string). With
        ``"parameters": {"top_k": N}`` each input gets a list of its N best labels instead, best first
        (``null``: all labels).
        """
        texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
        if len(texts) > settings.max_inputs:
            return error(413, f"{len(texts)} inputs; the limit is {settings.max_inputs} per request (--max-inputs)")
        for i, text in enumerate(texts):
            if len(text) > settings.max_chars:
                return error(
                    413, f"inputs[{i}] has {len(text):,} characters; the limit is {settings.max_chars:,} (--max-chars)"
                )
        try:
            probs = await request.app.state.batcher.submit(texts)
        except InferenceError as e:
            return error(500, f"inference failed: {first_line(e)}")
        except ServeError as e:
            return error(503, str(e))
        params = body.parameters
        if params is None or "top_k" not in params.model_fields_set:
            return [{"label": id2label[int(row.argmax())], "score": float(row.max())} for row in probs]
        k = min(params.top_k or len(id2label), len(id2label))
        # Stable sort: ties go to the lower class id, as argmax does.
        return [
            [{"label": id2label[int(i)], "score": float(row[i])} for i in np.argsort(-row, kind="stable")[:k]]
            for row in probs
        ]

    return app


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


@contextlib.contextmanager
def background_server(app, host: str = DEFAULT_HOST, port: int = 0, timeout: float = 30.0) -> Iterator[str]:
    """Run ``app`` under uvicorn in a background thread; yields its base URL, stops it on exit."""
    uvicorn = _require("uvicorn")
    sock = bind_socket(host, port)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
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


def cmd_serve(ns: argparse.Namespace) -> int:
    """``bertsent serve``: load the folder, bind, serve until Ctrl-C, then print what was served."""
    from bertsent.argparsing import settings as from_flags

    settings = settings_from_args(ns)
    inference = from_flags(ns, InferenceSettings)
    uvicorn = _require("uvicorn")
    sock = bind_socket(settings.host, settings.port)  # before loading: a busy port fails fast
    try:
        app = create_app(ns.model, settings, inference)
        predictor = app.state.predictor
        url = url_of(sock)
        labels = ", ".join(predictor.id2label[i] for i in sorted(predictor.id2label))
        print(f"serving {predictor.model_dir} ({predictor.backend.name}; labels: {labels}) at {url}")
        print(f"web page: {url}/   API docs: {url}/docs   predict: POST {url}/predict {BODY_EXAMPLE}")
        print(
            f"micro-batching: up to {settings.max_batch_size} texts, waiting at most {settings.max_wait_ms:g} ms; "
            f"limits: {settings.max_inputs} texts, {settings.max_chars:,} characters, "
            f"{settings.max_body_bytes:,} bytes per request"
        )
        if settings.host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("listening on %s: anyone who can reach it can use the API (no authentication)", settings.host)
        # uvicorn re-raises Ctrl-C once it has shut down cleanly: the normal way to stop, not an error.
        with contextlib.suppress(KeyboardInterrupt):
            uvicorn.Server(uvicorn.Config(app, log_level="info")).run(sockets=[sock])
    finally:
        sock.close()
    s = app.state.batcher.stats
    print(f"served {s.requests} requests ({s.texts} texts) in {s.batches} batches; {s.errors} failed batches")
    return 0


__all__ = [
    "BodyLimitMiddleware",
    "InferenceError",
    "MicroBatcher",
    "ServeError",
    "ServeSettings",
    "api_models",
    "background_server",
    "bind_socket",
    "cmd_serve",
    "create_app",
]
