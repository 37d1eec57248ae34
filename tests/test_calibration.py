"""Temperature scaling: the fit, the fold into the classifier, the ``calibrate`` stage and ``train --calibrate``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from bertsent.calibration import CONFIG_KEY, calibrate, classifier_keys, fit_temperature, fold_temperature
from bertsent.cli import main
from bertsent.config import CalibrateConfig, DataConfig, SettingsError, TrainingArguments
from bertsent.errors import DataError, ModelError
from bertsent.folder import CALIBRATION_PLOT
from bertsent.predict import Predictor


def test_fit_recovers_the_temperature_the_labels_were_drawn_with():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=4.0, size=(20_000, 3))
    scaled = np.exp(logits / 2.5)
    probs = scaled / scaled.sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(3, p=p) for p in probs])
    assert fit_temperature(logits, labels) == pytest.approx(2.5, rel=0.05)


def test_fit_stays_bounded_on_one_class_data():
    logits = np.array([[0.0, 5.0], [0.0, 6.0]])  # every prediction right: the NLL keeps falling as T -> 0
    assert 0.05 <= fit_temperature(logits, np.array([1, 1])) <= 20.0


def test_folding_divides_the_logits_and_keeps_every_label(tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    ids = torch.randint(1000, 2000, (6, 12))
    with torch.no_grad():
        before = model(input_ids=ids).logits
        assert classifier_keys(model.state_dict(), 2) == ("classifier.weight", "classifier.bias")
        fold_temperature(model.state_dict(), 2, 3.0)
        after = model(input_ids=ids).logits
    torch.testing.assert_close(after, before / 3.0, atol=1e-6, rtol=1e-5)
    assert torch.equal(after.argmax(-1), before.argmax(-1))


def test_an_ambiguous_classifier_is_refused():
    state = {"a.weight": torch.zeros(2, 4), "b.weight": torch.zeros(2, 4)}
    with pytest.raises(ModelError, match="cannot tell the classifier layer"):
        classifier_keys(state, 2)


@pytest.fixture(scope="module")
def calibrated(trained_tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("calibrated")
    return calibrate(CalibrateConfig(model=str(trained_tiny_dir), output_dir=str(out), batch_size=16))


def test_calibrate_folds_t_and_the_folder_returns_scaled_scores(calibrated, trained_tiny_dir, toy_texts):
    from transformers import pipeline

    record, out = calibrated.record, calibrated.output_dir
    temperature = record["temperature"]
    # The tiny model is right on every toy review with probabilities near 0.5: T must sharpen them.
    assert temperature < 0.9
    assert json.loads((out / "config.json").read_text())[CONFIG_KEY]["temperature"] == pytest.approx(temperature)
    source = Predictor(trained_tiny_dir, precision="fp32", backend="torch")
    logits = np.log(source.predict_proba(toy_texts[:10]))  # log-softmax: the logits up to a per-row constant
    expected = np.exp(logits / temperature)
    expected /= expected.sum(axis=1, keepdims=True)
    classifier = pipeline("text-classification", model=str(out), top_k=None)
    for text, want in zip(toy_texts[:10], expected, strict=True):
        got = {d["label"]: d["score"] for d in classifier([text], truncation=True)[0]}
        assert [got[source.id2label[i]] for i in range(2)] == pytest.approx(want.tolist(), abs=1e-4)


def test_calibrate_records_before_and_after_without_changing_labels(calibrated):
    record, out = calibrated.record, calibrated.output_dir
    for split in ("validation", "test"):
        r = record[split]
        assert r["labels_unchanged"] and r["n"] > 0
        assert r["ece_after"] < r["ece_before"]
    # T minimises the validation NLL and T = 1 is in the search range: the log-loss cannot rise there.
    assert record["validation"]["log_loss_after"] <= record["validation"]["log_loss_before"] + 1e-9
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["calibration"]["temperature"] == record["temperature"]
    assert metrics["test_ece"] == record["test"]["ece_after"]
    assert (out / CALIBRATION_PLOT).stat().st_size > 0
    card = (out / "README.md").read_text()
    assert "## Calibration" in card and f"T = {record['temperature']:.4f}" in card


def test_calibrating_in_place_twice_multiplies_and_drops_stale_exports(trained_tiny_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(trained_tiny_dir, folder)
    (folder / "model.onnx").write_bytes(b"stale")
    first = calibrate(CalibrateConfig(model=str(folder), evaluate_test=False)).record
    assert not (folder / "model.onnx").exists()
    second = calibrate(CalibrateConfig(model=str(folder), evaluate_test=False)).record
    assert "test" not in second
    assert second["total_temperature"] == pytest.approx(first["temperature"] * second["temperature"])
    # Already calibrated: the second fit has little left to correct.
    assert abs(np.log(second["temperature"])) < abs(np.log(first["temperature"]))


def test_train_calibrate_scores_test_calibrated(tiny_model_dir, toy_data_dir, tmp_path):
    from bertsent.training.loop import train

    args = TrainingArguments(
        model=str(tiny_model_dir),
        output_dir=str(tmp_path / "run"),
        max_length=32,
        epochs=2,
        lr=5e-3,
        warmup_ratio=0.0,
        save_steps=None,
        progress=False,
        calibrate=True,
    )
    metrics = train(args, DataConfig(str(toy_data_dir), validation_size=40)).metrics
    out = tmp_path / "run"
    record = json.loads((out / "metrics.json").read_text())["calibration"]
    assert record["test"]["ece_after"] == pytest.approx(metrics["test_ece"], abs=1e-6)
    assert record["validation"]["log_loss_after"] <= record["validation"]["log_loss_before"] + 1e-9
    assert json.loads((out / "config.json").read_text())[CONFIG_KEY]["temperature"] == record["temperature"]
    assert "## Calibration" in (out / "README.md").read_text()


def test_cli_calibrate_prints_the_change(trained_tiny_dir, tmp_path, capsys):
    assert main(["calibrate", "--model", str(trained_tiny_dir), "--output-dir", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "temperature" in out and "test ECE" in out and str(tmp_path / "c") in out


def test_cli_bad_inputs_exit_2_with_one_line(trained_tiny_dir, tiny_model_dir, tmp_path, capsys):
    onnx_only = tmp_path / "onnx"
    onnx_only.mkdir()
    shutil.copy(trained_tiny_dir / "config.json", onnx_only)
    (onnx_only / "model.onnx").write_bytes(b"x")
    assert main(["calibrate", "--model", str(onnx_only)]) == 2
    assert "already an ONNX export" in capsys.readouterr().err
    # The untrained folder records no data: calibration has nothing to fit on.
    assert main(["calibrate", "--model", str(tiny_model_dir), "--output-dir", str(tmp_path / "x")]) == 2
    assert "calibration needs labelled validation reviews" in capsys.readouterr().err
    with pytest.raises(SettingsError):
        CalibrateConfig(model="m", batch_size=0)
    with pytest.raises(DataError):
        fit_temperature(np.zeros((0, 2)), np.zeros(0))
