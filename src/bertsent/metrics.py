"""Pure-numpy evaluation: metrics, calibration, error analysis and plots for a text classifier.

Everything here takes arrays (labels, class probabilities, token lengths) and never runs a model, so
the model-running ``evaluate()`` can stay thin and these functions stay testable in milliseconds.

Conventions (the sentence-transformers evaluator style):

* Metric functions return a flat ``dict[str, float]`` of plain Python floats/ints, ready for
  ``json.dumps(..., allow_nan=False)``; a metric that is undefined on the given data is omitted rather
  than reported as NaN.
* "Positive class" for binary tasks is id 1. ``f1``/``precision``/``recall`` are that class's scores
  in the binary case and macro averages otherwise, so the headline keys mean "the usual number" for
  both kinds of task.
* Macro averages run over *all* classes in ``id2label`` (absent classes count as 0), so numbers stay
  comparable between evaluation sets that happen to miss a class.

sklearn, pandas and matplotlib are imported inside the functions that need them: importing this module
only costs numpy, which keeps ``bertsent --help`` and unrelated imports fast.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = [
    "classification_metrics",
    "confusion",
    "expected_calibration_error",
    "length_buckets",
    "most_confident_errors",
    "plot_confusion_matrix",
    "plot_reliability",
    "plot_reliability_pair",
    "plot_training_curves",
    "reliability_curve",
    "write_report",
]

# Softmax outputs computed in float32 (or float16) rarely sum to exactly 1; anything further off than
# this is almost certainly logits or unnormalised scores, which would silently corrupt every metric.
_ROW_SUM_TOLERANCE = 1e-3


# --------------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------------


def _as_labels(labels: Any, name: str = "labels") -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class ids, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: cannot compute metrics on zero examples")
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise ValueError(f"{name} must contain integer class ids, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _as_probs(probs: Any, n: int) -> np.ndarray:
    arr = np.asarray(probs, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"probs must be a 2-D array of shape (n_examples, n_classes), got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"probs has {arr.shape[0]} rows but labels has {n} entries; they must match")
    if arr.shape[1] < 2:
        raise ValueError(f"probs must have at least 2 columns (one per class), got {arr.shape[1]}")
    if not np.isfinite(arr).all():
        raise ValueError("probs contains NaN or infinite values")
    if (arr < 0).any():
        raise ValueError("probs contains negative values; pass softmax probabilities, not logits")
    sums = arr.sum(axis=1)
    worst = float(np.abs(sums - 1.0).max())
    if worst > _ROW_SUM_TOLERANCE:
        raise ValueError(
            f"probs rows must sum to 1 (worst row is off by {worst:.3g}); pass softmax probabilities, not logits"
        )
    # Renormalise the float32 rounding away so sklearn's log_loss does not warn about it.
    return arr / sums[:, None]


def _as_id2label(id2label: Mapping[int, str], k: int) -> dict[int, str]:
    # Keys may arrive as strings when id2label was read back from JSON ({"0": "negative"}).
    names = {int(i): str(name) for i, name in id2label.items()}
    if sorted(names) != list(range(k)):
        raise ValueError(f"id2label must map exactly the ids 0..{k - 1}, got ids {sorted(names)}")
    if len(set(names.values())) != k:
        raise ValueError(f"id2label names must be unique, got {[names[i] for i in range(k)]}")
    return names


def _check_range(arr: np.ndarray, k: int, name: str) -> None:
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= k:
        raise ValueError(f"{name} must be class ids in 0..{k - 1}, found values in {lo}..{hi}")


def _validate(labels: Any, probs: Any, id2label: Mapping[int, str] | None = None):
    """Common checks for (labels, probs[, id2label]); returns normalised arrays and names."""
    y = _as_labels(labels)
    p = _as_probs(probs, len(y))
    k = p.shape[1]
    _check_range(y, k, "labels")
    names = _as_id2label(id2label, k) if id2label is not None else None
    return y, p, names


def _validate_preds(labels: Any, preds: Any, id2label: Mapping[int, str]):
    y = _as_labels(labels)
    yhat = _as_labels(preds, "preds")
    if len(yhat) != len(y):
        raise ValueError(f"preds has {len(yhat)} entries but labels has {len(y)}; they must match")
    names = _as_id2label(id2label, len(id2label))
    _check_range(y, len(names), "labels")
    _check_range(yhat, len(names), "preds")
    return y, yhat, names


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


def _ovr_roc_auc(y: np.ndarray, p: np.ndarray) -> float | None:
    """ROC AUC, or None when it is undefined (fewer than two classes in the labels).

    Binary: AUC of ``p[:, 1]``. Multi-class: one-vs-rest macro average over the classes present in
    the labels. With every class present this is exactly sklearn's ``multi_class="ovr"``; unlike
    sklearn it still gives a number when an evaluation slice misses a class.
    """
    from sklearn.metrics import roc_auc_score

    present = np.unique(y)
    if len(present) < 2:
        return None
    if p.shape[1] == 2:
        return float(roc_auc_score(y, p[:, 1]))
    return float(np.mean([roc_auc_score(y == c, p[:, c]) for c in present]))


def classification_metrics(labels: np.ndarray, probs: np.ndarray, id2label: Mapping[int, str]) -> dict[str, float]:
    """Accuracy, F1/precision/recall (positive-class or macro), macro scores, ROC AUC, log loss, ECE.

    Returns a flat dict with keys ``accuracy, f1, precision, recall, f1_macro, precision_macro,
    recall_macro, roc_auc, log_loss, ece, n`` and ``f1_<label name>`` for every class. ``roc_auc`` is
    omitted when only one class occurs in ``labels``.
    """
    from sklearn.metrics import log_loss, precision_recall_fscore_support

    y, p, names = _validate(labels, probs, id2label)
    k = p.shape[1]
    preds = p.argmax(axis=1)
    classes = list(range(k))

    # One call gives every per-class score; the headline numbers are derived from it so they can
    # never disagree with the per-class keys. zero_division=0: a class never predicted scores 0.
    precision, recall, f1, _ = precision_recall_fscore_support(y, preds, labels=classes, average=None, zero_division=0)
    out: dict[str, float] = {"accuracy": float(np.mean(preds == y))}
    if k == 2:
        out |= {"f1": float(f1[1]), "precision": float(precision[1]), "recall": float(recall[1])}
    else:
        out |= {"f1": float(f1.mean()), "precision": float(precision.mean()), "recall": float(recall.mean())}
    out |= {
        "f1_macro": float(f1.mean()),
        "precision_macro": float(precision.mean()),
        "recall_macro": float(recall.mean()),
    }
    auc = _ovr_roc_auc(y, p)
    if auc is not None:
        out["roc_auc"] = auc
    # labels= keeps log_loss defined when a class is missing from this slice.
    out["log_loss"] = float(log_loss(y, p, labels=classes))
    out["ece"] = _ece_from_curve(_reliability_bins(y, p, 15), len(y))
    out["n"] = len(y)
    for c in classes:
        key = f"f1_{names[c]}"
        if key in out:
            raise ValueError(f"label name {names[c]!r} collides with the metric key {key!r}; rename it")
        out[key] = float(f1[c])
    return out


def confusion(labels: np.ndarray, preds: np.ndarray, id2label: Mapping[int, str]) -> dict[str, int]:
    """Flat confusion matrix: ``"confusion/<true name>/<predicted name>": count`` for every pair."""
    from sklearn.metrics import confusion_matrix

    y, yhat, names = _validate_preds(labels, preds, id2label)
    k = len(names)
    cm = confusion_matrix(y, yhat, labels=list(range(k)))
    return {f"confusion/{names[t]}/{names[q]}": int(cm[t, q]) for t in range(k) for q in range(k)}


def _bucket_names(edges: Sequence[int]) -> list[str]:
    inner = [f"{lo}-{hi - 1}" for lo, hi in itertools.pairwise(edges)]
    return [*inner, f"{edges[-1]}+"]


def length_buckets(
    labels: np.ndarray,
    preds: np.ndarray,
    lengths: np.ndarray,
    edges: Sequence[int] = (0, 128, 256, 512),
) -> dict[str, float]:
    """Accuracy and count per token-length bucket, e.g. ``length/0-127/accuracy``, ``length/512+/n``.

    ``lengths`` should be token counts *before* truncation, so the long buckets show whether cutting
    reviews at the model's maximum length costs accuracy. Buckets are ``[edge_i, edge_{i+1})`` plus an
    open-ended last one; empty buckets are omitted.
    """
    y = _as_labels(labels)
    yhat = _as_labels(preds, "preds")
    n_tok = _as_labels(lengths, "lengths")
    if not len(y) == len(yhat) == len(n_tok):
        raise ValueError(
            f"labels, preds and lengths must have the same length, got {len(y)}, {len(yhat)}, {len(n_tok)}"
        )
    edges = [int(e) for e in edges]
    if not edges or any(b <= a for a, b in itertools.pairwise(edges)):
        raise ValueError(f"edges must be a non-empty, strictly increasing sequence, got {edges}")
    if int(n_tok.min()) < edges[0]:
        raise ValueError(f"lengths contain {int(n_tok.min())}, below the first edge {edges[0]}")

    # side="right": a length equal to an edge opens the next bucket ([lo, hi) intervals).
    bucket = np.searchsorted(edges, n_tok, side="right") - 1
    correct = y == yhat
    out: dict[str, float] = {}
    for b, name in enumerate(_bucket_names(edges)):
        mask = bucket == b
        count = int(mask.sum())
        if count:
            out[f"length/{name}/accuracy"] = float(correct[mask].mean())
            out[f"length/{name}/n"] = count
    return out


# --------------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------------


def _reliability_bins(y: np.ndarray, p: np.ndarray, n_bins: int) -> list[dict[str, float]]:
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    confidence = p.max(axis=1)
    correct = p.argmax(axis=1) == y
    # arange/n rather than linspace: i/n is correctly rounded, so a confidence written as 0.6 lands
    # exactly on the 9/15 edge instead of a hair below or above it.
    edges = np.arange(n_bins + 1) / n_bins
    # Bins are (lower, upper] as in Guo et al. (2017); searchsorted over the inner edges counts how
    # many upper bounds lie strictly below the confidence.
    idx = np.searchsorted(edges[1:-1], confidence, side="left")
    rows = []
    for b in range(n_bins):
        mask = idx == b
        count = int(mask.sum())
        if count:
            rows.append(
                {
                    "lower": float(edges[b]),
                    "upper": float(edges[b + 1]),
                    "confidence": float(confidence[mask].mean()),
                    "accuracy": float(correct[mask].mean()),
                    "count": count,
                }
            )
    return rows


def _ece_from_curve(curve: list[dict[str, float]], n: int) -> float:
    return float(sum(r["count"] / n * abs(r["accuracy"] - r["confidence"]) for r in curve))


def reliability_curve(labels: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> list[dict[str, float]]:
    """Top-label reliability diagram data: one dict per *non-empty* equal-width confidence bin.

    Each dict has ``lower, upper`` (bin bounds, the bin is ``(lower, upper]``), ``confidence`` (mean
    top-label probability), ``accuracy`` (fraction of argmax predictions that are right) and ``count``.
    """
    y, p, _ = _validate(labels, probs)
    return _reliability_bins(y, p, n_bins)


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE: count-weighted mean of |accuracy - confidence| over equal-width bins."""
    y, p, _ = _validate(labels, probs)
    return _ece_from_curve(_reliability_bins(y, p, n_bins), len(y))


