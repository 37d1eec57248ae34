"""The server's routes: ``GET /`` (the page), ``/health``, ``/info``, ``/metrics`` and ``POST /predict``.

Each ``add_*`` function puts its routes on an app made by :func:`bertsent.serve.app.create_app`;
``/predict`` checks the limits, hands the texts to the scorer (tokenized, then batched by tokens;
explanations go to a thread of their own) and formats the answer with :mod:`bertsent.serve.answers`.
"""

import asyncio
import dataclasses
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from bertsent.config import ServeSettings
from bertsent.errors import InferenceError, ServeError, first_line
from bertsent.serve import schemas as m
from bertsent.serve.answers import error, predictions, ranked_predictions
from bertsent.serve.batcher import MicroBatcher
from bertsent.serve.model import ServedModel

if TYPE_CHECKING:
    from bertsent.predict import ModelDescription

log = logging.getLogger(__name__)


def add_page_and_health(app, page: str | None) -> None:
    from fastapi import Request
    from fastapi.responses import HTMLResponse

    @app.get("/", include_in_schema=False)
    async def index():
        if page is None:
            return error(500, "the web page is missing from this bertsent install (reinstall it); the API works")
        return HTMLResponse(page)

    @app.get("/health", response_model=m.Health, responses={503: {"model": m.ErrorResponse}})
    async def health(request: Request):
        """``{"status": "ok"}`` while the batching worker runs (503 otherwise); never needs the API key."""
        if not request.app.state.batcher.running:
            return error(503, "the batching worker is not running")
        return {"status": "ok"}


def add_info(app, predictor: ServedModel, settings: ServeSettings, protected: dict) -> None:
    from fastapi import Request

    from bertsent import __version__
    from bertsent.runtime import cpu_summary

    fixed = {
        "batching": {
            "max_batch_size": settings.max_batch_size,
            "max_wait_ms": settings.max_wait_ms,
            "max_batch_tokens": settings.max_batch_tokens,
        },
        "limits": {
            "max_inputs": settings.max_inputs,
            "max_chars": settings.max_chars,
            "max_body_bytes": settings.max_body_bytes,
            "max_concurrent_requests": settings.max_concurrent_requests,
        },
        "version": __version__,
        "cpu": cpu_summary(),
    }

    @app.get("/info", response_model=m.Info, **protected)
    async def info(request: Request):
        """The model folder's name, its labels, backend and input settings, the batching settings and counters."""
        batcher: MicroBatcher = request.app.state.batcher
        stats = dataclasses.asdict(batcher.stats) | {"queued": batcher.queued}
        return described(predictor.describe()) | fixed | {"stats": stats}


def described(description: "ModelDescription") -> dict:
    """``/info``'s fields about the model; the folder's name only, never its path on the server's disk."""
    d = description
    return {
        "model_dir": d.model_dir.name,
        "labels": d.labels,
        "backend": d.backend,
        "precision": d.precision,
        "threads": d.threads,
        "max_length": d.max_length,
        "truncation": d.truncation,
        "long_text": d.long_text,
        "stride": d.stride,
        "mean_layers": d.mean_layers,
        "route": d.route,
        "route_reason": d.route_reason,
        "tokenizer": d.tokenizer,
    }


def add_metrics(app) -> None:
    from fastapi import Request
    from starlette.responses import Response

    # Out of the OpenAPI document: it is for Prometheus, not API clients (and its body is not JSON).
    # It needs the API key when one is set, like /info, whose counters it repeats (see the README).
    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request):
        body, content_type = request.app.state.metrics.exposition(request.headers.get("accept", ""))
        return Response(body, media_type=content_type)


def add_predict(
    app, predictor: ServedModel, description: "ModelDescription", settings: ServeSettings, protected: dict
) -> None:
    from fastapi import Request

    id2label = description.labels
    responses = {
        413: {"model": m.ErrorResponse, "description": "a body over --max-body-bytes"},
        422: {
            "model": m.ValidationErrorResponse,
            "description": "not JSON, not the expected shape, not Unicode, or over the limits stated here "
            "(maxItems, maxLength)",
        },
        500: {"model": m.ErrorResponse, "description": "inference failed on this request's texts (others go on)"},
        503: {"model": m.ErrorResponse, "description": "the batching worker is not running"},
        400: {"model": m.ErrorResponse, "description": "explain asked of a model that cannot explain (not PyTorch)"},
        429: {
            "model": m.ErrorResponse,
            "description": "the server holds --max-concurrent-requests requests already: try again later",
            "headers": {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}},
        },
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
        issue = over_limits(texts, settings)
        if issue is not None:
            return error(422, issue["msg"], detail=[issue])
        params = body.parameters
        explain = params is not None and params.explain
        refusal = explain_refusal(predictor, description) if explain else None
        if refusal is not None:
            return error(400, refusal)
        try:
            probs = await request.app.state.scorer.score(request.app.state.batcher, texts)
        except InferenceError as e:
            return error(500, f"inference failed: {first_line(e)}")
        except ServeError as e:
            return error(503, str(e))
        ranked = params is not None and "top_k" in params.model_fields_set
        answer = ranked_predictions(probs, id2label, params.top_k) if ranked else predictions(probs, id2label)
        if not explain:
            return answer
        best = [item[0] for item in answer] if ranked else answer
        return await explained_answer(predictor, texts, probs, params.explain_method, best, answer, explaining)


def explain_refusal(predictor: ServedModel, description: "ModelDescription") -> str | None:
    """Why ``predictor`` cannot explain (a 400, before the model runs), or None; never the folder's path.

    Explaining no text is the question: a Predictor makes its Explainer then (once), or says why it cannot.
    """
    from bertsent.errors import BertsentError

    try:
        predictor.explain([])
    except BertsentError as e:
        folder = str(description.model_dir)
        return f"explain: {first_line(e).replace(folder, description.model_dir.name)}"
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
        return error(400, f"explain: {first_line(e)}")
    except Exception as e:  # the model failed on these texts: this request's 500, the server goes on
        log.error("explanation failed on %d texts", len(texts), exc_info=e)
        return error(500, f"explanation failed: {type(e).__name__}: {first_line(e)}")
    for prediction, words in zip(best, explanations, strict=True):
        prediction["explanation"] = words
    return JSONResponse(answer)  # built here: the response model would validate ~10 fields per word again


def over_limits(texts: Sequence[str], settings: ServeSettings) -> dict | None:
    """How ``texts`` break the limits the OpenAPI document states (``maxItems``, ``maxLength``), as a
    validation issue (``loc``, ``msg``, ``type``, as FastAPI's own 422s give them), or None."""
    if len(texts) > settings.max_inputs:
        msg = f"{len(texts)} inputs; the limit is {settings.max_inputs} per request (--max-inputs)"
        return {"loc": ["body", "inputs"], "msg": msg, "type": "too_long"}
    for i, text in enumerate(texts):
        if len(text) > settings.max_chars:
            msg = f"inputs[{i}] has {len(text):,} characters; the limit is {settings.max_chars:,} (--max-chars)"
            return {"loc": ["body", "inputs", i], "msg": msg, "type": "string_too_long"}
    return None
