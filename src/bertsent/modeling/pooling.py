"""Mean pooling for sentence-transformers encoders, written as one more stock BERT layer.

all-MiniLM-L6-v2 (the embedded default) and the other sentence-transformers encoders were trained to be
read through the mean of their token vectors. ``BertForSequenceClassification``'s head reads the [CLS]
vector through the pooler instead, which those encoders never trained: a logistic-regression probe on
400 IMDB reviews scores 60.7% on the pooler output and 73.2% on the mean (``benchmarks/linear_probe.py``),
and a fine-tune of a few dozen steps ends near its head's probe.

A custom head class would turn every model folder into code (``transformers.pipeline`` would need
``trust_remote_code``; every exporter a special case). So the mean is computed by a ``BertLayer``
appended to the encoder, initialised so that its [CLS] output is the mean of the layer below:

- query and key projections near zero: attention is uniform over the unmasked tokens, so each head
  averages its slice of the value vectors (padding is masked as in any layer);
- value projection the identity, output projection ``SCALE`` times it: the residual adds [CLS]'s own
  vector, which is then 1/SCALE of the mean's, and the LayerNorm after it does not see the scale;
- feed-forward near zero, and the final LayerNorm copied from the layer below, so the mean comes out on
  the scale of the layer below's vectors;
- the pooler (dense + tanh on that vector) becomes the identity, so the head reads the mean itself
  (tanh is near-linear at that scale). Sentence-transformers encoders never train their pooler: the
  embedded MiniLM's has an all-zero bias and the singular values of a random matrix (0.0001 to 0.35),
  which would squash most directions of the mean before the head sees them.

"Near zero" is small random, not zero: exact zeros are a saddle point training cannot leave (the layer
may learn to weight tokens), and INT8 calibration would meet all-zero matrices. The folder stays a stock
BERT with one more layer, so pipeline, ONNX, OpenVINO and KerasHub read it unchanged; its cost at
inference is small because bertsent's last layer computes queries and feed-forward for [CLS] only
(``modeling.cls_only``). ``config.json`` records the layer (``bertsent_mean_pooling``) so distillation keeps
it as the student's last layer.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from bertsent.config import POOLINGS
from bertsent.errors import ModelError

log = logging.getLogger(__name__)

POOLING_KEY = "bertsent_mean_pooling"
SCALE = 50.0
NEAR_ZERO = {"attention": 1e-4, "feed_forward": 2e-3}  # init std: uniform attention, an FFN of ~0.2%


def pooling_layer(config) -> int | None:
    """Index of the encoder layer that mean-pools (None for a [CLS] model)."""
    record = getattr(config, POOLING_KEY, None)
    return record["layer"] if record else None


def own_layers(config) -> int:
    """The encoder's own layers: all but a mean-pooling layer, which is the head's (always the last). What
    distillation halves, pruning chooses among and early exit can stop after."""
    return config.num_hidden_layers - (pooling_layer(config) is not None)


def declared_pooling(resolved: str) -> str | None:
    """``mean``, ``cls``, ... as a sentence-transformers folder's Pooling module declares it; None when the
    model is not one (or a hub model whose ``modules.json`` is not in the local cache)."""
    modules = _sentence_transformers_file(resolved, "modules.json")
    if modules is None:
        return None
    entries = json.loads(modules.read_text())
    pooling = next((m for m in entries if m.get("type", "").endswith("models.Pooling")), None)
    if pooling is None:
        return None
    settings = _sentence_transformers_file(resolved, f"{pooling['path']}/config.json".lstrip("/"))
    if settings is None:
        return None
    modes = [k.removeprefix("pooling_mode_") for k, v in json.loads(settings.read_text()).items() if v is True]
    return {"mean_tokens": "mean", "cls_token": "cls"}.get(modes[0], modes[0]) if len(modes) == 1 else None


def _sentence_transformers_file(resolved: str, name: str) -> Path | None:
    folder = Path(resolved)
    if folder.is_dir():
        return folder / name if (folder / name).is_file() else None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(resolved, name)  # never the network: loading the model cached it or not
    return Path(cached) if isinstance(cached, str) else None


def resolve_pooling(pooling: str, resolved: str, model, fresh_head: bool) -> str:
    """``cls`` or ``mean`` for ``model`` loaded from ``resolved``: ``auto`` is mean for a new head on a BERT
    encoder that declares mean pooling, [CLS] otherwise."""
    if pooling not in POOLINGS:
        raise ModelError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    if pooling == "auto":
        bert = getattr(model, "bert", None) is not None
        return "mean" if fresh_head and bert and declared_pooling(resolved) == "mean" else "cls"
    if pooling == "mean" and not fresh_head:
        raise ModelError(f"{resolved}: has a trained classifier; --pooling mean only applies to a new head")
    return pooling


def add_mean_pooling(model) -> int:
    """Append the mean-pooling layer to a BERT classifier's encoder (in place); returns its index."""
    import torch
    from transformers.models.bert.modeling_bert import BertLayer

    bert = getattr(model, "bert", None)
    if bert is None:
        raise ModelError(f"mean pooling is written as a BERT layer; {type(model).__name__} is not a BERT classifier")
    if pooling_layer(model.config) is not None:
        raise ModelError(f"the model already mean-pools (layer {pooling_layer(model.config)})")
    config, below = model.config, bert.encoder.layer[-1]
    index = len(bert.encoder.layer)
    layer = BertLayer(config, layer_idx=index)
    attention, hidden = layer.attention, config.hidden_size
    eye = torch.eye(hidden)
    with torch.no_grad():
        for linear, std in (
            (attention.self.query, NEAR_ZERO["attention"]),
            (attention.self.key, NEAR_ZERO["attention"]),
            (layer.intermediate.dense, NEAR_ZERO["feed_forward"]),
            (layer.output.dense, NEAR_ZERO["feed_forward"]),
        ):
            linear.weight.normal_(0.0, std)
            linear.bias.zero_()
        attention.self.value.weight.copy_(eye)
        attention.output.dense.weight.copy_(SCALE * eye)
        for linear in (attention.self.value, attention.output.dense):
            linear.bias.zero_()
        attention.output.LayerNorm.weight.fill_(1.0)
        attention.output.LayerNorm.bias.zero_()
        layer.output.LayerNorm.load_state_dict(below.output.LayerNorm.state_dict())
        if bert.pooler is not None:
            bert.pooler.dense.weight.copy_(eye)
            bert.pooler.dense.bias.zero_()
    param = next(below.parameters())
    bert.encoder.layer.append(layer.to(device=param.device, dtype=param.dtype))
    config.num_hidden_layers = index + 1
    setattr(config, POOLING_KEY, {"layer": index})
    log.info("mean pooling: layer %d added; the head reads the mean of the token vectors", index)
    return index