# --------------------------------------------------------------------------------------------------
# Error analysis
# --------------------------------------------------------------------------------------------------


def most_confident_errors(
    texts: Sequence[str],
    labels: np.ndarray,
    probs: np.ndarray,
    id2label: Mapping[int, str],
    k: int = 100,
) -> pd.DataFrame:
    """The ``k`` wrong predictions the model was most sure about, most confident first.

    Columns: ``text, label, predicted`` (label names), ``confidence`` (probability of the predicted
    class) and ``prob_true`` (probability given to the true class). The index holds each row's
    position in the input, so mistakes can be traced back to the dataset.
    """
    import pandas as pd

    y, p, names = _validate(labels, probs, id2label)
    if len(texts) != len(y):
        raise ValueError(f"texts has {len(texts)} entries but labels has {len(y)}; they must match")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    preds = p.argmax(axis=1)
    wrong = np.flatnonzero(preds != y)
    confidence = p[wrong, preds[wrong]]
    # Stable sort so ties keep dataset order and the CSV is reproducible run to run.
    order = wrong[np.argsort(-confidence, kind="stable")][:k]
    return pd.DataFrame(
        {
            "text": [texts[i] for i in order],
            "label": [names[int(y[i])] for i in order],
            "predicted": [names[int(preds[i])] for i in order],
            "confidence": p[order, preds[order]],
            "prob_true": p[order, y[order]],
        },
        index=pd.Index(order, name="row"),
    )


