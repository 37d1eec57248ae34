"""From a request's texts to their probabilities: tokenized off the event loop, batched as encoded rows.

:class:`Scorer` tokenizes a request's texts with the model's own encoding (``prepare``: one truncated
row per text, or ``long_text="chunk"``'s windows) in a thread of its own, neither the event loop nor
the inference thread, then submits the rows with their lengths to the batcher, which batches them by
padded tokens; a text's windows are averaged back into its one row, as ``Predictor.scores`` does.
"""

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from bertsent.config import ServeSettings
from bertsent.encoding import Encoded
from bertsent.errors import InferenceError, first_line
from bertsent.serve.batcher import MicroBatcher
from bertsent.serve.metrics import ServeMetrics
from bertsent.serve.model import ServedModel

log = logging.getLogger(__name__)


class EncodedRow(NamedTuple):
    """One row the batcher queues: a text's (or a window's) token ids, and the whole text's length."""

    ids: np.ndarray
    full_length: int


class Scorer:
    """Scores texts through a :class:`MicroBatcher` of encoded rows (see the module).

    One tokenizing thread: a fast tokenizer may not be called from two threads while either changes
    its truncation state, and tokenizing is short beside the model's forward pass.
    """

    def __init__(self, model: ServedModel) -> None:
        self.model = model
        self._tokenizing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bertsent-tokenize")

    def batcher(self, settings: ServeSettings, metrics: ServeMetrics | None = None) -> MicroBatcher:
        """A batcher that runs this scorer's rows through the model, with the server's batching settings."""
        return MicroBatcher(
            self.score_rows, settings.max_batch_size, settings.max_wait_ms, metrics, settings.max_batch_tokens
        )

    def full_rows(self, rows: int, max_length: int) -> list[EncodedRow]:
        """``rows`` full-length rows: the largest batch the server forms, for its warm-up."""
        encoded, _ = self.model.prepare([" ".join(["warm"] * max_length)])  # at least max_length tokens
        return [EncodedRow(encoded.ids[0], int(encoded.full_lengths[0]))] * rows

    def score_rows(self, rows: Sequence[EncodedRow]) -> np.ndarray:
        """The model's probabilities for one batch of rows, in their order (called in the inference thread)."""
        full = np.fromiter((row.full_length for row in rows), dtype=np.int64, count=len(rows))
        return self.model.predict_proba(Encoded(ids=[row.ids for row in rows], full_lengths=full))

    async def score(self, batcher: MicroBatcher, texts: Sequence[str]) -> np.ndarray:
        """Probabilities of ``texts``, one row each in input order; an :class:`InferenceError` when the
        model (or its tokenizer) fails on them, a ``ServeError`` when the batcher is not running."""
        loop = asyncio.get_running_loop()
        try:
            encoded, owner = await loop.run_in_executor(self._tokenizing, self.model.prepare, list(texts))
        except Exception as e:  # these texts' own failure: the request's 500, the server goes on
            log.error("tokenizing failed on %d texts", len(texts), exc_info=e)
            raise InferenceError(f"tokenizing: {type(e).__name__}: {first_line(e)}") from e
        rows = [EncodedRow(ids, int(n)) for ids, n in zip(encoded.ids, encoded.full_lengths, strict=True)]
        probs = await batcher.submit(rows, encoded.lengths, texts=len(texts))
        return probs if owner is None else mean_by_text(probs, owner, len(texts))


def mean_by_text(probs: np.ndarray, owner: np.ndarray, texts: int) -> np.ndarray:
    """Each text's mean over the rows of its windows (``owner[i]``: the text row ``i`` belongs to)."""
    per_text = np.zeros((texts, probs.shape[1]), dtype=np.float32)
    np.add.at(per_text, owner, probs)
    return per_text / np.bincount(owner, minlength=texts)[:, None]
