"""Early exit (dynamic inference): a classifier on every encoder layer's [CLS], and the forward pass that
stops each review at the first layer whose prediction is confident enough.

Layers ``0 .. L-2`` each get an :class:`ExitHead` (standardised [CLS], then pooler-shaped: dense, tanh,
classifier, as ``BertForSequenceClassification``'s own head); the last layer's head *is* the model's pooler and
classifier, so a review that runs to the end gets exactly the full model's logits. A mean-pooled model
(``modeling.pooling``) has its heads read the mean of the layer's token vectors, as its own head does, and its
pooling layer counts as part of that head: ``L`` is the encoder's own layers, and "layers used" counts those.
Two exit rules (:class:`ExitRule`):

- ``entropy`` (DeeBERT, Xin et al., 2020): leave at the first layer whose softmax entropy, divided by
  ln(number of labels) so that it lies in [0, 1], is *below* the threshold. Threshold 0 never exits early.
- ``patience`` (PABEE, Zhou et al., 2020): leave at the first layer whose label the ``threshold`` layers
  before it also gave (threshold 1: two layers in a row agree). Threshold 0 never exits early.

**Batching rule** (:meth:`EarlyExitModel.forward`): every row of a batch runs layer by layer; after each
layer the rows that exit keep that layer's logits and leave, and the batch goes on with the remaining
rows only (their hidden states, attention mask and patience state are indexed down, and trailing padding
columns that no remaining row needs are cut). A row's result therefore depends on nothing but its own
tokens: batched logits equal one-at-a-time logits to float rounding, and the layers each row used are the
same. Inference only; the folder records the rule in ``config.json`` (``bertsent_early_exit``) and the
heads in ``early_exit.safetensors`` beside the untouched model weights, so ``transformers.pipeline`` still
loads the full-depth model and ignores both.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bertsent.config import check_exit_rule
from bertsent.errors import ModelError, SettingsError, first_line
from bertsent.folder import EARLY_EXIT_FILE, EARLY_EXIT_KEY, recorded_early_exit
from bertsent.modeling.pooling import own_layers, pooling_layer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExitRule:
    """When a row leaves: ``criterion`` ``entropy`` or ``patience`` with its ``threshold`` (0: never early)."""

    criterion: str
    threshold: float

    def __post_init__(self) -> None:
        check_exit_rule(self.criterion, self.threshold)

    def start(self, rows: int, device: torch.device) -> torch.Tensor:
        """The per-row state before the first layer: (previous label, agreeing layers so far)."""
        state = torch.zeros((rows, 2), dtype=torch.long, device=device)
        state[:, 0] = -1
        return state

    def step(self, logits: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Which rows exit at this layer (bool per row), and their state for the next layer."""
        if self.criterion == "entropy":
            probs = torch.softmax(logits.float(), dim=-1)
            # entr(0) = 0, so a saturated softmax gives entropy 0 rather than NaN.
            entropy = torch.special.entr(probs).sum(-1) / math.log(logits.shape[-1])
            return entropy < self.threshold, state
        label = logits.argmax(-1)
        count = torch.where(label == state[:, 0], state[:, 1] + 1, torch.zeros_like(label))
        done = count >= self.threshold if self.threshold > 0 else torch.zeros_like(label, dtype=torch.bool)
        return done, torch.stack((label, count), dim=1)


class ExitHead(nn.Module):
    """One intermediate layer's classifier: its [CLS] vector standardised per dimension (``shift``, ``scale``:
    fitted on the training reviews' vectors), then dense -> tanh -> dropout -> linear (the pooler's shape).

    Standardised because an early layer's [CLS] barely varies between reviews (all-MiniLM-L6-v2 on IMDB,
    layer 1: a per-dimension std of ~0.002 against a norm of 8): on the raw vector a head learnt nothing
    (one class for every review); standardised, layer 1 reached 69% on validation reviews. For the same
    reason the head computes in fp32 even under bf16 autocast: the signal is smaller than bf16's rounding.
    """

    def __init__(self, hidden_size: int, num_labels: int, dropout: float = 0.1, init_std: float = 0.02) -> None:
        super().__init__()
        self.register_buffer("shift", torch.zeros(hidden_size))
        self.register_buffer("scale", torch.ones(hidden_size))
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)
        for linear in (self.dense, self.classifier):  # BERT's own initialisation
            nn.init.normal_(linear.weight, std=init_std)
            nn.init.zeros_(linear.bias)

    @classmethod
    def like(cls, model: nn.Module) -> ExitHead:
        """A fresh head sized, initialised and placed like ``model``'s own classifier."""
        config = model.config
        head = cls(config.hidden_size, config.num_labels, model.dropout.p, config.initializer_range)
        return head.to(next(model.parameters()).device)

    @torch.no_grad()
    def standardise(self, states: torch.Tensor) -> None:
        """Fit ``shift`` and ``scale`` to ``states`` (reviews, hidden): mean 0 and std 1 per dimension."""
        std = states.float().std(0)
        self.shift.copy_(states.float().mean(0))
        # A floor at a tenth of the mean std: a near-constant dimension is not blown up into noise.
        self.scale.copy_(1 / std.clamp_min(0.1 * float(std.mean()) + 1e-12))

    def forward(self, cls_vector: torch.Tensor) -> torch.Tensor:
        with torch.autocast(cls_vector.device.type, enabled=False):
            x = (cls_vector.float() - self.shift) * self.scale
            return self.classifier(self.dropout(torch.tanh(self.dense(x))))