# --------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------


def _new_figure(**kwargs: Any) -> Figure:
    # A bare Figure on an Agg canvas instead of pyplot: no global backend switch (the caller may be in
    # a notebook), no figure registry to leak memory, and safe without a display.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Save in the format the suffix names (PNG when none). SVG is written reproducibly (no date, fixed
    element ids), so a committed plot changes only when its numbers do."""
    import matplotlib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = path.suffix.lstrip(".").lower() or "png"
    with matplotlib.rc_context({"svg.hashsalt": "bertsent"}):
        fig.savefig(path, format=fmt, dpi=120, metadata={"Date": None} if fmt == "svg" else None)
    return path


def plot_confusion_matrix(labels: np.ndarray, preds: np.ndarray, id2label: Mapping[int, str], path: str | Path) -> Path:
    """Save a confusion-matrix heatmap (rows true, columns predicted, counts in the cells) as PNG."""
    from sklearn.metrics import confusion_matrix

    y, yhat, names = _validate_preds(labels, preds, id2label)
    k = len(names)
    cm = confusion_matrix(y, yhat, labels=list(range(k)))
    tick_names = [names[i] for i in range(k)]

    side = max(4.0, 1.0 + 0.8 * k)
    fig = _new_figure(figsize=(side + 1.0, side))
    ax = fig.add_subplot()
    image = ax.imshow(cm, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax)
    ax.set_xticks(range(k), labels=tick_names, rotation=45, ha="right")
    ax.set_yticks(range(k), labels=tick_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion matrix (n={len(y)}, accuracy={np.mean(y == yhat):.3f})")
    threshold = cm.max() / 2
    for t in range(k):
        for q in range(k):
            # White text on dark cells, black on light ones, so every count stays readable.
            color = "white" if cm[t, q] > threshold else "black"
            ax.text(q, t, str(cm[t, q]), ha="center", va="center", color=color)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_reliability(labels: np.ndarray, probs: np.ndarray, path: str | Path, n_bins: int = 15) -> Path:
    """Save a reliability diagram (accuracy per confidence bin vs the diagonal) plus a count histogram."""
    y, p, _ = _validate(labels, probs)
    fig = _new_figure(figsize=(5.5, 6.5))
    grid = fig.add_gridspec(2, 1, height_ratios=(3, 1), hspace=0.08)
    _draw_reliability(fig, grid, 0, y, p, n_bins, "Reliability")
    return save_figure(fig, path)


def plot_reliability_pair(
    labels: np.ndarray, before: np.ndarray, after: np.ndarray, path: str | Path, title: str, n_bins: int = 15
) -> Path:
    """Reliability diagrams of the same reviews before and after calibration, side by side."""
    y, p_before, _ = _validate(labels, before)
    _, p_after, _ = _validate(labels, after)
    fig = _new_figure(figsize=(10.5, 6.5))
    grid = fig.add_gridspec(2, 2, height_ratios=(3, 1), hspace=0.08, wspace=0.25)
    _draw_reliability(fig, grid, 0, y, p_before, n_bins, "Before")
    _draw_reliability(fig, grid, 1, y, p_after, n_bins, "After")
    fig.suptitle(f"Temperature scaling ({title})")
    return save_figure(fig, path)


def _draw_reliability(fig, grid, column: int, y: np.ndarray, p: np.ndarray, n_bins: int, name: str) -> None:
    """Accuracy bars, the gap to confidence and the diagonal in ``grid[0, column]``, counts below it."""
    curve = _reliability_bins(y, p, n_bins)
    ece = _ece_from_curve(curve, len(y))
    width = 1.0 / n_bins
    lowers = [r["lower"] for r in curve]
    ax = fig.add_subplot(grid[0, column])
    hist = fig.add_subplot(grid[1, column], sharex=ax)
    ax.bar(lowers, [r["accuracy"] for r in curve], width=width, align="edge", edgecolor="black", label="accuracy")
    # The gap between mean confidence and accuracy is what ECE averages; draw it explicitly.
    ax.bar(
        lowers,
        [r["confidence"] - r["accuracy"] for r in curve],
        bottom=[r["accuracy"] for r in curve],
        width=width,
        align="edge",
        color="tab:red",
        alpha=0.3,
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"{name} (top label, {n_bins} bins), ECE={ece:.4f}")
    ax.legend(loc="upper left")
    ax.tick_params(labelbottom=False)
    hist.bar(lowers, [r["count"] for r in curve], width=width, align="edge", color="gray", edgecolor="black")
    hist.set_xlabel("confidence")
    hist.set_ylabel("count")


def _series(rows: list[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) for rows carrying a finite numeric ``key``; falls back to row order for steps."""
    xs, ys = [], []
    for i, row in enumerate(rows):
        value = row.get(key)
        # numbers.Real also admits numpy scalars (np.float32 is not a float subclass); bools are not metrics.
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
            xs.append(float(row.get("step", i)))
            ys.append(float(value))
    return xs, ys


