"""Fine-tuning: a BERT encoder plus a softmax head, trained with Adam(W) and cross-entropy.

The loop is plain PyTorch and reads top to bottom: load data, encode, build the model and optimizer,
(resume,) train with periodic validation and checkpoints, keep the best model, evaluate on test, and
write a self-describing folder that ``evaluate``, ``predict`` and ``transformers.pipeline`` load.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from bertsent.config import DataConfig, TrainingArguments
from bertsent.data.loading import Splits, load_data
from bertsent.encoding import Encoded, collate, encode, length_grouped_batches
from bertsent.errors import DataError, SettingsError
from bertsent.inference import predict_probs
from bertsent.modeling.loading import load_classifier, load_tokenizer, resolve_model
from bertsent.runtime import autocast_dtype, pick_device

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger("bertsent.train")

ARGS_FILE = "training_args.json"
METRICS_FILE = "metrics.json"
CHECKPOINTS = "checkpoints"
BEST = "best"


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
    history: list[dict] = field(default_factory=list)
    best_validation: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainResult:
    output_dir: Path
    metrics: dict[str, float]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


def validate(model, encoded: Encoded, labels: np.ndarray, args: TrainingArguments, pad_id, device, dtype):
    """Validation metrics (flat dict) of the model as it is now."""
    from bertsent.metrics import classification_metrics

    probs = predict_probs(model, encoded, args.eval_batch_size, pad_id, device, dtype)
    metrics = classification_metrics(labels, probs, model.config.id2label)
    metrics["loss"] = metrics["log_loss"]
    return metrics


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


def improved(metric: str, value: float, best: float | None) -> bool:
    if best is None:
        return True
    return value < best if metric == "loss" else value > best


LossFn = Callable[["PreTrainedModel", dict[str, torch.Tensor], torch.Tensor, np.ndarray], torch.Tensor]
"""``loss(model, batch, labels, row_indices)``: runs the forward pass and returns the mean loss."""


def load_and_encode(args: TrainingArguments, data: DataConfig) -> tuple[Splits, object, Encoded, Encoded]:
    """Load the splits and encode train and validation: one path for every training backend.

    Validation is carved from train; test is never looked at for model selection.
    """
    started = time.perf_counter()
    splits = load_data(data)
    tokenizer = load_tokenizer(args.model)
    train_enc = encode(tokenizer, splits.train["text"].tolist(), args.max_length, args.truncation)
    val_enc = encode(tokenizer, splits.validation["text"].tolist(), args.max_length, args.truncation)
    log.info(
        "data: %d train, %d validation, %s test reviews; encoded in %.1fs (%.0f%% of train truncated)",
        len(train_enc),
        len(val_enc),
        "no" if splits.test is None else len(splits.test),
        time.perf_counter() - started,
        100 * np.mean(train_enc.full_lengths > args.max_length),
    )
    return splits, tokenizer, train_enc, val_enc


def cross_entropy_loss(model, batch: dict[str, torch.Tensor], labels: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
    """Cross-entropy over the softmax head: the fine-tuning objective."""
    return torch.nn.functional.cross_entropy(model(**batch).logits.float(), labels)


def train(
    args: TrainingArguments,
    data: DataConfig,
    model: PreTrainedModel | None = None,
    make_loss: Callable[[Splits, Encoded, torch.device], LossFn] | None = None,
) -> TrainResult:
    """Fine-tune ``args.model`` on ``data`` and write the output folder; returns its path and metrics.

    ``model`` fine-tunes an in-memory classifier instead (e.g. a pruned one, for recovery); its labels
    must match the data's. ``args.model`` still names the folder its tokenizer comes from.
    ``make_loss(splits, train_encoded, device)`` builds another training objective once the data is
    loaded (distillation uses it to cache the teacher's logits); the default is cross-entropy.
    """
    if args.backend == "keras":
        if model is not None or make_loss is not None:
            raise SettingsError("--backend keras fine-tunes a model folder with cross-entropy only")
        from bertsent.training.keras import train_keras

        return train_keras(args, data)
    from transformers import get_linear_schedule_with_warmup

    output_dir = Path(args.output_dir)
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    device = pick_device(args.device)
    dtype = autocast_dtype(args.precision, device)

    splits, tokenizer, train_enc, val_enc = load_and_encode(args, data)
    train_labels = splits.train["label"].to_numpy()
    val_labels = splits.validation["label"].to_numpy()

    # Model: the encoder's weights plus a fresh softmax head sized for the labels.
    overrides = {} if args.attention_dropout is None else {"attention_probs_dropout_prob": args.attention_dropout}
    if model is None:
        model = load_classifier(args.model, splits.id2label, **overrides)
    elif {int(k): v for k, v in model.config.id2label.items()} != splits.id2label:
        raise DataError(f"labels of the data {splits.id2label} differ from the model's {model.config.id2label}")
    model = model.to(device)
    loss_fn = make_loss(splits, train_enc, device) if make_loss else cross_entropy_loss
    model.config.problem_type = "single_label_classification"  # cross-entropy over a softmax
    pad_id = tokenizer.pad_token_id or 0
    optimizer = build_optimizer(model, args)
    batches_per_epoch = math.ceil(len(train_enc) / args.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / args.gradient_accumulation_steps)
    total_steps = args.max_steps or steps_per_epoch * args.epochs
    n_epochs = math.ceil(total_steps / steps_per_epoch)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(args.warmup_ratio * total_steps), total_steps)

    state = TrainState()
    checkpoints = _checkpoint_dirs(output_dir)
    if args.resume and checkpoints:
        state = load_checkpoint(checkpoints[-1], model, optimizer, scheduler)
        log.info("resumed from %s (epoch %d, step %d)", checkpoints[-1], state.epoch, state.step)
    elif args.resume:
        log.warning("--resume: no checkpoint in %s, starting from scratch", output_dir / CHECKPOINTS)
    elif checkpoints:
        log.warning(
            "%s holds checkpoints of an earlier run; they are replaced (pass --resume to continue)",
            output_dir,
        )
        shutil.rmtree(output_dir / CHECKPOINTS)
    output_dir.mkdir(parents=True, exist_ok=True)

    def evaluate_now() -> None:
        metrics = validate(model, val_enc, val_labels, args, pad_id, device, dtype)
        state.history.append(
            {"step": state.step, "epoch": round(state.step / steps_per_epoch, 4)}
            | {f"eval_{k}": metrics[k] for k in ("loss", "accuracy", "f1", "f1_macro")}
        )
        value = metrics[args.metric_for_best_model]
        log.info(
            "step %d: validation accuracy %.4f, F1 %.4f, loss %.4f",
            state.step,
            metrics["accuracy"],
            metrics["f1"],
            metrics["loss"],
        )
        if improved(args.metric_for_best_model, value, state.best_metric):
            state.best_metric, state.best_step, state.evals_without_improvement = value, state.step, 0
            state.best_validation = {k: v for k, v in metrics.items() if isinstance(v, float)}
            model.save_pretrained(output_dir / CHECKPOINTS / BEST)
        else:
            state.evals_without_improvement += 1
            if args.early_stopping_patience and state.evals_without_improvement >= args.early_stopping_patience:
                log.info("early stopping: no improvement in %d validations", state.evals_without_improvement)
                state.stopped_early = True

    from tqdm.auto import tqdm

    bar = tqdm(
        total=total_steps,
        initial=state.step,
        desc="training",
        unit="step",
        disable=not args.progress if args.progress is not None else None,
    )
    model.train()
    running, running_n = 0.0, 0
    while state.epoch < n_epochs and state.step < total_steps and not state.stopped_early:
        # Same seed per epoch on every run, so resuming mid-epoch replays the same batches.
        batches = length_grouped_batches(train_enc.lengths, args.batch_size, seed=args.seed + state.epoch)
        groups = [
            batches[i : i + args.gradient_accumulation_steps]
            for i in range(0, len(batches), args.gradient_accumulation_steps)
        ]
        tick = time.perf_counter()
        for group in groups[state.step_in_epoch :]:
            n_group = sum(len(b) for b in group)
            for idx in group:
                batch = {k: v.to(device) for k, v in collate(train_enc, idx, pad_id).items()}
                labels = torch.from_numpy(train_labels[idx]).to(device)
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    loss = loss_fn(model, batch, labels, idx)
                # Weight each micro-batch by its size: the step's loss is the mean over its reviews.
                loss = loss * (len(idx) / n_group)
                loss.backward()
                running += loss.item() * n_group
                running_n += len(idx)
            state.reviews_seen += n_group
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.step_in_epoch += 1
            bar.update(1)
            if state.step % args.logging_steps == 0 or state.step_in_epoch == len(groups):
                state.history.append(
                    {
                        "step": state.step,
                        "epoch": round(state.step / steps_per_epoch, 4),
                        "loss": running / running_n,
                        "lr": scheduler.get_last_lr()[0],
                    }
                )
                bar.set_postfix(loss=f"{running / running_n:.4f}")
                if bar.disable:  # no terminal (a log file, CI): progress as log lines instead
                    rate = state.reviews_seen / max(state.train_seconds + time.perf_counter() - tick, 1e-9)
                    log.info(
                        "step %d/%d: loss %.4f, %.1f reviews/s", state.step, total_steps, running / running_n, rate
                    )
                running, running_n = 0.0, 0
            end_of_epoch = state.step_in_epoch == len(groups) or state.step == total_steps
            if end_of_epoch:
                state.epoch += 1
                state.step_in_epoch = 0
            if end_of_epoch or (args.eval_steps and state.step % args.eval_steps == 0):
                state.train_seconds += time.perf_counter() - tick
                evaluate_now()
                tick = time.perf_counter()
            if end_of_epoch or (args.save_steps and state.step % args.save_steps == 0) or state.stopped_early:
                state.train_seconds += time.perf_counter() - tick
                save_checkpoint(output_dir, model, optimizer, scheduler, state, args)
                tick = time.perf_counter()
            if state.stopped_early or end_of_epoch:
                break
    bar.close()
    return finish(args, data, splits, output_dir, model, tokenizer, state, device, dtype, pad_id)


def finish(
    args, data, splits: Splits, output_dir: Path, model, tokenizer, state: TrainState, device, dtype, pad_id, extra=None
):
    """Keep the best model, evaluate it on test, and write the self-describing output folder.

    ``extra`` adds backend-specific entries to ``metrics.json`` (the Keras path's parity check).
    """
    from safetensors.torch import load_file

    from bertsent.folder import write_model_card
    from bertsent.metrics import plot_training_curves

    best = output_dir / CHECKPOINTS / BEST
    model.load_state_dict(load_file(best / "model.safetensors"), strict=False)
    # Inference settings travel with the folder: pipeline() truncates to model_max_length.
    tokenizer.model_max_length = args.max_length
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)

    n_params = sum(p.numel() for p in model.parameters())
    metrics: dict = {
        "num_parameters": n_params,
        "train_reviews": len(splits.train),
        "validation_reviews": len(splits.validation),
        "best_step": state.best_step,
        f"best_validation_{args.metric_for_best_model}": state.best_metric,
        "steps": state.step,
        "stopped_early": state.stopped_early,
        "train_seconds": round(state.train_seconds, 1),
        "train_reviews_per_second": round(state.reviews_seen / max(state.train_seconds, 1e-9), 2),
    }
    metrics |= {f"validation_{k}": v for k, v in state.best_validation.items()} | (extra or {})
    if args.evaluate_test and splits.test is not None:
        from bertsent.evaluate import report

        test_enc = encode(tokenizer, splits.test["text"].tolist(), args.max_length, args.truncation)
        probs = predict_probs(model, test_enc, args.eval_batch_size, pad_id, device, dtype)
        metrics |= report(output_dir / "eval-test", splits.test, test_enc, probs, model.config.id2label, "test_")
    metrics["data"] = splits.report
    plot_training_curves(state.history, output_dir / "training_curves.png")
    (output_dir / "history.json").write_text(json.dumps(state.history, indent=1))
    (output_dir / ARGS_FILE).write_text(
        json.dumps(
            {"training": asdict(args) | {"resolved_model": resolve_model(args.model)}, "data": asdict(data)},
            indent=2,
        )
    )
    (output_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    write_model_card(output_dir, args, data, metrics)
    if not args.keep_checkpoints:
        shutil.rmtree(output_dir / CHECKPOINTS, ignore_errors=True)
    log.info("model saved to %s", output_dir)
    return TrainResult(output_dir=output_dir, metrics=metrics)
