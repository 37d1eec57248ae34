"""Low-rank factorization of a fine-tuned BERT classifier's encoder Linears (``bertsent factorize``).

Each chosen ``Linear(in, out)`` — the FFN's intermediate and output dense layers (``ffn``) and/or the
attention's query, key, value and output projections (``attention``) of every encoder layer — is replaced
by two thinner ones from a truncated SVD, ``Linear(in, r, bias=False)`` then ``Linear(r, out)``
(:mod:`bertsent.modeling.factorized`). In the order ``factorize`` goes:

1. **Weighting** (``weighting``), measured on ``calibration_samples`` *training* reviews (validation stays
   unseen) on the dense model, before any layer changes:

   - ``none``: the plain SVD, closest to ``W`` in Frobenius norm (Eckart–Young);
   - ``activation``: every input feature's column is scaled by the RMS of that feature over the reviews'
     real tokens (padding excluded) before the SVD and unscaled after (activation-aware SVD, after ASVD,
     Yuan et al. 2023): the truncation then minimises the output error ``E‖(W − Ŵ)x‖²`` on those inputs
     when their features are uncorrelated, instead of treating a feature that is always near 0 like one
     that is large;
   - ``fisher``: every output row is scaled by the square root of its summed squared gradients of the
     cross-entropy (true labels), the row importance of FWSVD (Hsu et al., 2022). The gradients are those
     of mini-batches of ``batch_size`` reviews (an empirical Fisher estimate; per-review gradients would
     cost one backward pass per review).

2. **Rank**: ``rank`` R for every layer (capped at min(in, out)), or per layer the smallest rank whose
   singular values keep ``energy`` of the sum of squared singular values of the (weighted) matrix — so a
   larger ``energy`` never gives a smaller rank. A layer whose factorized form would not hold fewer
   weights (``r·(in + out) ≥ in·out``) is kept dense, logged and recorded as such; when no layer is left
   to factorize the run stops with a SettingsError instead of writing a copy of the source.
3. **Recovery** (``recovery_epochs``, 0 skips): ``bertsent.training.loop.train`` fine-tunes the factorized
   model (both factors of every layer) on ``train_samples`` training reviews, keeping its best epoch by
   validation, as pruning's recovery does.

The ranks are recorded in ``config.json`` (``bertsent_factorization``), so ``load_classifier`` — and with
it ``Predictor``, ``evaluate``, ``compare``, ``serve``, ``export`` and ``quantize`` — rebuilds the
factorized modules; ONNX and OpenVINO exports keep the two thin MatMuls. ``compression.json`` records the
request, every layer's decision, parameters and size before and after, and validation metrics before,
after factorizing (before recovery) and after recovery.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from bertsent.config import FactorizeConfig
from bertsent.errors import DataError, SettingsError
from bertsent.folder import (
    COMPRESSION_FILE,
    METRICS_FILE,
    clear_weights,
    copy_model_files,
    inference_settings,
    read_id2label,
    source_and_output,
    weights_bytes,
)
from bertsent.modeling.factorized import (
    factorization_ranks,
    factorize_module,
    rank_for_energy,
    saves_parameters,
    target_linears,
    weighted_svd,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from bertsent.config import DataConfig
    from bertsent.encoding import Encoded

log = logging.getLogger("bertsent.factorize")

WEIGHTING_RULES = {
    "none": "plain truncated SVD (closest in Frobenius norm)",
    "activation": "columns scaled by the RMS of each input feature over the calibration reviews' tokens "
    "before the SVD, unscaled after (activation-aware, after ASVD)",
    "fisher": "rows scaled by the root of their summed squared mini-batch gradients of the cross-entropy "
    "on the calibration reviews (FWSVD's row importance, Hsu et al. 2022)",
}


@dataclass
class FactorizeResult:
    output_dir: Path
    record: dict
    """What ``compression.json`` holds."""
    metrics: dict
    model: PreTrainedModel
    """The factorized model in memory (what the folder holds)."""


# --- weighting ---------------------------------------------------------------------------------------


@torch.no_grad()
def activation_scales(
    model: nn.Module, encoded: Encoded, paths: list[str], batch_size: int = 16, pad_id: int = 0
) -> dict[str, torch.Tensor]:
    """RMS of every input feature of the Linears at ``paths`` over the real (non-padding) tokens of ``encoded``."""
    from bertsent.encoding import iter_batches

    device = next(model.parameters()).device
    sums = {path: torch.zeros(model.get_submodule(path).in_features, dtype=torch.float64) for path in paths}
    current: dict[str, torch.Tensor] = {}
    tokens = 0

    def hook(path: str):
        def record(module, args):
            x = args[0]
            mask = current["mask"]
            rows = x[mask] if x.shape[:2] == mask.shape else x.reshape(-1, x.shape[-1])
            sums[path].add_(rows.double().square().sum(0).cpu())

        return record

    handles = [model.get_submodule(path).register_forward_pre_hook(hook(path)) for path in paths]
    was_training = model.training
    model.eval()
    try:
        for _, batch in iter_batches(encoded, batch_size, pad_id):
            batch = {k: v.to(device) for k, v in batch.items()}
            current["mask"] = batch["attention_mask"].bool()
            tokens += int(current["mask"].sum())
            model(**batch)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {path: (total / max(tokens, 1)).sqrt() for path, total in sums.items()}


def fisher_scales(
    model: nn.Module, encoded: Encoded, labels: np.ndarray, paths: list[str], batch_size: int = 16, pad_id: int = 0
) -> dict[str, torch.Tensor]:
    """Per output row of the Linears at ``paths``: the root of the summed squared gradients of its weights
    (cross-entropy with the true ``labels``, summed over each mini-batch)."""
    from bertsent.encoding import iter_batches

    device = next(model.parameters()).device
    weights = [model.get_submodule(path).weight for path in paths]
    totals = [torch.zeros(w.shape[0], dtype=torch.float64) for w in weights]
    was_training = model.training
    model.eval()  # no dropout: the weighting should not depend on random masks
    try:
        for idx, batch in iter_batches(encoded, batch_size, pad_id):
            batch = {k: v.to(device) for k, v in batch.items()}
            target = torch.as_tensor(labels[idx], dtype=torch.long, device=device)
            loss = nn.functional.cross_entropy(model(**batch).logits.float(), target, reduction="sum")
            for total, grad in zip(totals, torch.autograd.grad(loss, weights), strict=True):
                total += grad.detach().double().square().sum(1).cpu()
    finally:
        model.train(was_training)
    return {path: total.sqrt() for path, total in zip(paths, totals, strict=True)}


# --- the factorization -------------------------------------------------------------------------------


def factorize_layers(
    model: nn.Module,
    linears: Mapping[str, nn.Linear],
    rank: int | None = None,
    energy: float | None = None,
    rows: Mapping[str, torch.Tensor] | None = None,
    cols: Mapping[str, torch.Tensor] | None = None,
) -> list[dict]:
    """Factorize every Linear of ``linears`` at ``rank`` (or the rank keeping ``energy``) where that saves
    weights, scaled by ``rows``/``cols`` where given; one decision per layer, in order."""
    if (rank is None) == (energy is None):
        raise SettingsError("give exactly one of rank and energy")
    decisions = []
    for path, linear in linears.items():
        spectrum = weighted_svd(linear.weight, (rows or {}).get(path), (cols or {}).get(path))
        n_in, n_out = linear.in_features, linear.out_features
        chosen = min(rank, len(spectrum.s)) if rank is not None else rank_for_energy(spectrum.s, energy)
        saves = saves_parameters(n_in, n_out, chosen)
        decisions.append(
            {
                "module": path,
                "in_features": n_in,
                "out_features": n_out,
                "rank": chosen,
                "full_rank": len(spectrum.s),
                "energy_kept": round(spectrum.energy(chosen), 6),
                "factorized": saves,
                "weights_before": n_in * n_out,
                "weights_after": chosen * (n_in + n_out) if saves else n_in * n_out,
            }
        )
        if saves:
            factorize_module(model, path, spectrum, chosen)
        else:
            log.info(
                "%s: rank %d would hold %d weights, the dense %dx%d %d: kept dense",
                path, chosen, chosen * (n_in + n_out), n_out, n_in, n_in * n_out,
            )  # fmt: skip
    return decisions


def _scales(config: FactorizeConfig, model, tokenizer, reviews, paths: list[str], max_length: int, truncation: str):
    """``(rows, cols)`` scales of the weighting (both None for ``none``), from the calibration reviews."""
    from bertsent.encoding import encode

    if config.weighting == "none":
        return None, None
    tick = time.perf_counter()
    encoded = encode(tokenizer, reviews["text"].tolist(), max_length, truncation)
    pad_id = tokenizer.pad_token_id or 0
    if config.weighting == "activation":
        rows, cols = None, activation_scales(model, encoded, paths, config.batch_size, pad_id)
    else:
        labels = reviews["label"].to_numpy()
        rows, cols = fisher_scales(model, encoded, labels, paths, config.batch_size, pad_id), None
    log.info(
        "%s weighting from %d training reviews in %.1fs", config.weighting, len(reviews), time.perf_counter() - tick
    )
    return rows, cols


# --- the stage ---------------------------------------------------------------------------------------


def _load_source(config: FactorizeConfig):
    """The checked source and output folders, the model (eval mode, on the run's device) and its tokenizer."""
    from bertsent.modeling.loading import load_classifier, load_tokenizer
    from bertsent.runtime import pick_device, quiet_transformers

    source, out = source_and_output(config.model, config.output_dir, SettingsError)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    quiet_transformers()
    model = load_classifier(source).float().eval().to(pick_device(config.device))
    return source, out.expanduser(), model, load_tokenizer(source)


def _load_reviews(config: FactorizeConfig, source: Path):
    """``(splits, recovery data, reason)``: the calibration (train) and validation reviews, and the
    ``DataConfig`` recovery trains on; Nones and the reason when no data is needed or there is none."""
    from bertsent.data.recorded import recorded_data, recorded_reviews

    need_train = config.weighting != "none"
    if not (need_train or config.eval_samples or config.recovery_epochs):
        return None, None, "nothing to measure (weighting none, eval_samples 0, no recovery)"
    splits, reason = recorded_reviews(
        source,
        read_id2label(source),
        config.data,
        validation_samples=max(config.eval_samples, 1),
        train_samples=config.calibration_samples,
        splits=("train", "validation") if need_train else ("validation",),
    )
    if splits is None and (need_train or config.recovery_epochs):
        needs = [
            what
            for what, on in ((f"{config.weighting} weighting", need_train), ("recovery", config.recovery_epochs))
            if on
        ]
        raise DataError(f"labelled reviews are needed for {' and '.join(needs)}: {reason}; pass --data")
    if need_train and len(splits.train) == 0:
        raise DataError(f"{splits.report['source']}: no training reviews to measure the weighting on")
    recovery_data = None
    if config.recovery_epochs:
        recovery_data, _ = recorded_data(
            source, config.data, validation_samples=config.eval_samples, train_samples=config.train_samples
        )
    return splits, recovery_data, reason


def factorize(config: FactorizeConfig) -> FactorizeResult:
    """Factorize ``config.model``'s chosen Linears, recover, and write a self-describing, measured folder."""
    started = time.perf_counter()
    source, out, model, tokenizer = _load_source(config)
    max_length, truncation = inference_settings(source, tokenizer)
    linears = target_linears(model, config.target_list)  # the layout is checked before any slow step
    if config.rank is not None and not any(
        saves_parameters(m.in_features, m.out_features, min(config.rank, m.in_features, m.out_features))
        for m in linears.values()
    ):
        raise SettingsError(_nothing_saved(config))
    splits, recovery_data, reason = _load_reviews(config, source)
    evaluation = splits.validation if splits is not None and config.eval_samples else None
    validation: dict = {"reviews": 0 if evaluation is None else len(evaluation)}
    if evaluation is None:
        validation["skipped"] = reason or "eval_samples is 0"
    else:
        validation["before"] = _validation_metrics(source, evaluation, config)
    parameters_before = sum(p.numel() for p in model.parameters())
    calibration = splits.train if config.weighting != "none" else None
    rows, cols = _scales(config, model, tokenizer, calibration, list(linears), max_length, truncation)
    layers = factorize_layers(model, linears, config.rank, config.energy, rows, cols)
    if not any(layer["factorized"] for layer in layers):
        raise SettingsError(_nothing_saved(config))
    log.info("factorized %d of %d layers", sum(layer["factorized"] for layer in layers), len(layers))
    out.mkdir(parents=True, exist_ok=True)
    clear_weights(out)
    recovery = None
    if config.recovery_epochs:
        if evaluation is not None:
            validation["factorized"] = _in_memory_metrics(model, tokenizer, evaluation, config, max_length, truncation)
        recovery = _recover(config, model, source, recovery_data, max_length, truncation)
        if recovery is None:  # under a launcher the recovery ran on every rank; the main one writes the folder
            return FactorizeResult(output_dir=out, record={}, metrics={}, model=model)
    else:
        copy_model_files(source, out)
    model.save_pretrained(out)  # config.json with the ranks, over the copied one
    if evaluation is not None:
        validation["after"] = _validation_metrics(out, evaluation, config)
    record = _record(config, source, out, model, layers, parameters_before, (max_length, truncation), splits)
    record |= {"validation": validation, "recovery": recovery, "seconds": round(time.perf_counter() - started, 1)}
    return _write_record(out, record, model)


def _nothing_saved(config: FactorizeConfig) -> str:
    rule = f"rank {config.rank}" if config.rank is not None else f"energy {config.energy:g}"
    return (
        f"no layer would get fewer weights at {rule} (rank r saves only when r·(in+out) < in·out): "
        "lower --rank or --energy"
    )


def _validation_metrics(folder: Path, reviews, config: FactorizeConfig) -> dict:
    """Metrics of a saved folder on the validation reviews, through ``Predictor`` in fp32 (as users run it,
    without a reduced precision making source and result differ for another reason)."""
    from bertsent.metrics import classification_metrics
    from bertsent.predict import Predictor

    predictor = Predictor(folder, batch_size=config.eval_batch_size, device=config.device, precision="fp32")
    texts, labels = reviews["text"].tolist(), reviews["label"].to_numpy()
    started = time.perf_counter()
    probs = predictor.predict_proba(texts)
    metrics = classification_metrics(labels, probs, predictor.id2label)
    return metrics | {"backend": predictor.backend.name, "seconds": round(time.perf_counter() - started, 2)}


def _in_memory_metrics(model, tokenizer, reviews, config: FactorizeConfig, max_length: int, truncation: str) -> dict:
    """Metrics of the factorized model before recovery (never saved on its own, so scored in memory)."""
    from bertsent.encoding import encode
    from bertsent.inference import predict_probs
    from bertsent.metrics import classification_metrics

    encoded = encode(tokenizer, reviews["text"].tolist(), max_length, truncation)
    device = next(model.parameters()).device
    probs = predict_probs(model, encoded, config.eval_batch_size, tokenizer.pad_token_id or 0, device)
    return classification_metrics(reviews["label"].to_numpy(), probs, model.config.id2label)


def _recover(config: FactorizeConfig, model, source: Path, data: DataConfig, max_length, truncation) -> dict | None:
    """Fine-tune the factorized model with ``train`` (it writes the folder); None on a launcher's other ranks."""
    from bertsent.training.distributed import is_main_process
    from bertsent.training.loop import recovery_args, recovery_record, train

    epochs, lr = config.recovery_epochs, config.recovery_lr
    result = train(recovery_args(config, source, epochs, lr, max_length, truncation), data, model=model)
    return recovery_record(result, epochs, lr) if is_main_process() else None


def _record(config, source: Path, out: Path, model, layers: list[dict], parameters_before: int, inference, splits):
    """``compression.json`` but for the measurements (validation, recovery, seconds), which come last."""
    max_length, truncation = inference
    factorized = [layer for layer in layers if layer["factorized"]]
    report = splits.report if splits is not None else {}
    return {
        "method": "factorize",
        "source": str(source),
        "arguments": asdict(config),
        "data": {"source": report.get("source"), "origin": report.get("origin")},
        "resolved": {
            "targets": config.target_list,
            "rank_rule": f"rank {config.rank} for every layer (capped at min(in, out))"
            if config.rank is not None
            else f"per layer, the smallest rank keeping {config.energy:g} of the squared singular values",
            "weighting": WEIGHTING_RULES[config.weighting],
            "calibration_reviews": 0 if config.weighting == "none" else len(splits.train),
            "skip_rule": "a layer is kept dense when r·(in+out) >= in·out (no weights saved)",
            "max_length": max_length,
            "truncation": truncation,
        },
        "layers": layers,
        "ranks": factorization_ranks(model),
        "kept_dense": [layer["module"] for layer in layers if not layer["factorized"]],
        "parameters": {"before": parameters_before, "after": sum(p.numel() for p in model.parameters())},
        "factorized_weights": {
            "before": sum(layer["weights_before"] for layer in factorized),
            "after": sum(layer["weights_after"] for layer in factorized),
        },
        "weights_bytes": {"before": weights_bytes(source), "after": weights_bytes(out)},
    }


def _flat_metrics(record: dict) -> dict:
    from bertsent.folder import stage_metrics

    return (
        {"method": "factorize"}
        | stage_metrics(record["parameters"], record["validation"], ("after", "before", "factorized"))
        | {
            "factorized_layers": len(record["ranks"]),
            "weights_bytes": record["weights_bytes"]["after"],
            "weights_bytes_before": record["weights_bytes"]["before"],
        }
    )


def _write_record(out: Path, record: dict, model) -> FactorizeResult:
    """``compression.json``, ``metrics.json`` and the card beside the saved model."""
    metrics = _flat_metrics(record)
    (out / COMPRESSION_FILE).write_text(json.dumps(record, indent=2, default=str))
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    write_factorize_card(out, record)
    log.info("factorized model saved to %s", out)
    return FactorizeResult(output_dir=out, record=record, metrics=metrics, model=model)


# --- the card ----------------------------------------------------------------------------------------


def _card_rows(record: dict) -> list[str]:
    """The card's before/after table rows."""
    rows = [
        f"| {name} | {record[key]['before']:,} | {record[key]['after']:,} |"
        for name, key in (
            ("Parameters", "parameters"),
            ("Weights of the factorized layers", "factorized_weights"),
            ("Weights file (bytes)", "weights_bytes"),
        )
    ]
    validation = record["validation"]
    if "after" in validation:
        for key, name in (("accuracy", "Validation accuracy"), ("f1", "Validation F1")):
            before_recovery = validation.get("factorized", {}).get(key)
            note = f" (factorized, before recovery: {before_recovery:.4f})" if before_recovery is not None else ""
            rows.append(f"| {name} | {validation['before'][key]:.4f} | {validation['after'][key]:.4f}{note} |")
    return rows


def _card_done(record: dict) -> str:
    """The card's "What was done" text."""
    resolved, ranks = record["resolved"], record["ranks"]
    lines = [
        f"- replaced {len(ranks)} of {len(record['layers'])} encoder Linears ({', '.join(resolved['targets'])}) by "
        f"two thinner ones from a truncated SVD: `Linear(in, r, bias=False)` then `Linear(r, out)`",
        f"- rank: {resolved['rank_rule']}; ranks used: {sorted(set(ranks.values()))}",
        f"- weighting: {resolved['weighting']}",
    ]
    if record["kept_dense"]:
        lines.append(f"- kept dense ({resolved['skip_rule']}): {len(record['kept_dense'])} layers")
    recovery = record["recovery"]
    if recovery:
        lines.append(
            f"- recovery fine-tuning: {recovery['epochs']} epoch(s) at lr {recovery['lr']} "
            f"({recovery.get('steps')} steps, {recovery.get('train_seconds')} s); {recovery['note']}"
        )
    return "\n".join(lines)


def write_factorize_card(out: Path, record: dict) -> Path:
    """The README.md of a factorized folder: what was replaced, at which ranks, and what was measured."""
    from bertsent.folder import card_base_model, write_card

    validation = record["validation"]
    measured = (
        f"Validation metrics on {validation['reviews']} validation reviews (held out from training when the data "
        "and seed match the training run), through `bertsent.predict.Predictor` in fp32."
        if validation["reviews"]
        else f"Accuracy was not measured ({validation.get('skipped')})."
    )
    sections = {
        "What was done": _card_done(record),
        "What was measured": "| | Before | After |\n|---|---|---|\n"
        + "\n".join(_card_rows(record))
        + f"\n\n{measured} "
        "This stage measures no latency: fewer multiply-adds do not always mean a faster model (two thin "
        "matrix products instead of one); `benchmarks/factorize.py` and `bertsent compare` measure it.",
        "Use": "The factorized layers are not stock BERT modules (`bertsent_factorization` in `config.json`):\n"
        "**`transformers.pipeline` and stock `from_pretrained` cannot load this folder.** Load it with\n"
        "`bertsent.modeling.load_classifier`, `bertsent.predict.Predictor` or `bertsent predict`; `bertsent export`\n"
        "and `bertsent quantize` keep the factorized shape.\n\n"
        f'```python\nfrom bertsent.predict import Predictor\nPredictor("{out}")(["A wonderful, moving film."])\n```\n\n'
        f"The full record (arguments, every layer's rank and kept energy) is in `{COMPRESSION_FILE}`.",
    }
    data = record["arguments"].get("data")
    return write_card(
        out,
        title="Low-rank factorized sentiment classifier (bertsent factorize)",
        summary=f"Factorized from `{record['source']}`.",
        sections=sections,
        results={"validation": validation["after"]} if "after" in validation else None,
        dataset=record["data"].get("source") or (data.get("source") if isinstance(data, dict) else data),
        base_model=card_base_model(Path(record["source"])),
        tags=["factorized", "low-rank"],
    )
