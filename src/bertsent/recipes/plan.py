"""The recipe's time planner: one wall-clock budget for the whole recipe, shared out among its stages.

Training stages (the teacher, distillation, each recovery) take a ``--time-budget`` of their own; the planner
gives each its share of what is left when it starts: the budget, less what the finished stages used, less the
time reserved for what cannot be trained faster (scoring the table, exports, out-of-domain sets) and a small
headroom (:data:`HEADROOM`), split among the training stages still to run in proportion to their weights. A
stage that ends early leaves its rest to the ones after it; a reserve re-estimated from measured throughput
moves the others' shares at once.

The plan is kept in ``plan.json`` after every change, so a recipe killed halfway continues with what its
finished stages used (their own measured seconds, not the wall clock between sessions). A stage that was
given time and killed before it finished keeps what it was given when the next run continues it (so its
resumed training runs under the same ``--time-budget``).

Reserves are estimated from measured throughput: :meth:`RecipePlan.measured` keeps each route's
reviews/s (times the encoder layers of the model it was measured on, so one 6-layer measurement also
prices a 3-layer student), and :meth:`RecipePlan.scoring_seconds` prices rows still to score with them;
a route not measured yet is priced at its base route (``onnx-int8`` at ``onnx``), else at the slowest measured
one (an upper bound, lowered once measured); ``auto`` (a folder ``--backend auto`` runs on the route it
picks) at the fastest full-precision route measured.

A budget whose reserves leave the training stages less than a share of it is refused before anything trains
(:meth:`RecipePlan.check_fits`): on a slow CPU the table's scoring alone can take the whole budget, and a
teacher trained for the 30-second floor is not a result.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bertsent.config import SettingsError
from bertsent.errors import PlanError
from bertsent.folder import write_json_whole

log = logging.getLogger(__name__)

PLAN_FILE = "plan.json"
MIN_STAGE_SECONDS = 30.0
"""The least a training stage is given: below it, steps would be planned from too few measurements."""
HEADROOM = 0.05
"""Share of the budget no training stage is given: what the plan cannot price (a training stage's own
validation and saving, a stage run slower by a busy machine) comes out of it, not past the budget."""


@dataclass
class StagePlan:
    """One stage of the plan: its weight (training stages) or reserve (the rest), and what it got and used."""

    weight: float = 0.0
    """Share of the training time, relative to the other training stages; 0: not a training stage."""
    reserve: float = 0.0
    """Seconds set aside for it before any training stage is given time (estimated, updated when measured)."""
    planned: float | None = None
    """Seconds it was given when it started (training stages)."""
    used: float | None = None
    """Seconds it took; None until it has finished."""


@dataclass
class RecipePlan:
    """A budget of ``budget`` seconds over named stages (see the module docstring)."""

    budget: float
    stages: dict[str, StagePlan] = field(default_factory=dict)
    path: Path | None = None
    rates: dict[str, float] = field(default_factory=dict)
    """Per route (``torch``, ``onnx``, ``openvino``): measured reviews/s times the layers of the model."""

    @classmethod
    def load(cls, path: Path, budget: float, weights: dict[str, float], reserves: dict[str, float]) -> RecipePlan:
        """The plan in ``path`` when one was saved for the same budget, else a new one; stages named in
        ``weights`` or ``reserves`` that it lacks are added (a recipe may gain stages between runs)."""
        if budget <= 0:
            raise SettingsError(f"a time budget must be > 0 seconds, got {budget}")
        plan = cls(budget, path=path)
        if path.is_file() and (saved := json.loads(path.read_text())).get("budget") == budget:
            plan.stages = {name: StagePlan(**stage) for name, stage in saved["stages"].items()}
            plan.rates = saved.get("rates", {})
        for name, weight in weights.items():
            plan.stages.setdefault(name, StagePlan(weight=weight))
        for name, seconds in reserves.items():
            plan.stages.setdefault(name, StagePlan(reserve=seconds))
        plan.save()
        return plan

    def save(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json_whole(
                self.path,
                {"budget": self.budget, "stages": {k: asdict(v) for k, v in self.stages.items()}, "rates": self.rates},
            )

    @property
    def used(self) -> float:
        """Seconds the finished stages took."""
        return sum(stage.used for stage in self.stages.values() if stage.used is not None)

    def reserved(self) -> float:
        """Seconds still set aside for the stages that are not training stages and have not finished."""
        return sum(s.reserve for s in self.stages.values() if s.used is None and not s.weight)

    def seconds_for(self, name: str) -> float:
        """What training stage ``name`` may take now: its weight's share of the time left after the reserves,
        among the training stages not finished yet (at least :data:`MIN_STAGE_SECONDS`). Recorded as planned."""
        stage = self.stages[name]
        if not stage.weight:
            raise KeyError(f"{name!r} is not a training stage of the plan")
        if stage.planned is not None and stage.used is None:  # a killed run's stage, continued
            return stage.planned
        waiting = sum(s.weight for s in self.stages.values() if s.weight and s.used is None)
        left = self.budget * (1 - HEADROOM) - self.used - self.reserved()
        stage.planned = round(max(MIN_STAGE_SECONDS, left * stage.weight / waiting), 1)
        log.info("plan: %s gets %.0f s of %.0f s left (%.0f s reserved)", name, stage.planned, left, self.reserved())
        self.save()
        return stage.planned

    def estimate(self, name: str, seconds: float) -> None:
        """Set the reserve of ``name`` to a new estimate (e.g. scoring, once a throughput is measured)."""
        self.stages.setdefault(name, StagePlan()).reserve = round(seconds, 1)
        self.save()

    def finished(self, name: str, seconds: float) -> None:
        """Record what stage ``name`` took."""
        self.stages.setdefault(name, StagePlan()).used = round(seconds, 1)
        self.save()

    def measured(self, route: str, reviews_per_second: float, layers: int) -> None:
        """Keep a measured throughput of ``route`` on a model of ``layers`` encoder layers."""
        if reviews_per_second > 0 and layers > 0:
            self.rates[route] = round(reviews_per_second * layers, 3)
            self.save()

    def scoring_seconds(self, rows: list[tuple[str, int, int]]) -> float:
        """Seconds to score ``rows`` (route, layers, reviews) at the measured rates (see the module
        docstring); 0 before anything is measured."""
        if not self.rates:
            return 0.0
        slowest = min(self.rates.values())
        fastest = max((r for route, r in self.rates.items() if not route.endswith("-int8")), default=slowest)

        def rate(route: str) -> float:
            if route == "auto":  # --backend auto: the fastest full-precision route
                return fastest
            return self.rates.get(route) or self.rates.get(route.split("-")[0]) or slowest

        return sum(reviews * layers / rate(route) for route, layers, reviews in rows)

    def check_fits(self, min_training_share: float) -> None:
        """Raise :class:`PlanError` when what is used and reserved leaves the training stages less than
        ``min_training_share`` of the budget, naming the budget that would leave them that much."""
        taken = self.used + self.reserved()
        if self.budget - taken >= min_training_share * self.budget:
            return
        need = taken / (1 - min_training_share)
        waiting = [n for n, s in self.stages.items() if s.used is None and not s.weight]
        biggest = max(waiting, key=lambda n: self.stages[n].reserve)
        rates = ", ".join(f"{route} {rate:.0f}" for route, rate in sorted(self.rates.items()))
        rates = f" at the measured rates (reviews/s x layers: {rates})" if rates else ""
        raise PlanError(
            f"a time budget of {_minutes(self.budget)} cannot hold this recipe on this CPU: what does not train "
            f"needs about {_minutes(taken)} ({biggest} {_minutes(self.stages[biggest].reserve)}){rates}, "
            f"leaving less than {min_training_share:.0%} for training; "
            f"give --time-budget {_minutes(need, up=True)} or more, or fewer test reviews (--eval-samples)"
        )

    def started(self) -> bool:
        """Whether any training stage has been given time yet."""
        return any(s.weight and s.planned is not None for s in self.stages.values())

    def done(self, name: str) -> bool:
        return name in self.stages and self.stages[name].used is not None

    def table(self) -> list[dict]:
        """Each stage's planned (given or reserved) and used seconds, in plan order, and the total."""
        rows = [
            {"stage": name, "planned": s.planned if s.weight else s.reserve, "used": s.used}
            for name, s in self.stages.items()
        ]
        return [*rows, {"stage": "total", "planned": self.budget, "used": self.used}]


def _minutes(seconds: float, up: bool = False) -> str:
    """Whole minutes (rounded, or up with ``up``); under a minute, whole seconds, so a short budget never reads 0m."""
    if seconds < 60:
        return f"{math.ceil(seconds) if up else round(seconds)}s"
    return f"{math.ceil(seconds / 60) if up else round(seconds / 60)}m"
