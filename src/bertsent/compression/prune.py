"""Pruning a fine-tuned BERT classifier: attention heads, FFN neurons, whole layers, small weights.

Structured pruning really removes weights (the Linear layers shrink), so the model gets smaller and
does less arithmetic; unstructured magnitude pruning only zeroes weights that stay stored densely, so
it makes no size or speed claim. Decisions, in the order ``prune`` applies them:

1. **Layers** (``drop_layers`` or ``keep_layers``) go first, so importance is measured on the model
   as it will run. ``keep_layers=K`` keeps K evenly spaced layers *ending with the last one* (every
   other layer for K = n/2): the pooler and classifier were fine-tuned on the last layer's output.
2. **Importance** (Michel et al., 2019, "Are Sixteen Heads Really Better than One?"): a gate of ones
   multiplies each head's context (before ``attention.output.dense``) and each FFN neuron's activation
   (before ``output.dense``); importance is the absolute gradient of the summed cross-entropy (true
   labels) w.r.t. the gate, accumulated per batch over ``importance_samples`` *training* reviews, so
   the validation reviews used to score the result stay unseen. The model is in eval mode (no dropout).
3. **Heads**: importance is L2-normalised per layer (as Michel et al.), then the globally least
   important heads are removed until ``heads_fraction`` of the model's heads are gone, every layer
   keeping at least one.
4. **FFN neurons**: ``ffn_fraction`` of every layer's intermediate neurons, the least important by the
   same gradient gate (data-driven, unlike weight magnitude, which ignores how often a neuron fires).
5. **Sparsity**: the smallest-magnitude ``sparsity`` share of the weights of *each* encoder Linear is
   zeroed (per matrix, not global, so no matrix is hollowed out; biases, embeddings, pooler and
   classifier are untouched). The zeros are written into the weights: no reparametrisation.
6. **Recovery** (``recovery_epochs``): ``bertsent.train.train`` fine-tunes the pruned model; the zeroed
   weights get zero gradients, so they stay zero (Adam moves a weight whose gradients were all zero
   by exactly 0).

A mean-pooling layer (``modeling.pooling``) is the head's, not the encoder's: layer selection, heads and FFN
neurons are chosen among the other layers (``drop_layers``/``keep_layers`` count those), and its heads stay
whole and it stays last, because each of its heads carries one slice of the mean. Its feed-forward is
there only because a stock BERT layer has one: initialised near zero, it stays so in training (weight std
0.0024 on the recipe's teacher, 0.056 in the layer below; cutting it there moved no label of 300 test
reviews and no probability by more than 0.0016), so with FFN pruning on it is cut to the one neuron a
layer keeps. That is 1.18M parameters of MiniLM's shape, a sixth of a 3-layer student's encoder.

A non-uniform pruned model cannot be rebuilt by stock ``from_pretrained``, so its layout lives in
``config.json`` under ``bertsent_pruning``: ``{"layers": [original layer ids], "heads": {"<layer>":
[kept original head ids]}, "intermediate": {"<layer>": size}}``; :func:`load_pruned_classifier` builds
the model from the config, shrinks it to that layout and loads the safetensors weights strictly.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from bertsent.compression import stage
from bertsent.config import PruneConfig
from bertsent.data.loading import stratified_subset
from bertsent.errors import ModelError, PruneError
from bertsent.folder import COMPRESSION_FILE, WEIGHTS_FILE, model_folder, weights_bytes
from bertsent.modeling.passes import model_pass, pass_batches
from bertsent.modeling.pooling import own_layers, pooling_layer
from bertsent.modeling.pruned import encoder_layers, prune_ffn, prune_heads, pruning_layout, retain_layers

if TYPE_CHECKING:
    from bertsent.encoding import Encoded

log = logging.getLogger(__name__)


PruneResult = stage.StageResult
"""The name prune's result had before every stage returned a :class:`~bertsent.compression.stage.StageResult`
(``record`` is what ``compression.json`` holds; it was ``compression`` here)."""


@dataclass
class Importance:
    """Gradient importance of heads and FFN neurons (Michel et al., 2019), before normalisation.

    ``heads`` has shape ``(layers, num_attention_heads)``, indexed by *original* head id (as in the
    layout); heads an earlier pruning removed are NaN. ``ffn`` holds one array per layer with a value
    per current intermediate neuron.
    """

    heads: np.ndarray
    ffn: list[np.ndarray]
    samples: int


# --- model structure and layout ----------------------------------------------------------------------


def _encoder_linears(model: nn.Module) -> Iterator[tuple[str, nn.Linear]]:
    for name, module in model.base_model.encoder.named_modules():
        if isinstance(module, nn.Linear):
            yield f"{model.base_model_prefix}.encoder.{name}", module


@torch.no_grad()
def magnitude_prune(model: nn.Module, sparsity: float) -> dict[str, torch.Tensor]:
    """Zero the ``sparsity`` share of smallest-|w| weights of every encoder Linear (per matrix).

    Returns the keep-masks by parameter name (to hold the zeros during recovery). The zeros are
    written into ``weight`` itself: nothing else is stored, and the weights stay dense.
    """
    masks: dict[str, torch.Tensor] = {}
    for name, linear in _encoder_linears(model):
        weight = linear.weight
        k = int(sparsity * weight.numel() + 0.5)
        mask = torch.ones_like(weight, dtype=torch.bool)
        if k:
            smallest = torch.argsort(weight.abs().flatten(), stable=True)[:k]
            mask.view(-1)[smallest] = False
            weight.mul_(mask)
        masks[f"{name}.weight"] = mask
    return masks


def encoder_sparsity(model: nn.Module) -> float:
    """Share of exact zeros among the weights of the encoder's Linear layers."""
    zeros = total = 0
    for _, linear in _encoder_linears(model):
        zeros += int((linear.weight == 0).sum())
        total += linear.weight.numel()
    return zeros / total


