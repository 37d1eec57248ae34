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
6. **Recovery** (``recover_epochs``): ``bertsent.train.train`` fine-tunes the pruned model; the zeroed
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

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from bertsent.config import PruneConfig
from bertsent.errors import ModelError, PruneError
from bertsent.folder import COMPRESSION_FILE, WEIGHTS_FILE, model_folder, weights_bytes
from bertsent.modeling.pooling import own_layers, pooling_layer
from bertsent.modeling.pruned import encoder_layers, prune_ffn, prune_heads, pruning_layout, retain_layers

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from bertsent.config import DataConfig
    from bertsent.encoding import Encoded

log = logging.getLogger("bertsent.prune")


@dataclass
class PruneResult:
    output_dir: Path
    metrics: dict
    compression: dict
    model: PreTrainedModel
    """The pruned model in memory (what the folder holds)."""


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
    from bertsent.encoding import iter_batches

    was_training = model.training
    model.eval()  # no dropout: the ranking should not depend on the random masks
    device = next(model.parameters()).device
    layout = pruning_layout(model)
    with gated(model, requires_grad=True) as gates:
        leaves = gates.heads + gates.ffn
        totals = [torch.zeros_like(g, dtype=torch.float64) for g in leaves]
        for idx, batch in iter_batches(encoded, batch_size, pad_id):
            batch = {k: v.to(device) for k, v in batch.items()}
            target = torch.as_tensor(labels[idx], dtype=torch.long, device=device)
            logits = model(**batch).logits
            # Summed, so every review weighs the same whatever the batch sizes.
            loss = nn.functional.cross_entropy(logits.float(), target, reduction="sum")
            # autograd.grad walks only the paths to the gates: no weight gradients are computed.
            for total, grad in zip(totals, torch.autograd.grad(loss, leaves), strict=True):
                total += grad.detach().abs().double()
    model.train(was_training)
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


def _copy_tokenizer_and_args(source: Path, out: Path, tokenizer) -> None:
    from bertsent.folder import TOKENIZER_PATTERNS

    copied = sorted({p.name for pattern in TOKENIZER_PATTERNS for p in source.glob(pattern) if p.is_file()})
    for name in copied:
        shutil.copy2(source / name, out / name)
    if "tokenizer_config.json" not in copied:
        tokenizer.save_pretrained(out)  # a folder without tokenizer files (hub-style): write them
    if (source / "training_args.json").is_file():
        shutil.copy2(source / "training_args.json", out / "training_args.json")  # max_length/truncation travel


def _validation_metrics(model_dir: Path, texts: list[str], labels: np.ndarray, config: PruneConfig) -> dict:
    """Metrics of a saved folder on the evaluation reviews, through ``Predictor`` (as users run it)."""
    from bertsent.metrics import classification_metrics
    from bertsent.predict import Predictor

    predictor = Predictor(model_dir, batch_size=config.eval_batch_size, device=config.device)
    started = time.perf_counter()
    probs = predictor.predict_proba(texts)
    metrics = classification_metrics(labels, probs, predictor.id2label)
    return metrics | {"backend": predictor.backend.name, "seconds": round(time.perf_counter() - started, 2)}


def _load_reviews(config: PruneConfig, source: Path, id2label: dict[int, str]):
    """Importance reviews and evaluation reviews (validation: the split held out when training)."""
    from bertsent.data.loading import load_data, stratified_subset
    from bertsent.folder import data_config_for

    # Validation is carved as in training (data_config_for); subsets are drawn here, from the whole of it.
    data = data_config_for(source, dataclasses.replace(config.data, train_samples=None))
    data = dataclasses.replace(data, validation_samples=None)
    need_importance = bool(config.heads_fraction or config.ffn_fraction)
    from_train = need_importance and config.importance_split == "train"
    wanted = ("train", "validation") if from_train else ("validation",)
    splits = load_data(dataclasses.replace(data, train_samples=config.importance_samples), splits=wanted)
    if {int(k): v for k, v in splits.id2label.items()} != id2label:
        raise PruneError(f"labels of {data.source} {splits.id2label} differ from the model's {id2label}")
    pool = splits.train if from_train else splits.validation
    importance = stratified_subset(pool, config.importance_samples, data.seed) if need_importance else None
    evaluation = stratified_subset(splits.validation, config.eval_samples, data.seed) if config.eval_samples else None
    if evaluation is not None and len(evaluation) == 0:
        raise PruneError(f"{data.source}: no validation reviews to evaluate on")
    return data, importance, evaluation


