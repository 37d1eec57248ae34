"""What every training backend shares about a run: its state, and which validation is the best so far.

The PyTorch loop and the Keras ``model.fit`` path both record each validation with
:func:`record_validation`, which keeps the history, picks the best checkpoint by
``metric_for_best_model`` and decides early stopping, so both backends choose models the same way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from bertsent.config import TrainingArguments

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
BEST = "best"
"""Sub-folder of ``checkpoints/`` holding the best model so far."""
HISTORY_KEYS = ("loss", "accuracy", "f1", "f1_macro")


@dataclass
class TrainState:
    """Where a run is; saved in every checkpoint so ``resume`` continues exactly."""

    epoch: int = 0
    step: int = 0  # optimizer steps done in total
    step_in_epoch: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    stopped_early: bool = False
    train_seconds: float = 0.0  # optimizer steps only: validation and checkpoints excluded
    reviews_seen: int = 0
    short_steps: int = 0  # steps trained at ``short_length`` (the sequence-length warm-up)
    history: list[dict] = field(default_factory=list)
    best_validation: dict[str, float] = field(default_factory=dict)
    budget: dict = field(default_factory=dict)
    """``--time-budget``: seconds used so far (all runs) and the plan's warm-up and total steps."""
    lr_choice: dict = field(default_factory=dict)
    """How the learning rate was chosen (``bertsent.training.lr_choice``): a resumed run keeps it."""


@dataclass
class TrainResult:
    output_dir: Path
    metrics: dict[str, float]


def improved(metric: str, value: float, best: float | None) -> bool:
    if best is None:
        return True
    return value < best if metric == "loss" else value > best


def record_validation(state: TrainState, metrics: dict, args: TrainingArguments, epoch: float) -> bool:
    """Log one validation and add it to the history; True when it is the best so far (the caller keeps
    those weights). Sets ``state.stopped_early`` once ``early_stopping_patience`` validations pass
    without improvement."""
    state.history.append({"step": state.step, "epoch": epoch} | {f"eval_{k}": metrics[k] for k in HISTORY_KEYS})
    log.info(
        "step %d: validation accuracy %.4f, F1 %.4f, loss %.4f",
        state.step,
        metrics["accuracy"],
        metrics["f1"],
        metrics["loss"],
    )
    value = metrics[args.metric_for_best_model]
    if improved(args.metric_for_best_model, value, state.best_metric):
        state.best_metric, state.best_step, state.evals_without_improvement = value, state.step, 0
        state.best_validation = {k: v for k, v in metrics.items() if isinstance(v, float)}
        return True
    state.evals_without_improvement += 1
    if args.early_stopping_patience and state.evals_without_improvement >= args.early_stopping_patience:
        log.info("early stopping: no improvement in %d validations", state.evals_without_improvement)
        state.stopped_early = True
    return False
