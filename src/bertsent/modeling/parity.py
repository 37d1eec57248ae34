"""The one parity check: a converted model (ONNX Runtime, Keras, a TensorFlow SavedModel) against PyTorch.

Nothing counts as converted until the candidate reproduces the PyTorch model's logits within a
tolerance on random batches of several shapes, padding included. The check measures every shape, then
raises :class:`~bertsent.errors.ExportParityError` once, naming the largest difference and its shape.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from bertsent.config import DEFAULT_ATOL
from bertsent.errors import ExportParityError

if TYPE_CHECKING:
    import torch

PARITY_SHAPES: tuple[tuple[int, int], ...] = ((1, 7), (3, 50), (2, 300))
"""(batch, sequence) shapes of the parity check; all differ from the ONNX export example (2, 16)."""

Candidate = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``candidate(input_ids, attention_mask) -> logits``: int64 ``[batch, tokens]`` arrays in, an array out."""


def random_batch(vocab_size: int, pad_id: int, batch: int, length: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random token ids with the last row half padded, so masks are part of every parity check."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000 if vocab_size > 2000 else 5, vocab_size, size=(batch, length), dtype=np.int64)
    mask = np.ones_like(ids)
    if batch > 1:
        keep = max(1, length // 2)  # a real row keeps at least one token
        mask[-1, keep:] = 0
        ids[-1, keep:] = pad_id
    return ids, mask


def reference_logits(model: torch.nn.Module, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """The PyTorch model's float32 logits for numpy inputs."""
    import torch

    with torch.inference_mode():
        out = model(input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(attention_mask))
    return out.logits.float().numpy()


def max_abs_diff(got, expected: np.ndarray, what: str, where: str) -> float:
    """Largest absolute logit difference; a shape mismatch is a parity failure too."""
    got = np.asarray(got)
    if got.shape != expected.shape:
        raise ExportParityError(f"{what} logits have shape {got.shape}, PyTorch {expected.shape} on {where}")
    return float(np.max(np.abs(got - expected)))


def judge(what: str, results: Sequence[dict], atol: float) -> dict:
    """Raise once if any ``{"shape": [b, t], "max_abs_diff": d}`` is past ``atol``; else the worst of them.

    NaN never counts as within tolerance and ranks first among the failures.
    """
    worst = max(results, key=lambda r: (np.isnan(r["max_abs_diff"]), np.nan_to_num(r["max_abs_diff"])))
    if not worst["max_abs_diff"] <= atol:
        batch, length = worst["shape"]
        per_shape = ", ".join(f"{r['shape'][0]}x{r['shape'][1]}: {r['max_abs_diff']:.3g}" for r in results)
        raise ExportParityError(
            f"{what} logits differ from PyTorch by {worst['max_abs_diff']:.3g} (> atol {atol:g}) "
            f"on input shape {batch}x{length} (max |diff| per shape, tolerance {atol:g}: {per_shape})"
        )
    return worst


def parity_check(
    what: str,
    candidate: Candidate,
    model: torch.nn.Module,
    atol: float = DEFAULT_ATOL,
    pad_id: int = 0,
    shapes: tuple[tuple[int, int], ...] = PARITY_SHAPES,
) -> dict:
    """``candidate`` against the PyTorch ``model`` on random batches of ``shapes``; raises past ``atol``.

    ``what`` names the candidate in the error (``"ONNX Runtime"``, ``"Keras"``, ...). Returns
    ``{"max_abs_diff": worst, "atol": atol, "shapes": [{"shape": [b, t], "max_abs_diff": d}, ...]}``.
    """
    max_positions = int(getattr(model.config, "max_position_embeddings", 512) or 512)
    results = []
    for i, (batch, length) in enumerate(shapes):
        length = min(length, max_positions)
        ids, mask = random_batch(model.config.vocab_size, pad_id, batch, length, seed=i + 1)
        diff = max_abs_diff(candidate(ids, mask), reference_logits(model, ids, mask), what, f"{batch}x{length}")
        results.append({"shape": [batch, length], "max_abs_diff": diff})
    worst = judge(what, results, atol)
    return {"max_abs_diff": worst["max_abs_diff"], "atol": atol, "shapes": results}