def prune(config: PruneConfig) -> PruneResult:
    """Prune ``config.model`` as configured and write a self-describing output folder."""
    from bertsent.folder import inference_settings
    from bertsent.training.distributed import is_main_process

    started = time.perf_counter()
    source = _check_source(config)
    out = Path(config.output_dir).expanduser()
    model, tokenizer, device = _load_source(config, source)
    max_length, truncation = inference_settings(source, tokenizer)
    before = model_stats(model)
    keep = _check_request(config, model, before["layers"])

    data, importance_reviews, evaluation = _reviews_if_needed(config, source, model)
    validation: dict = {"reviews": 0 if evaluation is None else len(evaluation[0])}
    if evaluation is not None:
        validation["before"] = _validation_metrics(source, *evaluation, config)

    retain_layers(model, keep)
    model.to(device)
    importance = None
    removed_heads: dict[str, list[int]] = {}
    if config.heads_fraction or config.ffn_fraction:
        importance = _importance(config, model, tokenizer, importance_reviews, max_length, truncation)
        removed_heads = _remove_heads_and_neurons(config, model, importance)
    masks = magnitude_prune(model, config.sparsity) if config.sparsity else {}

    out.mkdir(parents=True, exist_ok=True)
    recovery = None
    if config.recover_epochs:
        if evaluation is not None:
            validation["pruned"] = _in_memory_metrics(model, tokenizer, *evaluation, config)
        recovery = _recover(config, model, source, data, masks, max_length, truncation)
        if not is_main_process():  # under a launcher the recovery ran on every rank; one writes the folder
            return PruneResult(output_dir=out, metrics={}, compression={}, model=model)
        model.save_pretrained(out)  # the re-applied masks (a no-op unless a zero regrew) and the layout
    else:
        model.save_pretrained(out)
        _copy_tokenizer_and_args(source, out, tokenizer)
    if evaluation is not None:
        validation["after"] = _validation_metrics(out, *evaluation, config)

    pooled = pooling_layer(model.config) is not None and bool(config.ffn_fraction)
    resolved = _resolved(config, before["layers"], keep, removed_heads, max_length, truncation, pooled=pooled)
    compression = _compression_record(config, source, out, model, resolved, before, importance)
    compression |= {"validation": validation, "recovery": recovery, "seconds": round(time.perf_counter() - started, 1)}
    return _write_record(out, compression, model)


def _load_source(config: PruneConfig, source: Path) -> tuple[PreTrainedModel, object, torch.device]:
    """The source model (eval mode), its tokenizer and the run's device; threads and seed are set first."""
    from bertsent.modeling.loading import load_classifier, load_tokenizer
    from bertsent.runtime import pick_device, quiet_transformers

    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    quiet_transformers()
    device = pick_device(config.device)
    return load_classifier(source).eval(), load_tokenizer(source), device


def _check_request(config: PruneConfig, model: nn.Module, n_layers: int) -> list[int]:
    """The layers to keep, once the whole request is checked against the model (before any slow step)."""
    n_real = own_layers(model.config)  # a mean-pooling layer is never dropped
    keep = select_layers(n_real, config.drop_layers, config.keep_layers) + list(range(n_real, n_layers))
    if config.heads_fraction:
        layout = pruning_layout(model)
        heads_to_remove_count(config.heads_fraction, [len(layout["heads"][str(i)]) for i in keep if i < n_real])
    return keep


def _reviews_if_needed(config: PruneConfig, source: Path, model: nn.Module):
    """The data, the importance reviews and the evaluation ``(texts, labels)``; None where not needed."""
    if not (config.heads_fraction or config.ffn_fraction or config.recover_epochs or config.eval_samples):
        return None, None, None
    if config.data is None:
        raise PruneError("no data: pass data (--data) or set eval_samples to 0")
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    data, importance_reviews, eval_reviews = _load_reviews(config, source, id2label)
    if eval_reviews is None:
        return data, importance_reviews, None
    return data, importance_reviews, (eval_reviews["text"].tolist(), eval_reviews["label"].to_numpy())


def _importance(config: PruneConfig, model, tokenizer, reviews, max_length: int, truncation: str) -> Importance:
    tick = time.perf_counter()
    encoded = _encode(tokenizer, reviews["text"].tolist(), max_length, truncation)
    labels = reviews["label"].to_numpy()
    importance = compute_importance(model, encoded, labels, config.batch_size, tokenizer.pad_token_id or 0)
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


