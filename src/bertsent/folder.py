"""The model folder contract: file names, what stages record in them and read back, and the model card.

Every stage writes a self-describing folder (``config.json``, weights, ``training_args.json``,
``metrics.json`` / ``compression.json``, ``README.md``); later stages read it here instead of asking again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bertsent.config import DEFAULT_ID2LABEL, DataConfig
from bertsent.errors import ModelError, first_line

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


def write_json_whole(path: Path, data) -> None:
    """Write ``data`` as JSON to a temporary file beside ``path``, then rename it over ``path``: readers (other
    processes checking the same folder) see the old file or the new one, and a kill mid-write leaves the
    last complete one."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(data, indent=2))
    os.replace(partial, path)


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


CARD_FILE = "README.md"
CARD_TASK = "text-classification"
CARD_TAGS = ("bertsent", "sentiment-analysis")


def write_card(
    output_dir: Path,
    *,
    title: str,
    summary: str,
    sections: Mapping[str, str],
    results: Mapping[str, Mapping[str, Any]] | None = None,
    dataset: str | None = None,
    base_model: str | None = None,
    library_name: str = "transformers",
    tags: Sequence[str] = (),
    versions: Mapping[str, str] | None = None,
    **card_data: Any,
) -> Path:
    """Write the folder's ``README.md``: Hub front matter, ``# title``, the summary, the sections, provenance.

    ``results`` maps a split to what was measured on it (metric key -> value, keys as in ``METRIC_ROWS``;
    other keys are ignored); with a ``dataset`` (the data source) they become the card's ``model-index``,
    so the Hub shows them. ``sections`` maps a heading to its Markdown body, in order (empty ones are left
    out). ``versions`` (package -> version) go in the closing provenance line; ``card_data`` passes further
    ``huggingface_hub.ModelCardData`` fields (``license``, ``datasets``, ``model_name``...).
    """
    from huggingface_hub import ModelCard, ModelCardData

    evals = eval_results(results or {}, dataset)
    model_name = card_data.pop("model_name", output_dir.name)
    data = ModelCardData(
        library_name=library_name,
        pipeline_tag=CARD_TASK,
        base_model=base_model,
        tags=[*CARD_TAGS, *tags],
        model_name=model_name if evals else None,
        eval_results=evals or None,
        **card_data,
    )
    body = "".join(f"## {heading}\n\n{text.strip()}\n\n" for heading, text in sections.items() if text.strip())
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n# {title}\n\n{summary.strip()}\n\n{body}{_provenance(versions)}\n")
    path = output_dir / CARD_FILE
    card.save(path)
    return path


def eval_results(results: Mapping[str, Mapping[str, Any]], dataset: str | None) -> list:
    """``huggingface_hub.EvalResult`` entries (task text-classification) for each split's known metrics."""
    from huggingface_hub import EvalResult

    if not dataset:
        return []
    local = Path(dataset).expanduser()
    dataset_type = (local.stem if local.is_file() else local.name) if local.exists() else dataset
    return [
        EvalResult(
            task_type=CARD_TASK,
            task_name="Sentiment classification",
            dataset_type=dataset_type,
            dataset_name=dataset,
            dataset_split=split,
            metric_type=key,
            metric_name=name,
            metric_value=float(measured[key]),
        )
        for split, measured in results.items()
        for key, name in METRIC_ROWS
        if _is_number(measured.get(key))
    ]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def metrics_by_split(metrics: Mapping[str, Any], splits: Sequence[str] = ("validation", "test")) -> dict[str, dict]:
    """``{split: {key: value}}`` from flat ``metrics.json`` entries named ``{split}_{key}``."""
    return {
        split: measured
        for split in splits
        if (measured := {key: metrics[f"{split}_{key}"] for key, _ in METRIC_ROWS if f"{split}_{key}" in metrics})
    }


def card_base_model(model_dir: Path) -> str | list[str] | None:
    """The ``base_model`` a folder's card names (None without a readable card): derived folders inherit it."""
    from huggingface_hub import ModelCard

    path = model_dir / CARD_FILE
    if not path.is_file():
        return None
    try:
        return ModelCard.load(path, ignore_metadata_errors=True).data.base_model
    except (ValueError, OSError):  # YAML errors are ValueErrors too
        return None


