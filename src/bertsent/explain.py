"""Per-word attributions for a PyTorch classifier's predicted label, computed with Captum.

The method is Captum's, not ours: ``integrated-gradients`` is :class:`captum.attr.LayerIntegratedGradients`
(Sundararajan et al., 2017) on the word-embedding layer, ``input-x-gradient`` is
:class:`captum.attr.LayerGradientXActivation` there (embedding x gradient, one pass). What this module
adds is what a reader of the output needs:

- **What is attributed**: the target label's log-odds, ``logit_c - logsumexp(other logits)``. A
  probability's gradient vanishes as it nears 1 (a confident review would explain nothing); the log-odds
  do not saturate, and with two labels they are the logit margin. A positive score raises the odds of
  the predicted label: the word supports it.
- **Baseline** (Integrated Gradients): every text token replaced by [PAD], the special tokens kept, so
  the path runs from "the same frame, no words" to the review; :attr:`TokenAttributions.delta` is
  Captum's convergence delta (how far the scores' sum is from the log-odds change it must equal).
- **Words**: WordPieces are merged back into the words of the original text through the fast
  tokenizer's character offsets. Pieces whose spans touch make one word (``don't``, ``film:``): a word
  is a whitespace-separated run, ``text[start:end] == word``, and its score is the sum of its pieces'.
  Scores are divided by the text's largest absolute word score, so they lie in [-1, 1].
- **Truncation**: the explainer sees exactly what the model sees: :func:`bertsent.encoding.encode_with_offsets`
  is :func:`~bertsent.encoding.encode` (``head``, ``tail`` or ``head+tail`` to ``max_length``) with each
  kept token's place in the text. Words truncated away get **no entry**; a word cut in part keeps its
  whole span and the score of its kept pieces. Batches (by token budget) and padding are
  :mod:`bertsent.encoding`'s; gradients are on through :func:`~bertsent.modeling.passes.model_pass`.
- **Precision and forward**: attribution runs in fp32 (no autocast) on the plain forward: the [CLS]-only
  last layer (:class:`~bertsent.modeling.cls_only.ClsOnlyLastLayer`) is swapped back for the stock one.

Cost: Integrated Gradients runs ``n_steps`` forward and backward passes per review (about 3 forward
passes each), ``input-x-gradient`` one.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from bertsent.config import EXPLAIN_METHODS, ExplainSettings
from bertsent.encoding import Encoded, collate, encode_with_offsets, pad_rows, text_room, token_budget_batches
from bertsent.errors import ModelError, SettingsError
from bertsent.modeling.cls_only import ClsOnlyLastLayer
from bertsent.modeling.passes import model_pass

__all__ = ["EXPLAIN_METHODS", "Explainer", "TokenAttributions", "attribution_model", "log_odds", "word_scores"]


@dataclass
class TokenAttributions:
    """One text's attributions per token, as the model saw it (special tokens included, truncated).

    ``scores`` are Captum's, summed over the embedding dimensions, not normalised; ``word_of`` names each
    position's word (an index into ``spans``, the character span of every word of the whole text), -1 for
    special tokens. ``delta`` is Integrated Gradients' convergence delta (None for other methods).
    """

    input_ids: np.ndarray
    scores: np.ndarray
    word_of: np.ndarray
    spans: list[tuple[int, int]]
    target: int
    delta: float | None = None

    @property
    def text_positions(self) -> np.ndarray:
        """Positions holding a token of the text (not a special token)."""
        return np.flatnonzero(self.word_of >= 0)


def log_odds(logits: torch.Tensor) -> torch.Tensor:
    """Each label's log-odds against the others, ``logit_k - logsumexp(logits without k)``, shape of ``logits``."""
    k = logits.shape[-1]
    others = logits.unsqueeze(-2).expand(*logits.shape[:-1], k, k)
    eye = torch.eye(k, dtype=torch.bool, device=logits.device)
    return logits - torch.logsumexp(others.masked_fill(eye, float("-inf")), dim=-1)


