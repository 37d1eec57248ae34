"""The scaffold every compression stage runs in; the stage modules keep only their algorithm.

What prune, factorize, trim-vocab, early-exit, quantize and export share, done one way:

- :func:`open_source`: the checked source and output folders, the thread policy
  (:func:`bertsent.runtime.torch_threads`: ``threads``, else ``$BERTSENT_THREADS``, else PyTorch's own),
  the seed, the device, and the source model in fp32 eval mode with its tokenizer and trained length;
- :func:`stage_reviews`: the reviews a stage reads, from the given data or the one the folder records;
- :func:`score_folder` / :func:`score_model`: before and after go through ``Predictor`` (a saved folder)
  or the same batched loop (a model in memory), both in **fp32**: a stage's before/after comparison then
  measures the stage, not a reduced precision the CPU may pick (``precision="auto"`` is bf16 on AMX).
  Quantize is about precision: its reference is fp32, the quantized folder runs as it will be run;
- :func:`recover`: the optional recovery fine-tuning (``training.loop.train``, checkpointed, resumed after
  a kill, best epoch on validation); :func:`recovery_data`: the data it trains on;
- the stages' gradient and feature passes (importance, factorization statistics, early exit's cache) run
  in :func:`bertsent.modeling.passes.model_pass` (eval mode, the model's mode restored in ``finally``);
- :func:`finish`: ``metrics.json``, the card and, last, ``compression.json`` (a folder is complete once
  that is written: a stage killed before it reruns whole), once; and the one :class:`StageResult`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bertsent.folder import COMPRESSION_FILE, METRICS_FILE, inference_settings, source_and_output

if TYPE_CHECKING:
    import numpy as np
    import torch

    from bertsent.config import DataConfig
    from bertsent.encoding import Encoded

log = logging.getLogger(__name__)

CARD_METRICS = (("accuracy", "Validation accuracy"), ("f1", "Validation F1"))
"""The validation metrics a stage's card shows before and after."""

SCORING_PRECISION = "fp32"
"""The precision every stage's before/after scores run in (see the module docstring)."""


@dataclass
class StageResult:
    """What every compression stage returns: its folder, what ``compression.json`` and ``metrics.json``
    hold, and the model in memory where the stage built one (None for exports and quantization)."""

    output_dir: Path
    record: dict
    metrics: dict
    model: Any = None

    @property
    def compression(self) -> dict:
        """The record under the name prune's result gave it before every stage returned this type."""
        return self.record


@dataclass
class Source:
    """A stage's source: folders, the model (fp32, eval mode, on ``device``), its tokenizer and length."""

    folder: Path
    output_dir: Path
    model: Any
    tokenizer: Any
    device: torch.device
    max_length: int
    truncation: str
    threads: int

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id or 0

    def encode(self, texts: list[str]) -> Encoded:
        """``texts`` tokenized as the source was trained (its max length and truncation)."""
        from bertsent.encoding import encode

        return encode(self.tokenizer, texts, self.max_length, self.truncation)


def folders(config, error: type[Exception]) -> tuple[Path, Path]:
    """The checked source folder and the output folder (another one), ``~`` expanded."""
    source, out = source_and_output(config.model, config.output_dir, error)
    return source, out.expanduser()


def apply_run_policy(config) -> int:
    """Threads (:func:`~bertsent.runtime.torch_threads`), seed and quiet transformers; the threads in effect."""
    import torch

    from bertsent.runtime import quiet_transformers, torch_threads

    threads = torch_threads(getattr(config, "threads", None))
    torch.manual_seed(config.seed)
    quiet_transformers()
    return threads


def open_source(config, error: type[Exception]) -> Source:
    """The stage's source by the one policy: folders checked, run policy applied, model loaded."""
    from bertsent.modeling.loading import load_classifier, load_tokenizer
    from bertsent.runtime import pick_device

    source, out = folders(config, error)
    threads = apply_run_policy(config)
    device = pick_device(getattr(config, "device", "auto"))
    model = load_classifier(source).float().eval().to(device)
    tokenizer = load_tokenizer(source)
    max_length, truncation = inference_settings(source, tokenizer)
    return Source(source, out, model, tokenizer, device, max_length, truncation, threads)