def model_stats(model: nn.Module) -> dict:
    """Parameters, layers, heads and FFN neurons of a model, counted from its modules."""
    layers = encoder_layers(model)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "layers": len(layers),
        "heads": sum(layer.attention.self.num_attention_heads for layer in layers),
        "ffn_neurons": sum(layer.intermediate.dense.out_features for layer in layers),
        "encoder_sparsity": encoder_sparsity(model),
    }


# --- loading ----------------------------------------------------------------------------------------


# --- importance --------------------------------------------------------------------------------------


@dataclass
class Gates:
    """Per-layer gate tensors: one per head, one per FFN neuron (current positions)."""

    heads: list[torch.Tensor]
    ffn: list[torch.Tensor]


@contextmanager
def gated(
    model: nn.Module,
    heads: Sequence[Sequence[float]] | None = None,
    ffn: Sequence[Sequence[float]] | None = None,
    requires_grad: bool = False,
) -> Iterator[Gates]:
    """Multiply every head's context and every FFN activation by a gate while inside the block.

    Gates default to ones; ``requires_grad=True`` makes them leaves whose gradient is the importance.
    A gate of 0 masks a head (or neuron) exactly as removing it does.
    """
    layers = encoder_layers(model)
    param = next(model.parameters())

    def make(values, n: int, what: str, li: int) -> torch.Tensor:
        gate = torch.ones(n) if values is None else torch.as_tensor(values[li], dtype=torch.float32)
        if gate.shape != (n,):
            raise PruneError(f"layer {li} has {n} {what}; got a gate of shape {tuple(gate.shape)}")
        return gate.to(device=param.device, dtype=param.dtype).requires_grad_(requires_grad)

    gates = Gates(
        heads=[make(heads, layer.attention.self.num_attention_heads, "heads", i) for i, layer in enumerate(layers)],
        ffn=[make(ffn, layer.intermediate.dense.out_features, "FFN neurons", i) for i, layer in enumerate(layers)],
    )

    def head_hook(gate: torch.Tensor, head_size: int):
        # The context reaches attention.output.dense as (batch, length, heads * head_size).
        def hook(module, args):
            context = args[0].unflatten(-1, (-1, head_size)) * gate[:, None]
            return (context.flatten(-2), *args[1:])

        return hook

    def ffn_hook(gate: torch.Tensor):
        def hook(module, args):
            return (args[0] * gate, *args[1:])

        return hook

    handles = []
    try:
        for layer, head_gate, ffn_gate in zip(layers, gates.heads, gates.ffn, strict=True):
            head_size = layer.attention.self.attention_head_size
            handles.append(layer.attention.output.dense.register_forward_pre_hook(head_hook(head_gate, head_size)))
            handles.append(layer.output.dense.register_forward_pre_hook(ffn_hook(ffn_gate)))
        yield gates
    finally:
        for handle in handles:
            handle.remove()


