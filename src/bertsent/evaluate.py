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
from bertsent.folder import CARD_FILE, METRICS_FILE, data_config_for, read_training_args, set_card_section

log = logging.getLogger(__name__)

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

    output_dir = Path(output_dir) if output_dir else default_report_dir(model_dir, data, name)
    started = time.perf_counter()
    encoded, owner = predictor.prepare(frame["text"].tolist())
    probs = predictor.scores(encoded, owner, progress=None)
    seconds = time.perf_counter() - started
    metrics = report(output_dir, frame, per_text(encoded, owner), probs, model_labels)
    metrics |= {
        "split": name,
        "source": data.source,
        "model": str(model_dir),
        "report_dir": str(output_dir),
        "max_length": predictor.max_length,
        "truncation": predictor.truncation,
        "long_text": predictor.long_text,
        "reviews_per_second": round(len(frame) / seconds, 2),
        "backend": predictor.backend.name,
        "precision": str(predictor.backend.precision),
        **predictor.route.record(),  # which route ran it and why (--backend auto's verdict)
        "data": splits.report,
    }
    if (mean_layers := predictor.backend.mean_layers) is not None:
        metrics["mean_layers"] = round(mean_layers, 4)  # an early-exit folder: encoder layers per scored row
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if output_dir.resolve().parent == model_dir.resolve() and (model_dir / CARD_FILE).is_file():
        write_limitations(model_dir)  # a report in the folder is part of what its card can say
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


def default_report_dir(model_dir: Path, data: DataConfig, split: str) -> Path:
    """``MODEL/eval-SPLIT`` for the data the model was trained on, ``MODEL/eval-DATASET-SPLIT`` for other
    data (an out-of-domain set's report must not overwrite the in-domain one)."""
    if trained_on(model_dir, data):
        return model_dir / f"eval-{split}"
    local = Path(data.source).expanduser()
    dataset = local.stem if local.is_file() else local.name if local.exists() else data.source.rsplit("/", 1)[-1]
    return model_dir / f"eval-{dataset}-{split}"


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


# --------------------------------------------------------------------------------------------------
# The model card's use and limitations, from what was measured
# --------------------------------------------------------------------------------------------------

MISTAKES_SHOWN = 3
"""Most confident test mistakes quoted in the card (all of them are in ``eval-test/errors.csv``)."""

CLIP = 300
"""Characters of a quoted review."""


def write_limitations(model_dir: Path) -> None:
    """Fill the card's "Uses" and "Bias, Risks, and Limitations" sections (the Hugging Face template's)
    from the folder's measurements; rerun by every stage that adds one (train, calibrate, evaluate)."""
    metrics = _read_json(model_dir / METRICS_FILE)
    recorded = read_training_args(model_dir)
    source = str(recorded.get("data", {}).get("source") or "unknown data")
    set_card_section(model_dir, "Uses", uses_section(model_dir, metrics, source, recorded.get("training", {})))
    set_card_section(model_dir, "Bias, Risks, and Limitations", limitations_section(model_dir, metrics, source))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def uses_section(model_dir: Path, metrics: dict, source: str, args: dict) -> str:
    """Direct and out-of-scope use; ``args`` are the recorded training settings (max length, truncation)."""
    from bertsent.folder import read_id2label

    labels = ", ".join(read_id2label(model_dir).values())
    accuracy = metrics.get("test_accuracy")
    measured = f" (test accuracy {accuracy:.2%} on {metrics.get('test_n')} held-out reviews)" if accuracy else ""
    return f"""### Direct use

Labelling the sentiment ({labels}) of reviews like those it was fine-tuned on: `{source}`,
{metrics.get("train_reviews", "?")} training reviews{measured}. Texts are cut to {args.get("max_length", "?")} tokens
(`{args.get("truncation", "?")}`); `--long-text chunk` scores longer ones by windows.

### Out-of-scope use

Other domains or languages without measuring first (`bertsent evaluate --data ...`: the section below lists
what was measured), and decisions about individual people: the scores describe texts, not their authors."""


def limitations_section(model_dir: Path, metrics: dict, source: str) -> str:
    parts = [
        f"Trained on one domain (`{source}`); accuracy elsewhere is whatever was measured below, nothing more.",
        _other_data(model_dir, source, metrics.get("test_accuracy")),
        _by_length(metrics),
        _calibration(metrics),
        _mistakes(model_dir / "eval-test" / "errors.csv"),
        "Not measured: accuracy by the author's dialect, demographics or topic (no labelled data for them), "
        "and robustness to sarcasm or adversarial edits.",
    ]
    return "\n\n".join(part for part in parts if part)


def _other_data(model_dir: Path, source: str, in_domain: float | None) -> str:
    rows = []
    for path in sorted(model_dir.glob("eval-*/metrics.json")):
        m = _read_json(path)
        other = m.get("source")
        if (
            not other
            or not isinstance(m.get("accuracy"), float)
            or Path(str(other)).resolve() == Path(source).resolve()
        ):
            continue
        gap = f"{(m['accuracy'] - in_domain) * 100:+.1f}" if in_domain is not None else "n/a"
        rows.append(f"| `{other}` ({m.get('split')}) | {m.get('n')} | {m['accuracy']:.2%} | {gap} |")
    if not rows:
        return "Out-of-domain accuracy: not measured (`bertsent ood`, then `bertsent evaluate --data ...`)."
    header = "Accuracy on other data (`bertsent evaluate` reports in this folder):\n\n"
    return header + "| Data | Reviews | Accuracy | Points vs in-domain test |\n|---|---|---|---|\n" + "\n".join(rows)


def _by_length(metrics: dict) -> str:
    rows = [
        f"| {key.split('/')[1]} | {metrics[key.replace('/accuracy', '/n')]} | {metrics[key]:.2%} |"
        for key in metrics
        if key.startswith("test_length/") and key.endswith("/accuracy")
    ]
    if not rows:
        return ""
    return (
        "Test accuracy by review length (tokens before truncation):\n\n| Tokens | Reviews | Accuracy |\n|---|---|---|\n"
        + ("\n".join(rows))
    )


def _calibration(metrics: dict) -> str:
    record = metrics.get("calibration")
    split = "test" if record and "test" in record else "validation"
    if record and split in record:
        r = record[split]
        return (
            f"Scores are temperature-scaled (T = {record['temperature']:.3f}): {split} ECE "
            f"{r['ece_before']:.4f} before, {r['ece_after']:.4f} after; log-loss {r['log_loss_before']:.4f} -> "
            f"{r['log_loss_after']:.4f}."
        )
    if isinstance(metrics.get("test_ece"), float):
        return (
            f"Scores are not calibrated: test ECE {metrics['test_ece']:.4f} (`bertsent calibrate` fits a temperature)."
        )
    return ""


def _mistakes(path: Path) -> str:
    try:
        errors = pd.read_csv(path, nrows=MISTAKES_SHOWN)
    except (OSError, ValueError):
        return ""
    if errors.empty:
        return ""
    lines = [
        f'- {row.label} review read as {row.predicted} with confidence {row.confidence:.3f}: "{_clip(str(row.text))}"'
        for row in errors.itertuples()
    ]
    return "The most confident test mistakes (all in `eval-test/errors.csv`):\n\n" + "\n".join(lines)


def _clip(text: str) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= CLIP else text[: CLIP - 1].rstrip() + "…"
