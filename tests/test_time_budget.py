"""--time-budget: training ends on time with the learning rate at zero, and a resumed run keeps to it."""

import json
import math

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


def test_the_plan_gives_the_short_phase_its_share_of_the_time_and_prices_the_rest_at_full_length():
    budget = Budget(100.0, short_seconds=50.0, cost_ratio=2.0)
    budget.started -= 5.0  # 5 s spent, on 10 short steps of 0.5 s
    budget.step_seconds = [0.5] * 10
    budget.validation_seconds, budget.checkpoint_seconds = 0.0, 0.0
    settings = TrainingArguments(save_steps=None)
    assert budget.in_short_phase(10)
    total = budget.plan(10, steps_per_epoch=10_000, validation_reviews=10, args=settings)
    # 45 s left of the short phase at 0.5 s a step, then 50 s at an estimated 1 s a step.
    assert budget.short_until == pytest.approx(10 + 90, abs=1) and total == pytest.approx(100 + 50, abs=2)
    assert budget.in_short_phase(budget.short_until - 1) and not budget.in_short_phase(budget.short_until)
    budget.step_seconds = [1.2] * 10  # full-length steps timed: the plan follows them, the switch stays
    switch = budget.short_until
    budget.plan(switch + 10, steps_per_epoch=10_000, validation_reviews=10, args=settings)
    assert budget.short_until == switch


def test_short_length_checks_its_settings():
    with pytest.raises(SettingsError, match="short_length"):
        TrainingArguments(max_length=64, short_length=64)
    with pytest.raises(SettingsError, match="short_share"):
        TrainingArguments(short_length=32, short_share=0)
    with pytest.raises(SettingsError, match="keras does not support short_length"):
        TrainingArguments(short_length=32, backend="keras")


def record_lengths(monkeypatch) -> list[int]:
    """Patch the loop's collate to note each training batch's padded length."""
    seen, real = [], loop.collate
    monkeypatch.setattr(
        loop, "collate", lambda enc, idx, pad: seen.append(max(len(enc.ids[i]) for i in idx)) or real(enc, idx, pad)
    )
    return seen


def test_sequence_length_warmup_trains_the_first_share_short(tmp_path, tiny_model_dir, toy_data_dir, monkeypatch):
    seen = record_lengths(monkeypatch)
    settings = args(tmp_path, tiny_model_dir, time_budget=None, epochs=2, short_length=12, short_share=0.25)
    result = loop.train(settings, DataConfig(str(toy_data_dir), validation_size=40))
    total = result.metrics["steps"]
    assert result.metrics["short_length_steps"] == math.ceil(0.25 * total) and result.metrics["short_length"] == 12
    short = result.metrics["short_length_steps"]
    assert max(seen[:short]) <= 12 < max(seen[short:]) <= 32


def test_sequence_length_warmup_within_a_budget(tmp_path, tiny_model_dir, toy_data_dir, monkeypatch):
    seen = record_lengths(monkeypatch)
    result = loop.train(
        args(tmp_path, tiny_model_dir, short_length=12), DataConfig(str(toy_data_dir), validation_size=40)
    )
    metrics = result.metrics
    assert metrics["time_used_seconds"] <= 1.25 * BUDGET + 2
    short = metrics["short_length_steps"]
    assert 0 < short < metrics["steps"] and max(seen[:short]) <= 12 < max(seen[short:])


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
