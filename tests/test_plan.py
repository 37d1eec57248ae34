"""The recipe's time planner: a budget kept, training stages given time in proportion, a killed run resumed."""

import pytest

from bertsent.config import SettingsError
from bertsent.errors import PlanError
from bertsent.recipes.plan import HEADROOM, MIN_STAGE_SECONDS, PLAN_FILE, RecipePlan

WEIGHTS = {"teacher": 6.0, "distill": 2.0, "prune recovery": 1.0, "factorize recovery": 1.0}
RESERVES = {"exports": 300.0, "scoring": 1200.0}


def run_stages(plan: RecipePlan, names, overrun: float = 1.0) -> None:
    """Stages that use what they are given (times ``overrun``); fixed stages take their reserve."""
    for name in names:
        if plan.stages[name].weight:
            plan.finished(name, plan.seconds_for(name) * overrun)
        else:
            plan.finished(name, plan.stages[name].reserve)


def test_the_budget_is_kept_and_shared_in_proportion(tmp_path):
    plan = RecipePlan.load(tmp_path / PLAN_FILE, 9000, WEIGHTS, RESERVES)
    run_stages(plan, ["teacher", "exports", "distill", "prune recovery", "factorize recovery", "scoring"])
    # Stages that keep to what they are given end the recipe the headroom short of the budget.
    assert plan.used == pytest.approx(9000 * (1 - HEADROOM), rel=0.01)
    given = {name: plan.stages[name].planned for name in WEIGHTS}
    training = 9000 * (1 - HEADROOM) - sum(RESERVES.values())
    for name, weight in WEIGHTS.items():
        assert given[name] == pytest.approx(training * weight / sum(WEIGHTS.values()), rel=0.01)
    rows = plan.table()
    assert rows[-1] == {"stage": "total", "planned": 9000, "used": plan.used}
    assert {row["stage"] for row in rows[:-1]} == set(WEIGHTS) | set(RESERVES)


def test_an_early_stage_leaves_its_rest_and_a_new_estimate_moves_the_shares(tmp_path):
    plan = RecipePlan.load(tmp_path / PLAN_FILE, 9000, WEIGHTS, RESERVES)
    plan.finished("teacher", plan.seconds_for("teacher") / 2)  # ended early (e.g. early stopping)
    plan.estimate("scoring", 600)  # throughput measured: scoring costs less than reserved
    run_stages(plan, ["exports", "distill", "prune recovery", "factorize recovery", "scoring"])
    # The teacher's rest and the smaller reserve went to later stages.
    assert plan.used == pytest.approx(9000 * (1 - HEADROOM), rel=0.01)
    assert plan.stages["distill"].planned == pytest.approx(2 * plan.stages["prune recovery"].planned, rel=0.05)


def test_a_budget_overrun_stays_within_ten_percent_when_stages_keep_to_theirs(tmp_path):
    plan = RecipePlan.load(tmp_path / PLAN_FILE, 9000, WEIGHTS, RESERVES)
    run_stages(plan, ["teacher", "exports", "distill", "prune recovery", "factorize recovery", "scoring"], 1.05)
    assert plan.used <= 9000  # the headroom took the overrun


def test_a_killed_run_resumes_with_what_its_finished_stages_used(tmp_path):
    path = tmp_path / PLAN_FILE
    first = RecipePlan.load(path, 9000, WEIGHTS, RESERVES)
    run_stages(first, ["teacher", "exports"])
    teacher = first.stages["teacher"].used
    again = RecipePlan.load(path, 9000, WEIGHTS, RESERVES)  # the next run of the same recipe
    assert again.done("teacher") and again.stages["teacher"].used == teacher and not again.done("distill")
    run_stages(again, ["distill", "prune recovery", "factorize recovery", "scoring"])
    assert again.used == pytest.approx(9000 * (1 - HEADROOM), rel=0.01)
    assert RecipePlan.load(path, 6000, WEIGHTS, RESERVES).used == 0  # another budget: a new plan