@dataclass
class EarlyExitOutput:
    """What :meth:`EarlyExitModel.forward` returns: each row's logits and how many layers it ran (1..L)."""

    logits: torch.Tensor
    layers: torch.Tensor


def check_supported(model: nn.Module) -> None:
    """A ModelError unless ``model`` is a BERT sequence classifier with a pooler (what the heads mirror)."""
    from transformers.models.bert.modeling_bert import BertLayer

    bert = getattr(model, "bert", None)
    layers = getattr(getattr(bert, "encoder", None), "layer", None)
    kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    if bert is None or not layers or getattr(bert, "pooler", None) is None or model.config.is_decoder:
        raise ModelError(
            f"early exit supports BERT classifiers with a pooler (model.bert); {kind} is laid out otherwise"
        )
    if not isinstance(getattr(model, "classifier", None), nn.Linear) or not isinstance(layers[0], BertLayer):
        raise ModelError(f"early exit supports BERT classifiers (a Linear classifier on BertLayer layers); not {kind}")


class EarlyExitModel(nn.Module):
    """A BERT classifier (``model``, shared, not copied) with ``heads`` on layers ``0 .. L-2``.

    ``model``'s last encoder layer may be the [CLS]-only one (:mod:`bertsent.modeling.cls_only`): only the
    last layer's [CLS] is read. ``rule`` is what :meth:`forward` uses when it is given none.
    """

    def __init__(self, model: nn.Module, heads: nn.ModuleList, rule: ExitRule | None = None) -> None:
        super().__init__()
        check_supported(model)
        self.model, self.heads = model, heads
        self.pooling = pooling_layer(model.config)
        self.rule = rule or ExitRule("entropy", 0.0)
        if len(heads) != self.num_layers - 1:
            raise ModelError(
                f"{len(heads)} exit heads for a {self.num_layers}-layer encoder (needs one per layer but the last)"
            )

    @property
    def num_layers(self) -> int:
        """The encoder's own layers (``modeling.pooling.own_layers``): a mean-pooling layer is the final head's."""
        return own_layers(self.model.config)

    def exit_features(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """What an exit head reads of a layer's output: [CLS], or for a mean-pooled model the mean of the
        unmasked token vectors (what that model's own head reads)."""
        if self.pooling is None:
            return hidden[:, 0]
        weights = mask[:, : hidden.shape[1], None].to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1)

    def _final_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The model's own head on its last encoder layer's output, through the same modules as its forward."""
        return self.model.classifier(self.model.dropout(self.model.bert.pooler(hidden)))

    def _layer(self, index: int, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        from transformers.masking_utils import create_bidirectional_mask

        bert = self.model.bert
        # Rebuilt per layer: the batch shrinks. The same call as BertModel.forward makes.
        extended = create_bidirectional_mask(config=bert.config, inputs_embeds=hidden, attention_mask=mask)
        return bert.encoder.layer[index](hidden, extended)

    def _last(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The last encoder layer, then the mean-pooling layer when there is one: the full model's output."""
        for index in range(self.num_layers - 1, len(self.model.bert.encoder.layer)):
            hidden = self._layer(index, hidden, mask)
        return hidden

    def cls_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Every layer's exit features ``(rows, L, hidden)``, no exit: what the heads are trained on. The last
        is the final output's [CLS] (after the mean-pooling layer, if any), what the model's head reads."""
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        hidden = self.model.bert.embeddings(input_ids=input_ids)
        states = []
        for index in range(self.num_layers - 1):
            hidden = self._layer(index, hidden, mask)
            states.append(self.exit_features(hidden, mask))
        states.append(self._last(hidden, mask)[:, 0])
        return torch.stack(states, dim=1)

    def layer_logits(self, states: torch.Tensor) -> torch.Tensor:
        """Every layer's logits ``(rows, L, labels)`` from :meth:`cls_states`' output."""
        last = self.num_layers - 1
        logits = [self.heads[i](states[:, i]).float() for i in range(last)]
        logits.append(self._final_logits(states[:, last : last + 1]).float())
        return torch.stack(logits, dim=1)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        rule: ExitRule | None = None,
    ) -> EarlyExitOutput:
        """Each row's logits at the layer where it exits, and the layers it ran (module docstring: batching rule)."""
        rule = rule or self.rule
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        hidden = self.model.bert.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        rows = torch.arange(len(input_ids), device=input_ids.device)
        state = rule.start(len(input_ids), input_ids.device)
        layers = torch.zeros(len(input_ids), dtype=torch.long, device=input_ids.device)
        out: torch.Tensor | None = None
        last = self.num_layers - 1
        for index in range(self.num_layers):
            if index < last:
                hidden = self._layer(index, hidden, mask)
                logits = self.heads[index](self.exit_features(hidden, mask))
                done, state = rule.step(logits, state)
            else:
                logits = self._final_logits(self._last(hidden, mask))
                done = torch.ones_like(rows, dtype=torch.bool)
            if out is None:
                out = logits.new_zeros((len(input_ids), logits.shape[-1]), dtype=torch.float32)
            if not done.any():
                continue  # nobody leaves: no copy of the batch
            # fp32 out: the exit heads compute in fp32, the last layer's classifier in bf16 under autocast.
            out[rows[done]], layers[rows[done]] = logits[done].float(), index + 1
            if done.all():
                break
            keep = ~done
            hidden, mask = _trim_padding(hidden[keep], mask[keep])
            rows, state = rows[keep], state[keep]
        return EarlyExitOutput(logits=out, layers=layers)


