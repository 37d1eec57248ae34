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
   model (both factors of every layer) on ``recovery_samples`` training reviews, keeping its best epoch by
   validation, as pruning's recovery does.

The ranks are recorded in ``config.json`` (``bertsent_factorization``), so ``load_classifier`` — and with
it ``Predictor``, ``evaluate``, ``compare``, ``serve``, ``export`` and ``quantize`` — rebuilds the
factorized modules; ONNX and OpenVINO exports keep the two thin MatMuls. ``compression.json`` records the
request, every layer's decision, parameters and size before and after, and validation metrics before,
after factorizing (before recovery) and after recovery.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from bertsent.compression import stage
from bertsent.config import FactorizeConfig
from bertsent.errors import DataError, SettingsError
from bertsent.folder import COMPRESSION_FILE, clear_weights, weights_bytes
from bertsent.modeling.factorized import (
    factorization_ranks,
    factorize_module,
    rank_for_energy,
    saves_parameters,
    target_linears,
    weighted_svd,
)
from bertsent.modeling.passes import model_pass, pass_batches

if TYPE_CHECKING:
    from bertsent.encoding import Encoded

log = logging.getLogger(__name__)

WEIGHTING_RULES = {
    "none": "plain truncated SVD (closest in Frobenius norm)",
    "activation": "columns scaled by the RMS of each input feature over the calibration reviews' tokens "
    "before the SVD, unscaled after (activation-aware, after ASVD)",
    "fisher": "rows scaled by the root of their summed squared mini-batch gradients of the cross-entropy "
    "on the calibration reviews (FWSVD's row importance, Hsu et al. 2022)",
}


FactorizeResult = stage.StageResult
"""The name factorize's result had before every stage returned a :class:`~bertsent.compression.stage.StageResult`."""


# --- weighting ---------------------------------------------------------------------------------------


def activation_scales(
    model: nn.Module, encoded: Encoded, paths: list[str], batch_size: int = 16, pad_id: int = 0
) -> dict[str, torch.Tensor]:
    """RMS of every input feature of the Linears at ``paths`` over the real (non-padding) tokens of ``encoded``."""
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
    try:
        with model_pass(model):
            for _, batch in pass_batches(model, encoded, batch_size, pad_id, desc="activation statistics"):
                current["mask"] = batch["attention_mask"].bool()
                tokens += int(current["mask"].sum())
                model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return {path: (total / max(tokens, 1)).sqrt() for path, total in sums.items()}


def fisher_scales(
    model: nn.Module, encoded: Encoded, labels: np.ndarray, paths: list[str], batch_size: int = 16, pad_id: int = 0
) -> dict[str, torch.Tensor]:
    """Per output row of the Linears at ``paths``: the root of the summed squared gradients of its weights
    (cross-entropy with the true ``labels``, summed over each mini-batch)."""
    device = next(model.parameters()).device
    weights = [model.get_submodule(path).weight for path in paths]
    totals = [torch.zeros(w.shape[0], dtype=torch.float64) for w in weights]
    with model_pass(model, grad=True):  # no dropout: the weighting should not depend on random masks
        for idx, batch in pass_batches(model, encoded, batch_size, pad_id, desc="Fisher weighting"):
            target = torch.as_tensor(labels[idx], dtype=torch.long, device=device)
            loss = nn.functional.cross_entropy(model(**batch).logits.float(), target, reduction="sum")
            for total, grad in zip(totals, torch.autograd.grad(loss, weights), strict=True):
                total += grad.detach().double().square().sum(1).cpu()
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


def _scales(config: FactorizeConfig, src: stage.Source, reviews, paths: list[str]):
    """``(rows, cols)`` scales of the weighting (both None for ``none``), from the calibration reviews."""
    if config.weighting == "none":
        return None, None
    tick = time.perf_counter()
    model, encoded, pad_id = src.model, src.encode(reviews["text"].tolist()), src.pad_id
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


def _load_reviews(config: FactorizeConfig, source: Path):
    """``(splits, reason)``: the calibration (train) and validation reviews; None and the reason when no data
    is needed or there is none."""
    need_train = config.weighting != "none"
    if not (need_train or config.validation_samples or config.recovery_epochs):
        return None, "nothing to measure (weighting none, validation_samples 0, no recovery)"
    splits, reason = stage.stage_reviews(source, config, train_samples=config.calibration_samples, train=need_train)
    if splits is None and (need_train or config.recovery_epochs):
        needs = [
            what
            for what, on in ((f"{config.weighting} weighting", need_train), ("recovery", config.recovery_epochs))
            if on
        ]
        raise DataError(f"labelled reviews are needed for {' and '.join(needs)}: {reason}; pass --data")
    if need_train and len(splits.train) == 0:
        raise DataError(f"{splits.report['source']}: no training reviews to measure the weighting on")
    return splits, reason


def _check_request(config: FactorizeConfig, linears: Mapping[str, nn.Linear]) -> None:
    """A fixed rank that saves no layer's weights is refused before any slow step."""
    if config.rank is not None and not any(
        saves_parameters(m.in_features, m.out_features, min(config.rank, m.in_features, m.out_features))
        for m in linears.values()
    ):
        raise SettingsError(_nothing_saved(config))


