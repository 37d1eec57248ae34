"""The FastAPI app: :func:`create_app` loads the model, wires middleware, error handlers and routes.

The batching worker belongs to the app's lifespan (started under uvicorn or ``with TestClient(app)``,
stopped, after answering what is queued, on shutdown). Errors, FastAPI's own included, are JSON
``{"error": "<one line>"}``.
"""

import contextlib
import dataclasses
import logging
import os
from typing import TYPE_CHECKING

from bertsent.config import InferenceSettings, ServeSettings
from bertsent.errors import SettingsError, first_line
from bertsent.serve import routes
from bertsent.serve.answers import error, json_error
from bertsent.serve.metrics import ServeMetrics
from bertsent.serve.middleware import (
    API_KEY_ENV,
    AdmissionMiddleware,
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    MetricsMiddleware,
)
from bertsent.serve.model import ServedModel
from bertsent.serve.schemas import ErrorResponse, document_limits, validation_message
from bertsent.serve.scoring import Scorer

if TYPE_CHECKING:
    from bertsent.predict import ModelDescription

log = logging.getLogger(__name__)

PAGE = ("static", "index.html")
"""The web page, as package data of ``bertsent`` (found with importlib.resources, so it works installed)."""


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
    model: "str | os.PathLike | ServedModel", settings: ServeSettings, inference: InferenceSettings | None = None
) -> "ServedModel":
    """``model`` itself when it is a ``Predictor`` (or any :class:`ServedModel`), else a Predictor for the
    folder running with ``inference``, its batch size ``settings.max_batch_size``."""
    if not isinstance(model, str | os.PathLike):
        if not isinstance(model, ServedModel):
            raise TypeError(f"create_app serves a model folder or a Predictor, not a {type(model).__name__}")
        if inference is not None:
            raise SettingsError("inference settings are for a model folder; a Predictor already has its own")
        return model
    from bertsent.predict import Predictor

    return Predictor(model, _with_serve_threads(inference, settings), batch_size=settings.max_batch_size)


def _with_serve_threads(inference: InferenceSettings | None, settings: ServeSettings) -> InferenceSettings | None:
    """The inference settings, which alone say the thread count; ``ServeSettings.threads`` (the Python API's
    older place for it) fills it in when they leave it unset. ``bertsent serve --threads`` sets both."""
    if settings.threads is None or (inference is not None and inference.threads is not None):
        return inference
    return dataclasses.replace(inference or InferenceSettings(), threads=settings.threads)


def create_app(
    model: "str | os.PathLike | ServedModel",
    settings: ServeSettings | None = None,
    inference: InferenceSettings | None = None,
):
    """The FastAPI app serving ``model``: a model folder, or a ``Predictor`` (or any :class:`ServedModel`).

    A folder runs with ``inference`` (:class:`InferenceSettings`: max length, long texts, backend, threads,
    ...); its batch size is always ``settings.max_batch_size``.
    The model is loaded here, so a bad folder fails now, not at the first request; the batching
    worker starts with the app's lifespan (run it under uvicorn, or ``with TestClient(app)``).
    With ``settings.api_key``, every path but ``/health``, the page and the docs needs the key.
    """
    settings = settings or ServeSettings()
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
    app.state.description = description = predictor.describe()
    _check_token_cap(description, settings)
    app.state.metrics = _new_metrics(description, settings)
    app.state.scorer = Scorer(predictor)
    # Counters before the first lifespan (and after a restart) read from a batcher that never ran.
    app.state.batcher = app.state.scorer.batcher(settings, app.state.metrics)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    # Outside the body limit (a refused body is never read), inside the API key (no key, no place taken).
    limit = settings.max_concurrent_requests
    app.add_middleware(AdmissionMiddleware, limit=limit, paths=frozenset({"/predict"}), metrics=app.state.metrics)
    if settings.api_key is not None:  # outside the body limit: a request without the key is never read
        app.add_middleware(ApiKeyMiddleware, key=settings.api_key, open_paths=_open_paths(app))
    # Added last: outermost, so the 401s, 413s and 429s are counted too.
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics, routes=app.router.routes)
    _add_error_handlers(app)
    protected = _protected(settings)
    routes.add_page_and_health(app, page)
    routes.add_info(app, predictor, settings, protected)
    routes.add_predict(app, predictor, description, settings, protected)
    routes.add_metrics(app)
    _document_limits(app, settings)
    return app


