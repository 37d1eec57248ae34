"""Tests for bertsent.metrics: numbers checked against sklearn or by hand, files checked on disk."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from bertsent.metrics import (
    classification_metrics,
    confusion,
    expected_calibration_error,
    length_buckets,
    most_confident_errors,
    plot_confusion_matrix,
    plot_reliability,
    plot_training_curves,
    reliability_curve,
    write_report,
)

BINARY = {0: "negative", 1: "positive"}
TERNARY = {0: "neg", 1: "neu", 2: "pos"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def random_case(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and Dirichlet probabilities that are informative but imperfect (every class present)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % k
    rng.shuffle(labels)
    alpha = np.ones((n, k))
    alpha[np.arange(n), labels] += 1.5
    return labels, np.vstack([rng.dirichlet(a) for a in alpha])


def is_png(path) -> bool:
    return path.exists() and path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 1000


# ---------------------------------------------------------------- classification_metrics


def test_binary_metrics_match_sklearn():
    labels, probs = random_case(200, 2, seed=0)
    preds = probs.argmax(1)
    m = classification_metrics(labels, probs, BINARY)

    assert m["n"] == 200
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(labels, preds))
    assert m["f1"] == pytest.approx(skm.f1_score(labels, preds))  # sklearn default: pos_label=1
    assert m["precision"] == pytest.approx(skm.precision_score(labels, preds))
    assert m["recall"] == pytest.approx(skm.recall_score(labels, preds))
    assert m["f1_macro"] == pytest.approx(skm.f1_score(labels, preds, average="macro"))
    assert m["precision_macro"] == pytest.approx(skm.precision_score(labels, preds, average="macro"))
    assert m["recall_macro"] == pytest.approx(skm.recall_score(labels, preds, average="macro"))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(labels, probs[:, 1]))
    assert m["log_loss"] == pytest.approx(skm.log_loss(labels, probs))
    per_class = skm.f1_score(labels, preds, average=None)
    assert m["f1_negative"] == pytest.approx(per_class[0])
    assert m["f1_positive"] == pytest.approx(per_class[1])
    assert m["f1"] == m["f1_positive"]
    assert m["ece"] == pytest.approx(expected_calibration_error(labels, probs))
    # The data is informative, so these are far from chance; guards against a silently flipped argmax.
    assert m["accuracy"] > 0.6 and m["roc_auc"] > 0.7


def test_multiclass_metrics_use_macro_and_match_sklearn():
    labels, probs = random_case(300, 3, seed=1)
    preds = probs.argmax(1)
    m = classification_metrics(labels, probs, TERNARY)

    assert m["f1"] == pytest.approx(skm.f1_score(labels, preds, average="macro"))
    assert m["precision"] == pytest.approx(skm.precision_score(labels, preds, average="macro"))
    assert m["recall"] == pytest.approx(skm.recall_score(labels, preds, average="macro"))
    assert m["f1"] == m["f1_macro"]
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(labels, probs, multi_class="ovr"))
    assert m["log_loss"] == pytest.approx(skm.log_loss(labels, probs))
    per_class = skm.f1_score(labels, preds, average=None)
    assert [m["f1_neg"], m["f1_neu"], m["f1_pos"]] == pytest.approx(list(per_class))
    assert set(m) == {
        "accuracy",
        "f1",
        "precision",
        "recall",
        "f1_macro",
        "precision_macro",
        "recall_macro",
        "roc_auc",
        "log_loss",
        "ece",
        "n",
        "f1_neg",
        "f1_neu",
        "f1_pos",
    }


def test_metrics_are_plain_json_values():
    labels, probs = random_case(50, 3, seed=2)
    m = classification_metrics(labels, probs.astype(np.float32), {"0": "a", "1": "b", "2": "c"})
    assert all(type(v) in (int, float) for v in m.values())
    assert type(m["n"]) is int and m["n"] == 50
    assert json.loads(json.dumps(m, allow_nan=False)) == m


def test_perfect_predictions():
    labels = np.array([0, 1, 1, 0, 1])
    probs = np.eye(2)[labels]
    m = classification_metrics(labels, probs, BINARY)
    assert m["accuracy"] == 1.0
    assert m["f1"] == m["precision"] == m["recall"] == m["f1_macro"] == 1.0
    assert m["roc_auc"] == 1.0
    assert m["ece"] == 0.0
    assert m["log_loss"] == pytest.approx(0.0, abs=1e-12)


def test_single_class_present_omits_roc_auc():
    labels = np.zeros(4, dtype=int)
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    m = classification_metrics(labels, probs, BINARY)
    assert "roc_auc" not in m
    assert m["accuracy"] == 0.75
    assert m["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.3, 0.6])))
    # Positive class never occurs in the labels and is predicted once (wrongly): all of its scores are 0.
    assert m["f1"] == m["precision"] == m["recall"] == 0.0
    assert m["f1_negative"] == pytest.approx(2 * 0.75 / 1.75)  # precision 1, recall 3/4
    assert m["f1_macro"] == pytest.approx((2 * 0.75 / 1.75 + 0.0) / 2)


def test_multiclass_with_missing_class_averages_roc_auc_over_present_classes():
    labels = np.array([0, 0, 2, 2])
    probs = np.array([[0.7, 0.2, 0.1], [0.3, 0.3, 0.4], [0.2, 0.2, 0.6], [0.5, 0.1, 0.4]])
    m = classification_metrics(labels, probs, TERNARY)
    # class 0 vs rest on probs[:,0]: positives .7,.3 vs negatives .2,.5 -> 3 of 4 pairs ordered = .75
    # class 2 vs rest on probs[:,2]: positives .6,.4 vs negatives .1,.4 -> (1 + 1 + 1 + .5) / 4 = .875
    assert m["roc_auc"] == pytest.approx((0.75 + 0.875) / 2)
    assert m["f1_neu"] == 0.0


@pytest.mark.parametrize(
    ("labels", "probs", "id2label", "match"),
    [
        (np.array([], dtype=int), np.zeros((0, 2)), BINARY, "empty"),
        (np.array([0, 1, 1]), np.full((2, 2), 0.5), BINARY, "2 rows but labels has 3"),
        (np.array([0, 1]), np.full(2, 0.5), BINARY, "2-D"),
        (np.array([0, 1]), np.array([[2.0, -1.0], [0.3, 0.7]]), BINARY, "negative"),
        (np.array([0, 1]), np.array([[2.0, 1.0], [0.3, 0.7]]), BINARY, "sum to 1"),
        (np.array([0, 1]), np.array([[np.nan, 1.0], [0.3, 0.7]]), BINARY, "NaN"),
        (np.array([0, 3]), np.full((2, 2), 0.5), BINARY, r"0\.\.1"),
        (np.array([0.0, 1.0]), np.full((2, 2), 0.5), BINARY, "integer"),
        (np.array([0, 1]), np.full((2, 2), 0.5), TERNARY, "exactly the ids 0..1"),
        (np.array([0, 1]), np.full((2, 2), 0.5), {0: "x", 1: "x"}, "unique"),
        (np.array([0, 1]), np.full((2, 2), 0.5), {0: "x", 1: "macro"}, "collides"),
    ],
)
def test_invalid_inputs_raise_clear_errors(labels, probs, id2label, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(labels, probs, id2label)


# ---------------------------------------------------------------- calibration


def test_ece_hand_computed():
    labels = np.array([1, 0, 1, 0])
    # Top-label confidences .9 (right), .9 (wrong), .7 (right), .55 (right).
    probs = np.array([[0.1, 0.9], [0.1, 0.9], [0.3, 0.7], [0.55, 0.45]])
    # 15 bins of width 1/15: .9 -> (13/15, 14/15], .7 -> (10/15, 11/15], .55 -> (8/15, 9/15].
    # ECE = 2/4 * |0.5 - 0.9| + 1/4 * |1 - 0.7| + 1/4 * |1 - 0.55| = 0.2 + 0.075 + 0.1125
    assert expected_calibration_error(labels, probs) == pytest.approx(0.3875)
    # With 2 bins everything falls in (0.5, 1]: |3/4 - (0.9 + 0.9 + 0.7 + 0.55) / 4| = 0.7625 - 0.75
    assert expected_calibration_error(labels, probs, n_bins=2) == pytest.approx(0.0125)
    assert classification_metrics(labels, probs, BINARY)["ece"] == pytest.approx(0.3875)


def test_ece_is_zero_for_confident_perfect_predictions():
    labels = np.array([2, 0, 1, 2])
    assert expected_calibration_error(labels, np.eye(3)[labels]) == 0.0
    # Always right at confidence 0.6 is under-confident by exactly 0.4.
    assert expected_calibration_error(np.array([1, 1]), np.array([[0.4, 0.6]] * 2)) == pytest.approx(0.4)


def test_reliability_curve_bins():
    labels = np.array([1, 0, 1, 1])
    probs = np.array([[0.1, 0.9], [0.1, 0.9], [0.3, 0.7], [0.4, 0.6]])
    curve = reliability_curve(labels, probs, n_bins=5)
    # Bins are (lower, upper]: 0.6 sits on the 3/5 edge and belongs to (0.4, 0.6].
    assert curve == [
        {"lower": 0.4, "upper": 0.6, "confidence": 0.6, "accuracy": 1.0, "count": 1},
        {"lower": 0.6, "upper": 0.8, "confidence": 0.7, "accuracy": 1.0, "count": 1},
        {"lower": 0.8, "upper": 1.0, "confidence": 0.9, "accuracy": 0.5, "count": 2},
    ]
    with pytest.raises(ValueError, match="n_bins"):
        reliability_curve(labels, probs, n_bins=0)


# ---------------------------------------------------------------- confusion and length buckets


def test_confusion_is_flat_and_complete():
    labels = np.array([0, 0, 1, 2, 2, 2])
    preds = np.array([0, 1, 1, 2, 0, 2])
    c = confusion(labels, preds, TERNARY)
    assert c == {
        "confusion/neg/neg": 1,
        "confusion/neg/neu": 1,
        "confusion/neg/pos": 0,
        "confusion/neu/neg": 0,
        "confusion/neu/neu": 1,
        "confusion/neu/pos": 0,
        "confusion/pos/neg": 1,
        "confusion/pos/neu": 0,
        "confusion/pos/pos": 2,
    }
    assert all(type(v) is int for v in c.values())
    with pytest.raises(ValueError, match="preds has 2 entries"):
        confusion(labels, preds[:2], TERNARY)
    with pytest.raises(ValueError, match="preds must be class ids"):
        confusion(labels, preds + 1, TERNARY)


def test_length_buckets_default_edges():
    labels = np.array([1, 1, 0, 0, 1, 0, 1])
    preds = np.array([1, 0, 0, 0, 1, 1, 0])
    lengths = np.array([5, 127, 128, 255, 700, 512, 513])
    b = length_buckets(labels, preds, lengths)
    # 256-511 is empty and therefore absent.
    assert b == {
        "length/0-127/accuracy": 0.5,
        "length/0-127/n": 2,
        "length/128-255/accuracy": 1.0,
        "length/128-255/n": 2,
        "length/512+/accuracy": 1 / 3,
        "length/512+/n": 3,
    }
    assert type(b["length/512+/n"]) is int


def test_length_buckets_custom_edges_and_errors():
    b = length_buckets(np.array([0, 1]), np.array([0, 0]), np.array([10, 64]), edges=(0, 64))
    assert b == {
        "length/0-63/accuracy": 1.0,
        "length/0-63/n": 1,
        "length/64+/accuracy": 0.0,
        "length/64+/n": 1,
    }
    with pytest.raises(ValueError, match="same length"):
        length_buckets(np.array([0, 1]), np.array([0, 1]), np.array([3]))
    with pytest.raises(ValueError, match="strictly increasing"):
        length_buckets(np.array([0]), np.array([0]), np.array([3]), edges=(0, 256, 128))
    with pytest.raises(ValueError, match="below the first edge"):
        length_buckets(np.array([0]), np.array([0]), np.array([3]), edges=(10, 20))


# ---------------------------------------------------------------- error analysis


def test_most_confident_errors_sorted_and_wrong_only():
    texts = ["a", "b", "c", "d", "e", "f"]
    labels = np.array([0, 1, 0, 1, 0, 1])
    probs = np.array([[0.4, 0.6], [0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.2, 0.8], [0.6, 0.4]])
    df = most_confident_errors(texts, labels, probs, BINARY)
    assert list(df.columns) == ["text", "label", "predicted", "confidence", "prob_true"]
    assert df["text"].tolist() == ["b", "e", "a", "f"]
    assert df.index.tolist() == [1, 4, 0, 5]  # positions in the input, for tracing back
    assert df["label"].tolist() == ["positive", "negative", "negative", "positive"]
    assert df["predicted"].tolist() == ["negative", "positive", "positive", "negative"]
    assert df["confidence"].tolist() == pytest.approx([0.9, 0.8, 0.6, 0.6])
    assert df["prob_true"].tolist() == pytest.approx([0.1, 0.2, 0.4, 0.4])
    assert most_confident_errors(texts, labels, probs, BINARY, k=2)["text"].tolist() == ["b", "e"]
    assert most_confident_errors(texts, 1 - labels, probs, BINARY)["text"].tolist() == ["c", "d"]
    with pytest.raises(ValueError, match="texts has 5 entries"):
        most_confident_errors(texts[:5], labels, probs, BINARY)


def test_most_confident_errors_none_wrong_gives_empty_frame():
    df = most_confident_errors(["x", "y"], np.array([0, 1]), np.eye(2), BINARY)
    assert len(df) == 0
    assert list(df.columns) == ["text", "label", "predicted", "confidence", "prob_true"]


# ---------------------------------------------------------------- plots and report


def test_plots_write_valid_pngs(tmp_path):
    labels, probs = random_case(60, 3, seed=3)
    cm = plot_confusion_matrix(labels, probs.argmax(1), TERNARY, tmp_path / "sub" / "cm.png")
    rel = plot_reliability(labels, probs, str(tmp_path / "rel.png"), n_bins=10)
    assert cm == tmp_path / "sub" / "cm.png" and is_png(cm)
    assert rel == tmp_path / "rel.png" and is_png(rel)


@pytest.mark.parametrize(
    "history",
    [
        [
            {"step": 10, "epoch": 0.5, "loss": 0.69},
            {"step": 20, "epoch": 1.0, "loss": 0.52},
            {"step": 20, "epoch": 1.0, "eval_accuracy": 0.8, "eval_f1": 0.79, "eval_loss": 0.4},
            {"step": 30, "epoch": 1.5, "loss": 0.31},
            {"step": 40, "epoch": 2.0, "eval_accuracy": 0.85, "eval_f1": 0.84, "eval_loss": 0.35},
            {"step": 40, "train_runtime": 12.0, "train_loss": 0.5},
        ],
        [{"step": 10, "epoch": 0.5, "loss": 0.69}, {"step": 20, "epoch": 1.0, "loss": 0.6}],  # no eval rows
        [{"step": 5, "epoch": 1.0, "eval_accuracy": 0.5, "eval_f1": 0.4, "eval_loss": 0.7}],  # single point
        [],
    ],
    ids=["full", "no-eval", "single-point", "empty"],
)
def test_plot_training_curves(tmp_path, history):
    out = plot_training_curves(history, tmp_path / "curves.png")
    assert out == tmp_path / "curves.png"
    assert is_png(out)


def test_write_report(tmp_path):
    labels, probs = random_case(120, 2, seed=4)
    texts = [f"review {i}" for i in range(120)]
    lengths = np.arange(120) * 5  # 0..595 tokens: all four default buckets populated
    out_dir = tmp_path / "report"
    report = write_report(out_dir, texts, labels, probs, lengths, BINARY, prefix="test_")

    preds = probs.argmax(1)
    expected = {
        **classification_metrics(labels, probs, BINARY),
        **confusion(labels, preds, BINARY),
        **length_buckets(labels, preds, lengths),
    }
    assert report == {f"test_{k}": v for k, v in expected.items()}
    assert report["test_length/0-127/n"] == 26 and report["test_length/512+/n"] == 17
    assert sum(v for k, v in report.items() if k.startswith("test_confusion/")) == 120
    assert json.loads(json.dumps(report, allow_nan=False)) == report

    assert is_png(out_dir / "confusion_matrix.png")
    assert is_png(out_dir / "reliability.png")
    assert not (out_dir / "metrics.json").exists()
    errors = pd.read_csv(out_dir / "errors.csv")
    assert list(errors.columns) == ["text", "label", "predicted", "confidence", "prob_true"]
    assert len(errors) == int((preds != labels).sum()) > 0
    assert (errors["label"] != errors["predicted"]).all()
    assert errors["confidence"].is_monotonic_decreasing
    assert (errors["confidence"] >= 0.5).all() and (errors["prob_true"] <= 0.5).all()


def test_write_report_without_lengths_or_prefix(tmp_path):
    labels = np.array([0, 1, 1])
    probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    report = write_report(tmp_path, ["a", "b", "c"], labels, probs, None, BINARY)
    assert report["accuracy"] == pytest.approx(2 / 3)
    assert report["confusion/positive/negative"] == 1
    assert not any(k.startswith("length/") for k in report)
    assert pd.read_csv(tmp_path / "errors.csv")["text"].tolist() == ["c"]


def test_import_is_light():
    code = (
        "import sys, bertsent.metrics; "
        "heavy = [m for m in ('matplotlib', 'sklearn', 'pandas') if m in sys.modules]; print(heavy)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