def stage_reviews(
    source: Path,
    config,
    *,
    train_samples: int | None = None,
    train: bool = False,
    extra: tuple[str, ...] = (),
    validation_samples: int | None = None,
):
    """``(splits, None)`` of the given or recorded data (``config.data``), or ``(None, reason)`` when there is
    none to read (:func:`bertsent.data.recorded.recorded_reviews`, labels checked against the source's).
    Validation always (``validation_samples``, by default the stage's own and at least one), training
    reviews when ``train``, and the ``extra`` splits."""
    from bertsent.data.recorded import recorded_reviews
    from bertsent.folder import read_id2label

    if validation_samples is None:
        validation_samples = max(config.validation_samples, 1)
    return recorded_reviews(
        source,
        read_id2label(source),
        config.data,
        validation_samples=validation_samples,
        train_samples=train_samples,
        splits=(*(("train",) if train else ()), "validation", *extra),
    )


@dataclass
class Scores:
    """One model's scores on the stage's reviews: metrics, probabilities and the token ids it read."""

    metrics: dict
    probs: np.ndarray
    ids: list


def score_folder(folder: Path, texts: list[str], labels, config, precision: str = SCORING_PRECISION) -> Scores:
    """``folder`` through ``Predictor`` on the reviews, as users run it, at ``precision``."""
    from bertsent.metrics import classification_metrics
    from bertsent.predict import Predictor

    predictor = Predictor(
        folder,
        batch_size=scoring_batch_size(config),
        device=getattr(config, "device", "cpu"),
        threads=getattr(config, "threads", None),
        precision=precision,
    )
    encoded = predictor.encode(texts)
    started = time.perf_counter()
    probs = predictor.predict_proba(encoded)
    metrics = classification_metrics(labels, probs, predictor.id2label)
    metrics |= {"backend": predictor.backend.name, "seconds": round(time.perf_counter() - started, 2)}
    return Scores(metrics, probs, encoded.ids)


def score_model(source: Source, model, texts: list[str], labels, config) -> dict:
    """Metrics of a changed model in memory (never saved on its own: before recovery) on the reviews, in
    fp32 through the same batched loop ``Predictor`` runs."""
    from bertsent.inference import predict_probs
    from bertsent.metrics import classification_metrics

    device = next(model.parameters()).device
    probs = predict_probs(model, source.encode(texts), scoring_batch_size(config), source.pad_id, device)
    return classification_metrics(labels, probs, model.config.id2label)


def scoring_batch_size(config) -> int:
    return getattr(config, "eval_batch_size", None) or config.batch_size


def recovery_data(folder: Path, config, train_samples: int | None) -> DataConfig:
    """The data recovery trains on: the given or recorded data (``folder``'s), ``train_samples`` training
    reviews and the stage's validation reviews (all of them when ``validation_samples`` is 0)."""
    from bertsent.data.recorded import recorded_data
    from bertsent.errors import DataError

    data, reason = recorded_data(
        folder, config.data, validation_samples=config.validation_samples or None, train_samples=train_samples
    )
    if data is None:
        raise DataError(f"recovery fine-tunes on labelled reviews: {reason}; pass --data")
    return data


def recover(config, model, tokenizer_from: Path, data: DataConfig, length: tuple[int, str], around=None) -> dict | None:
    """Fine-tune the changed ``model`` in memory into ``config.output_dir`` (``training.loop.train``:
    checkpointed, resumed after a kill, best epoch kept on validation), inside ``around(model)`` when
    given (prune holds its zeros there). A ``recovery_time_budget`` on ``config`` trains for that long
    instead of the epochs (the recipe's planner gives each recovery its share). The record of it; None on
    a launcher's other ranks."""
    import dataclasses

    from bertsent.training.distributed import is_main_process
    from bertsent.training.loop import recovery_args, recovery_record, train

    epochs, lr = config.recovery_epochs, config.recovery_lr
    args = recovery_args(config, tokenizer_from, epochs, lr, *length)
    if budget := getattr(config, "recovery_time_budget", None):
        args = dataclasses.replace(args, time_budget=budget)
    make_loss = None
    if teacher := getattr(config, "recovery_teacher", None):
        from bertsent.training.distill import TEACHER_LOGITS, soft_label_loss

        make_loss = soft_label_loss(Path(teacher), model, Path(config.output_dir) / TEACHER_LOGITS)
    with around(model) if around is not None else contextlib.nullcontext():
        result = train(args, data, model=model.train(), make_loss=make_loss)
    model.eval()
    record = recovery_record(result, epochs, lr) | ({"time_budget": budget} if budget else {})
    record |= {"teacher": str(teacher)} if teacher else {}
    return record if is_main_process() else None