def _check_token_cap(description: "ModelDescription", settings: ServeSettings) -> None:
    """A full-length text must fit in a batch (text-embeddings-inference refuses to start otherwise, too)."""
    if settings.max_batch_tokens < description.max_length:
        raise SettingsError(
            f"max_batch_tokens ({settings.max_batch_tokens:,}) is below the model's max_length "
            f"({description.max_length}): give --max-batch-tokens at least {description.max_length}"
        )


async def _warm_up(app, batcher) -> None:
    """One batch of the largest shape the server forms, in the inference thread, before it serves (as
    text-embeddings-inference warms up): memory a batch of that shape takes is allocated by the thread that
    will serve, so the server's RSS is at its working size from the start."""
    settings: ServeSettings = app.state.settings
    max_length = app.state.description.max_length
    rows = max(1, min(settings.max_batch_size, settings.max_batch_tokens // max_length))
    seconds = await batcher.warm_up(app.state.scorer.full_rows(rows, max_length))
    log.info("warm-up: one batch of %d x %d tokens in %.1f s", rows, max_length, seconds)


def _new_metrics(description: "ModelDescription", settings: ServeSettings) -> ServeMetrics:
    from bertsent import __version__

    info = {
        "version": __version__,
        "precision": description.precision,
        "threads": description.threads,
        "max_length": description.max_length,
        "long_text": description.long_text,
    }
    # The folder's name, as /info gives it: not its path on the server's disk.
    batching = {"max_batch_size": settings.max_batch_size, "max_batch_tokens": settings.max_batch_tokens}
    return ServeMetrics(description.model_dir.name, description.backend, info=info, **batching)


@contextlib.asynccontextmanager
async def _lifespan(app):
    settings: ServeSettings = app.state.settings
    batcher = app.state.scorer.batcher(settings, app.state.metrics)
    app.state.batcher = batcher
    batcher.start()
    if settings.warmup:
        await _warm_up(app, batcher)
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
    unauthorized = {"model": ErrorResponse, "description": "missing or wrong API key"}
    return {"dependencies": [Security(bearer)], "responses": {401: unauthorized}}


def _add_error_handlers(app) -> None:
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request, exc: RequestValidationError):
        # Only loc/msg/type go back: the input may be large, or bytes that are not valid JSON.
        detail = [{key: e.get(key) for key in ("loc", "msg", "type")} for e in exc.errors()]
        return error(422, validation_message(exc.errors()), detail=detail)

    @app.exception_handler(HTTPException)
    async def on_http_error(request, exc: HTTPException):
        if exc.status_code == 400 and isinstance(exc.__cause__, ValueError | RecursionError):
            # FastAPI turns a body json.loads cannot decode (bad UTF-8, absurd nesting or number size)
            # into a 400; it is the same client mistake as any other bad JSON, with the same schema.
            message = f"request body is not valid JSON: {first_line(exc.__cause__)}"
            return error(422, message, detail=[{"loc": ["body"], "msg": message, "type": "json_invalid"}])
        return json_error(exc.status_code, {"error": str(exc.detail)}, exc.headers)

    @app.exception_handler(Exception)
    async def on_unexpected_error(request, exc: Exception):
        # A JSON answer for the client; Starlette re-raises afterwards, so uvicorn logs the traceback.
        return error(500, f"internal error: {type(exc).__name__}: {first_line(exc)}")


def _document_limits(app, settings: ServeSettings) -> None:
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = document_limits(generate(), settings)
        return app.openapi_schema

    app.openapi = openapi
