"""Fine-tuning: a BERT encoder plus a softmax head, trained with Adam(W) and cross-entropy.

The loop is plain PyTorch run through Hugging Face Accelerate, and reads top to bottom: :func:`setup` loads
the data, encodes it and builds the model, optimizer and schedule (resuming a checkpoint if asked); :func:`fit`
trains with periodic validation and checkpoints, keeping the best model; :func:`bertsent.training.output.finish`
scores it on test and writes the folder. Under ``accelerate launch`` / ``torchrun`` each process takes its
share of every global batch (:mod:`bertsent.training.distributed`). ``--backend keras`` hands the same
arguments to ``model.fit``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from bertsent.config import DataConfig, TrainingArguments, budget_seconds
from bertsent.data.loading import Splits
from bertsent.encoding import Encoded, collate, length_grouped_batches, shorten
from bertsent.errors import DataError, SettingsError
from bertsent.inference import predict_probs
from bertsent.modeling.cls_only import cls_only_training
from bertsent.modeling.loading import load_classifier
from bertsent.runtime import autocast_dtype, pick_device
from bertsent.training import distributed
from bertsent.training.budget import PROBE_STEPS, REPLAN_EVERY, Budget
from bertsent.training.inputs import load_and_encode, seed_everything
from bertsent.training.lr_choice import choose_lr
from bertsent.training.output import finish
from bertsent.training.tracking import BEST, CHECKPOINTS, TrainResult, TrainState, record_validation

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)

LossFn = Callable[["PreTrainedModel", dict[str, torch.Tensor], torch.Tensor, np.ndarray], torch.Tensor]
"""``loss(model, batch, labels, row_indices)``: runs the forward pass and returns the mean loss."""


def build_optimizer(model: torch.nn.Module, args: TrainingArguments) -> torch.optim.Optimizer:
    """Adam(W) with no weight decay on biases and LayerNorm weights (the BERT recipe)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "LayerNorm" in name else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": args.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # foreach: one multi-tensor update instead of a Python loop per parameter (faster on CPU too).
    if args.optimizer == "adam":
        # torch's Adam adds L2 to the gradient when weight_decay > 0, like the original Keras setup.
        return torch.optim.Adam(groups, lr=args.lr, foreach=True)
    return torch.optim.AdamW(groups, lr=args.lr, foreach=True)


def validate(
    model, encoded: Encoded, labels: np.ndarray, args: TrainingArguments, pad_id, device, dtype, accelerator=None
):
    """Validation metrics (flat dict) of the model as it is now; with an ``accelerator`` of several
    processes, each scores its share of the rows and the probabilities are gathered first."""
    from bertsent.metrics import classification_metrics

    def predict(rows: Encoded) -> np.ndarray:
        return predict_probs(model, rows, args.eval_batch_size, pad_id, device, dtype)

    probs = predict(encoded) if accelerator is None else distributed.sharded_probs(accelerator, predict, encoded)
    metrics = classification_metrics(labels, probs, model.config.id2label)
    metrics["loss"] = metrics["log_loss"]
    return metrics


# --- checkpoints ---------------------------------------------------------------------------------------


def _checkpoint_dirs(output_dir: Path) -> list[Path]:
    root = output_dir / CHECKPOINTS
    found = [p for p in root.glob("step-*") if (p / "state.json").is_file()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(output_dir: Path, model, optimizer, scheduler, state: TrainState, args: TrainingArguments):
    """Everything needed to continue exactly: weights, optimizer, schedule, RNG and loop state."""
    path = output_dir / CHECKPOINTS / f"step-{state.step}"
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
        tmp / "trainer.pt",
    )
    (tmp / "state.json").write_text(json.dumps(asdict(state), indent=1))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)  # a checkpoint appears whole or not at all, even if the run is killed meanwhile
    if args.save_total_limit is not None:
        for old in _checkpoint_dirs(output_dir)[: -args.save_total_limit]:
            shutil.rmtree(old)
    return path