def test_a_stage_gets_a_floor_and_bad_budgets_are_errors(tmp_path):
    plan = RecipePlan.load(tmp_path / PLAN_FILE, 100, WEIGHTS, RESERVES)  # reserves exceed the budget
    assert plan.seconds_for("teacher") == MIN_STAGE_SECONDS
    with pytest.raises(KeyError, match="not a training stage"):
        plan.seconds_for("scoring")
    with pytest.raises(SettingsError, match="> 0"):
        RecipePlan.load(tmp_path / "other.json", 0, WEIGHTS, RESERVES)


def test_a_budget_the_reserves_would_fill_is_refused_before_training_naming_one_that_fits(tmp_path):
    plan = RecipePlan.load(tmp_path / PLAN_FILE, 1800, WEIGHTS, RESERVES)  # reserves 1,500 s of 1,800
    assert not plan.started()
    with pytest.raises(PlanError, match=r"30m cannot hold .*\(scoring 20m\).* --time-budget 34m or more") as caught:
        plan.check_fits(0.25)
    assert "\n" not in str(caught.value)
    tiny = RecipePlan.load(tmp_path / "tiny.json", 45, WEIGHTS, {"scoring": 40})  # under a minute: seconds, not 0m
    with pytest.raises(PlanError, match=r"45s cannot hold .*\(scoring 40s\).* --time-budget 54s or more"):
        tiny.check_fits(0.25)
    roomy = RecipePlan.load(tmp_path / "roomy.json", 34 * 60, WEIGHTS, RESERVES)
    roomy.check_fits(0.25)  # the budget the error named fits
    roomy.seconds_for("teacher")
    assert roomy.started()


def test_an_int8_route_is_priced_at_its_own_rate_else_at_its_base_route(tmp_path):
    plan = RecipePlan.load(tmp_path / PLAN_FILE, 9000, WEIGHTS, RESERVES)
    plan.measured("torch", 20.0, 6)
    plan.measured("onnx", 40.0, 6)
    assert plan.scoring_seconds([("onnx-int8", 6, 400)]) == pytest.approx(10.0)  # unmeasured: onnx's rate
    assert plan.scoring_seconds([("openvino-int8", 3, 400)]) == pytest.approx(10.0)  # nothing: the slowest
    plan.measured("onnx-int8", 80.0, 6)
    assert plan.scoring_seconds([("onnx-int8", 3, 400)]) == pytest.approx(2.5)


def test_a_training_stage_releases_what_it_took_beyond_its_share_from_the_reserve_for_the_rest(tmp_path):
    from bertsent.recipes.compress import FIXED_STAGE_SECONDS, OTHER_STAGES, _Stages

    weights = {"student": 1.0, "student pruned": 1.0}
    plan = RecipePlan.load(tmp_path / PLAN_FILE, 9000, weights, {OTHER_STAGES: 1000.0})
    stages = _Stages(tmp_path / "teacher", tmp_path, plan)
    stages.fixed = ["student int8", "pruned int8"]
    given = plan.seconds_for("student")
    stages.measured_now("student", given + 300)  # scored before and after, as the reserve priced it
    assert plan.stages[OTHER_STAGES].reserve == pytest.approx(700)
    pruned = plan.seconds_for("student pruned")
    # The released time went to training.
    assert pruned == pytest.approx(9000 * (1 - HEADROOM) - (given + 300) - 700, abs=1)
    stages.measured_now("student pruned", pruned - 100)  # within its share: the reserve stays
    assert plan.stages[OTHER_STAGES].reserve == pytest.approx(700)
    stages.reserve_fixed(5000)  # never below the fixed costs of the stages still to run
    assert plan.stages[OTHER_STAGES].reserve == pytest.approx(2 * FIXED_STAGE_SECONDS)


def test_a_route_left_to_backend_auto_is_priced_at_the_fastest_full_precision_route(tmp_path):
    plan = RecipePlan.load(tmp_path / PLAN_FILE, 9000, WEIGHTS, RESERVES)
    plan.measured("torch", 20.0, 6)
    plan.measured("openvino", 40.0, 6)
    plan.measured("onnx-int8", 80.0, 6)  # INT8 is not what auto runs a full-precision folder at
    assert plan.scoring_seconds([("auto", 6, 400)]) == pytest.approx(10.0)
