"""What the server needs of a model: :class:`ServedModel`, the small protocol a ``Predictor`` meets.

The server reads everything it shows about the model (``/info``, the metrics' ``bertsent_model_info``,
the start banner) from one :class:`~bertsent.predict.ModelDescription`, never from attributes probed
one by one; tests serve fakes that implement the same four methods.
"""

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from bertsent.encoding import Encoded
    from bertsent.predict import ModelDescription

log = logging.getLogger(__name__)


@runtime_checkable
class ServedModel(Protocol):
    """A model the server can serve; :class:`~bertsent.predict.Predictor` is one."""

    def describe(self) -> "ModelDescription":
        """What the model is and how it runs, now."""
        ...

    def prepare(self, texts: list[str]) -> "tuple[Encoded, np.ndarray | None]":
        """Texts tokenized as the model's settings say: one row each (and None), or windows and the text
        each window belongs to. The server tokenizes with it, then scores the rows in batches."""
        ...

    def predict_proba(self, texts: "list[str] | Encoded") -> np.ndarray:
        """Probabilities, one row per text (or per encoded row, as they are), in input order."""
        ...

    def explain(
        self, texts: list[str], method: str | None = None, targets: Sequence[int] | None = None
    ) -> list[list[dict]]:
        """Each text's scored words for its ``targets`` label; a ``BertsentError`` when the model cannot explain
        (with no texts, it says so without running the model)."""
        ...