def set_card_section(output_dir: Path, heading: str, body: str) -> Path:
    """Put ``## heading`` + ``body`` in the folder's card: replacing that section where present, else appended."""
    import re

    from huggingface_hub import ModelCard, ModelCardData

    path = output_dir / CARD_FILE
    if path.is_file():
        card = ModelCard.load(path)
    else:
        data = ModelCardData(library_name="transformers", pipeline_tag=CARD_TASK, tags=list(CARD_TAGS))
        card = ModelCard(f"---\n{data.to_yaml()}\n---\n")
    section = f"## {heading}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(heading)}[ \t]*\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(card.text):
        card.text = pattern.sub(lambda _: section + "\n", card.text, count=1).rstrip("\n") + "\n"
    else:
        card.text = f"{card.text.rstrip()}\n\n{section}"
    card.save(path)
    return path


def _provenance(versions: Mapping[str, str] | None) -> str:
    import bertsent

    others = "".join(f", {name} {version}" for name, version in (versions or {}).items() if name != "bertsent")
    return (
        f"Written {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by bertsent {bertsent.__version__} "
        f"(git {git_revision()}){others}, on {platform.platform()} ({platform.processor() or platform.machine()})."
    )


def write_model_card(output_dir: Path, args, data, metrics: dict) -> Path:
    """The fine-tuning card: the data, the settings and the metrics (validation and test in ``model-index``)."""
    import torch
    import transformers

    rows = []
    for key, name in METRIC_ROWS:
        val, test = metrics.get(f"validation_{key}"), metrics.get(f"test_{key}")
        if val is not None or test is not None:
            rows.append(f"| {name} | {_fmt(val)} | {_fmt(test)} |")
    early = ", stopped early" if metrics.get("stopped_early") else ""
    settings = "\n".join(f"| `{k}` | `{v}` |" for k, v in asdict(args).items())
    sections = {
        "Metrics": f"""Validation is the split used to pick the best checkpoint (step {metrics.get("best_step")});
test was never used for model selection.

| Metric | Validation | Test |
|---|---|---|
{chr(10).join(rows)}

Training: {metrics.get("steps")} optimizer steps, {metrics.get("train_seconds")} s
({metrics.get("train_reviews_per_second")} reviews/s){early}.
Curves: `training_curves.png`; test plots and the most confident mistakes: `eval-test/`.""",
        "Data cleaning": _dropped_lines(metrics.get("data", {})),
        "Use": f"""```python
from transformers import pipeline
classifier = pipeline("text-classification", model="{output_dir}")
classifier("A wonderful, moving film.", truncation=True)
```

or `bertsent predict --model {output_dir} "A wonderful, moving film."`.""",
        "Settings": f"| Argument | Value |\n|---|---|\n{settings}",
    }
    return write_card(
        output_dir,
        title="Sentiment classifier fine-tuned with bertsent",
        summary=_training_summary(args, data, metrics),
        sections=sections,
        results=metrics_by_split(metrics),
        dataset=data.source,
        base_model=metrics.get("base_model", args.model or "sentence-transformers/all-MiniLM-L6-v2"),
        versions={"torch": torch.__version__, "transformers": transformers.__version__},
    )


def _training_summary(args, data, metrics: dict) -> str:
    report = metrics.get("data", {})
    labels = ", ".join(f"{k}: {v}" for k, v in sorted(report.get("label_counts", {}).get("train", {}).items()))
    backend = ""
    if versions := metrics.get("keras_versions"):
        backend = (
            f"\nTrained with Keras {versions['keras']} (KerasHub {versions['keras_hub']}, TensorFlow "
            f"{versions['tensorflow']}, `model.fit`); the weights were converted to this PyTorch layout and "
            f"match the Keras model's logits to {metrics['keras_parity_max_abs_diff']:.2g}. "
            f"`bertsent export --format keras|tf-savedmodel` gives the Keras/TensorFlow forms back."
        )
    return f"""Fine-tuned from `{args.model or "all-MiniLM-L6-v2 (embedded)"}` on `{data.source}`
({metrics.get("train_reviews")} training reviews, {metrics.get("validation_reviews")} validation reviews;
train label counts: {labels or "n/a"}). {metrics.get("num_parameters", 0):,} parameters.
Reviews are tokenized to {args.max_length} tokens (truncation: `{args.truncation}`).{backend}"""


def _dropped_lines(report: dict) -> str:
    lines = [
        f"- {split}: " + ", ".join(f"{n} {why.replace('_', ' ')}" for why, n in reasons.items() if n)
        for split, reasons in report.get("dropped", {}).items()
        if any(reasons.values())
    ]
    return "\n".join(lines) or "No rows were dropped."


def recorded_early_exit(folder: str | Path) -> dict | None:
    """The folder's ``config.json`` record of early exit (``bertsent_early_exit``), unchecked; None without one
    (read without PyTorch: the ONNX and OpenVINO routes ask it too)."""
    path = Path(folder) / "config.json"
    try:
        record = json.loads(path.read_text()).get(EARLY_EXIT_KEY)
    except (OSError, ValueError, AttributeError):  # no readable config: the loader says why, not this probe
        return None
    return record if record else None


