"""Model cards: the README.md of an output folder, written from what the run actually measured."""

from __future__ import annotations

import platform
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

METRIC_ROWS = (
    ("accuracy", "Accuracy"),
    ("f1", "F1 (positive class / macro if multi-class)"),
    ("f1_macro", "F1 macro"),
    ("precision", "Precision"),
    ("recall", "Recall"),
    ("roc_auc", "ROC-AUC"),
    ("log_loss", "Log-loss"),
    ("ece", "Expected calibration error"),
)


def _fmt(value) -> str:
    if value is None:
        return "—"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def git_revision() -> str:
    """The short git revision of this checkout (``unknown`` outside one): every record names the code."""
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_model_card(output_dir: Path, args, data, metrics: dict) -> Path:
    """Write ``README.md`` with Hugging Face front matter, the data, the settings and the metrics."""
    import torch
    import transformers

    import bertsent

    report = metrics.get("data", {})
    labels = ", ".join(f"{k}: {v}" for k, v in sorted(report.get("label_counts", {}).get("train", {}).items()))
    rows = []
    for key, name in METRIC_ROWS:
        val, test = metrics.get(f"validation_{key}"), metrics.get(f"test_{key}")
        if val is not None or test is not None:
            rows.append(f"| {name} | {_fmt(val)} | {_fmt(test)} |")
    dropped = report.get("dropped", {})
    dropped_lines = [
        f"- {split}: " + ", ".join(f"{n} {why.replace('_', ' ')}" for why, n in reasons.items() if n)
        for split, reasons in dropped.items()
        if any(reasons.values())
    ]
    early = ", stopped early" if metrics.get("stopped_early") else ""
    backend = ""
    if versions := metrics.get("keras_versions"):
        backend = (
            f"\nTrained with Keras {versions['keras']} (KerasHub {versions['keras_hub']}, TensorFlow "
            f"{versions['tensorflow']}, `model.fit`); the weights were converted to this PyTorch layout and "
            f"match the Keras model's logits to {metrics['keras_parity_max_abs_diff']:.2g}. "
            f"`bertsent export --format keras|tf-savedmodel` gives the Keras/TensorFlow forms back."
        )
    settings = "\n".join(f"| `{k}` | `{v}` |" for k, v in asdict(args).items())
    text = f"""---
library_name: transformers
pipeline_tag: text-classification
base_model: {metrics.get("base_model", args.model or "sentence-transformers/all-MiniLM-L6-v2")}
tags: [bertsent, sentiment-analysis]
---

# Sentiment classifier fine-tuned with bertsent

Fine-tuned from `{args.model or "all-MiniLM-L6-v2 (embedded)"}` on `{data.source}`
({metrics.get("train_reviews")} training reviews, {metrics.get("validation_reviews")} validation reviews;
train label counts: {labels or "n/a"}). {metrics.get("num_parameters", 0):,} parameters.
Reviews are tokenized to {args.max_length} tokens (truncation: `{args.truncation}`).{backend}

## Metrics

Validation is the split used to pick the best checkpoint (step {metrics.get("best_step")});
test was never used for model selection.

| Metric | Validation | Test |
|---|---|---|
{chr(10).join(rows)}

Training: {metrics.get("steps")} optimizer steps, {metrics.get("train_seconds")} s
({metrics.get("train_reviews_per_second")} reviews/s){early}.
Curves: `training_curves.png`; test plots and the most confident mistakes: `eval-test/`.

## Data cleaning

{chr(10).join(dropped_lines) or "No rows were dropped."}

## Use

```python
from transformers import pipeline
classifier = pipeline("text-classification", model="{output_dir}")
classifier("A wonderful, moving film.", truncation=True)
```

or `bertsent predict --model {output_dir} "A wonderful, moving film."`.

## Settings

| Argument | Value |
|---|---|
{settings}

Written {datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")} by bertsent {bertsent.__version__}
(git {git_revision()}), torch {torch.__version__}, transformers {transformers.__version__},
on {platform.platform()} ({platform.processor() or platform.machine()}).
"""
    path = output_dir / "README.md"
    path.write_text(text)
    return path
