"""The [CLS]-only last encoder layer: the classifier reads nothing but [CLS], so the last layer skips the rest."""

from __future__ import annotations

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
        from transformers.models.bert.modeling_bert import ALL_ATTENTION_FUNCTIONS, eager_attention_forward

        attention = self.layer.attention.self
        batch, length, _ = hidden_states.shape
        cls = hidden_states[:, :1]

        def heads(x: torch.Tensor, n: int) -> torch.Tensor:
            return x.view(batch, n, -1, attention.attention_head_size).transpose(1, 2)

        query = heads(attention.query(cls), 1)
        key, value = heads(attention.key(hidden_states), length), heads(attention.value(hidden_states), length)
        if attention_mask is not None and attention_mask.dim() == 4:
            attention_mask = attention_mask[:, :, :1]  # the [CLS] query's row of the mask
        interface = ALL_ATTENTION_FUNCTIONS.get_interface(
            attention.config._attn_implementation, eager_attention_forward
        )
        context, _ = interface(attention, query, key, value, attention_mask, dropout=0.0, scaling=attention.scaling)
        attended = self.layer.attention.output(context.reshape(batch, 1, -1), cls)
        return self.layer.output(self.layer.intermediate(attended), attended)


def cls_only_last_layer(model: torch.nn.Module) -> bool:
    """Swap a BERT classifier's last encoder layer for :class:`ClsOnlyLastLayer` (in place, for inference).

    Returns False, changing nothing, for models it does not apply to (not a BERT encoder classifier).
    """
    from transformers.models.bert.modeling_bert import BertLayer, BertSelfAttention

    bert = getattr(model, "bert", None)
    layers = getattr(getattr(bert, "encoder", None), "layer", None)
    if not layers or model.config.is_decoder or not isinstance(layers[-1], BertLayer):
        return False
    if not isinstance(layers[-1].attention.self, BertSelfAttention):
        return False
    layers[-1] = ClsOnlyLastLayer(layers[-1])
    return True