def inference_settings(model_dir: Path, tokenizer) -> tuple[int, str]:
    """Max length and truncation the model was trained with (from ``training_args.json``)."""
    if (model_dir / ARGS_FILE).is_file():
        training = read_training_args(model_dir).get("training", {})
        return int(training.get("max_length", 256)), training.get("truncation", "head")
    return min(int(tokenizer.model_max_length), 512), "head"


COMPRESSION_FILE = "compression.json"
EMBEDDINGS_INT8 = "embeddings-int8"
"""The :func:`lineage` entry of a quantization that also stored the embedding tables in INT8."""


def lineage(folder: Path) -> list[str]:
    """The compression methods that made ``folder``, its own first: each folder's ``compression.json``
    names its method and ``source``, back to a folder without one (the teacher) or a distilled student (its
    record names a teacher, not a source). Embedding tables stored in INT8 add :data:`EMBEDDINGS_INT8`."""
    methods: list[str] = []
    seen: set[Path] = set()
    while folder not in seen and (path := folder / COMPRESSION_FILE).is_file():
        seen.add(folder)
        record = json.loads(path.read_text())
        methods.append(record["method"])
        if record.get("settings", {}).get("quantize_embeddings"):
            methods.append(EMBEDDINGS_INT8)
        if not record.get("source"):
            break
        folder = Path(record["source"])
    return methods


METRICS_FILE = "metrics.json"


ARGS_FILE = "training_args.json"


def read_training_args(model_dir: Path) -> dict:
    """The folder's ``training_args.json`` (``{"training": ..., "data": ...}``); ``{}`` when it has none."""
    path = Path(model_dir) / ARGS_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:  # JSON errors are ValueErrors
        raise ModelError(f"cannot read {path}: {first_line(e)}") from e


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
    """Labels as transformers reads them (``LABEL_i`` defaults when config.json names none). A config.json
    that names them is read as JSON, without importing transformers (the ONNX and OpenVINO routes need it)."""
    if not (model_dir / "config.json").is_file():
        raise ModelError(f"{model_dir}: not a model folder (no config.json)")
    with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
        named = json.loads((model_dir / "config.json").read_text()).get("id2label")
        if isinstance(named, dict) and named:
            return {int(k): str(v) for k, v in named.items()}
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    except (OSError, ValueError) as e:  # JSON errors are ValueErrors
        raise ModelError(f"cannot read {model_dir / 'config.json'}: {first_line(e)}") from e
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
    _drop_early_exit(target / "config.json")
    return copied


def _drop_early_exit(config_file: Path) -> None:
    # The exit heads are never copied (a copy is of the full-depth model), so neither is their record.
    if not config_file.is_file():
        return
    config = json.loads(config_file.read_text())
    if config.pop(EARLY_EXIT_KEY, None) is not None:
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def clear_weights(output_dir: Path) -> None:
    """Remove weights of an earlier run: a stale model.onnx would make Predictor pick the wrong model."""
    # A precision verdict was measured on the old model: it goes with the weights.
    stale = (ONNX_FILE, f"{ONNX_FILE}.data", OPENVINO_XML, OPENVINO_BIN, PRECISION_CHECK_FILE, EARLY_EXIT_FILE)
    for pattern in (*stale, *WEIGHT_PATTERNS):
        for path in output_dir.glob(pattern):
            path.unlink()


def model_folder(model_dir: str | os.PathLike) -> Path:
    """``model_dir`` (``~`` expanded) when it is a folder with a config.json, else a one-line ModelError."""
    path = Path(model_dir).expanduser()
    if not path.is_dir():
        raise ModelError(f"{path}: no such model folder")
    if not (path / "config.json").is_file():
        raise ModelError(f"{path}: not a model folder (no config.json)")
    return path


def check_source(model_dir: str | os.PathLike) -> Path:
    """The source folder, or a one-line error when it cannot be exported/quantized."""
    path = model_folder(model_dir)
    try:
        config = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise ModelError(f"{path / 'config.json'}: invalid JSON ({e.msg})") from e
    if not any(path.glob("model*.safetensors")):
        if (path / ONNX_FILE).is_file():
            raise ModelError(f"{path}: is already an ONNX export (no PyTorch weights); pass the PyTorch folder")
        if (path / OPENVINO_XML).is_file():
            raise ModelError(f"{path}: is already an OpenVINO export (no PyTorch weights); pass the PyTorch folder")
        raise ModelError(f"{path}: has no model.safetensors weights")
    if config.get("bertsent_quantization"):
        raise ModelError(
            f"{path}: is already quantized ({config['bertsent_quantization']}); pass its fp32 source folder"
        )
    return path


