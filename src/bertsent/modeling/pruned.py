"""Pruned layouts: slicing heads, FFN neurons and layers out of a BERT encoder, and loading a pruned folder.

The layout is recorded in ``config.json`` (``bertsent_pruning``) so a folder rebuilds without the stage.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from bertsent.errors import ModelError, PruneError, first_line
from bertsent.folder import WEIGHTS_FILE
from bertsent.modeling.pooling import POOLING_KEY, pooling_layer

if TYPE_CHECKING:
    from transformers import PreTrainedModel

PRUNING_KEY = "bertsent_pruning"
"""Attribute of the model config (and key of config.json) that holds the pruned layout."""


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The encoder's layers of a BERT-style model, checked to have the modules pruning slices."""
    base = getattr(model, "base_model", model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise PruneError(f"pruning supports BERT-style encoders (encoder.layer[i]); {model_type} is laid out otherwise")
    for layer in layers:
        linears = (
            getattr(getattr(getattr(layer, "attention", None), "self", None), "query", None),
            getattr(getattr(getattr(layer, "attention", None), "output", None), "dense", None),
            getattr(getattr(layer, "intermediate", None), "dense", None),
            getattr(getattr(layer, "output", None), "dense", None),
        )
        if not all(isinstance(m, nn.Linear) for m in linears) or hasattr(layer, "crossattention"):
            raise PruneError(f"pruning supports BERT-style encoder layers; {model_type} has a different layer layout")
    return layers


def pruning_layout(model_or_config) -> dict:
    """The layout of a model (or config): kept original layers, kept heads and FFN size per layer."""
    config = getattr(model_or_config, "config", model_or_config)
    n, heads, size = config.num_hidden_layers, config.num_attention_heads, config.intermediate_size
    saved = getattr(config, PRUNING_KEY, None) or {}
    return {
        "layers": [int(i) for i in saved.get("layers", range(n))],
        "heads": {str(i): [int(h) for h in saved.get("heads", {}).get(str(i), range(heads))] for i in range(n)},
        "intermediate": {str(i): int(saved.get("intermediate", {}).get(str(i), size)) for i in range(n)},
    }


def _set_layout(model: nn.Module, layout: dict) -> None:
    # The layout lives in the config so that every save_pretrained (train's too) carries it.
    setattr(model.config, PRUNING_KEY, layout)


def _slice_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping ``index`` along ``dim`` (0: outputs, 1: inputs), same dtype and device."""
    from transformers.pytorch_utils import prune_linear_layer

    return prune_linear_layer(linear, index, dim=dim).to(dtype=linear.weight.dtype)


def retain_layers(model: nn.Module, keep: Sequence[int]) -> None:
    """Keep only the encoder layers at ``keep`` (current indices, ascending), renumbering them."""
    layers = encoder_layers(model)
    layout = pruning_layout(model)
    bad = [i for i in keep if not 0 <= i < len(layers)]
    if bad or not keep:
        raise PruneError(f"cannot keep layers {list(keep)} of a {len(layers)}-layer model")
    pooling = pooling_layer(model.config)
    if pooling is not None and pooling not in keep:
        raise PruneError(f"cannot drop layer {pooling}: it is the mean-pooling layer the head reads")
    new_layers = nn.ModuleList([layers[i] for i in keep])
    for new, layer in enumerate(new_layers):
        if hasattr(layer.attention.self, "layer_idx"):
            layer.attention.self.layer_idx = new  # only caches use it, but keep it true
    model.base_model.encoder.layer = new_layers
    model.config.num_hidden_layers = len(keep)
    if pooling is not None:
        setattr(model.config, POOLING_KEY, {"layer": list(keep).index(pooling)})
    _set_layout(
        model,
        {
            "layers": [layout["layers"][i] for i in keep],
            "heads": {str(new): layout["heads"][str(old)] for new, old in enumerate(keep)},
            "intermediate": {str(new): layout["intermediate"][str(old)] for new, old in enumerate(keep)},
        },
    )


def prune_heads(model: nn.Module, remove: dict[int, Sequence[int]]) -> None:
    """Remove attention heads, given per layer as *current* head positions; weights really go.

    Rows of query/key/value and columns of the attention output projection are sliced; BERT's
    ``view(..., -1, head_size)`` then runs with the fewer heads.
    """
    layers = encoder_layers(model)
    layout = pruning_layout(model)
    for li, positions in remove.items():
        if not 0 <= li < len(layers):
            raise PruneError(f"no layer {li}: the model has {len(layers)} layers")
        attention = layers[li].attention
        n_heads, head_size = attention.self.num_attention_heads, attention.self.attention_head_size
        gone = {int(p) for p in positions}
        if not gone:
            continue
        if not all(0 <= p < n_heads for p in gone):
            raise PruneError(f"layer {li} has {n_heads} heads; cannot remove {sorted(gone)}")
        keep = [h for h in range(n_heads) if h not in gone]
        if not keep:
            raise PruneError(f"layer {li} would lose all its heads: every layer keeps at least one")
        index = torch.cat([torch.arange(h * head_size, (h + 1) * head_size) for h in keep])
        for name in ("query", "key", "value"):
            setattr(attention.self, name, _slice_linear(getattr(attention.self, name), index, 0))
        attention.output.dense = _slice_linear(attention.output.dense, index, 1)
        attention.self.num_attention_heads = len(keep)
        attention.self.all_head_size = len(keep) * head_size
        layout["heads"][str(li)] = [layout["heads"][str(li)][h] for h in keep]
    _set_layout(model, layout)


def prune_ffn(model: nn.Module, keep: dict[int, Sequence[int]]) -> None:
    """Keep only the intermediate neurons ``keep[layer]`` (current positions) of each given layer."""
    layers = encoder_layers(model)
    layout = pruning_layout(model)
    for li, positions in keep.items():
        if not 0 <= li < len(layers):
            raise PruneError(f"no layer {li}: the model has {len(layers)} layers")
        size = layers[li].intermediate.dense.out_features
        index = torch.as_tensor(sorted({int(p) for p in positions}), dtype=torch.long)
        if len(index) == 0 or index[0] < 0 or index[-1] >= size:
            raise PruneError(f"layer {li} has {size} FFN neurons; cannot keep {list(positions)[:8]}...")
        layers[li].intermediate.dense = _slice_linear(layers[li].intermediate.dense, index, 0)
        layers[li].output.dense = _slice_linear(layers[li].output.dense, index, 1)
        layout["intermediate"][str(li)] = len(index)
    _set_layout(model, layout)


def _check_layout(layout, config, folder: Path) -> dict:
    """The saved layout, checked against the config; a broken one is a ModelError, not a traceback."""
    where = f"{folder}/config.json: {PRUNING_KEY}"
    if not isinstance(layout, dict):
        raise ModelError(f"{where} must be an object, got {type(layout).__name__}")
    n, n_heads, size = config.num_hidden_layers, config.num_attention_heads, config.intermediate_size
    for key in ("heads", "intermediate"):
        entries = layout.get(key, {})
        if not isinstance(entries, dict):
            raise ModelError(f"{where}.{key} must be an object keyed by layer index")
        for layer in entries:
            if not (str(layer).isdigit() and int(layer) < n):
                raise ModelError(f"{where}.{key} names layer {layer!r} of a {n}-layer model")
    for layer, heads in layout.get("heads", {}).items():
        ok = isinstance(heads, list) and all(isinstance(h, int) and 0 <= h < n_heads for h in heads)
        if not ok or not heads or len(set(heads)) != len(heads):
            raise ModelError(f"{where}.heads[{layer}] must list 1 to {n_heads} distinct head ids, got {heads!r}")
    for layer, width in layout.get("intermediate", {}).items():
        if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= size:
            raise ModelError(f"{where}.intermediate[{layer}] must be a size in 1..{size}, got {width!r}")
    if "layers" in layout and (not isinstance(layout["layers"], list) or len(layout["layers"]) != n):
        raise ModelError(f"{where}.layers must list {n} original layer ids (num_hidden_layers)")
    return layout


def apply_layout(model: nn.Module, layout: dict) -> None:
    """Shrink a freshly built (uniform) model to ``layout``'s shapes; the weights are loaded afterwards."""
    layers = encoder_layers(model)
    setattr(model.config, PRUNING_KEY, None)  # the fresh modules are uniform: start from that layout
    heads, widths = layout.get("heads", {}), layout.get("intermediate", {})
    remove, keep = {}, {}
    for li, layer in enumerate(layers):
        if str(li) in heads:
            remove[li] = range(len(heads[str(li)]), layer.attention.self.num_attention_heads)
        if str(li) in widths:
            keep[li] = range(widths[str(li)])
    prune_heads(model, remove)
    prune_ffn(model, keep)
    merged = pruning_layout(model)
    merged["layers"] = [int(i) for i in layout.get("layers", merged["layers"])]
    merged["heads"] |= {str(li): [int(h) for h in kept] for li, kept in heads.items()}  # original head ids
    _set_layout(model, merged)


def load_pruned_classifier(
    folder: str | os.PathLike, reshape: Callable[[nn.Module], None] | None = None
) -> PreTrainedModel:
    """Load a pruned sequence classifier folder: config -> model -> layout -> safetensors (strict).

    ``reshape`` changes the built model further before the weights load (the factorized modules of
    :mod:`bertsent.modeling.factorized`); a folder without a pruned layout then only gets that."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from bertsent.runtime import quiet_transformers

    folder = Path(folder)
    index = folder / f"{WEIGHTS_FILE}.index.json"
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else None
    except (json.JSONDecodeError, KeyError, AttributeError) as e:
        raise ModelError(f"{index}: not a valid safetensors index ({e})") from e
    files = [folder / name for name in shards] if shards else [folder / WEIGHTS_FILE]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise ModelError(f"{folder}: no {', '.join(missing)} (pruned models are loaded from safetensors only)")
    quiet_transformers()
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read {folder}/config.json: {first_line(e)}") from e
    saved = getattr(config, PRUNING_KEY, None)
    layout = None if saved is None and reshape else _check_layout(saved or {}, config, folder)
    try:
        model = AutoModelForSequenceClassification.from_config(config, trust_remote_code=False)
    except ValueError as e:
        raise ModelError(f"cannot build the model of {folder}: {first_line(e)}") from e
    try:
        if layout is not None:
            apply_layout(model, layout)
    except PruneError as e:
        raise ModelError(f"{folder}: {e}") from e
    if reshape is not None:
        reshape(model)
    try:
        state = {}
        for path in files:
            state |= load_file(path)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, SafetensorError, OSError) as e:
        what = "the pruned layout" if reshape is None else "the layout"
        raise ModelError(f"{folder}: weights do not match {what} in config.json ({first_line(e)})") from e
    return model.eval()
