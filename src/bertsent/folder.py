"""The model folder contract: file names, what stages record in them and read back, and the model card.

Every stage writes a self-describing folder (``config.json``, weights, ``training_args.json``,
``metrics.json`` / ``compression.json``, ``README.md``); later stages read it here instead of asking again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from bertsent.config import DEFAULT_ID2LABEL, DataConfig
from bertsent.errors import ModelError

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


def inference_settings(model_dir: Path, tokenizer) -> tuple[int, str]:
    """Max length and truncation the model was trained with (from ``training_args.json``)."""
    args_file = model_dir / "training_args.json"
    if args_file.is_file():
        training = json.loads(args_file.read_text()).get("training", {})
        return int(training.get("max_length", 256)), training.get("truncation", "head")
    return min(int(tokenizer.model_max_length), 512), "head"


COMPRESSION_FILE = "compression.json"


METRICS_FILE = "metrics.json"


ARGS_FILE = "training_args.json"


# What a model folder is made of besides its weights (tokenizer files of WordPiece, BPE and SentencePiece).
TOKENIZER_PATTERNS = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "*.model",
)


WEIGHT_PATTERNS = ("model.safetensors", "model-*.safetensors", "model.safetensors.index.json")


def read_id2label(model_dir: Path) -> dict[int, str]:
    """Labels as transformers reads them (``LABEL_i`` defaults when config.json names none)."""
    from transformers import AutoConfig

    if not (model_dir / "config.json").is_file():
        raise ModelError(f"{model_dir}: not a model folder (no config.json)")
    try:
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    except (OSError, ValueError) as e:  # JSON errors are ValueErrors
        raise ModelError(f"cannot read {model_dir / 'config.json'}: {str(e).splitlines()[0]}") from e
    return {int(k): str(v) for k, v in config.id2label.items()}


def copy_model_files(source: Path, target: Path, weights: bool = False) -> list[str]:
    """Copy config, tokenizer files and ``training_args.json`` (and the safetensors weights if asked)."""
    target.mkdir(parents=True, exist_ok=True)
    patterns = ("config.json", ARGS_FILE, *TOKENIZER_PATTERNS, *(WEIGHT_PATTERNS if weights else ()))
    copied = []
    for pattern in patterns:
        for path in sorted(source.glob(pattern)):
            if path.is_file():
                shutil.copy2(path, target / path.name)
                copied.append(path.name)
    return copied


def clear_weights(output_dir: Path) -> None:
    """Remove weights of an earlier run: a stale model.onnx would make Predictor pick the wrong model."""
    for pattern in (ONNX_FILE, f"{ONNX_FILE}.data", *WEIGHT_PATTERNS):
        for path in output_dir.glob(pattern):
            path.unlink()


def check_source(model_dir: str | os.PathLike) -> Path:
    """The source folder, or a one-line error when it cannot be exported/quantized."""
    path = Path(model_dir).expanduser()
    if not path.is_dir():
        raise ModelError(f"{path}: no such model folder")
    if not (path / "config.json").is_file():
        raise ModelError(f"{path}: not a model folder (no config.json)")
    try:
        config = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise ModelError(f"{path / 'config.json'}: invalid JSON ({e.msg})") from e
    if not any(path.glob("model*.safetensors")):
        if (path / ONNX_FILE).is_file():
            raise ModelError(f"{path}: is already an ONNX export (no PyTorch weights); pass the PyTorch folder")
        raise ModelError(f"{path}: has no model.safetensors weights")
    if config.get("bertsent_quantization"):
        raise ModelError(
            f"{path}: is already quantized ({config['bertsent_quantization']}); pass its fp32 source folder"
        )
    return path


def weights_bytes(model_dir: Path) -> int:
    """Size on disk of a folder's weights (safetensors or ONNX)."""
    return sum(p.stat().st_size for p in model_dir.glob("model*.safetensors")) + sum(
        p.stat().st_size for p in model_dir.glob("model.onnx*")
    )


SPLIT_FIELDS = ("validation_size", "validation_samples", "test_size", "seed")
"""Data settings that decide which rows form the validation split: reused from training."""


def data_config_for(model_dir: Path, data: DataConfig) -> DataConfig:
    """Align ``data`` with the model: its labels, and the split settings it was trained with."""

    config = json.loads((model_dir / "config.json").read_text())
    id2label = {int(k): v for k, v in config.get("id2label", {}).items()}
    changes: dict = {}
    if id2label and id2label != DEFAULT_ID2LABEL and data.labels is None:
        changes["labels"] = [id2label[i] for i in range(len(id2label))]
    args_file = model_dir / "training_args.json"
    if args_file.is_file():
        trained = json.loads(args_file.read_text()).get("data", {})
        if Path(str(trained.get("source", ""))).resolve() == Path(data.source).resolve():
            changes |= {k: trained[k] for k in SPLIT_FIELDS if k in trained}
    return dataclasses.replace(data, **changes) if changes else data


ONNX_FILE = "model.onnx"


WEIGHTS_FILE = "model.safetensors"


INPUT_NAMES = ("input_ids", "attention_mask")


OUTPUT_NAME = "logits"
