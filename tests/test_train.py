"""The real training stage on a tiny random BERT and a toy review set (seconds each)."""

import json
import shutil

import pytest
import torch
from conftest import tiny_args

from bertsent.config import DataConfig, TrainingArguments
from bertsent.modeling.loading import load_classifier
from bertsent.predict import Predictor
from bertsent.training.loop import train
from bertsent.training.tracking import CHECKPOINTS


@pytest.fixture(scope="module")
def trained(tiny_model_dir, toy_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    result = train(tiny_args(tiny_model_dir, out), DataConfig(source=str(toy_data_dir), validation_size=40))
    return result


def test_training_learns_and_writes_a_self_describing_folder(trained):
    out, metrics = trained.output_dir, trained.metrics
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "training_args.json",
        "metrics.json",
        "training_curves.png",
        "history.json",
        "README.md",
        "eval-test/confusion_matrix.png",
        "eval-test/reliability.png",
        "eval-test/errors.csv",
    ):
        assert (out / name).is_file(), name
    assert not (out / CHECKPOINTS).exists()  # removed after a successful run
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["test_accuracy"] == metrics["test_accuracy"] > 0.9
    assert saved["validation_accuracy"] > 0.9
    assert saved["train_reviews"] == 200 and saved["validation_reviews"] == 40
    assert saved["num_parameters"] == sum(p.numel() for p in Predictor(out).backend.model.parameters())
    losses = [h["loss"] for h in json.loads((out / "history.json").read_text()) if "loss" in h]
    assert losses[-1] < losses[0] * 0.5
    args = json.loads((out / "training_args.json").read_text())
    assert args["training"]["max_length"] == 32 and args["data"]["validation_size"] == 40
    card = (out / "README.md").read_text()
    assert "pipeline_tag: text-classification" in card and f"{metrics['test_accuracy']:.4f}" in card


def test_saved_folder_loads_in_transformers_pipeline_with_same_predictions(trained):
    from transformers import pipeline

    texts = ["a wonderful and moving film", "boring, the worst plot", "the cast was superb"]
    ours = Predictor(trained.output_dir)(texts)
    theirs = pipeline("text-classification", model=str(trained.output_dir), device="cpu")(texts, truncation=True)
    assert [p["label"] for p in ours] == [p["label"] for p in theirs]
    assert [p["score"] for p in ours] == pytest.approx([p["score"] for p in theirs], abs=1e-5)


def test_same_seed_gives_same_metrics(tiny_model_dir, toy_data_dir, tmp_path, trained):
    again = train(tiny_args(tiny_model_dir, tmp_path), DataConfig(source=str(toy_data_dir), validation_size=40))
    for key in ("validation_accuracy", "validation_loss", "test_accuracy", "test_log_loss"):
        assert again.metrics[key] == trained.metrics[key]


def test_resume_from_a_mid_run_checkpoint_equals_uninterrupted(tiny_model_dir, toy_data_dir, tmp_path, trained):
    data = DataConfig(source=str(toy_data_dir), validation_size=40)
    out = tmp_path / "run"
    args = tiny_args(tiny_model_dir, out, save_steps=7, save_total_limit=None, keep_checkpoints=True)
    train(args, data)
    # Simulate a crash at step 36 (13 steps per epoch): only what was on disk then remains, the latest
    # checkpoint being step 35, in the middle of epoch 3.
    for path in (out / CHECKPOINTS).glob("step-*"):
        if int(path.name.split("-")[1]) > 36:
            shutil.rmtree(path)
    for path in out.iterdir():
        if path.name != CHECKPOINTS:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    resumed = train(tiny_args(tiny_model_dir, out, save_steps=7, resume=True), data)
    assert resumed.metrics["steps"] == trained.metrics["steps"] == 78
    for key in ("validation_accuracy", "validation_loss", "test_accuracy", "test_log_loss", "best_step"):
        assert resumed.metrics[key] == pytest.approx(trained.metrics[key], abs=1e-6), key