def copy_source_files(src: Source) -> None:
    """The source's config, tokenizer files and ``training_args.json`` (max length, truncation, data) into
    the output folder; a tokenizer the folder only names (hub-style) is written out."""
    from bertsent.folder import copy_model_files

    copy_model_files(src.folder, src.output_dir)
    if not (src.output_dir / "tokenizer_config.json").is_file():
        src.tokenizer.save_pretrained(src.output_dir)


def finish(
    out: Path,
    record: dict,
    flat_metrics: Callable[[dict], dict],
    write_card: Callable[[Path, dict], Any] | None,
    model=None,
) -> StageResult:
    """``metrics.json``, the card and ``compression.json`` (last: the folder is complete once it is there)."""
    out.mkdir(parents=True, exist_ok=True)
    metrics = flat_metrics(record)
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2, default=str))
    if write_card is not None:
        write_card(out, record)
    (out / COMPRESSION_FILE).write_text(json.dumps(record, indent=2, default=str))
    log.info("%s: %s written", record.get("method", "stage"), out)
    return StageResult(output_dir=out, record=record, metrics=metrics, model=model)


def validation_pair(before: dict | None, reason: str | None, reviews: int) -> dict:
    """The record's ``validation`` before the stage: the reviews and the source's scores, or why none."""
    validation: dict = {"reviews": reviews}
    if before is None:
        validation["skipped"] = reason or "validation_samples is 0"
    else:
        validation["before"] = before
    return validation


# --- the card's shared parts ----------------------------------------------------------------------------


def pair_rows(record: dict, names: tuple[tuple[str, str], ...]) -> list[str]:
    """Before/after table rows ``| name | before | after |`` of the record's ``{"before", "after"}`` counts."""
    return [f"| {name} | {record[key]['before']:,} | {record[key]['after']:,} |" for name, key in names]


def validation_rows(validation: dict, changed: str, keys: tuple[tuple[str, str], ...]) -> list[str]:
    """Before/after rows of validation metrics, noting the ``changed`` model's score before recovery."""
    if "after" not in validation:
        return []
    rows = []
    for key, name in keys:
        score = (validation.get(changed) or {}).get(key)
        note = f" ({changed}, before recovery: {score:.4f})" if score is not None else ""
        rows.append(f"| {name} | {validation['before'][key]:.4f} | {validation['after'][key]:.4f}{note} |")
    return rows


def measured_text(validation: dict) -> str:
    """The card's sentence on what the before/after scores are (the scaffold's fp32 ``Predictor`` scoring)."""
    if not validation["reviews"]:
        return f"Accuracy was not measured ({validation.get('skipped', 'no evaluation reviews')})."
    return (
        f"Validation metrics on {validation['reviews']} validation reviews (held out from training when the data "
        f"and seed match the training run), through `bertsent.predict.Predictor` in {SCORING_PRECISION}."
    )


def recovery_text(recovery: dict | None) -> str:
    """The card's line on the recovery fine-tuning ('' when there was none)."""
    if recovery:
        run = f"{recovery.get('train_reviews', '?')} training reviews, {recovery.get('steps')} steps"
        run += f", {recovery.get('train_seconds')} s"
        return f"recovery fine-tuning: {recovery['epochs']} epoch(s) at lr {recovery['lr']} ({run}); {recovery['note']}"
    return ""


def stage_card(out: Path, record: dict, sections: dict, **card) -> Path:
    """The stage's README.md: ``write_card`` with the validation results, the data the stage read (the
    record's, else its arguments') and the source as base model."""
    from bertsent.folder import card_base_model, write_card

    validation = record["validation"]
    data = record["arguments"].get("data")
    dataset = (record.get("data") or {}).get("source") or (data.get("source") if isinstance(data, dict) else data)
    return write_card(
        out,
        sections=sections,
        results={"validation": validation["after"]} if "after" in validation else None,
        dataset=dataset,
        base_model=card_base_model(Path(record["source"])),
        **card,
    )