def source_and_output(
    model_dir: str | os.PathLike, output_dir: str | os.PathLike, error: type[Exception]
) -> tuple[Path, Path]:
    """The checked source folder (:func:`check_source`) and the output folder, which must be another one
    (``error``: the stage's own error type)."""
    source = check_source(model_dir)
    output = Path(output_dir)
    if output.resolve() == source.resolve():
        raise error(f"--output-dir {output} is the source folder; choose another folder")
    return source, output


VALIDATION_KEYS = ("accuracy", "f1", "f1_macro", "log_loss")
"""Validation metrics a compression stage's ``metrics.json`` carries flat, for each measured stage."""


def stage_metrics(parameters: Mapping[str, int], validation: Mapping[str, Any], stages: Sequence[str]) -> dict:
    """The flat ``metrics.json`` entries every compression stage shares: parameters before and after, and
    the validation metrics of each of ``stages`` (keys of ``validation``; ``after`` gets no suffix,
    ``before`` gives ``validation_accuracy_before``, and so on)."""
    metrics: dict = {
        "num_parameters": parameters["after"],
        "num_parameters_before": parameters["before"],
        "parameter_reduction": 1 - parameters["after"] / parameters["before"],
        "validation_reviews": validation["reviews"],
    }
    for stage in stages:
        suffix = "" if stage == "after" else f"_{stage}"
        for key in VALIDATION_KEYS:
            if stage in validation and key in validation[stage]:
                metrics[f"validation_{key}{suffix}"] = validation[stage][key]
    return metrics


def weight_files(model_dir: Path) -> list[Path]:
    """A folder's weight files: ``model*.safetensors`` (and early exit's heads), ``model.onnx`` with its
    external data, and an OpenVINO IR (``openvino_model.xml`` + ``.bin``)."""
    patterns = (
        "model*.safetensors",
        EARLY_EXIT_FILE,
        ONNX_FILE,
        f"{ONNX_FILE}.data",
        f"{ONNX_FILE}_data",
        OPENVINO_XML,
        OPENVINO_BIN,
    )
    return sorted({p for pattern in patterns for p in Path(model_dir).glob(pattern) if p.is_file()})


def weights_bytes(model_dir: Path) -> int:
    """Size on disk of a folder's weights (safetensors or ONNX)."""
    return sum(p.stat().st_size for p in weight_files(model_dir))


SPLIT_FIELDS = ("validation_size", "validation_samples", "test_size", "seed")
"""Data settings that decide which rows form the validation split: reused from training."""


def data_config_for(model_dir: Path, data: DataConfig) -> DataConfig:
    """Align ``data`` with the model: its labels, and the split settings it was trained with."""

    config = json.loads((model_dir / "config.json").read_text())
    id2label = {int(k): v for k, v in config.get("id2label", {}).items()}
    changes: dict = {}
    if id2label and id2label != DEFAULT_ID2LABEL and data.labels is None:
        changes["labels"] = [id2label[i] for i in range(len(id2label))]
    trained = read_training_args(model_dir).get("data", {})
    if trained and Path(str(trained.get("source", ""))).resolve() == Path(data.source).resolve():
        changes |= {k: trained[k] for k in SPLIT_FIELDS if k in trained}
    return dataclasses.replace(data, **changes) if changes else data


ONNX_FILE = "model.onnx"


OPENVINO_XML = "openvino_model.xml"
"""An OpenVINO IR folder's graph (``bertsent export --format openvino``); its weights are the ``.bin``."""
OPENVINO_BIN = "openvino_model.bin"


PRECISION_CHECK_FILE = "precision_check.json"
"""Verdicts of ``precision="auto"``'s check of a reduced precision against fp32, one per machine."""


WEIGHTS_FILE = "model.safetensors"


EARLY_EXIT_FILE = "early_exit.safetensors"
"""``bertsent early-exit``'s per-layer exit heads, beside the untouched model weights (which the pipeline loads)."""
EARLY_EXIT_KEY = "bertsent_early_exit"
"""Key of config.json recording an early-exit folder's rule (criterion, threshold) and heads file."""


CALIBRATION_PLOT = "reliability_calibration.png"
"""``bertsent calibrate``'s reliability diagram, before and after temperature scaling."""


INPUT_NAMES = ("input_ids", "attention_mask")


OUTPUT_NAME = "logits"