def compute_importance(
    model: nn.Module, encoded: Encoded, labels: np.ndarray, batch_size: int = 16, pad_id: int = 0
) -> Importance:
    """Accumulated |d loss / d gate| of every head and FFN neuron over ``encoded`` (true ``labels``)."""
    device = next(model.parameters()).device
    layout = pruning_layout(model)
    # Eval mode (no dropout): the ranking should not depend on the random masks.
    with model_pass(model, grad=True), gated(model, requires_grad=True) as gates:
        leaves = gates.heads + gates.ffn
        totals = [torch.zeros_like(g, dtype=torch.float64) for g in leaves]
        for idx, batch in pass_batches(model, encoded, batch_size, pad_id, desc="head and neuron importance"):
            target = torch.as_tensor(labels[idx], dtype=torch.long, device=device)
            logits = model(**batch).logits
            # Summed, so every review weighs the same whatever the batch sizes.
            loss = nn.functional.cross_entropy(logits.float(), target, reduction="sum")
            # autograd.grad walks only the paths to the gates: no weight gradients are computed.
            for total, grad in zip(totals, torch.autograd.grad(loss, leaves), strict=True):
                total += grad.detach().abs().double()
    n_layers = len(gates.heads)
    heads = np.full((n_layers, model.config.num_attention_heads), np.nan)
    for li in range(n_layers):
        heads[li, layout["heads"][str(li)]] = totals[li].cpu().numpy()
    ffn = [t.cpu().numpy() for t in totals[n_layers:]]
    return Importance(heads=heads, ffn=ffn, samples=len(encoded))


def current_head_scores(importance: Importance, model: nn.Module) -> list[np.ndarray]:
    """Per layer, the importance of the heads the model has now, in their current order."""
    layout = pruning_layout(model)
    return [importance.heads[li, layout["heads"][str(li)]] for li in range(len(encoder_layers(model)))]


def _count(fraction: float, total: int) -> int:
    return int(fraction * total + 0.5)  # round half up (Python's round() goes to even)


def heads_to_remove_count(fraction: float, heads_per_layer: Sequence[int]) -> int:
    """How many heads ``fraction`` removes; a PruneError when layers would be left without a head."""
    total, n_layers = sum(heads_per_layer), len(heads_per_layer)
    n = _count(fraction, total)
    if n > total - n_layers:
        raise PruneError(
            f"heads_fraction {fraction} would remove {n} of {total} heads, but each of the {n_layers} layers "
            f"keeps at least one: use at most {(total - n_layers) / total:.3f} (or drop layers)"
        )
    return n


def select_heads(scores: Sequence[np.ndarray], fraction: float) -> dict[int, list[int]]:
    """Heads to remove (current positions per layer): the globally least important after L2 per layer."""
    n_remove = heads_to_remove_count(fraction, [len(s) for s in scores])
    normalised = [np.asarray(s, dtype=np.float64) / (np.linalg.norm(s) + 1e-20) for s in scores]
    ranked = sorted((value, li, h) for li, layer in enumerate(normalised) for h, value in enumerate(layer))
    left = [len(s) for s in scores]
    remove: dict[int, list[int]] = {li: [] for li in range(len(scores))}
    removed = 0
    for _, li, h in ranked:
        if removed == n_remove:
            break
        if left[li] > 1:
            remove[li].append(h)
            left[li] -= 1
            removed += 1
    return {li: sorted(hs) for li, hs in remove.items() if hs}


