"""--time-budget: training ends on time with the learning rate at zero, and a resumed run keeps to it."""

import json

import pytest

import bertsent.training.loop as loop
from bertsent.config import DataConfig, TrainingArguments, budget_seconds
from bertsent.errors import SettingsError
from bertsent.training.budget import Budget

BUDGET = 12.0


def test_durations_parse_and_bad_ones_are_one_line_errors():
    assert budget_seconds("45m") == 2700 and budget_seconds("1h30m") == 5400 and budget_seconds("90s") == 90
    for bad in ("soon", "5s", ""):
        with pytest.raises(SettingsError, match="time_budget"):
            TrainingArguments(time_budget=bad)


def test_the_plan_keeps_room_for_validations_and_decays_to_zero():
    budget = Budget(100.0, warmup_steps=10)
    budget.step_seconds = [0.5] * 10
    budget.validation_seconds, budget.checkpoint_seconds = 4.0, 1.0
    settings = TrainingArguments(batch_size=16, warmup_ratio=0.1, save_steps=None)
    total = budget.plan(10, steps_per_epoch=60, validation_reviews=100, args=settings)
    assert 10 < total < 10 + 100 / 0.5  # the pauses to come are taken off the steps
    assert budget.factor(total) == 0.0 and budget.factor(budget.warmup_steps) == pytest.approx(1.0)


def args(tmp_path, tiny_model_dir, **changes):
    settings = dict(model=str(tiny_model_dir), output_dir=str(tmp_path / "run"), max_length=32, lr=5e-3)
    return TrainingArguments(**(settings | dict(time_budget=f"{BUDGET:g}s", save_steps=40, progress=False) | changes))


def test_a_budgeted_run_ends_on_time_with_the_rate_at_zero(tmp_path, tiny_model_dir, toy_data_dir):
    result = loop.train(args(tmp_path, tiny_model_dir), DataConfig(str(toy_data_dir), validation_size=40))
    metrics = result.metrics
    assert metrics["time_budget_seconds"] == BUDGET
    assert 0.6 * BUDGET <= metrics["time_used_seconds"] <= 1.25 * BUDGET + 2
    assert metrics["steps"] > 13  # more than the one epoch --epochs would give
    history = json.loads((result.output_dir / "history.json").read_text())
    lrs = [h["lr"] for h in history if "lr" in h]
    assert lrs[-1] < 0.1 * max(lrs)  # decayed towards zero at the deadline


def test_resume_counts_the_time_already_spent(tmp_path, tiny_model_dir, toy_data_dir, monkeypatch):
    data = DataConfig(str(toy_data_dir), validation_size=40)
    step = loop._optimizer_step

    def interrupted(run, group, running):
        if run.state.step == 45:
            raise KeyboardInterrupt
        step(run, group, running)

    monkeypatch.setattr(loop, "_optimizer_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        loop.train(args(tmp_path, tiny_model_dir), data)
    monkeypatch.setattr(loop, "_optimizer_step", step)
    result = loop.train(args(tmp_path, tiny_model_dir, resume=True), data)
    assert result.metrics["time_used_seconds"] <= 1.25 * BUDGET + 2
    assert result.metrics["steps"] > 45