def _resolved(
    config: PruneConfig, n_layers: int, keep, removed_heads, max_length: int, truncation: str, *, pooled: bool
) -> dict:
    """What the request resolved to on this model, and how each choice was made."""
    return {
        "kept_layers": keep,
        "dropped_layers": [i for i in range(n_layers) if i not in keep],
        "removed_heads": removed_heads,
        "max_length": max_length,
        "truncation": truncation,
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


def _write_record(out: Path, compression: dict, model: PreTrainedModel) -> PruneResult:
    """``compression.json``, ``metrics.json`` and the card beside the saved model."""
    metrics = _flat_metrics(compression)
    (out / COMPRESSION_FILE).write_text(json.dumps(compression, indent=2))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    write_prune_card(out, compression)
    log.info("pruned model saved to %s", out)
    return PruneResult(output_dir=out, metrics=metrics, compression=compression, model=model)


def _encode(tokenizer, texts: list[str], max_length: int, truncation: str) -> Encoded:
    from bertsent.encoding import encode

    return encode(tokenizer, texts, max_length, truncation)


def _in_memory_metrics(model, tokenizer, texts, labels, config: PruneConfig) -> dict:
    """Metrics of the pruned model before recovery (not saved on its own, so scored in memory)."""
    from bertsent.folder import inference_settings
    from bertsent.inference import predict_probs
    from bertsent.metrics import classification_metrics

    max_length, truncation = inference_settings(Path(config.model).expanduser(), tokenizer)
    device = next(model.parameters()).device
    probs = predict_probs(
        model,
        _encode(tokenizer, texts, max_length, truncation),
        config.eval_batch_size,
        tokenizer.pad_token_id or 0,
        device,
    )
    return classification_metrics(labels, probs, model.config.id2label)


def _recover(config: PruneConfig, model, source: Path, data: DataConfig, masks, max_length, truncation) -> dict:
    """Fine-tune the pruned model with ``train``; zeroed weights are held at zero through their gradients."""
    from bertsent.training.loop import recovery_args, recovery_record, train

    args = recovery_args(config, source, config.recover_epochs, config.recover_lr, max_length, truncation)
    recovery_data = dataclasses.replace(
        data, train_samples=config.data.train_samples, validation_samples=config.eval_samples or None
    )
    handles = [
        model.get_parameter(name).register_hook(lambda grad, mask=mask: grad * mask.to(grad.device))
        for name, mask in masks.items()
    ]
    try:
        result = train(args, recovery_data, model=model)
    finally:
        for handle in handles:
            handle.remove()
    with torch.no_grad():
        for name, mask in masks.items():
            param = model.get_parameter(name)
            param.mul_(mask.to(param.device))
    return recovery_record(result, config.recover_epochs, config.recover_lr)


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
    from bertsent.folder import card_base_model, write_card

    validation = compression["validation"]
    measured = (
        f"Validation metrics on {validation['reviews']} validation reviews (held out from training when the data "
        "and seed match the training run), through `bertsent.predict.Predictor`."
        if validation["reviews"]
        else "Accuracy was not measured (no evaluation reviews)."
    )
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
    data = compression["arguments"].get("data")
    return write_card(
        output_dir,
        title="Pruned sentiment classifier (bertsent prune)",
        summary=f"Pruned from `{compression['source']}`.",
        sections=sections,
        results={"validation": validation["after"]} if "after" in validation else None,
        dataset=data.get("source") if isinstance(data, dict) else data,
        base_model=card_base_model(Path(compression["source"])),
        tags=["pruned"],
    )


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
    recovery = compression["recovery"]
    if recovery:
        done.append(
            f"- recovery fine-tuning: {recovery['epochs']} epoch(s) at lr {recovery['lr']} "
            f"({recovery.get('steps')} steps, {recovery.get('train_seconds')} s); {recovery['note']}"
        )
    return done


def _prune_rows(compression: dict) -> list[str]:
    """The card's before/after table rows."""

    def row(name: str, key: str, fmt: str = ",") -> str:
        pair = compression[key]
        return f"| {name} | {pair['before']:{fmt}} | {pair['after']:{fmt}} |"

    sparsity = compression["sparsity"]
    rows = [
        row("Parameters", "parameters"),
        row("Encoder layers", "layers"),
        row("Attention heads", "heads"),
        row("FFN neurons", "ffn_neurons"),
        row("Weights file (bytes)", "weights_bytes"),
        f"| Encoder Linear sparsity | {sparsity['encoder_linear_before']:.4f} "
        f"| {sparsity['encoder_linear_after']:.4f} |",
    ]
    validation = compression["validation"]
    for key, name in (
        ("accuracy", "Validation accuracy"),
        ("f1", "Validation F1"),
        ("log_loss", "Validation log-loss"),
    ):
        if "after" in validation:
            pruned = f" (pruned, before recovery: {validation['pruned'][key]:.4f})" if "pruned" in validation else ""
            rows.append(f"| {name} | {validation['before'][key]:.4f} | {validation['after'][key]:.4f}{pruned} |")
    return rows
