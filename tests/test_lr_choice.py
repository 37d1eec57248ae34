"""The learning rate when --lr is not given: the rule, the range test (--lr auto), and what is recorded."""

import json

import pytest

from bertsent.config import DataConfig, TrainingArguments
from bertsent.errors import SettingsError
from bertsent.training.loop import train
from bertsent.training.lr_choice import rule_lr


def test_the_rule_follows_width_and_steps():
    assert rule_lr(768, 5000) == 5e-5  # BERT-base: the recipe of Devlin et al.
    assert rule_lr(384, 5000) == 1e-4  # the embedded MiniLM on a real run
    assert rule_lr(384, 38) == 2e-4  # 600 reviews, one epoch: a few dozen steps need more
    assert rule_lr(384, 100) < rule_lr(384, 50) < rule_lr(384, 10) == 2e-4


def test_lr_setting_accepts_numbers_strings_auto_and_unset():
    assert TrainingArguments(lr="3e-5").lr == 3e-5  # what the CLI passes
    assert TrainingArguments(lr="auto").lr == "auto" and TrainingArguments().lr is None
    with pytest.raises(SettingsError, match="lr"):
        TrainingArguments(lr="fast")
    with pytest.raises(SettingsError, match="lr"):
        TrainingArguments(lr=0)


def run(tmp_path, tiny_model_dir, toy_data_dir, name, **changes):
    args = TrainingArguments(
        model=str(tiny_model_dir), output_dir=str(tmp_path / name), max_length=32, epochs=1, save_steps=None, **changes
    )
    out = train(args, DataConfig(str(toy_data_dir), validation_size=40)).output_dir
    return json.loads((out / "training_args.json").read_text())["training"], out


def test_unset_lr_uses_the_rule_and_records_it(tmp_path, tiny_model_dir, toy_data_dir):
    training, _ = run(tmp_path, tiny_model_dir, toy_data_dir, "rule")
    choice = training["lr_choice"]
    assert choice["how"] == "rule" and choice["steps"] == 13  # 200 reviews / batch 16
    assert training["lr"] == choice["lr"] == rule_lr(32, 13)


def test_explicit_lr_wins(tmp_path, tiny_model_dir, toy_data_dir):
    training, _ = run(tmp_path, tiny_model_dir, toy_data_dir, "given", lr=3e-3)
    assert training["lr"] == 3e-3 and training["lr_choice"] == {"how": "given", "lr": 3e-3}


def test_range_test_picks_a_rate_and_leaves_the_run_as_it_would_be(tmp_path, tiny_model_dir, toy_data_dir):
    training, out = run(tmp_path, tiny_model_dir, toy_data_dir, "auto", lr="auto")
    choice = training["lr_choice"]
    assert choice["how"] == "range test" and 1e-6 <= training["lr"] == choice["lr"] <= 1e-3
    assert len(choice["lrs"]) == len(choice["losses"]) >= 10 and choice["lrs"] == sorted(choice["lrs"])
    assert (out / "lr_range_test.png").is_file()
    # The range test restores the weights and the random state: a run given the picked rate is the same run.
    run(tmp_path, tiny_model_dir, toy_data_dir, "same", lr=choice["lr"])
    first = json.loads((out / "metrics.json").read_text())
    second = json.loads((tmp_path / "same" / "metrics.json").read_text())
    assert first["validation_loss"] == pytest.approx(second["validation_loss"], abs=1e-6)