def test_early_stopping_multiclass_adam_and_accumulation(tiny_model_dir, tmp_path):
    import pandas as pd
    from conftest import make_reviews

    frame = make_reviews(180, seed=5)
    frame["label"] = [
        "neutral" if "the" not in t.split()[:1] else ("good" if y else "bad")
        for t, y in zip(frame.text, frame.label, strict=True)
    ]
    path = tmp_path / "three.csv"
    pd.concat([frame, frame.assign(text=frame.text + " indeed")]).to_csv(path, index=False)
    args = tiny_args(
        tiny_model_dir,
        tmp_path / "out",
        epochs=8,
        optimizer="adam",
        lr=1e-9,
        gradient_accumulation_steps=2,
        early_stopping_patience=1,
        evaluate_test=False,
    )
    result = train(args, DataConfig(source=str(path), labels=["bad", "neutral", "good"], validation_size=30))
    # lr ~ 0: nothing improves after the first validation, so patience 1 stops after epoch 2 of 6.
    assert result.metrics["stopped_early"] is True
    history = json.loads((result.output_dir / "history.json").read_text())
    assert [h["epoch"] for h in history if "eval_accuracy" in h] == [1.0, 2.0]
    config = json.loads((result.output_dir / "config.json").read_text())
    assert config["id2label"] == {"0": "bad", "1": "neutral", "2": "good"}


@pytest.mark.parametrize(
    ("field", "value"),
    [("epochs", 0), ("truncation", "middle"), ("optimizer", "sgd"), ("lr", 0.0), ("warmup_ratio", 1.5)],
)
def test_training_arguments_validate_themselves(field, value):
    with pytest.raises(ValueError, match=field):
        TrainingArguments(**{field: value})


def test_cls_only_training_gives_the_same_gradients_and_leaves_the_model_as_it_was(trained_tiny_dir):
    from bertsent.modeling.cls_only import cls_only_training
    from bertsent.modeling.pooling import add_mean_pooling

    ids = torch.tensor([[101, 2307, 3185, 2001, 6429, 102], [101, 9643, 102, 0, 0, 0]])
    batch = {"input_ids": ids, "attention_mask": (ids != 0).long()}
    labels = torch.tensor([1, 0])

    def gradients(model) -> dict[str, torch.Tensor]:
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(**batch).logits, labels).backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    for pooled in (False, True):  # the [CLS] head, and the mean-pooling layer as the last layer
        model = load_classifier(trained_tiny_dir)
        if pooled:
            add_mean_pooling(model)
        model.eval()  # dropout off: the two forwards must agree exactly, not in distribution
        keys = list(model.state_dict())
        full = gradients(model)
        with cls_only_training(model) as applied:
            assert applied
            fast = gradients(model)
        assert list(model.state_dict()) == keys and "forward" not in vars(model.bert.encoder.layer[-1])
        assert fast.keys() == full.keys()
        for name in full:
            torch.testing.assert_close(fast[name], full[name], atol=1e-6, rtol=1e-4, msg=name)


def test_auto_trains_under_bf16_autocast_where_the_cpu_has_amx(tiny_model_dir, toy_data_dir, tmp_path, monkeypatch):
    """``auto`` follows the CPU (``BERTSENT_CPU_BF16`` stands in for its flags here, so any CPU runs it):
    bf16 autocast with AMX, fp32 without; the run records the precision it trained in."""
    from bertsent.errors import SettingsError
    from bertsent.runtime import CPU_BF16_ENV, autocast_dtype

    cpu = torch.device("cpu")
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    assert autocast_dtype("auto", cpu) is torch.bfloat16 and autocast_dtype("fp32", cpu) is None
    assert autocast_dtype("fp16", cpu) is None  # a GPU's half precision: fp32 on the CPU, with a warning
    result = train(tiny_args(tiny_model_dir, tmp_path / "bf16"), DataConfig(str(toy_data_dir), validation_size=40))
    assert result.metrics["validation_accuracy"] > 0.5
    recorded = json.loads((result.output_dir / "training_args.json").read_text())["training"]
    assert recorded["precision"] == "auto" and recorded["resolved_precision"] == "bf16"
    monkeypatch.setenv(CPU_BF16_ENV, "0")
    assert autocast_dtype("auto", cpu) is None and autocast_dtype("bf16", cpu) is torch.bfloat16
    monkeypatch.setenv(CPU_BF16_ENV, "yes")
    with pytest.raises(SettingsError, match="BERTSENT_CPU_BF16 must be 0 or 1"):
        autocast_dtype("auto", cpu)
