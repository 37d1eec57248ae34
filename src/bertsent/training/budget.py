"""``--time-budget``: as many optimizer steps as fit in the time given, with the learning rate reaching
zero at the deadline (linear decay to the budget beats a truncated schedule: Li, Yumer & Ramanan,
"Budgeted Training", ICLR 2020).

The step count is planned from what the run measures: seconds per optimizer step (the median of the
recent steps), seconds per validation and per checkpoint (the last ones, or an estimate before the first),
and the validations still to come. It is planned again every :data:`REPLAN_EVERY` steps, so a machine
that slows down or speeds up still ends on time; the schedule follows the plan. Time spent in earlier runs
of the same training (``--resume``) counts against the budget.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

REPLAN_EVERY = 10
PROBE_STEPS = 5
"""Steps timed before the first plan (their learning rate follows the warm-up of a rough first guess)."""
EVAL_SPEEDUP = 3.0
"""Before the first validation: scoring a review is taken as 3x faster than training on it."""


@dataclass
class Budget:
    """The time a run may take and how it is being spent; its plan is what the schedule reads."""

    seconds: float
    used_before: float = 0.0
    warmup_steps: int = 0
    total_steps: int = 0
    validation_seconds: float | None = None
    checkpoint_seconds: float = 2.0
    warmup_planned: bool = False
    short_seconds: float = 0.0
    """Sequence-length warm-up: the first this many seconds train on shorter reviews (0: none)."""
    cost_ratio: float = 1.0
    """A full-length step's cost over a short one's, estimated from the token counts until measured."""
    short_until: int = 0
    """The step the short phase ends at, as last planned (fixed once reached)."""

    def __post_init__(self) -> None:
        self.started = time.perf_counter()
        self.step_seconds: list[float] = []

    def used(self) -> float:
        return self.used_before + time.perf_counter() - self.started

    def factor(self, step: int) -> float:
        """The learning-rate multiplier at ``step``: linear warm-up, then linear decay to 0 at the plan's end."""
        if step < self.warmup_steps:
            return step / max(1, self.warmup_steps)
        return max(0.0, (self.total_steps - step) / max(1, self.total_steps - self.warmup_steps))

    def plan(self, step: int, steps_per_epoch: int, validation_reviews: int, args) -> int:
        """Set ``total_steps`` to what fits in the time left (at least ``step``, so a late plan ends now)."""
        # The median of the recent steps: the first ones pay one-off costs (allocations, lazy inits).
        recent = sorted(self.step_seconds[1:][-50:] or self.step_seconds)
        per_step = recent[len(recent) // 2]
        left = self.seconds - self.used()
        short = self.in_short_phase(step)
        # In the short phase, the steps until its deadline at the measured (short) rate, then full-length
        # steps at the estimated rate; after it, full-length steps at the measured rate.
        short_steps = math.floor(max(0.0, self.short_seconds - self.used()) / per_step) if short else 0
        long_per_step = per_step * self.cost_ratio if short else per_step
        per_validation = self.validation_seconds
        if per_validation is None:  # validation always runs at full length
            per_validation = validation_reviews * long_per_step / args.batch_size / EVAL_SPEEDUP
        steps = 0
        for _ in range(3):  # the pauses to come depend on the steps to come: settle it in a few rounds
            validations = _count(step, steps, steps_per_epoch, args.eval_steps)
            checkpoints = _count(step, steps, steps_per_epoch, args.save_steps)
            reserve = validations * per_validation + checkpoints * self.checkpoint_seconds
            room = max(0.0, left - reserve)
            first = min(short_steps, math.floor(room / per_step))
            steps = first + math.floor((room - first * per_step) / long_per_step)
        if short:
            self.short_until = step + first
        self.total_steps = step + steps
        if not self.warmup_planned:  # the first plan fixes the warm-up: a share of the planned steps
            self.warmup_steps, self.warmup_planned = int(args.warmup_ratio * self.total_steps), True
        return self.total_steps

    def in_short_phase(self, step: int) -> bool:
        """Whether ``step`` still trains on short reviews (before the first plan: while time allows)."""
        return self.short_seconds > 0 and (step < self.short_until or not self.warmup_planned)


def _count(step: int, steps: int, steps_per_epoch: int, every: int | None) -> int:
    """Pauses (validations or checkpoints) in the next ``steps`` steps: each epoch's end, every ``every``
    steps, and the end of the run."""
    ends = (step + steps) // steps_per_epoch - step // steps_per_epoch
    periodic = (step + steps) // every - step // every if every else 0
    return 1 + ends + periodic