def _trim_padding(hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut the trailing columns that are padding in every remaining row (the longest left may be shorter)."""
    used = mask.any(dim=0).nonzero()
    width = int(used.max()) + 1 if len(used) else mask.shape[1]
    return hidden[:, :width], mask[:, :width]


# --- the folder: heads file and record ---------------------------------------------------------------


def exit_rule(folder: Path, threshold: float | None = None) -> ExitRule:
    """The rule the folder records, with ``threshold`` instead of its own when given; a ModelError if broken."""
    record = recorded_early_exit(folder)
    if not isinstance(record, dict) or "criterion" not in record or "threshold" not in record:
        raise ModelError(f"{folder}/config.json: {EARLY_EXIT_KEY} must hold criterion and threshold, got {record!r}")
    try:
        check_exit_rule(record["criterion"], record["threshold"])
    except SettingsError as e:
        raise ModelError(f"{folder}/config.json: {EARLY_EXIT_KEY}: {e}") from e
    chosen = record["threshold"] if threshold is None else threshold
    return ExitRule(record["criterion"], float(chosen))


def save_heads(exit_model: EarlyExitModel, folder: Path) -> Path:
    """Write the heads to ``folder/early_exit.safetensors`` (keys ``<layer>.dense.weight``, ...)."""
    from safetensors.torch import save_file

    path = folder / EARLY_EXIT_FILE
    state = {k: v.detach().float().cpu().contiguous() for k, v in exit_model.heads.state_dict().items()}
    save_file(state, path, metadata={"format": "pt", "layers": str(exit_model.num_layers)})
    return path


def load_heads(model: nn.Module, folder: Path) -> nn.ModuleList:
    """The heads of ``folder`` for ``model`` (one per layer but the last), loaded strictly: a ModelError
    when they do not fit it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    check_supported(model)
    n = own_layers(model.config)
    hidden, labels = model.config.hidden_size, model.config.num_labels
    heads = nn.ModuleList([ExitHead(hidden, labels, model.dropout.p) for _ in range(n - 1)])
    try:
        heads.load_state_dict(load_file(folder / EARLY_EXIT_FILE), strict=True)
    except (RuntimeError, SafetensorError, OSError) as e:
        raise ModelError(
            f"{folder / EARLY_EXIT_FILE}: not the exit heads of this {n}-layer model ({first_line(e)})"
        ) from e
    return heads.to(next(model.parameters()).device).eval()


def load_early_exit(model: nn.Module, folder: str | Path, threshold: float | None = None) -> EarlyExitModel | None:
    """``model`` (the folder's classifier) with the folder's exit heads and rule; None when the folder records
    no early exit, or records it without its heads file (a warning: the full-depth model runs)."""
    folder = Path(folder)
    if recorded_early_exit(folder) is None:
        return None
    rule = exit_rule(folder, threshold)
    if not (folder / EARLY_EXIT_FILE).is_file():
        log.warning("%s records early exit but has no %s: running the full-depth model", folder, EARLY_EXIT_FILE)
        return None
    return EarlyExitModel(model, load_heads(model, folder), rule)