def select_neurons(scores: Sequence[np.ndarray], fraction: float) -> dict[int, np.ndarray]:
    """FFN neurons to keep (sorted current positions) per layer: all but the ``fraction`` least important."""
    keep = {}
    for li, layer_scores in enumerate(scores):
        n_remove = min(_count(fraction, len(layer_scores)), len(layer_scores) - 1)
        order = np.argsort(np.asarray(layer_scores), kind="stable")
        keep[li] = np.sort(order[n_remove:])
    return keep


def select_layers(n_layers: int, drop: Sequence[int] | None = None, keep_count: int | None = None) -> list[int]:
    """Indices of the layers to keep: all but ``drop``, or ``keep_count`` evenly spaced ending at the last."""
    if drop is not None:
        unknown = [i for i in drop if not 0 <= i < n_layers]
        if unknown:
            raise PruneError(
                f"drop_layers: unknown layer index {unknown[0]}: the model has {n_layers} layers (0..{n_layers - 1})"
            )
        if len(set(drop)) >= n_layers:
            raise PruneError(f"drop_layers: cannot drop all {n_layers} layers")
        return [i for i in range(n_layers) if i not in set(drop)]
    if keep_count is not None:
        if not 1 <= keep_count <= n_layers:
            raise PruneError(f"keep_layers: must be between 1 and the model's {n_layers} layers, got {keep_count}")
        # Step back from the last layer by n/K: K = n/2 keeps every other layer (1, 3, ..., n-1).
        return sorted({n_layers - 1 - (j * n_layers) // keep_count for j in range(keep_count)})
    return list(range(n_layers))


# --- the stage ---------------------------------------------------------------------------------------


def _check_source(config: PruneConfig) -> Path:
    source = model_folder(config.model)
    if not (source / WEIGHTS_FILE).is_file() and not (source / f"{WEIGHTS_FILE}.index.json").is_file():
        raise ModelError(f"{source}: no {WEIGHTS_FILE}: prune takes a fine-tuned PyTorch model folder")
    if json.loads((source / "config.json").read_text()).get("bertsent_factorization"):
        raise PruneError(f"{source}: is low-rank factorized; prune its source first, then factorize")
    out = Path(config.output_dir).expanduser()
    if out.resolve() == source.resolve():
        raise PruneError(f"output_dir {out} is the source model folder: choose another folder")
    if (out / "model.onnx").exists():
        raise PruneError(f"{out} holds a model.onnx that would shadow the pruned weights: choose another folder")
    return source


def _load_reviews(config: PruneConfig, source: Path):
    """The importance reviews and the evaluation reviews (validation: the split held out when training);
    None where not needed."""
    need_importance = bool(config.heads_fraction or config.ffn_fraction)
    if not (need_importance or config.recovery_epochs or config.validation_samples):
        return None, None
    from_train = need_importance and config.importance_split == "train"
    splits, reason = stage.stage_reviews(source, config, train_samples=config.importance_samples, train=from_train)
    if splits is None:
        raise PruneError(f"no data: {reason}; pass data (--data) or set validation_samples to 0")
    pool = splits.train if from_train else splits.validation
    seed = splits.report.get("seed", config.seed)
    importance = stratified_subset(pool, config.importance_samples, seed) if need_importance else None
    evaluation = splits.validation if config.validation_samples else None
    return importance, evaluation


def prune(config: PruneConfig) -> stage.StageResult:
    """Prune ``config.model`` as configured and write a self-describing output folder."""
    started = time.perf_counter()
    _check_source(config)
    src = stage.open_source(config, PruneError)
    model, out = src.model, src.output_dir
    before = model_stats(model)
    keep = _check_request(config, model, before["layers"])
    importance_reviews, evaluation = _load_reviews(config, src.folder)
    texts, labels = ([], None) if evaluation is None else (evaluation["text"].tolist(), evaluation["label"].to_numpy())
    validation: dict = {"reviews": len(texts)}
    if evaluation is not None:
        validation["before"] = stage.score_folder(src.folder, texts, labels, config).metrics

    retain_layers(model, keep)
    model.to(src.device)
    importance = None
    removed_heads: dict[str, list[int]] = {}
    if config.heads_fraction or config.ffn_fraction:
        importance = _importance(config, src, importance_reviews)
        removed_heads = _remove_heads_and_neurons(config, model, importance)
    masks = magnitude_prune(model, config.sparsity) if config.sparsity else {}

    out.mkdir(parents=True, exist_ok=True)
    recovery = None
    if config.recovery_epochs:
        if evaluation is not None:
            validation["pruned"] = stage.score_model(src, model, texts, labels, config)
        data = stage.recovery_data(src.folder, config, None)
        recovery = stage.recover(config, model, src.folder, data, (src.max_length, src.truncation), _held_zero(masks))
        if recovery is None:  # under a launcher the recovery ran on every rank; one writes the folder
            return stage.StageResult(output_dir=out, record={}, metrics={}, model=model)
    else:
        stage.copy_source_files(src)
    model.save_pretrained(out)  # the layout (and, after recovery, the re-applied masks)
    if evaluation is not None:
        validation["after"] = stage.score_folder(out, texts, labels, config).metrics

    pooled = pooling_layer(model.config) is not None and bool(config.ffn_fraction)
    resolved = _resolved(config, before["layers"], keep, removed_heads, src, pooled=pooled)
    compression = _compression_record(config, src.folder, out, model, resolved, before, importance)
    compression |= {"validation": validation, "recovery": recovery, "seconds": round(time.perf_counter() - started, 1)}
    return stage.finish(out, compression, _flat_metrics, write_prune_card, model)


def _check_request(config: PruneConfig, model: nn.Module, n_layers: int) -> list[int]:
    """The layers to keep, once the whole request is checked against the model (before any slow step)."""
    n_real = own_layers(model.config)  # a mean-pooling layer is never dropped
    keep = select_layers(n_real, config.drop_layers, config.keep_layers) + list(range(n_real, n_layers))
    if config.heads_fraction:
        layout = pruning_layout(model)
        heads_to_remove_count(config.heads_fraction, [len(layout["heads"][str(i)]) for i in keep if i < n_real])
    return keep


def _importance(config: PruneConfig, src: stage.Source, reviews) -> Importance:
    tick = time.perf_counter()
    labels = reviews["label"].to_numpy()
    importance = compute_importance(
        src.model, src.encode(reviews["text"].tolist()), labels, config.batch_size, src.pad_id
    )
    log.info("importance of heads and FFN neurons from %d reviews in %.1fs", len(labels), time.perf_counter() - tick)
    return importance


def _remove_heads_and_neurons(config: PruneConfig, model: nn.Module, importance: Importance) -> dict[str, list[int]]:
    """Remove the least important heads and FFN neurons; returns the removed heads by original id."""
    removed_heads: dict[str, list[int]] = {}
    n_real = own_layers(model.config)  # a mean-pooling layer keeps its heads
    if config.heads_fraction:
        current = pruning_layout(model)["heads"]
        remove = select_heads(current_head_scores(importance, model)[:n_real], config.heads_fraction)
        if not remove:
            log.warning("heads_fraction %s is too small to remove a head of this model", config.heads_fraction)
        removed_heads = {str(li): [current[str(li)][h] for h in hs] for li, hs in remove.items()}
        prune_heads(model, remove)
    if config.ffn_fraction:
        keep = select_neurons(importance.ffn[:n_real], config.ffn_fraction)
        pooling = pooling_layer(model.config)
        if pooling is not None:  # the head's near-zero feed-forward: keep its most important neuron only
            keep[pooling] = [int(np.argmax(importance.ffn[pooling]))]
            # Measured near zero on the recipe's teacher; a student retrains it, so say how it stands here.
            share = float(np.sum(importance.ffn[pooling]) / min(np.sum(importance.ffn[i]) for i in range(n_real)))
            log.info("pooling layer's feed-forward cut to 1 neuron: its importance is %.2g of the least layer's", share)
        prune_ffn(model, keep)
    return removed_heads


def _resolved(config: PruneConfig, n_layers: int, keep, removed_heads, src: stage.Source, *, pooled: bool) -> dict:
    """What the request resolved to on this model, and how each choice was made."""
    return {
        "kept_layers": keep,
        "dropped_layers": [i for i in range(n_layers) if i not in keep],
        "removed_heads": removed_heads,
        "max_length": src.max_length,
        "truncation": src.truncation,
        "importance": "gradient of the loss w.r.t. per-head / per-neuron gates (Michel et al., 2019)",
        "head_selection": "global, after L2 normalisation per layer; every layer keeps a head",
        "ffn_selection": "per layer, least important by the same gradient gate"
        + ("; the mean-pooling layer's near-zero feed-forward cut to its most important neuron" if pooled else ""),
        "sparsity_scope": "per encoder Linear weight matrix (biases, embeddings, pooler, classifier kept)",
        "layer_selection": "explicit" if config.drop_layers else "evenly spaced, keeping the last layer",
    }


def _compression_record(
    config: PruneConfig,
    source: Path,
    out: Path,
    model: nn.Module,
    resolved: dict,
    before: dict,
    importance: Importance | None,
) -> dict:
    """``compression.json`` of the pruned folder, but for the measurements (validation, recovery, seconds),
    which the caller adds last: the request, what it resolved to, sizes before and after, the layout."""
    after = model_stats(model)
    return {
        "method": "prune",
        "source": str(source),
        "arguments": asdict(config),
        "resolved": resolved,
        "parameters": {"before": before["parameters"], "after": after["parameters"]},
        "layers": {"before": before["layers"], "after": after["layers"]},
        "heads": {"before": before["heads"], "after": after["heads"]},
        "ffn_neurons": {"before": before["ffn_neurons"], "after": after["ffn_neurons"]},
        "sparsity": {
            "target": config.sparsity,
            "encoder_linear_before": before["encoder_sparsity"],
            "encoder_linear_after": after["encoder_sparsity"],
            "note": "zeroed weights are stored densely: no smaller file and no speed-up from sparsity",
        },
        "weights_bytes": {"before": weights_bytes(source), "after": weights_bytes(out)},
        "layout": pruning_layout(model),
        "stock_loadable": _uniform(model),
        "head_importance": None if importance is None else _nan_to_none(_normalised_heads(importance)),
        "importance_samples": 0 if importance is None else importance.samples,
    }


def _held_zero(masks: dict[str, torch.Tensor]):
    """Around recovery: the zeroed weights get zero gradients (so they stay zero), and are re-applied after."""

    def hold(model: nn.Module):
        handles = [
            model.get_parameter(name).register_hook(lambda grad, mask=mask: grad * mask.to(grad.device))
            for name, mask in masks.items()
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
        with torch.no_grad():
            for name, mask in masks.items():
                param = model.get_parameter(name)
                param.mul_(mask.to(param.device))

    return contextmanager(hold)


def _uniform(model: nn.Module) -> bool:
    """Whether stock ``from_pretrained`` (and so ``transformers.pipeline``) can rebuild the model."""
    layout, config = pruning_layout(model), model.config
    return all(len(h) == config.num_attention_heads for h in layout["heads"].values()) and all(
        w == config.intermediate_size for w in layout["intermediate"].values()
    )


def _normalised_heads(importance: Importance) -> np.ndarray:
    norms = np.sqrt(np.nansum(importance.heads**2, axis=1, keepdims=True))
    return importance.heads / (norms + 1e-20)


def _nan_to_none(matrix: np.ndarray) -> list[list[float | None]]:
    return [[None if np.isnan(v) else round(float(v), 6) for v in row] for row in matrix]


def _flat_metrics(compression: dict) -> dict:
    from bertsent.folder import stage_metrics

    return stage_metrics(compression["parameters"], compression["validation"], ("after", "before", "pruned")) | {
        "layers": compression["layers"]["after"],
        "heads": compression["heads"]["after"],
        "ffn_neurons": compression["ffn_neurons"]["after"],
        "encoder_sparsity": compression["sparsity"]["encoder_linear_after"],
    }


def write_prune_card(output_dir: Path, compression: dict) -> Path:
    """The README.md of a pruned folder: what was removed and what was measured."""
    measured = stage.measured_text(compression["validation"])
    if compression["stock_loadable"]:
        loading = (
            "Every layer keeps all its heads and FFN neurons, so `transformers.pipeline` and stock\n"
            "`from_pretrained` load this folder too."
        )
    else:
        loading = (
            "The layers have pruned, non-uniform shapes (`bertsent_pruning` in `config.json`):\n"
            "**`transformers.pipeline` and stock `from_pretrained` cannot load this folder.** Load it with\n"
            "`bertsent.modeling.load_classifier`, `bertsent.predict.Predictor` or `bertsent predict`."
        )
    sections = {
        "What was done": "\n".join(_prune_steps(compression)),
        "What was measured": f"""| | Before | After |
|---|---|---|
{chr(10).join(_prune_rows(compression))}

{measured} This stage measures no latency: fewer heads, neurons and layers mean fewer
operations, but how much faster the model runs must be measured on the target machine.""",
        "Use": f"""{loading}

```python
from bertsent.predict import Predictor
Predictor("{output_dir}")(["A wonderful, moving film."])
```

The full record (arguments, layout, head importance) is in `{COMPRESSION_FILE}`.""",
    }
    title, summary = "Pruned sentiment classifier (bertsent prune)", f"Pruned from `{compression['source']}`."
    return stage.stage_card(output_dir, compression, sections, title=title, summary=summary, tags=["pruned"])


def _prune_steps(compression: dict) -> list[str]:
    """The card's "What was done" bullets."""
    args, resolved = compression["arguments"], compression["resolved"]
    done = []
    if resolved["dropped_layers"]:
        done.append(
            f"- dropped encoder layers {resolved['dropped_layers']} ({resolved['layer_selection']}); "
            f"kept {resolved['kept_layers']}"
        )
    if args["heads_fraction"]:
        done.append(
            f"- removed {args['heads_fraction']:.0%} of the attention heads, ranked by {resolved['importance']} "
            f"over {compression['importance_samples']} {args['importance_split']} reviews; "
            f"{resolved['head_selection']}"
        )
    if args["ffn_fraction"]:
        done.append(
            f"- removed {args['ffn_fraction']:.0%} of the FFN neurons of every layer ({resolved['ffn_selection']})"
        )
    if args["sparsity"]:
        done.append(
            f"- zeroed the {args['sparsity']:.0%} smallest-magnitude weights {resolved['sparsity_scope']}: "
            "**no speed or size claim**, the weights are stored densely"
        )
    if compression["recovery"]:
        done.append(f"- {stage.recovery_text(compression['recovery'])}")
    return done


def _prune_rows(compression: dict) -> list[str]:
    """The card's before/after table rows."""
    names = (
        ("Parameters", "parameters"),
        ("Encoder layers", "layers"),
        ("Attention heads", "heads"),
        ("FFN neurons", "ffn_neurons"),
        ("Weights file (bytes)", "weights_bytes"),
    )
    sparsity = compression["sparsity"]
    before, after = sparsity["encoder_linear_before"], sparsity["encoder_linear_after"]
    sparse_row = f"| Encoder Linear sparsity | {before:.4f} | {after:.4f} |"
    metrics = (("accuracy", "Validation accuracy"), ("f1", "Validation F1"), ("log_loss", "Validation log-loss"))
    return [
        *stage.pair_rows(compression, names),
        sparse_row,
        *stage.validation_rows(compression["validation"], "pruned", metrics),
    ]
