"""The planner on the tiny model end to end: ``compress --time-budget`` shares one budget among its training
stages (distillation, prune recovery) in proportion to their weights, keeps the budget, and a run killed
between stages resumes with what its finished stages used."""

import json
import shutil

import pytest

from bertsent.cli import main
from bertsent.recipes.compress import TRAINING_WEIGHTS
from bertsent.recipes.plan import PLAN_FILE

BUDGET = 90.0


@pytest.mark.slow
def test_a_budgeted_recipe_keeps_its_budget_shares_it_and_resumes(
    trained_tiny_dir, toy_data_dir, tmp_path, monkeypatch
):
    monkeypatch.setattr(
        "bertsent.recipes.plan.MIN_STAGE_SECONDS", 10.0
    )  # train's least budget; the default floor would dominate tiny stages
    out = tmp_path / "recipe"
    argv = ["compress", "--teacher", str(trained_tiny_dir), "--output-dir", str(out), "--data", str(toy_data_dir)]
    argv += ["--validation-size", "40", "--latency-samples", "2", "--heads-fraction", "0.5", "--ffn-fraction", "0.25"]
    argv += ["--no-trim-vocab", "--factorize-energy", "0", "--no-early-exit", "--time-budget", f"{BUDGET:.0f}s"]
    assert main(argv) == 0
    plan = json.loads((out / PLAN_FILE).read_text())
    stages = plan["stages"]
    used = sum(s["used"] for s in stages.values() if s["used"] is not None)
    assert used <= 1.1 * BUDGET, stages
    training = {name: s for name, s in stages.items() if s["weight"]}
    assert set(training) == {"student", "student pruned"}
    assert training["student"]["weight"] == TRAINING_WEIGHTS["student"]
    # Distillation weighs 3, recovery 1 (exact shares: test_plan.py); here, reserves for the rest come first.
    assert training["student"]["planned"] >= training["student pruned"]["planned"] >= 10
    assert stages["compare"]["used"] is not None  # the table's scoring, reserved as "compare", then measured

    # Killed after distillation: the pruned student and what came after it are gone; the rerun makes them again
    # within what is left, and the finished stages keep the seconds they used.
    shutil.rmtree(out / "student-pruned")
    stages["student pruned"].update(planned=None, used=None)
    (out / PLAN_FILE).write_text(json.dumps(plan))
    assert main(argv) == 0
    again = json.loads((out / PLAN_FILE).read_text())["stages"]
    assert again["student"] == stages["student"]
    assert again["student pruned"]["used"] is not None and (out / "student-pruned" / "compression.json").is_file()