def load_checkpoint(path: Path, model, optimizer, scheduler) -> TrainState:
    from safetensors.torch import load_file

    model.load_state_dict(load_file(path / "model.safetensors"), strict=False)
    saved = torch.load(path / "trainer.pt", weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng"])
    if saved["cuda_rng"]:
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    return TrainState(**json.loads((path / "state.json").read_text()))


def cross_entropy_loss(model, batch: dict[str, torch.Tensor], labels: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
    """Cross-entropy over the softmax head: the fine-tuning objective."""
    return torch.nn.functional.cross_entropy(model(**batch).logits.float(), labels)


# --- the run ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    """Everything :func:`fit` works with, built once by :func:`setup`."""

    args: TrainingArguments
    output_dir: Path
    device: torch.device
    dtype: torch.dtype | None
    splits: Splits
    tokenizer: Any
    train_enc: Encoded
    val_enc: Encoded
    model: Any
    loss_fn: LossFn
    pad_id: int
    optimizer: torch.optim.Optimizer
    scheduler: Any
    steps_per_epoch: int
    total_steps: int
    state: TrainState
    accelerator: Any
    budget: Budget | None = None
    short_enc: Encoded | None = None
    """The training reviews cut to ``short_length`` (sequence-length warm-up), or None."""

    def __post_init__(self) -> None:
        self.train_labels = self.splits.train["label"].to_numpy()
        self.val_labels = self.splits.validation["label"].to_numpy()

    def training_rows(self) -> Encoded:
        """The training reviews at this step's length: short during the sequence-length warm-up."""
        if self.short_enc is None:
            return self.train_enc
        step = self.state.step
        short = self.budget.in_short_phase(step) if self.budget else step < self.args.short_share * self.total_steps
        return self.short_enc if short else self.train_enc

    @property
    def unwrapped(self):
        """The model without its DDP wrapper: what is scored, saved and written."""
        return self.accelerator.unwrap_model(self.model)


def train(
    args: TrainingArguments,
    data: DataConfig,
    model: PreTrainedModel | None = None,
    make_loss: Callable[[Splits, Encoded, torch.device], LossFn] | None = None,
    cls_only: bool = True,
) -> TrainResult:
    """Fine-tune ``args.model`` on ``data`` and write the output folder; returns its path and metrics.

    ``model`` fine-tunes an in-memory classifier instead (e.g. a pruned one, for recovery); its labels
    must match the data's. ``args.model`` still names the folder its tokenizer comes from.
    ``make_loss(splits, train_encoded, device)`` builds another training objective once the data is
    loaded (distillation uses it to cache the teacher's logits); the default is cross-entropy.
    ``cls_only``: the last layer computes [CLS] only (``modeling.cls_only``); off for a loss that reads
    the last layer's other positions.
    """
    if args.backend == "keras":
        if model is not None or make_loss is not None:
            raise SettingsError("--backend keras fine-tunes a model folder with cross-entropy only")
        from bertsent.training.keras import train_keras

        return train_keras(args, data)
    run = setup(args, data, model, make_loss)
    with cls_only_training(run.unwrapped) if cls_only else contextlib.nullcontext():
        fit(run)
    if not run.accelerator.is_main_process:  # the main process alone scores test and writes the folder
        return TrainResult(output_dir=run.output_dir, metrics={})
    return finish(
        run.args,
        data,
        run.splits,
        run.output_dir,
        run.unwrapped,
        run.tokenizer,
        run.state,
        run.device,
        run.dtype,
        run.pad_id,
    )


RECOVERY_SAVE_STEPS = 200
"""Pruning's recovery epoch over IMDB's training split (``compress``) is about 1,400 steps: 17 minutes on
2 CPU cores, so a kill costs at most a few minutes of it."""


def recovery_args(stage, source: Path, epochs: int, lr: float, max_length: int, truncation: str) -> TrainingArguments:
    """The fine-tuning a compression stage (prune, factorize) runs on its changed model in memory: into the
    stage's ``output_dir``, the tokenizer from ``source``, no test scoring (evaluate and compare score test);
    batch sizes, seed, device and threads are the stage's own. It checkpoints every ``RECOVERY_SAVE_STEPS``
    and continues from the last checkpoint a killed run of the stage left (the stage rebuilds the same
    model first, so the checkpoint's weights fit it); the checkpoints go when it ends."""
    from bertsent.config import passed_on

    return TrainingArguments(
        output_dir=stage.output_dir,
        model=str(source),
        max_length=max_length,
        truncation=truncation,
        epochs=epochs,
        lr=lr,
        save_steps=RECOVERY_SAVE_STEPS,
        resume=bool(_checkpoint_dirs(Path(stage.output_dir))),  # no "no checkpoint" warning on a first run
        keep_checkpoints=False,
        evaluate_test=False,
        **passed_on(stage, "batch_size", "eval_batch_size", "seed", "device", "threads"),
    )


def recovery_record(result: TrainResult, epochs: int, lr: float) -> dict:
    """What a stage records of its recovery fine-tuning (the steps, time and best validation)."""
    keys = ("steps", "train_seconds", "best_step", "validation_accuracy", "train_reviews")
    return {
        "epochs": epochs,
        "lr": lr,
        "note": "recovery keeps its best epoch on the same validation reviews that are reported",
    } | {k: result.metrics[k] for k in keys if k in result.metrics}


def setup(args: TrainingArguments, data: DataConfig, model=None, make_loss=None) -> Run:
    """Data, model (the encoder plus a fresh softmax head sized for the labels), optimizer, schedule."""
    from transformers import get_linear_schedule_with_warmup

    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    device = pick_device(args.device)
    dtype = autocast_dtype(args.precision, device)
    accelerator = distributed.make_accelerator(args, device, dtype)
    device = accelerator.device  # cuda:LOCAL_RANK under a launcher
    distributed.describe(accelerator, args)
    splits, tokenizer, train_enc, val_enc = load_and_encode(args, data)
    overrides = {} if args.attention_dropout is None else {"attention_probs_dropout_prob": args.attention_dropout}
    if model is None:
        model = load_classifier(args.model, splits.id2label, args.pooling, **overrides)
    elif {int(k): v for k, v in model.config.id2label.items()} != splits.id2label:
        raise DataError(f"labels of the data {splits.id2label} differ from the model's {model.config.id2label}")
    model = model.to(device)
    loss_fn = make_loss(splits, train_enc, device) if make_loss else cross_entropy_loss
    model.config.problem_type = "single_label_classification"  # cross-entropy over a softmax
    batches_per_epoch = math.ceil(len(train_enc) / args.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / args.gradient_accumulation_steps)
    total_steps = args.max_steps or steps_per_epoch * args.epochs
    output_dir = Path(args.output_dir)
    pad_id = tokenizer.pad_token_id or 0
    lr_dir = output_dir if accelerator.is_main_process else None  # every rank runs the same test; one plots
    args, lr_choice = _choose_lr(args, lr_dir, model, total_steps, train_enc, splits, device, pad_id, loss_fn)
    optimizer = build_optimizer(model, args)
    budget = None
    short_enc = shorten(train_enc, tokenizer, args.short_length, args.truncation) if args.short_length else None
    if args.time_budget:
        budget = Budget(budget_seconds(args.time_budget), warmup_steps=int(args.warmup_ratio * total_steps))
        budget.total_steps = total_steps  # a first guess, until the first steps are timed
        if short_enc is not None:  # a step's cost taken as its tokens', until full-length steps are timed
            budget.short_seconds = args.short_share * budget.seconds
            budget.cost_ratio = float(train_enc.lengths.mean() / short_enc.lengths.mean())
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, budget.factor)
    else:
        scheduler = get_linear_schedule_with_warmup(optimizer, int(args.warmup_ratio * total_steps), total_steps)
    state = _start_or_resume(args, output_dir, model, optimizer, scheduler, accelerator)
    # The scheduler stays ours: it steps once per optimizer step, whatever the number of processes.
    model, optimizer = accelerator.prepare(model, optimizer)
    if budget and state.budget:  # resumed: the time already spent counts, and the plan continues
        budget.used_before = state.budget["used_seconds"]
        budget.warmup_steps, budget.total_steps = state.budget["warmup_steps"], state.budget["total_steps"]
        budget.warmup_planned, total_steps = True, budget.total_steps
        budget.short_until = state.budget.get("short_until", 0)
    state.lr_choice = state.lr_choice or lr_choice
    output_dir.mkdir(parents=True, exist_ok=True)
    distributed.start_trackers(accelerator, args)
    return Run(
        args=args,
        output_dir=output_dir,
        device=device,
        dtype=dtype,
        splits=splits,
        tokenizer=tokenizer,
        train_enc=train_enc,
        val_enc=val_enc,
        model=model,
        loss_fn=loss_fn,
        pad_id=pad_id,
        optimizer=optimizer,
        scheduler=scheduler,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        state=state,
        accelerator=accelerator,
        budget=budget,
        short_enc=short_enc,
    )


def _choose_lr(args, output_dir: Path, model, total_steps, train_enc, splits, device, pad_id, loss_fn):
    """``args`` with the learning rate to use, and how it was chosen (given, the rule, or the range test;
    a resumed run keeps the choice its checkpoint records)."""
    checkpoints = _checkpoint_dirs(Path(args.output_dir))
    if (args.lr is None or args.lr == "auto") and args.resume and checkpoints:
        saved = json.loads((checkpoints[-1] / "state.json").read_text()).get("lr_choice")
        if saved:
            return dataclasses.replace(args, lr=saved["lr"]), saved
    factory = lambda m: build_optimizer(m, dataclasses.replace(args, lr=1e-7))  # noqa: E731
    labels = splits.train["label"].to_numpy()
    return choose_lr(args, model, total_steps, (train_enc, labels), (factory, loss_fn), device, pad_id, output_dir)


def _start_or_resume(args: TrainingArguments, output_dir: Path, model, optimizer, scheduler, accelerator) -> TrainState:
    """A fresh state, or the latest checkpoint's with ``resume`` (every rank loads it); an earlier run's
    checkpoints otherwise go (the main process removes them while the others wait)."""
    checkpoints = _checkpoint_dirs(output_dir)
    if args.resume and checkpoints:
        state = load_checkpoint(checkpoints[-1], model, optimizer, scheduler)
        log.info("resumed from %s (epoch %d, step %d)", checkpoints[-1], state.epoch, state.step)
        return state
    if args.resume:
        log.warning("--resume: no checkpoint in %s, starting from scratch", output_dir / CHECKPOINTS)
    elif checkpoints and accelerator.is_main_process:
        log.warning("%s holds checkpoints of an earlier run; they are replaced (pass --resume to continue)", output_dir)
        shutil.rmtree(output_dir / CHECKPOINTS)
    accelerator.wait_for_everyone()
    return TrainState()


def fit(run: Run) -> None:
    """Train until the last step (or early stopping), validating and checkpointing as configured."""
    from tqdm.auto import tqdm

    args, state = run.args, run.state
    n_epochs = math.ceil(run.total_steps / run.steps_per_epoch)
    progress = not args.progress if args.progress is not None else None
    progress = progress if run.accelerator.is_main_process else True  # one bar, on the main process
    bar = tqdm(total=run.total_steps, initial=state.step, desc="training", unit="step", disable=progress)
    run.model.train()
    while (run.budget or state.epoch < n_epochs) and state.step < run.total_steps and not state.stopped_early:
        # Same seed per epoch on every run, so resuming mid-epoch replays the same batches.
        batches = length_grouped_batches(run.train_enc.lengths, args.batch_size, seed=args.seed + state.epoch)
        step = args.gradient_accumulation_steps
        groups = [batches[i : i + step] for i in range(0, len(batches), step)]
        _epoch(run, groups, bar)
    bar.close()
    run.accelerator.end_training()  # flush and close the --report-to trackers


def _epoch(run: Run, groups: list, bar) -> None:
    """The rest of the current epoch (all of it unless resuming mid-epoch): one optimizer step a group."""
    args, state = run.args, run.state
    tick = time.perf_counter()
    running = [0.0, 0]  # summed loss x reviews, and reviews, since the last log line
    for group in groups[state.step_in_epoch :]:
        started = time.perf_counter()
        _optimizer_step(run, group, running)
        if run.budget:
            _follow_budget(run, time.perf_counter() - started, bar)
        bar.update(1)
        if state.step % args.logging_steps == 0 or state.step_in_epoch == len(groups):
            _log_progress(run, running, bar, tick)
            running[:] = [0.0, 0]
        end_of_epoch = state.step_in_epoch == len(groups) or state.step == run.total_steps
        if end_of_epoch:
            state.epoch += 1
            state.step_in_epoch = 0
        if end_of_epoch or (args.eval_steps and state.step % args.eval_steps == 0):
            state.train_seconds += time.perf_counter() - tick
            _validate_and_keep_best(run)
            tick = time.perf_counter()
        if end_of_epoch or (args.save_steps and state.step % args.save_steps == 0) or state.stopped_early:
            state.train_seconds += time.perf_counter() - tick
            _save(run)
            tick = time.perf_counter()
        if state.stopped_early or end_of_epoch:
            return


def _follow_budget(run: Run, step_seconds: float, bar) -> None:
    """Time the step; every few steps, plan the steps that still fit in the budget (the schedule follows)."""
    budget, state = run.budget, run.state
    budget.step_seconds.append(step_seconds)
    if budget.short_seconds and state.step == budget.short_until:
        budget.step_seconds.clear()  # full-length steps from here: time those, not the short ones
    # After the switch, plan again once a few full-length steps are timed.
    if state.step == PROBE_STEPS or (state.step % REPLAN_EVERY == 0 and len(budget.step_seconds) > 2):
        args = run.args
        plan = budget.plan(state.step, run.steps_per_epoch, len(run.val_enc), args)
        # Timed on the main process's clock: every rank must stop (and switch length) at the same step.
        plan = min(plan, args.max_steps or plan)
        run.total_steps, budget.short_until = distributed.agreed(run.accelerator, (plan, budget.short_until))
        bar.total = run.total_steps
        bar.refresh()


def _save(run: Run) -> None:
    started = time.perf_counter()
    if run.budget:
        run.state.budget = {
            "used_seconds": round(run.budget.used(), 1),
            "budget_seconds": run.budget.seconds,
            "warmup_steps": run.budget.warmup_steps,
            "total_steps": run.total_steps,
            "short_until": run.budget.short_until,
        }
    if run.accelerator.is_main_process:
        save_checkpoint(run.output_dir, run.unwrapped, run.optimizer, run.scheduler, run.state, run.args)
    run.accelerator.wait_for_everyone()
    if run.budget:
        run.budget.checkpoint_seconds = time.perf_counter() - started


def _optimizer_step(run: Run, group: list[np.ndarray], running: list) -> None:
    """Forward and backward over this rank's share of the group's micro-batches, then clip, step and
    advance the schedule."""
    acc, n_group = run.accelerator, sum(len(b) for b in group)
    rows_enc = run.training_rows()
    run.state.short_steps += rows_enc is not run.train_enc
    for i, idx in enumerate(group):
        share = distributed.rank_share(idx, acc)
        # A rank whose share is empty (a last batch smaller than the process count) still runs one row
        # with weight 0: DDP needs every rank in every gradient all-reduce.
        rows, weight = (share, len(share)) if len(share) else (idx[:1], 0)
        batch = {k: torch.from_numpy(v).to(run.device) for k, v in collate(rows_enc, rows, run.pad_id).items()}
        labels = torch.from_numpy(run.train_labels[rows]).to(run.device)
        # Gradients are all-reduced once per optimizer step, on the group's last micro-batch.
        sync = contextlib.nullcontext() if i == len(group) - 1 else acc.no_sync(run.model)
        with sync:
            with acc.autocast():
                loss = run.loss_fn(run.model, batch, labels, rows)
            # Weight each share by its size: the step's loss is the mean over the group's reviews; the
            # factor num_processes undoes DDP's mean over ranks (x 1 in one process: the same bits as before).
            loss = loss * (weight / n_group) * acc.num_processes
            acc.backward(loss)
        running[0] += loss.item() * n_group / acc.num_processes
        running[1] += weight
    run.state.reviews_seen += n_group
    acc.clip_grad_norm_(run.model.parameters(), run.args.max_grad_norm)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.state.step += 1
    run.state.step_in_epoch += 1


def _log_progress(run: Run, running: list, bar, tick: float) -> None:
    state = run.state
    loss_sum, reviews = distributed.summed(run.accelerator, running)  # every rank's reviews, not one's
    loss = loss_sum / reviews
    entry = {"step": state.step, "epoch": round(state.step / run.steps_per_epoch, 4), "loss": loss}
    lr = run.scheduler.get_last_lr()[0]
    state.history.append(entry | {"lr": lr})
    bar.set_postfix(loss=f"{loss:.4f}")
    rate = state.reviews_seen / max(state.train_seconds + time.perf_counter() - tick, 1e-9)
    run.accelerator.log(
        {"train/loss": loss, "train/learning_rate": lr, "train/reviews_per_second": rate}, step=state.step
    )
    if bar.disable:  # no terminal (a log file, CI): progress as log lines instead
        log.info("step %d/%d: loss %.4f, %.1f reviews/s", state.step, run.total_steps, loss, rate)


def _validate_and_keep_best(run: Run) -> None:
    started = time.perf_counter()
    model, acc = run.unwrapped, run.accelerator
    metrics = validate(model, run.val_enc, run.val_labels, run.args, run.pad_id, run.device, run.dtype, acc)
    numbers = {f"eval/{k}": v for k, v in metrics.items() if isinstance(v, int | float) and "/" not in k}
    acc.log(numbers, step=run.state.step)
    # Every rank has the gathered metrics, so all agree on "best" and on early stopping.
    if record_validation(run.state, metrics, run.args, round(run.state.step / run.steps_per_epoch, 4)):
        if acc.is_main_process:
            model.save_pretrained(run.output_dir / CHECKPOINTS / BEST)
        acc.wait_for_everyone()
    if run.budget:
        run.budget.validation_seconds = time.perf_counter() - started
