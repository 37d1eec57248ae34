"""Evaluation of a model folder on a data split: metrics, plots and the most confident mistakes."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bertsent.config import DataConfig, InferenceSettings
from bertsent.data.loading import WHOLE_FILE, Splits, load_data
from bertsent.encoding import Encoded
from bertsent.errors import DataError
from bertsent.folder import data_config_for, read_training_args

log = logging.getLogger("bertsent.evaluate")

EVAL_BATCH_SIZE = 64
"""``evaluate``'s batch size when no settings are given."""


def report(
    output_dir: Path,
    split: pd.DataFrame,
    encoded: Encoded,
    probs: np.ndarray,
    id2label: dict[int, str],
    prefix: str = "",
) -> dict[str, float]:
    """Write plots and ``errors.csv`` to ``output_dir`` and return the flat metrics."""
    from bertsent.metrics import write_report

    output_dir.mkdir(parents=True, exist_ok=True)
    return write_report(
        output_dir,
        split["text"].tolist(),
        split["label"].to_numpy(),
        probs,
        encoded.full_lengths,
        {int(k): v for k, v in id2label.items()},
        prefix=prefix,
    )


def per_text(encoded: Encoded, owner: np.ndarray | None) -> Encoded:
    """One row per text: ``encoded`` itself, or the first window of each text (windows share its full length)."""
    if owner is None:
        return encoded
    first = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]]) if len(owner) else np.zeros(0, dtype=np.int64)
    return Encoded(ids=[encoded.ids[i] for i in first], full_lengths=encoded.full_lengths[first])


def evaluate(
    model_dir: str | Path,
    data: DataConfig,
    split: str | None = None,
    output_dir: str | Path | None = None,
    *,
    settings: InferenceSettings | None = None,
    batch_size: int | None = None,
    threads: int | None = None,
) -> dict[str, float]:
    """Score ``model_dir`` on one split of ``data``; writes ``metrics.json``, plots and ``errors.csv``.

    ``split`` None (the default) scores the test split, except for a single file without train/test
    split that the model was not trained on: that is scored whole (every usable row, ``split: "all"`` in
    the metrics), as a user handing over one file expects. The model's own training file still gives
    the test rows carved from it in training, and ``split="test"`` always does. The log says which rows
    were scored. The folder runs with ``settings`` (default: :class:`InferenceSettings` with batch size
    64); ``batch_size`` and ``threads``, when given, override theirs. With ``long_text="chunk"`` each
    review is scored by its windows (length buckets still use each review's full length).
    """
    from bertsent.predict import Predictor

    model_dir = Path(model_dir)
    if split not in (None, "test", "validation", "train"):
        raise DataError(f"unknown split '{split}': use test, validation or train")
    settings = settings if settings is not None else InferenceSettings(batch_size=EVAL_BATCH_SIZE)
    predictor = Predictor(model_dir, settings, batch_size=batch_size, threads=threads)
    data = data_config_for(model_dir, data)
    splits = load_data(data, splits=(split or "test",), whole_file=split is None and not trained_on(model_dir, data))
    whole = splits.report["splits_from"].get("test") == WHOLE_FILE
    name = "all" if whole else split or "test"
    frame = splits.test if whole else getattr(splits, name)
    if frame is None or len(frame) == 0:
        raise DataError(f"{data.source}: has no {name} split")
    model_labels = predictor.id2label
    if {int(k): v for k, v in splits.id2label.items()} != model_labels:
        raise DataError(f"labels of {data.source} ({splits.id2label}) differ from the model's ({model_labels})")
    _log_scored(data, splits, name, len(frame))

    output_dir = Path(output_dir) if output_dir else model_dir / f"eval-{name}"
    started = time.perf_counter()
    encoded, owner = predictor.prepare(frame["text"].tolist())
    probs = predictor.scores(encoded, owner, progress=None)
    seconds = time.perf_counter() - started
    metrics = report(output_dir, frame, per_text(encoded, owner), probs, model_labels)
    metrics |= {
        "split": name,
        "model": str(model_dir),
        "max_length": predictor.max_length,
        "truncation": predictor.truncation,
        "long_text": predictor.long_text,
        "reviews_per_second": round(len(frame) / seconds, 2),
        "data": splits.report,
    }
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log.info(
        "%s: accuracy %.4f, F1 %.4f on %d reviews (%s); report in %s",
        model_dir,
        metrics["accuracy"],
        metrics["f1"],
        len(frame),
        name,
        output_dir,
    )
    return metrics


def trained_on(model_dir: Path, data: DataConfig) -> bool:
    """Whether ``data.source`` is the source the folder was trained on (its ``training_args.json``)."""
    source = read_training_args(model_dir).get("data", {}).get("source")
    return bool(source) and Path(str(source)).expanduser().resolve() == Path(data.source).expanduser().resolve()


def _log_scored(data: DataConfig, splits: Splits, name: str, n: int) -> None:
    """Say which rows are about to be scored, and how to score others."""
    if name == "all":
        log.info(
            "%s has no train/test split: scoring all its %d usable reviews (--split test scores only the "
            "share carved off as test, test_size=%s)",
            data.source,
            n,
            data.test_size,
        )
        return
    origin = splits.report["splits_from"].get(name, "the training rows left after the held-out splits")
    log.info("%s: scoring %d %s reviews (%s; choose others with --split)", data.source, n, name, origin)
