"""The [CLS]-only last encoder layer: the classifier reads nothing but [CLS], so the last layer skips the rest."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch


class ClsOnlyLastLayer(torch.nn.Module):
    """A BERT encoder's last layer computed for the [CLS] position only.

    The classification head reads nothing but the final [CLS] vector, so in the last layer every
    other position's query, attention output and feed-forward block is wasted work: only their keys
    and values are needed. Same weights, same result (to float rounding); about 1/L of the model's
    FLOPs saved for an L-layer encoder. Inference only: ``last_hidden_state`` keeps just [CLS].
    """

    def __init__(self, layer: torch.nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *args, **kwargs):
        return cls_only_forward(self.layer, hidden_states, attention_mask)


def cls_only_forward(layer, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *args, **kwargs):
    """``layer`` (a ``BertLayer``) computed for the [CLS] position only: keys and values for every token,
    query, attention output and feed-forward for [CLS]. Returns a (batch, 1, hidden) tensor."""
    from transformers.models.bert.modeling_bert import ALL_ATTENTION_FUNCTIONS, eager_attention_forward

    attention = layer.attention.self
    batch, length, _ = hidden_states.shape
    cls = hidden_states[:, :1]

    def heads(x: torch.Tensor, n: int) -> torch.Tensor:
        return x.view(batch, n, -1, attention.attention_head_size).transpose(1, 2)

    query = heads(attention.query(cls), 1)
    key, value = heads(attention.key(hidden_states), length), heads(attention.value(hidden_states), length)
    if attention_mask is not None and attention_mask.dim() == 4:
        attention_mask = attention_mask[:, :, :1]  # the [CLS] query's row of the mask
    interface = ALL_ATTENTION_FUNCTIONS.get_interface(attention.config._attn_implementation, eager_attention_forward)
    dropout = attention.dropout.p if attention.training else 0.0
    context, _ = interface(attention, query, key, value, attention_mask, dropout=dropout, scaling=attention.scaling)
    attended = layer.attention.output(context.reshape(batch, 1, -1), cls)
    return layer.output(layer.intermediate(attended), attended)


@contextlib.contextmanager
def cls_only_training(model: torch.nn.Module) -> Iterator[bool]:
    """While open, the last encoder layer of a BERT classifier computes [CLS] only in training too.

    A classification loss reads the logits, which read the last [CLS] vector only, so the same
    gradients come for about 1/L fewer FLOPs (most of the added mean-pooling layer's cost,
    ``modeling.pooling``). The layer's parameters stay where they are, so checkpoints, the optimizer
    and DDP see the same model; only its ``forward`` is swapped, and put back on exit. Not for losses
    that read the last layer's other positions (hidden-state distillation). Yields whether it applied.
    """
    layer = _last_bert_layer(model)
    if layer is None:
        yield False
        return
    layer.forward = functools.partial(cls_only_forward, layer)
    try:
        yield True
    finally:
        del layer.forward  # the class's own forward again


def _last_bert_layer(model: torch.nn.Module):
    """The last ``BertLayer`` of a BERT encoder classifier with stock self-attention, else None."""
    from transformers.models.bert.modeling_bert import BertLayer, BertSelfAttention

    bert = getattr(model, "bert", None)
    layers = getattr(getattr(bert, "encoder", None), "layer", None)
    if not layers or model.config.is_decoder or not isinstance(layers[-1], BertLayer):
        return None
    return layers[-1] if isinstance(layers[-1].attention.self, BertSelfAttention) else None


def cls_only_last_layer(model: torch.nn.Module) -> bool:
    """Swap a BERT classifier's last encoder layer for :class:`ClsOnlyLastLayer` (in place, for inference).

    Returns False, changing nothing, for models it does not apply to (not a BERT encoder classifier).
    """
    layer = _last_bert_layer(model)
    if layer is None:
        return False
    model.bert.encoder.layer[-1] = ClsOnlyLastLayer(layer)
    return True