def plot_training_curves(history: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Save loss (train, eval) and eval accuracy/F1 against step as a two-panel PNG.

    ``history`` is a Trainer-style log: rows with ``loss`` are training logs, rows with ``eval_*`` keys
    are evaluations. Missing series (no eval yet, nothing logged at all) leave a note in the panel
    instead of failing, so a very short run still gets its report.
    """
    rows = list(history)
    fig = _new_figure(figsize=(11, 4))
    loss_ax, eval_ax = fig.subplots(1, 2)
    _plot_steps(loss_ax, rows, {"loss": "train loss", "eval_loss": "eval loss"}, "Loss", markersize=3, markers_below=30)
    _plot_steps(eval_ax, rows, {"eval_accuracy": "accuracy", "eval_f1": "F1"}, "Evaluation", markersize=4)
    fig.tight_layout()
    return save_figure(fig, path)


def _plot_steps(ax, rows, series: dict[str, str], title: str, markersize: int, markers_below: int | None = None):
    """One panel: each logged ``series`` key (labelled by its value) against step, or a note when none was."""
    plotted = False
    for key, label in series.items():
        xs, ys = _series(rows, key)
        if xs:
            # Markers make a single logged point visible (a line alone draws nothing); past
            # ``markers_below`` points they would hide the curve.
            marker = "o" if markers_below is None or len(xs) < markers_below else None
            ax.plot(xs, ys, marker=marker, markersize=markersize, label=label)
            plotted = True
    ax.set_title(title)
    ax.set_xlabel("step")
    if plotted:
        ax.legend()
    else:
        ax.text(0.5, 0.5, f"no {title.lower()} logged", ha="center", va="center", transform=ax.transAxes)


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def write_report(
    output_dir: str | Path,
    texts: Sequence[str],
    labels: np.ndarray,
    probs: np.ndarray,
    lengths: np.ndarray | None,
    id2label: Mapping[int, str],
    prefix: str = "",
) -> dict[str, float]:
    """Compute every metric and write ``confusion_matrix.png``, ``reliability.png`` and ``errors.csv``.

    Returns one flat dict merging :func:`classification_metrics`, :func:`confusion` and
    :func:`length_buckets` (skipped when ``lengths`` is None), each key prefixed with ``prefix``
    (``"test_"`` gives ``test_accuracy``). ``metrics.json`` is left to the caller, which adds its own
    entries (timings, model info) before writing it.
    """
    y, p, names = _validate(labels, probs, id2label)
    if len(texts) != len(y):
        raise ValueError(f"texts has {len(texts)} entries but labels has {len(y)}; they must match")
    preds = p.argmax(axis=1)
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    merged: dict[str, float] = {**classification_metrics(y, p, names), **confusion(y, preds, names)}
    if lengths is not None:
        merged |= length_buckets(y, preds, lengths)

    plot_confusion_matrix(y, preds, names, out_dir / "confusion_matrix.png")
    plot_reliability(y, p, out_dir / "reliability.png")
    most_confident_errors(texts, y, p, names).to_csv(out_dir / "errors.csv", index=False)
    return {f"{prefix}{key}": value for key, value in merged.items()}
