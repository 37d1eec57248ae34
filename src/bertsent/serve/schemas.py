"""The API's wire format: pydantic request/response models, validation messages, limits in OpenAPI.

The models are plain module-level classes (pydantic comes with FastAPI, and this module is only
imported once an app is made). :func:`check_inputs` gives one clear message per bad ``inputs``;
:func:`validation_message` turns FastAPI's validation errors into the 422's one line;
:func:`document_limits` writes the server's limits into its OpenAPI document.
"""

import logging
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt
from pydantic_core import PydanticCustomError

from bertsent.config import EXPLAIN_METHODS, ServeSettings

log = logging.getLogger(__name__)

BODY_EXAMPLE = '{"inputs": "a review"}'


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

    Texts are named by their index, a lone string as ``inputs[0]`` (as the limits' 422s name them).
    """
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


# --------------------------------------------------------------------------------------------------
# Requests and predictions


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


# --------------------------------------------------------------------------------------------------
# Errors


class ErrorResponse(BaseModel):
    error: str = Field(description="what went wrong, on one line")


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorResponse(ErrorResponse):
    detail: list[ValidationIssue]


# --------------------------------------------------------------------------------------------------
# /health and /info


class Health(BaseModel):
    status: str


class Batching(BaseModel):
    max_batch_size: int
    max_wait_ms: float
    max_batch_tokens: int = Field(description="most padded tokens per model call (rows x the longest row)")


class Limits(BaseModel):
    max_inputs: int
    max_chars: int
    max_body_bytes: int
    max_concurrent_requests: int = Field(description="most /predict requests held at once (more: 429)")


class Stats(BaseModel):
    requests: int = Field(description="/predict requests queued since start")
    texts: int = Field(description="texts run through the model (windows not counted)")
    batches: int = Field(description="model calls (fewer than requests when batching merged them)")
    largest_batch: int = Field(description="most rows in one model call")
    errors: int = Field(description="model calls that failed (a failed batch is retried in halves)")
    queued: int = Field(description="rows waiting now (a text each; a window each with long_text chunk)")


class Info(BaseModel):
    model_dir: str = Field(description="the model folder's name (not its path on the server)")
    labels: dict[int, str] = Field(description="id2label")
    backend: str
    max_length: int
    truncation: str
    long_text: str = Field(description="truncate: one max_length window per text; chunk: overlapping windows averaged")
    stride: int = Field(description="tokens shared by consecutive windows (long_text chunk)")
    batching: Batching
    limits: Limits
    stats: Stats
    version: str
    precision: str = Field(description="what the backend runs in (fp32, bf16, ...)")
    threads: int = Field(description="CPU threads the backend runs with")
    mean_layers: float | None = Field(
        description="early exit: mean encoder layers per text so far; null where every text runs every layer"
    )
    cpu: dict = Field(description="the server's CPU: model and the flags that decide the fastest route")
    route: str = Field(description="the route that runs the model: torch, onnx or openvino")
    route_reason: str = Field(description="why that route (--backend auto's verdict, a forced --backend, an export)")
    tokenizer: str = Field(description="which library tokenizes: tokenizers (tokenizer.json alone) or transformers")


MODELS = (
    Prediction,
    WordScore,
    ExplainedPrediction,
    PredictParameters,
    PredictRequest,
    ErrorResponse,
    ValidationIssue,
    ValidationErrorResponse,
    Health,
    Batching,
    Limits,
    Stats,
    Info,
)


def api_models() -> SimpleNamespace:
    """The pydantic models of the API as attributes (``api_models().PredictRequest``), as before they were
    module-level classes of this module."""
    return SimpleNamespace(**{model.__name__: model for model in MODELS})


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

    Clients, and tests generated from the document, then know them; over them the server answers 422, as
    for any other request the document does not allow.
    """
    inputs = spec["components"]["schemas"]["PredictRequest"]["properties"]["inputs"]
    for option in inputs.get("anyOf", []):
        if option.get("type") == "string":
            option["maxLength"] = settings.max_chars
        elif option.get("type") == "array":
            option["maxItems"] = settings.max_inputs
            option.setdefault("items", {})["maxLength"] = settings.max_chars
    inputs["description"] = (
        f"a text, or a list of texts: at most {settings.max_inputs} texts of {settings.max_chars:,} characters "
        f"(more: 422), and a body of {settings.max_body_bytes:,} bytes (more: 413)"
    )
    return spec
