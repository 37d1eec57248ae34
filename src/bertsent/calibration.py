"""Temperature scaling (Guo et al., 2017), folded into the classifier's last linear layer.

One temperature ``T`` is fitted on the validation split by minimising the negative log-likelihood of
``softmax(logits / T)``. Dividing the last linear layer's weight and bias by ``T`` gives exactly those
logits, so every consumer of the folder (``transformers.pipeline``, the ONNX and OpenVINO exports,
the Keras exports, the server) returns calibrated scores with no code of its own. ``T > 0`` rescales
every row's logits by the same factor, so the argmax, hence every label, is unchanged.

``calibrate`` is the stage for a model folder (``bertsent calibrate``); ``train --calibrate`` fits and
folds in memory before the test split is scored (:class:`InMemoryCalibration`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from bertsent.config import CalibrateConfig, InferenceSettings
from bertsent.errors import DataError, ModelError
from bertsent.evaluate import write_limitations
from bertsent.folder import (
    CALIBRATION_PLOT,
    METRICS_FILE,
    ONNX_FILE,
    OPENVINO_BIN,
    OPENVINO_XML,
    PRECISION_CHECK_FILE,
    check_source,
    read_training_args,
    set_card_section,
)

log = logging.getLogger(__name__)

TEMPERATURE_BOUNDS = (0.05, 20.0)
"""The search range for T: far wider than fine-tuned BERTs need (about 1-3) yet bounded, so one-class
validation data cannot send T to infinity."""

CONFIG_KEY = "bertsent_calibration"
"""Where ``config.json`` records the temperature folded into the weights (a second calibration multiplies it)."""

PARITY_ROWS = 16
"""Validation reviews scored again from the written folder: its probabilities must be softmax(logits / T)."""


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T in :data:`TEMPERATURE_BOUNDS` that minimises the NLL of ``softmax(logits / T)`` on ``labels``."""
    from scipy.optimize import minimize_scalar
    from scipy.special import logsumexp

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if len(y) == 0:
        raise DataError("calibration needs at least one validation review")

    def nll(log_t: float) -> float:
        scaled = z / math.exp(log_t)
        return float(np.mean(logsumexp(scaled, axis=1) - scaled[np.arange(len(y)), y]))

    # The NLL is convex in 1/T; a bounded scalar search over log T is exact enough (xatol 1e-6 on log T).
    low, high = (math.log(b) for b in TEMPERATURE_BOUNDS)
    found = minimize_scalar(nll, bounds=(low, high), method="bounded", options={"xatol": 1e-6})
    return float(math.exp(found.x))