def attribution_model(model: torch.nn.Module) -> torch.nn.Module:
    """A module tree of its own over the same weight tensors: eval mode, the plain forward, ready for gradients.

    Why a copy: Captum hooks the embedding layer while it attributes; on the module the Predictor runs
    (in the server: the batcher's thread, at the same time) that hook would rewrite the embeddings of an
    unrelated prediction. Why the same tensors: no second copy of the weights in memory (both only read
    them). A ``torch.compile`` wrapper is unwrapped, the [CLS]-only last layer swapped back for the stock
    one. Dynamically quantized INT8 layers have no gradients: a :class:`ModelError`.
    """
    model = getattr(model, "_orig_mod", model)
    if any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in model.modules()):
        raise ModelError(
            "explanations need a float model: this folder's Linear layers are dynamically quantized INT8, "
            "which has no gradients; explain the folder it was quantized from"
        )
    shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
    plain = copy.deepcopy(model, memo=shared)
    swaps = [(m, name, child) for m in plain.modules() for name, child in m.named_children()]
    for parent, name, child in swaps:
        if isinstance(child, ClsOnlyLastLayer):
            setattr(parent, name, child.layer)
    embeddings = plain.get_input_embeddings() if hasattr(plain, "get_input_embeddings") else None
    if not isinstance(embeddings, torch.nn.Embedding):
        raise ModelError(f"cannot explain a {type(model).__name__}: it has no word-embedding layer to attribute to")
    return plain.eval()


def group_words(offsets: Sequence[tuple[int, int]]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The word of each token, and each word's character span: tokens whose spans touch make one word."""
    word_of = np.empty(len(offsets), dtype=np.int64)
    spans: list[tuple[int, int]] = []
    for i, (start, end) in enumerate(offsets):
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], end))
        else:
            spans.append((start, end))
        word_of[i] = len(spans) - 1
    return word_of, spans


def encode_words(tokenizer, texts: Sequence[str], max_length: int, truncation: str) -> list[TokenAttributions]:
    """Each text's ids exactly as :func:`bertsent.encoding.encode` builds them, with each token's word.

    Rows come back with zero scores and target -1, to be filled by :meth:`Explainer.attribute`.
    """
    return _encoded_words(tokenizer, texts, max_length, truncation)[1]


def _encoded_words(tokenizer, texts, max_length: int, truncation: str) -> tuple[Encoded, list[TokenAttributions]]:
    """:func:`~bertsent.encoding.encode_with_offsets`, and each row's tokens mapped to the words of its text."""
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError("explanations need a fast tokenizer (its character offsets map pieces back to words)")
    encoded, where = encode_with_offsets(tokenizer, texts, max_length, truncation)
    prefix, _, _ = text_room(tokenizer, max_length)
    rows = []
    for ids, tokens in zip(encoded.ids, where, strict=True):
        word_of, spans = group_words(tokens.offsets)
        row_words = np.full(len(ids), -1, dtype=np.int64)  # special tokens are no word
        row_words[len(prefix) : len(prefix) + len(tokens.kept)] = word_of[tokens.kept]
        rows.append(TokenAttributions(ids.astype(np.int64), np.zeros(len(ids)), row_words, spans, target=-1))
    return encoded, rows


def word_scores(text: str, row: TokenAttributions, digits: int = 4) -> list[dict]:
    """``[{"word", "start", "end", "score"}]`` of the words the model saw, in text order, scores in [-1, 1]."""
    positions = row.text_positions
    if not len(positions):
        return []
    words, inverse = np.unique(row.word_of[positions], return_inverse=True)
    totals = np.bincount(inverse, weights=row.scores[positions], minlength=len(words))
    scale = float(np.abs(totals).max()) or 1.0
    out = []
    for word, total in zip(words, totals, strict=True):
        start, end = row.spans[int(word)]
        score = round(float(total) / scale, digits)
        out.append({"word": text[start:end], "start": int(start), "end": int(end), "score": score})
    return out


