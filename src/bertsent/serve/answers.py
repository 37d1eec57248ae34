"""What ``/predict`` answers and how errors are written: the ``{"label", "score"}`` formatting of
probability rows, and the JSON error body (``{"error": "<one line>"}``) every route and handler sends.
"""

import json
import logging
from collections.abc import Mapping

import numpy as np

from bertsent.tabular import rank_labels

log = logging.getLogger(__name__)


def json_error(status: int, payload: dict, headers: Mapping[str, str] | None = None):
    """A JSON error response, ASCII-escaped: should a message ever quote the request's text, a lone
    surrogate in it cannot be encoded as UTF-8 (Starlette's JSONResponse would fail: a 500, not the error)."""
    from starlette.responses import Response

    body = json.dumps(payload, ensure_ascii=True, separators=(",", ":"))
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def error(status: int, message: str, **extra):
    """The server's error answer: ``{"error": message}`` (and ``extra`` fields) with ``status``."""
    return json_error(status, {"error": message, **extra})


def predictions(probs: np.ndarray, id2label: dict[int, str]) -> list[dict]:
    """The ``/predict`` answer without ``top_k``: one ``{"label", "score"}`` per row of ``probs``."""
    return [ranked[0] for ranked in rank_labels(probs, id2label)]


def ranked_predictions(probs: np.ndarray, id2label: dict[int, str], top_k: int | None) -> list[list[dict]]:
    """The ``/predict`` answer with ``top_k``: the ``top_k`` best labels of each row, best first (None: all),
    ranked as everywhere else (:func:`bertsent.tabular.rank_labels`: a tie goes to the lower label id)."""
    return rank_labels(probs, id2label, top_k)
