"""Evaluation of a model folder on a data split: metrics, plots and the most confident mistakes."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bertsent.config import DataConfig
from bertsent.data.loading import load_data
from bertsent.encoding import Encoded
from bertsent.errors import DataError
from bertsent.folder import data_config_for

log = logging.getLogger("bertsent.evaluate")


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


def evaluate(
    model_dir: str | Path,
    data: DataConfig,
    split: str = "test",
    output_dir: str | Path | None = None,
    batch_size: int = 64,
    threads: int | None = None,
) -> dict[str, float]:
    """Score ``model_dir`` on one split of ``data``; writes ``metrics.json``, plots and ``errors.csv``."""
    from bertsent.predict import Predictor

    model_dir = Path(model_dir)
    output_dir = Path(output_dir) if output_dir else model_dir / f"eval-{split}"
    if split not in ("test", "validation", "train"):
        raise DataError(f"unknown split '{split}': use test, validation or train")
    predictor = Predictor(model_dir, batch_size=batch_size, threads=threads)
    data = data_config_for(model_dir, data)
    splits = load_data(data, splits=(split,))
    frame = getattr(splits, split)
    if frame is None or len(frame) == 0:
        raise DataError(f"{data.source}: has no {split} split")
    model_labels = predictor.id2label
    if {int(k): v for k, v in splits.id2label.items()} != model_labels:
        raise DataError(f"labels of {data.source} ({splits.id2label}) differ from the model's ({model_labels})")

    started = time.perf_counter()
    encoded = predictor.encode(frame["text"].tolist())
    probs = predictor.predict_proba(encoded, progress=None)
    seconds = time.perf_counter() - started
    metrics = report(output_dir, frame, encoded, probs, model_labels)
    metrics |= {
        "split": split,
        "model": str(model_dir),
        "max_length": predictor.max_length,
        "truncation": predictor.truncation,
        "reviews_per_second": round(len(frame) / seconds, 2),
        "data": splits.report,
    }
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log.info(
        "%s: accuracy %.4f, F1 %.4f on %d %s reviews; report in %s",
        model_dir,
        metrics["accuracy"],
        metrics["f1"],
        len(frame),
        split,
        output_dir,
    )
    return metrics