class Explainer:
    """Attributions of a PyTorch sequence classifier's labels to the words of each text (see the module).

    ``model`` is the classifier as loaded (it is not modified: attribution runs on
    :func:`attribution_model`'s copy over the same weights); ``max_length`` and ``truncation`` are the
    Predictor's. Thread-safe: one attribution runs at a time (Captum's hook on the copy's embedding
    layer is shared state), and never disturbs predictions running on ``model`` meanwhile.
    """

    def __init__(
        self, model: torch.nn.Module, tokenizer, max_length: int, truncation: str, settings: ExplainSettings | None
    ) -> None:
        self.model = attribution_model(model)
        self.tokenizer, self.max_length, self.truncation = tokenizer, max_length, truncation
        self.settings = settings or ExplainSettings()
        self.device = next(self.model.parameters()).device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._lock = threading.Lock()

    def explain(
        self, texts: Sequence[str], targets: Sequence[int] | None = None, method: str | None = None
    ) -> list[list[dict]]:
        """Each text's words with their scores for its ``targets`` label (default: the predicted one)."""
        rows = self.attribute(texts, targets, method)
        return [word_scores(text, row) for text, row in zip(texts, rows, strict=True)]

    def attribute(
        self, texts: Sequence[str], targets: Sequence[int] | None = None, method: str | None = None
    ) -> list[TokenAttributions]:
        """Per-token attributions of each text for its ``targets`` label (default: the model's argmax)."""
        if isinstance(texts, str):
            raise TypeError("explain takes a list of texts, not one string")
        method = self.settings.explain_method if method is None else method
        if method not in EXPLAIN_METHODS:
            raise SettingsError(f"explain method must be one of {', '.join(EXPLAIN_METHODS)}, got {method!r}")
        encoded, rows = _encoded_words(self.tokenizer, texts, self.max_length, self.truncation)
        if targets is not None and len(targets) != len(rows):
            raise ValueError(f"{len(targets)} targets for {len(rows)} texts")
        steps = self.settings.explain_steps if method == "integrated-gradients" else 1
        # One Captum call per batch: texts x steps x the longest one's length within the token budget.
        batches = token_budget_batches(encoded.lengths, self.settings.explain_batch_tokens, copies=steps)
        with self._lock, model_pass(self.model, grad=True):
            for idx in batches:
                ids, mask, text = self._collate(encoded, rows, idx)
                given = None if targets is None else torch.as_tensor([int(targets[i]) for i in idx])
                chosen = self._targets(ids, mask) if given is None else given.to(self.device)
                scores, deltas = self._run(method, ids, mask, text, chosen)
                for j, i in enumerate(idx):
                    n = len(rows[i].input_ids)
                    rows[i].scores = scores[j, :n].astype(np.float64)
                    rows[i].target = int(chosen[j])
                    rows[i].delta = None if deltas is None else float(deltas[j])
        return rows

    def _collate(self, encoded: Encoded, rows: list[TokenAttributions], idx: np.ndarray):
        """Padded ids and the attention mask (:func:`~bertsent.encoding.collate`), and where the text tokens
        are (what the baseline replaces), on the model's device."""
        batch = collate(encoded, idx, self.pad_id)
        text = torch.from_numpy(pad_rows([rows[i].word_of >= 0 for i in idx], False, bool))
        ids, mask = (torch.from_numpy(batch[name]).to(self.device) for name in ("input_ids", "attention_mask"))
        return ids, mask, text.to(self.device)

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """What Captum differentiates: every label's log-odds, in fp32."""
        return log_odds(self.model(input_ids=input_ids, attention_mask=attention_mask).logits.float())

    def _targets(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._forward(ids, mask).argmax(-1)

    def _run(self, method: str, ids, mask, text, targets) -> tuple[np.ndarray, np.ndarray | None]:
        """Captum's attribution of ``targets`` to each token (summed over the embedding), and IG's delta."""
        from captum.attr import LayerGradientXActivation, LayerIntegratedGradients

        layer = self.model.get_input_embeddings()
        deltas = None
        if method == "integrated-gradients":
            baselines = torch.where(text, torch.full_like(ids, self.pad_id), ids)
            attributions, deltas = LayerIntegratedGradients(self._forward, layer).attribute(
                ids,
                baselines=baselines,
                target=targets,
                additional_forward_args=(mask,),
                n_steps=self.settings.explain_steps,
                internal_batch_size=max(len(ids), self.settings.explain_batch_tokens // ids.shape[1]),
                return_convergence_delta=True,
            )
            deltas = deltas.detach().cpu().numpy()
        else:
            attributions = LayerGradientXActivation(self._forward, layer).attribute(
                ids, target=targets, additional_forward_args=(mask,)
            )
        scores = attributions.sum(-1).masked_fill(~text, 0.0)  # special tokens and padding are not words
        return scores.detach().float().cpu().numpy(), deltas
