"""How far a calibration map that folds into the weights can take a model's ECE: none, temperature
scaling (bertsent's, fitted on validation by NLL), and Platt scaling of the logit margin (scale and bias),
each scored on the test reviews, beside the lowest test ECE any single temperature reaches (an
oracle fitted on the test labels, a bound rather than a method) and the ECE a perfectly calibrated
model would show at that sample size (labels drawn from the temperature-scaled probabilities: ECE's
own sampling floor). The reliability bins of the temperature-scaled model show where the gap lies.

The baseline is the uncalibrated model, measured in the same run. Scoring 25,000 test reviews takes
about 12 minutes on 2 cores; ``--logits FILE`` keeps the logits so a rerun reads them back.

    python benchmarks/calibration_methods.py --model ~/.cache/bertsent/reproduce/teacher \
        --data ../shared/data/imdb --validation-samples 2000 --logits ~/.cache/bertsent/teacher_logits.npz
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from _machine import machine_info, set_threads
from scipy.optimize import minimize
from scipy.special import expit, softmax

from bertsent.calibration import fit_temperature
from bertsent.config import DataConfig, InferenceSettings
from bertsent.metrics import _ece_from_curve, _reliability_bins


def folder_logits(args) -> dict[str, np.ndarray]:
    """Validation and test logits of the folder as saved (fp32 PyTorch), and the labels."""
    from bertsent.data.loading import load_data
    from bertsent.inference import run
    from bertsent.predict import Predictor

    splits = load_data(DataConfig(source=args.data, validation_samples=args.validation_samples))
    predictor = Predictor(args.model, InferenceSettings(batch_size=64, precision="fp32"), backend="torch")
    out = {}
    for name, frame in (("validation", splits.validation), ("test", splits.test)):
        out[name] = run(predictor.backend, predictor.encode(frame["text"].tolist()), 64, predictor.pad_id)
        out[f"{name}_labels"] = frame["label"].to_numpy()
    return out


def ece(probs: np.ndarray, labels: np.ndarray) -> float:
    return _ece_from_curve(_reliability_bins(labels, probs, 15), len(labels))


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0))))


def platt(margin_val: np.ndarray, labels_val: np.ndarray, start: float) -> tuple[float, float]:
    """(a, b) of p = sigmoid(a * margin + b) minimising validation NLL."""

    def loss(ab):
        q = np.clip(expit(ab[0] * margin_val + ab[1]), 1e-12, 1 - 1e-12)
        return -np.mean(labels_val * np.log(q) + (1 - labels_val) * np.log(1 - q))

    a, b = minimize(loss, [start, 0.0]).x
    return float(a), float(b)


def best_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature (grid 0.50..3.00, step 0.01) with the lowest ECE on these very rows."""
    grid = np.round(np.arange(0.5, 3.0001, 0.01), 2)
    return float(grid[np.argmin([ece(softmax(logits / t, axis=1), labels) for t in grid])])


def sampling_floor(probs: np.ndarray, n: int, rng, repeats: int = 20) -> float:
    """Mean ECE of ``n`` rows whose labels are drawn from ``probs`` itself (calibrated by construction)."""
    values = []
    for _ in range(repeats):
        idx = rng.choice(len(probs), n)
        drawn = (rng.random(n) < probs[idx, 1]).astype(int)
        values.append(ece(probs[idx], drawn))
    return float(np.mean(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a 2-class model folder")
    parser.add_argument("--data", default="../shared/data/imdb")
    parser.add_argument("--validation-samples", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--logits", type=Path, help="cache of the folder's logits (.npz), written on first use")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    machine = machine_info()
    set_threads(args.threads)
    print(f"machine : {machine['cpu']}, {machine['cpu_count']} CPUs, load {machine['load_average']}")
    cache = args.logits.expanduser() if args.logits else None
    if cache and cache.is_file():
        d = dict(np.load(cache))
        print(f"logits  : read back from {cache}")
    else:
        d = folder_logits(args)
        if cache:
            np.savez(cache, **d)
    # A calibrated folder records the temperature folded into it: undo it to start from the raw logits.
    config = json.loads((Path(args.model).expanduser() / "config.json").read_text())
    folded = config.get("bertsent_calibration", {}).get("temperature", 1.0)
    zv, yv = d["validation"] * folded, d["validation_labels"]
    zt, yt = d["test"] * folded, d["test_labels"]
    t = fit_temperature(zv, yv)
    a, b = platt(zv[:, 1] - zv[:, 0], yv, 1 / t)
    p_platt = expit(a * (zt[:, 1] - zt[:, 0]) + b)
    t_oracle = best_temperature(zt, yt)
    rows = {
        "none (baseline)": softmax(zt, axis=1),
        f"temperature T={t:.4f}": softmax(zt / t, axis=1),
        f"Platt a={a:.4f} b={b:+.4f}": np.stack([1 - p_platt, p_platt], axis=1),
        # Not a method (it is fitted on the test labels): the lowest test ECE any single temperature
        # reaches, so a goal below it cannot be met by folding one temperature into the weights.
        f"oracle T={t_oracle:.2f} (fit on test)": softmax(zt / t_oracle, axis=1),
    }
    print(f"fitted on {len(yv)} validation reviews, scored on {len(yt)} test reviews (ECE: 15 equal-width bins)")
    result = {"machine": machine, "validation_n": len(yv), "test_n": len(yt), "rows": {}}
    for name, probs in rows.items():
        result["rows"][name] = {"test_ece": ece(probs, yt), "test_log_loss": nll(probs, yt)}
        print(f"{name:>28}: test ECE {ece(probs, yt):.4f}, log-loss {nll(probs, yt):.4f}")
    scaled = rows[f"temperature T={t:.4f}"]
    print("reliability of the temperature-scaled model on test (bins with >= 1% of the rows):")
    for b in _reliability_bins(yt, scaled, 15):
        share = b["count"] / len(yt) * abs(b["accuracy"] - b["confidence"])
        if b["count"] >= len(yt) / 100:
            print(
                f"  ({b['lower']:.3f}, {b['upper']:.3f}]: n={b['count']:>6.0f}  confidence {b['confidence']:.3f}"
                f"  accuracy {b['accuracy']:.3f}  ECE share {share:.4f}"
            )
    result["temperature_bins"] = _reliability_bins(yt, scaled, 15)
    rng = np.random.default_rng(0)
    for n in (len(yv), len(yt)):
        floor = sampling_floor(rows[f"temperature T={t:.4f}"], n, rng)
        result[f"ece_floor_{n}"] = floor
        print(f"ECE of a perfectly calibrated model at n={n}: {floor:.4f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
