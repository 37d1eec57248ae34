"""Distillation on the tiny BERT: a smaller student that learns from cached teacher logits."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from bertsent.cli import main
from bertsent.config import DataConfig, DistillationArguments
from bertsent.modeling.loading import load_classifier
from bertsent.training.distill import TEACHER_LOGITS, distill, distillation_loss, student_layer_indices


def test_student_layers_are_evenly_spaced_like_distilbert():
    assert student_layer_indices(12, 6) == [0, 2, 4, 6, 8, 10]
    assert student_layer_indices(6, 3) == [0, 2, 4]
    assert student_layer_indices(2, 1) == [0]
    with pytest.raises(ValueError, match="student_layers"):
        student_layer_indices(6, 7)


def test_distillation_loss_mixes_hard_and_soft_targets():
    student = torch.tensor([[2.0, -1.0], [0.5, 0.3]])
    labels = torch.tensor([0, 1])
    ce = torch.nn.functional.cross_entropy(student, labels)
    assert distillation_loss(student, student.clone(), labels, alpha=1.0, temperature=2.0) == pytest.approx(ce.item())
    # Identical teacher: the KL part is zero whatever alpha is.
    assert distillation_loss(student, student.clone(), labels, 0.3, 2.0) == pytest.approx(0.3 * ce.item())
    teacher = torch.tensor([[-3.0, 3.0], [3.0, -3.0]])
    assert distillation_loss(student, teacher, labels, 0.0, 2.0) > 0.5


def test_distilled_student_is_smaller_learns_and_caches_teacher_logits(trained_tiny_dir, toy_data_dir, tmp_path):
    out = tmp_path / "student"
    args = DistillationArguments(
        teacher=str(trained_tiny_dir),
        student_layers=1,
        output_dir=str(out),
        max_length=32,
        epochs=4,
        lr=5e-3,
        warmup_ratio=0.0,
        save_steps=None,
        progress=False,
        hidden_weight=1.0,
    )
    data = DataConfig(str(toy_data_dir), validation_size=40)
    result = distill(args, data)
    teacher = load_classifier(trained_tiny_dir)
    student = load_classifier(out)
    assert student.config.num_hidden_layers == 1
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in teacher.parameters())
    summary = json.loads((out / "compression.json").read_text())
    assert summary["student_num_parameters"] == sum(p.numel() for p in student.parameters())
    assert summary["teacher_num_parameters"] == sum(p.numel() for p in teacher.parameters())
    assert result.metrics["validation_accuracy"] >= 0.9
    history = json.loads((out / "history.json").read_text())
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses[-1] < losses[0]
    cached = np.load(out / TEACHER_LOGITS)
    assert cached.shape == (200, 2)
    # The cache holds the teacher's real logits for the training rows, in their order.
    from bertsent.data.loading import load_data
    from bertsent.predict import Predictor

    # The teacher is scored on the very validation rows the student was selected on.
    validation = load_data(data).validation
    teacher_val = Predictor(trained_tiny_dir).predict_proba(validation["text"].tolist())
    assert summary["teacher_validation_accuracy"] == pytest.approx(
        (teacher_val.argmax(1) == validation["label"].to_numpy()).mean()
    )
    train_texts = load_data(data).train["text"].tolist()[:8]
    teacher_probs = Predictor(trained_tiny_dir).predict_proba(train_texts)
    np.testing.assert_allclose(torch.softmax(torch.from_numpy(cached[:8]), -1).numpy(), teacher_probs, atol=1e-5)
    assert "Distillation" in (out / "README.md").read_text()


def test_distill_command_and_its_errors(trained_tiny_dir, toy_data_dir, tmp_path, capsys):
    argv = [
        "distill",
        "--teacher",
        str(trained_tiny_dir),
        "--student-layers",
        "1",
        "--data",
        str(toy_data_dir),
        "--output-dir",
        str(tmp_path / "s"),
        "--max-length",
        "32",
        "--epochs",
        "1",
        "--validation-size",
        "40",
    ]
    assert main(argv) == 0
    assert "student saved to" in capsys.readouterr().out
    assert main([*argv[:3], "--student-layers", "5", *argv[5:]]) == 2
    assert "student_layers must be between 1 and the teacher's 2 layers" in capsys.readouterr().err
    assert main(["distill", "--data", str(toy_data_dir)]) == 2
    assert "teacher is required" in capsys.readouterr().err


def test_a_run_killed_after_training_writes_only_the_record_when_run_again(
    trained_tiny_dir, toy_data_dir, tmp_path, monkeypatch
):
    from bertsent.training import distill as module

    args = DistillationArguments(
        teacher=str(trained_tiny_dir),
        student_layers=1,
        output_dir=str(tmp_path / "student"),
        epochs=1,
        lr=5e-3,
        max_length=32,
        save_steps=None,
        progress=False,
    )
    data = DataConfig(str(toy_data_dir), validation_size=40)
    report = module._report
    monkeypatch.setattr(module, "_report", lambda *a: (_ for _ in ()).throw(RuntimeError("killed")))
    with pytest.raises(RuntimeError, match="killed"):
        distill(args, data)
    out = tmp_path / "student"
    assert (out / "metrics.json").is_file() and not (out / "compression.json").exists()
    weights = (out / "model.safetensors").read_bytes()

    monkeypatch.setattr(module, "_report", report)
    monkeypatch.setattr(module, "train", lambda *a, **k: pytest.fail("trained again"))
    result = distill(args, data)
    record = json.loads((out / "compression.json").read_text())
    assert record["student_validation_accuracy"] == result.metrics["validation_accuracy"]
    assert (out / "model.safetensors").read_bytes() == weights
    assert "## Distillation" in (out / "README.md").read_text()
    # Other settings are another training: not mistaken for the one that finished.
    (out / "compression.json").unlink()
    assert module._finished_training(out, args) is not None
    assert module._finished_training(out, dataclasses.replace(args, epochs=2)) is None
