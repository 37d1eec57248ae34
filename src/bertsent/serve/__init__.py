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

Micro-batching: a request's texts are tokenized with the model's own encoding in a thread of their
own (not the event loop, not the inference thread), and each encoded row goes on a queue with a
future. The worker (an asyncio task of the app's lifespan) takes the first waiting row, then the rows
arriving within ``max_wait_ms`` (until a batch is full), then what else is waiting, up to a few
batches: that round is ordered by length and cut into batches of at most ``max_batch_size`` rows and
``max_batch_tokens`` padded tokens (rows x the longest), run shortest first on one dedicated
inference thread. Short texts are never padded to a long one, and a long one holds the others back
by no more than its own batch. The event loop keeps accepting requests while the model runs, and
the rows that arrive meanwhile make up the next round. Each row's probabilities go back to its own
future (a long text's windows are averaged back into one). One bad request never fails another:
when the model raises on a batch holding rows of several requests, the worker runs the two halves
of those requests apart (and so on), so only the requests whose rows fail get the error.

Back-pressure: past ``max_concurrent_requests`` requests held at once, ``/predict`` answers 429 with
``Retry-After`` at once, unread, instead of queueing without bound; ``/metrics`` counts refusals.

Errors are JSON ``{"error": "<one line>"}`` (422 adds ``detail``): 401 without the API key (when
``--api-key`` is set), 413 for a body over ``--max-body-bytes``, 422 for a body that is not JSON or not
the expected shape (text that is not valid Unicode included, and more texts or longer ones than the
OpenAPI document allows), 429 past the concurrency limit,
500 when inference fails on a request's own texts (the worker goes on), 503 while the worker is not
running.

The package, one module per concern, each importing only from those below it: ``server`` (the
command, socket, uvicorn, signals, banner) → ``app`` (create_app, lifespan, error handlers) →
``routes`` → ``scoring`` (texts to encoded rows to probabilities) → ``batcher`` | ``middleware`` |
``schemas`` → ``metrics`` | ``answers`` | ``model`` (the protocol a served model meets, with the
``describe()`` whose one description ``/info``, the metrics and the banner show). Importing
``bertsent.serve`` itself imports none of them (nor FastAPI): each name below is imported on first use.
"""

import importlib

_HOMES = {
    "server": (
        "api_key_from_env",
        "background_server",
        "bind_socket",
        "cmd_serve",
        "print_banner",
        "run_until_stopped",
        "settings_from_args",
        "url_of",
    ),
    "app": ("PAGE", "create_app", "load_page", "load_predictor"),
    "routes": ("explain_refusal", "explained_answer", "over_limits"),
    "scoring": ("EncodedRow", "Scorer", "mean_by_text"),
    "batcher": (
        "PAD_FLOOR",
        "PAD_RATIO",
        "ROUND_BATCHES",
        "SHUTTING_DOWN",
        "BatchStats",
        "MicroBatcher",
        "plan_batches",
    ),
    "middleware": (
        "API_KEY_ENV",
        "RETRY_AFTER_S",
        "AdmissionMiddleware",
        "ApiKeyMiddleware",
        "BodyLimitMiddleware",
        "MetricsMiddleware",
    ),
    "schemas": (
        "BODY_EXAMPLE",
        "OWN_MESSAGES",
        "api_models",
        "check_inputs",
        "document_limits",
        "unicode_problem",
        "validation_message",
    ),
    "metrics": ("ServeMetrics", "batch_buckets"),
    "answers": ("json_error", "predictions", "ranked_predictions"),
    "model": ("ServedModel",),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}
_ELSEWHERE = {
    "InferenceError": "bertsent.errors",
    "ServeError": "bertsent.errors",
    "SettingsError": "bertsent.errors",
    "ServeSettings": "bertsent.config",
    "InferenceSettings": "bertsent.config",
}
"""Names ``bertsent.serve`` has always re-exported from the settings and errors."""


def __getattr__(name: str):
    """``from bertsent.serve import create_app``: the name from its module, imported now (PEP 562)."""
    if name in _HOME_OF:
        module = importlib.import_module(f"{__name__}.{_HOME_OF[name]}")
    elif name in _ELSEWHERE:
        module = importlib.import_module(_ELSEWHERE[name])
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(module, name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME_OF, *_ELSEWHERE})


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