def scaled_probs(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``softmax(logits / temperature)`` in float64 (what the folded folder returns, to float rounding)."""
    from scipy.special import softmax

    return softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)


def split_report(logits: np.ndarray, labels: np.ndarray, temperature: float) -> dict[str, float]:
    """ECE and log-loss of one split before and after scaling, and the accuracy (the same for both)."""
    from sklearn.metrics import log_loss

    from bertsent.metrics import expected_calibration_error

    y = np.asarray(labels, dtype=np.int64)
    classes = list(range(logits.shape[1]))
    before, after = scaled_probs(logits), scaled_probs(logits, temperature)
    return {
        "n": len(y),
        "accuracy": float((before.argmax(axis=1) == y).mean()),
        "labels_unchanged": bool((before.argmax(axis=1) == after.argmax(axis=1)).all()),
        "ece_before": expected_calibration_error(y, before),
        "ece_after": expected_calibration_error(y, after),
        "log_loss_before": float(log_loss(y, before, labels=classes)),
        "log_loss_after": float(log_loss(y, after, labels=classes)),
    }


def classifier_keys(state: Mapping[str, object], num_labels: int) -> tuple[str, str | None]:
    """The weight (and bias, if any) names of the last linear layer: the one 2-D ``*.weight`` with
    ``num_labels`` rows (named ``classifier`` when several have that shape), or a ModelError."""
    candidates = [k for k, v in state.items() if k.endswith(".weight") and tuple(v.shape)[:1] == (num_labels,)]
    candidates = [k for k in candidates if len(state[k].shape) == 2]
    if len(candidates) > 1:
        candidates = [k for k in candidates if "classifier" in k]
    if len(candidates) != 1:
        raise ModelError(
            f"cannot tell the classifier layer among {candidates or 'no'} {num_labels}-row weights; "
            "calibration folds T into exactly one linear layer"
        )
    bias = candidates[0].removesuffix("weight") + "bias"
    return candidates[0], bias if bias in state else None


def fold_temperature(state: Mapping[str, object], num_labels: int, temperature: float) -> str:
    """Divide the classifier's weight and bias in ``state`` (torch tensors, in place) by ``temperature``.

    A model's ``state_dict()`` shares storage with its parameters, so this rescales the model itself.
    Returns the weight's name.
    """
    import torch

    weight, bias = classifier_keys(state, num_labels)
    with torch.no_grad():
        for key in (weight, bias):
            if key is not None:
                state[key].div_(temperature)
    return weight


@dataclasses.dataclass
class InMemoryCalibration:
    """``train --calibrate``: T fitted on validation and folded into the model in memory, and the splits'
    reports as they are scored. ``logits`` are the ones *before* scaling."""

    record: dict
    labels: dict = dataclasses.field(default_factory=dict)
    logits: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def fit(cls, model, logits: np.ndarray, labels: np.ndarray) -> InMemoryCalibration:
        temperature = fit_temperature(logits, labels)
        fold_temperature(model.state_dict(), model.config.num_labels, temperature)
        setattr(model.config, CONFIG_KEY, {"temperature": temperature})  # saved in config.json
        fitted_on = f"{len(labels)} validation reviews (train --calibrate)"
        calibration = cls({"temperature": temperature, "total_temperature": temperature, "fitted_on": fitted_on})
        calibration.add("validation", logits, labels)
        return calibration

    def add(self, split: str, logits: np.ndarray, labels: np.ndarray) -> None:
        self.record[split] = split_report(logits, labels, self.record["temperature"])
        self.labels[split], self.logits[split] = labels, logits

    def write(self, output_dir: Path) -> None:
        record_calibration(output_dir, self.record, self.labels, self.logits)


# --------------------------------------------------------------------------------------------------
# The stage: a model folder in, the calibrated folder out
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class CalibrationResult:
    output_dir: Path
    record: dict


def calibrate(config: CalibrateConfig) -> CalibrationResult:
    """Fit T on the folder's validation reviews, fold it into a copy of the folder (or the folder itself),
    check the written folder returns softmax(logits / T), and record T and ECE/log-loss before and after
    (validation, and test unless ``evaluate_test`` is off) in ``metrics.json``, the card and a plot."""
    source = check_source(config.model)
    from bertsent.modeling.early_exit import recorded_early_exit

    if recorded_early_exit(source) is not None:
        # Its exit heads give their own logits, which one temperature on the last classifier would not scale.
        raise ModelError(f"{source}: is an early-exit folder: calibrate its source model, then run early-exit")
    output = Path(config.output_dir) if config.output_dir else source
    splits, origin = _reviews(source, config)
    predictor = _predictor(source, config)
    logits = {name: _logits(predictor, frame["text"].tolist()) for name, frame in _scored(splits)}
    labels = {name: frame["label"].to_numpy() for name, frame in _scored(splits)}
    temperature = fit_temperature(logits["validation"], labels["validation"])
    record = {
        "temperature": temperature,
        "fitted_on": f"{len(labels['validation'])} validation reviews of {splits.report['source']} ({origin})",
        **{name: split_report(logits[name], labels[name], temperature) for name in logits},
    }
    record["total_temperature"] = _write_folder(source, output, temperature)
    _check_written(output, splits.validation["text"].tolist()[:PARITY_ROWS], logits["validation"], temperature)
    record_calibration(output, record, labels, logits)
    write_limitations(output)  # the card's limitations quote the calibration
    return CalibrationResult(output_dir=output, record=record)


def _reviews(source: Path, config: CalibrateConfig):
    """The validation (and test, as many as the folder scored) reviews: ``config.data``, else those recorded
    in the folder; a DataError when there are none."""
    from bertsent.data.recorded import recorded_reviews
    from bertsent.folder import read_id2label

    recorded = read_training_args(source).get("data", {})
    splits, reason = recorded_reviews(
        source,
        read_id2label(source),
        config.data,
        validation_samples=10**9,  # no cap of calibrate's own: the data's validation_samples decides
        eval_samples=config.data.eval_samples if config.data else recorded.get("eval_samples"),
        splits=("validation", "test") if config.evaluate_test else ("validation",),
    )
    if splits is None:
        raise DataError(f"calibration needs labelled validation reviews: {reason}; pass --data")
    return splits, splits.report["origin"]


def _scored(splits):
    yield "validation", splits.validation
    if splits.test is not None and len(splits.test):
        yield "test", splits.test


def _predictor(folder: Path, config: CalibrateConfig):
    from bertsent.predict import Predictor

    # fp32 PyTorch: T is fitted on the logits the folder itself gives, not on a reduced-precision copy.
    settings = InferenceSettings(batch_size=config.batch_size, threads=config.threads, precision="fp32")
    return Predictor(folder, settings, backend="torch")


def _logits(predictor, texts: list[str]) -> np.ndarray:
    from bertsent.inference import run

    return run(predictor.backend, predictor.encode(texts), predictor.batch_size, predictor.pad_id, progress=None)


def _write_folder(source: Path, output: Path, temperature: float) -> float:
    """Weights with T folded in, at ``output`` (a copy of ``source`` unless it is ``source``); returns the
    temperature now folded in altogether (a folder calibrated before already holds one)."""
    from safetensors.torch import load_file, save_file

    weights = sorted(source.glob("model*.safetensors"))
    if len(weights) != 1:
        raise ModelError(f"{source}: calibration reads one model.safetensors, found {[p.name for p in weights]}")
    if output.resolve() != source.resolve():
        output.mkdir(parents=True, exist_ok=True)
        shutil.copytree(source, output, dirs_exist_ok=True, ignore=shutil.ignore_patterns("checkpoints"))
    config = json.loads((source / "config.json").read_text())
    state = load_file(weights[0])
    fold_temperature(state, len(config.get("id2label", {})) or 2, temperature)
    save_file(state, output / weights[0].name, metadata={"format": "pt"})
    total = temperature * float(config.get(CONFIG_KEY, {}).get("temperature", 1.0))
    config[CONFIG_KEY] = {"temperature": total}
    (output / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    _drop_stale(output)
    return total


def _drop_stale(output: Path) -> None:
    """Exports and the precision verdict in the folder were made from the uncalibrated weights."""
    for name in (ONNX_FILE, f"{ONNX_FILE}.data", OPENVINO_XML, OPENVINO_BIN, PRECISION_CHECK_FILE):
        if (output / name).is_file():
            log.warning("%s: removed %s (made from the weights before calibration; export again)", output, name)
            (output / name).unlink()


def _check_written(output: Path, texts: list[str], logits: np.ndarray, temperature: float) -> None:
    """The folder as written must return softmax(logits / T): the fold is not done until it does."""
    from bertsent.predict import Predictor

    got = Predictor(output, precision="fp32", backend="torch").predict_proba(texts)
    expected = scaled_probs(logits[: len(texts)], temperature)
    gap = float(np.abs(got - expected).max()) if len(texts) else 0.0
    if gap > 1e-4:
        raise RuntimeError(f"{output}: calibrated folder's probabilities differ from softmax(logits/T) by {gap:.2g}")


def record_calibration(
    output: Path, record: dict, labels: Mapping[str, np.ndarray], logits: Mapping[str, np.ndarray]
) -> None:
    """Write what calibration did: ``metrics.json`` gets the record and the after-values as the folder's
    ECE/log-loss, the card a section, and the last split's reliability before/after a plot; then log it.

    ``labels``/``logits`` map a split to its labels and its logits *before* scaling.
    """
    last = "test" if "test" in logits else "validation"
    plot_calibration(labels[last], logits[last], record["temperature"], output / CALIBRATION_PLOT, last)
    path = output / METRICS_FILE
    metrics = json.loads(path.read_text()) if path.is_file() else {}
    metrics["calibration"] = record
    for split in ("validation", "test"):
        if split in record:
            metrics[f"{split}_ece"] = record[split]["ece_after"]
            metrics[f"{split}_log_loss"] = record[split]["log_loss_after"]
    path.write_text(json.dumps(metrics, indent=2))
    set_card_section(output, "Calibration", calibration_section(record))
    log.info(_summary(record))


def calibration_section(record: dict) -> str:
    """The model card's calibration section: T, where it was fitted, and ECE/log-loss before and after."""
    return (
        f"Scores are temperature-scaled (Guo et al., 2017): T = {record['temperature']:.4f}, fitted on "
        f"{record['fitted_on']}, is folded into the classifier's last linear layer, so every loader of this "
        "folder returns the calibrated scores. Labels are unchanged.\n\n"
        + calibration_table(record)
        + f"\n\nReliability before and after: `{CALIBRATION_PLOT}`."
    )


def calibration_table(record: dict) -> str:
    """ECE and log-loss before and after scaling, a Markdown row per split that was scored."""
    rows = [
        f"| {split} ({r['n']} reviews) | {r['ece_before']:.4f} | {r['ece_after']:.4f} | "
        f"{r['log_loss_before']:.4f} | {r['log_loss_after']:.4f} |"
        for split in ("validation", "test")
        if (r := record.get(split))
    ]
    header = "| Split | ECE before | ECE after | Log-loss before | Log-loss after |\n|---|---|---|---|---|\n"
    return header + "\n".join(rows)


def _summary(record: dict) -> str:
    parts = [f"temperature {record['temperature']:.4f}"]
    for split in ("validation", "test"):
        if r := record.get(split):
            parts.append(
                f"{split} ECE {r['ece_before']:.4f} -> {r['ece_after']:.4f}, "
                f"log-loss {r['log_loss_before']:.4f} -> {r['log_loss_after']:.4f}"
            )
    return "calibrated: " + "; ".join(parts)


def plot_calibration(labels: np.ndarray, logits: np.ndarray, temperature: float, path: Path, split: str) -> Path:
    """The reliability diagram of ``split`` before and after scaling, side by side."""
    from bertsent.metrics import plot_reliability_pair

    return plot_reliability_pair(
        labels, scaled_probs(logits), scaled_probs(logits, temperature), path, f"{split}, T = {temperature:.3f}"
    )