def factorize(config: FactorizeConfig) -> stage.StageResult:
    """Factorize ``config.model``'s chosen Linears, stage.recover, and write a self-describing, measured folder."""
    started = time.perf_counter()
    src = stage.open_source(config, SettingsError)
    model, out = src.model, src.output_dir
    linears = target_linears(model, config.target_list)  # the layout is checked before any slow step
    _check_request(config, linears)
    splits, reason = _load_reviews(config, src.folder)
    evaluation = splits.validation if splits is not None and config.validation_samples else None
    texts, labels = ([], None) if evaluation is None else (evaluation["text"].tolist(), evaluation["label"].to_numpy())
    before = None if evaluation is None else stage.score_folder(src.folder, texts, labels, config).metrics
    validation = stage.validation_pair(before, reason, len(texts))
    parameters_before = sum(p.numel() for p in model.parameters())
    calibration = splits.train if config.weighting != "none" else None
    rows, cols = _scales(config, src, calibration, list(linears))
    layers = factorize_layers(model, linears, config.rank, config.energy, rows, cols)
    if not any(layer["factorized"] for layer in layers):
        raise SettingsError(_nothing_saved(config))
    log.info("factorized %d of %d layers", sum(layer["factorized"] for layer in layers), len(layers))
    out.mkdir(parents=True, exist_ok=True)
    clear_weights(out)
    recovery = None
    if config.recovery_epochs:
        if evaluation is not None:
            validation["factorized"] = stage.score_model(src, model, texts, labels, config)
        data = stage.recovery_data(src.folder, config, config.recovery_samples)
        recovery = stage.recover(config, model, src.folder, data, (src.max_length, src.truncation))
        if recovery is None:  # under a launcher the recovery ran on every rank; the main one writes the folder
            return stage.StageResult(output_dir=out, record={}, metrics={}, model=model)
    else:
        stage.copy_source_files(src)
    model.save_pretrained(out)  # config.json with the ranks, over the copied one
    if evaluation is not None:
        validation["after"] = stage.score_folder(out, texts, labels, config).metrics
    record = _record(config, src, model, layers, parameters_before, splits)
    record |= {"validation": validation, "recovery": recovery, "seconds": round(time.perf_counter() - started, 1)}
    return stage.finish(out, record, _flat_metrics, write_factorize_card, model)


def _nothing_saved(config: FactorizeConfig) -> str:
    rule = f"rank {config.rank}" if config.rank is not None else f"energy {config.energy:g}"
    return (
        f"no layer would get fewer weights at {rule} (rank r saves only when r·(in+out) < in·out): "
        "lower --rank or --energy"
    )


def _record(config, src: stage.Source, model, layers: list[dict], parameters_before: int, splits):
    """``compression.json`` but for the measurements (validation, recovery, seconds), which come last."""
    factorized = [layer for layer in layers if layer["factorized"]]
    report = splits.report if splits is not None else {}
    return {
        "method": "factorize",
        "source": str(src.folder),
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
            "max_length": src.max_length,
            "truncation": src.truncation,
        },
        "layers": layers,
        "ranks": factorization_ranks(model),
        "kept_dense": [layer["module"] for layer in layers if not layer["factorized"]],
        "parameters": {"before": parameters_before, "after": sum(p.numel() for p in model.parameters())},
        "factorized_weights": {
            "before": sum(layer["weights_before"] for layer in factorized),
            "after": sum(layer["weights_after"] for layer in factorized),
        },
        "weights_bytes": {"before": weights_bytes(src.folder), "after": weights_bytes(src.output_dir)},
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


# --- the card ----------------------------------------------------------------------------------------


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
    if record["recovery"]:
        lines.append(f"- {stage.recovery_text(record['recovery'])}")
    return "\n".join(lines)


def write_factorize_card(out: Path, record: dict) -> Path:
    """The README.md of a factorized folder: what was replaced, at which ranks, and what was measured."""
    names = (
        ("Parameters", "parameters"),
        ("Weights of the factorized layers", "factorized_weights"),
        ("Weights file (bytes)", "weights_bytes"),
    )
    rows = stage.pair_rows(record, names) + stage.validation_rows(
        record["validation"], "factorized", stage.CARD_METRICS
    )
    sections = {
        "What was done": _card_done(record),
        "What was measured": "| | Before | After |\n|---|---|---|\n"
        + "\n".join(rows)
        + f"\n\n{stage.measured_text(record['validation'])} "
        "This stage measures no latency: fewer multiply-adds do not always mean a faster model (two thin "
        "matrix products instead of one); `benchmarks/factorize.py` and `bertsent compare` measure it.",
        "Use": "The factorized layers are not stock BERT modules (`bertsent_factorization` in `config.json`):\n"
        "**`transformers.pipeline` and stock `from_pretrained` cannot load this folder.** Load it with\n"
        "`bertsent.modeling.load_classifier`, `bertsent.predict.Predictor` or `bertsent predict`; `bertsent export`\n"
        "and `bertsent quantize` keep the factorized shape.\n\n"
        f'```python\nfrom bertsent.predict import Predictor\nPredictor("{out}")(["A wonderful, moving film."])\n```\n\n'
        f"The full record (arguments, every layer's rank and kept energy) is in `{COMPRESSION_FILE}`.",
    }
    title = "Low-rank factorized sentiment classifier (bertsent factorize)"
    summary = f"Factorized from `{record['source']}`."
    return stage.stage_card(out, record, sections, title=title, summary=summary, tags=["factorized", "low-rank"])
