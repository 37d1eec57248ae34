"""The end of every training run, whatever the backend: keep the best weights, score them on test, and
write the self-describing folder (weights, tokenizer, ``training_args.json``, ``metrics.json``, history,
curves, model card) that ``evaluate``, ``predict`` and ``transformers.pipeline`` load."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path

from bertsent.data.loading import Splits
from bertsent.encoding import encode
from bertsent.folder import ARGS_FILE, METRICS_FILE
from bertsent.inference import TorchBackend, run
from bertsent.modeling.loading import resolve_model
from bertsent.modeling.pooling import pooling_layer
from bertsent.runtime import precision_name
from bertsent.training.tracking import BEST, CHECKPOINTS, TrainResult, TrainState

log = logging.getLogger(__name__)


def run_metrics(args, splits: Splits, model, state: TrainState) -> dict:
    """What the run did: sizes, steps, time, the best validation's metrics."""
    metrics: dict = {
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "pooling": "cls" if pooling_layer(model.config) is None else "mean",  # what --pooling auto chose
        "train_reviews": len(splits.train),
        "validation_reviews": len(splits.validation),
        "best_step": state.best_step,
        f"best_validation_{args.metric_for_best_model}": state.best_metric,
        "steps": state.step,
        "stopped_early": state.stopped_early,
        "train_seconds": round(state.train_seconds, 1),
        "train_reviews_per_second": round(state.reviews_seen / max(state.train_seconds, 1e-9), 2),
    }
    if state.budget:  # --time-budget: what was given and what training (validation included) took
        metrics |= {
            "time_budget_seconds": state.budget["budget_seconds"],
            "time_used_seconds": state.budget["used_seconds"],
        }
    if state.short_steps:  # the sequence-length warm-up: how much of the run was short
        metrics |= {"short_length": args.short_length, "short_length_steps": state.short_steps}
    return metrics | {f"validation_{k}": v for k, v in state.best_validation.items()}


def calibrate_in_memory(args, splits: Splits, model, tokenizer, device, dtype, pad_id):
    """Fit T on the validation split's logits and fold it into ``model``; the :class:`InMemoryCalibration`."""
    from bertsent.calibration import InMemoryCalibration

    encoded = encode(tokenizer, splits.validation["text"].tolist(), args.max_length, args.truncation)
    logits = run(TorchBackend.from_model(model, device, dtype), encoded, args.eval_batch_size, pad_id)
    return InMemoryCalibration.fit(model, logits, splits.validation["label"].to_numpy())


def finish(
    args, data, splits: Splits, output_dir: Path, model, tokenizer, state: TrainState, device, dtype, pad_id, extra=None
) -> TrainResult:
    """Keep the best model, evaluate it on test, and write the output folder.

    ``extra`` adds backend-specific entries to ``metrics.json`` (the Keras path's parity check).
    """
    import torch
    from safetensors.torch import load_file

    from bertsent.evaluate import write_limitations
    from bertsent.folder import write_model_card
    from bertsent.metrics import plot_training_curves

    model.load_state_dict(load_file(output_dir / CHECKPOINTS / BEST / "model.safetensors"), strict=False)
    # Inference settings travel with the folder: pipeline() truncates to model_max_length.
    tokenizer.model_max_length = args.max_length
    tokenizer.save_pretrained(output_dir)
    metrics = run_metrics(args, splits, model, state) | (extra or {})
    # --calibrate: T is fitted on validation and folded into the model before anything is scored or saved.
    calibration = calibrate_in_memory(args, splits, model, tokenizer, device, dtype, pad_id) if args.calibrate else None
    model.save_pretrained(output_dir)
    if args.evaluate_test and splits.test is not None:
        from bertsent.evaluate import report

        test_enc = encode(tokenizer, splits.test["text"].tolist(), args.max_length, args.truncation)
        logits = run(TorchBackend.from_model(model, device, dtype), test_enc, args.eval_batch_size, pad_id)
        probs = torch.softmax(torch.from_numpy(logits).to(device), dim=-1).cpu().numpy()  # as predict_probs
        metrics |= report(output_dir / "eval-test", splits.test, test_enc, probs, model.config.id2label, "test_")
        if calibration is not None:  # the test logits are already scaled: T times them are the ones before
            calibration.add("test", logits * calibration.record["temperature"], splits.test["label"].to_numpy())
    metrics["data"] = splits.report
    plot_training_curves(state.history, output_dir / "training_curves.png")
    (output_dir / "history.json").write_text(json.dumps(state.history, indent=1))
    resolved = {
        "resolved_model": resolve_model(args.model),
        "lr_choice": state.lr_choice,
        "resolved_precision": precision_name(dtype),  # what auto chose on this machine
    }
    recorded = {"training": asdict(args) | resolved, "data": asdict(data)}
    (output_dir / ARGS_FILE).write_text(json.dumps(recorded, indent=2))
    (output_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    write_model_card(output_dir, args, data, metrics)
    if calibration is not None:
        calibration.write(output_dir)
    write_limitations(output_dir)
    if not args.keep_checkpoints:
        shutil.rmtree(output_dir / CHECKPOINTS, ignore_errors=True)
    log.info("model saved to %s", output_dir)
    return TrainResult(output_dir=output_dir, metrics=metrics)
