"""Tokenization, truncation strategies, length-aware batching and padding.

Token ids are kept unpadded as one small int32 array per text, so memory grows with the number of
real tokens, not with ``rows x max_length``; batches are padded only to their own longest text.
:func:`encode_with_offsets` is :func:`encode` with the map from kept tokens back to characters (what
explanations need); batches come by count (:func:`sorted_batches`) or by token budget
(:func:`token_budget_batches`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from bertsent.config import TRUNCATION_STRATEGIES
from bertsent.errors import ModelError, SettingsError

HEAD_FRACTION = 0.25
"""Share of the budget kept from the start in ``head+tail`` (Sun et al., 2019: 128 of 510 tokens)."""


@dataclass
class Encoded:
    """Token ids per text (special tokens included, truncated) and each text's untruncated length."""

    ids: list[np.ndarray]
    full_lengths: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))


def truncate(ids: Sequence[int], budget: int, strategy: str) -> Sequence[int]:
    """Keep at most ``budget`` tokens: the start, the end, or both (``head+tail``)."""
    if len(ids) <= budget:
        return ids
    if strategy == "head":
        return ids[:budget]
    if strategy == "tail":
        return ids[len(ids) - budget :]
    if strategy == "head+tail":
        head = int(budget * HEAD_FRACTION)
        return list(ids[:head]) + list(ids[len(ids) - (budget - head) :])
    raise ValueError(f"truncation must be one of {', '.join(TRUNCATION_STRATEGIES)}, got {strategy!r}")


def special_token_layout(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens a tokenizer puts before and after one text (``[CLS]`` and ``[SEP]`` for BERT)."""
    probe = tokenizer.convert_tokens_to_ids(tokenizer.tokenize("a"))
    ids = tokenizer("a")["input_ids"]
    for start in range(len(ids) - len(probe) + 1):
        if ids[start : start + len(probe)] == probe:
            return ids[:start], ids[start + len(probe) :]
    raise ValueError(f"cannot locate the text among the special tokens of {type(tokenizer).__name__}")


def text_room(tokenizer, max_length: int) -> tuple[list[int], list[int], int]:
    """The special tokens around one text, and the tokens left for the text at ``max_length``."""
    prefix, suffix = special_token_layout(tokenizer)
    budget = max_length - len(prefix) - len(suffix)
    if budget < 1:
        raise SettingsError(f"max_length {max_length} leaves no room for text after the special tokens")
    return prefix, suffix, budget


def _check_truncation(truncation: str) -> None:
    if truncation not in TRUNCATION_STRATEGIES:
        raise SettingsError(f"truncation must be one of {', '.join(TRUNCATION_STRATEGIES)}, got {truncation!r}")


def encode(tokenizer, texts: Sequence[str], max_length: int, truncation: str = "head") -> Encoded:
    """Tokenize ``texts`` in fast batch mode and truncate each to ``max_length`` (special tokens included)."""
    _check_truncation(truncation)
    prefix, suffix, budget = text_room(tokenizer, max_length)
    ids: list[np.ndarray] = []
    full: list[int] = []
    for row in token_ids(tokenizer, texts):
        full.append(len(row) + len(prefix) + len(suffix))
        ids.append(np.asarray([*prefix, *truncate(row, budget, truncation), *suffix], dtype=np.int32))
    return Encoded(ids=ids, full_lengths=np.asarray(full, dtype=np.int64))


@dataclass
class TokenOffsets:
    """Where one encoded text's tokens come from: ``kept``, the position in the text's untruncated token
    sequence of each token kept between the special tokens; ``offsets``, the character span of every
    token of the untruncated text."""

    kept: np.ndarray
    offsets: list[tuple[int, int]]


def encode_with_offsets(
    tokenizer, texts: Sequence[str], max_length: int, truncation: str = "head"
) -> tuple[Encoded, list[TokenOffsets]]:
    """:func:`encode` (the same ids, the same errors), and each text's :class:`TokenOffsets`. Character
    offsets need a fast tokenizer: a :class:`ModelError` otherwise."""
    _check_truncation(truncation)
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"character offsets need a fast tokenizer, not a {type(tokenizer).__name__}")
    prefix, suffix, budget = text_room(tokenizer, max_length)
    ids: list[np.ndarray] = []
    full: list[int] = []
    where: list[TokenOffsets] = []
    for row, offsets in _tokenized(tokenizer, texts, offsets=True):
        kept = np.asarray(truncate(range(len(row)), budget, truncation), dtype=np.int64)
        full.append(len(row) + len(prefix) + len(suffix))
        ids.append(np.asarray([*prefix, *np.asarray(row, dtype=np.int64)[kept], *suffix], dtype=np.int32))
        where.append(TokenOffsets(kept=kept, offsets=[(int(a), int(b)) for a, b in offsets]))
    return Encoded(ids=ids, full_lengths=np.asarray(full, dtype=np.int64)), where


def shorten(encoded: Encoded, tokenizer, max_length: int, truncation: str) -> Encoded:
    """The same reviews as if encoded at the shorter ``max_length``: special tokens kept, the text cut again
    with ``truncation`` (exact for head, tail and head+tail, whose cut points only move inwards)."""
    prefix, suffix, budget = text_room(tokenizer, max_length)
    ids = []
    for row in encoded.ids:
        if len(row) > max_length:
            body = truncate(row[len(prefix) : len(row) - len(suffix)], budget, truncation)
            row = np.concatenate([row[: len(prefix)], np.asarray(body, dtype=row.dtype), row[len(row) - len(suffix) :]])
        ids.append(row)
    return Encoded(ids=ids, full_lengths=encoded.full_lengths)


def token_ids(tokenizer, texts: Sequence[str], chunk: int = 4096) -> Iterator[list[int]]:
    """Each text's token ids without special tokens or truncation, tokenized in fast batch mode.

    Chunks bound the tokenizer's temporary memory on large inputs.
    """
    for ids, _ in _tokenized(tokenizer, texts, chunk):
        yield ids


def _tokenized(tokenizer, texts: Sequence[str], chunk: int = 4096, offsets: bool = False) -> Iterator[tuple]:
    """``(ids, offsets)`` of each text (offsets None unless asked), ``chunk`` texts per tokenizer call."""
    for start in range(0, len(texts), chunk):
        batch = tokenizer(
            list(texts[start : start + chunk]),
            add_special_tokens=False,
            truncation=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            return_offsets_mapping=offsets,
            verbose=False,
        )
        ids = batch["input_ids"]
        yield from zip(ids, batch["offset_mapping"] if offsets else [None] * len(ids), strict=True)


def encode_windows(tokenizer, texts: Sequence[str], max_length: int, stride: int) -> tuple[Encoded, np.ndarray]:
    """Overlapping windows of ``max_length`` tokens covering each whole text, and the text each belongs to.

    Consecutive windows share ``stride`` tokens, so no sentence is only ever seen cut in half. Short
    texts give one window. ``full_lengths`` are per window (the owning text's untruncated length).
    """
    prefix, suffix = special_token_layout(tokenizer)
    budget = max_length - len(prefix) - len(suffix)
    if not 0 <= stride < budget:
        raise SettingsError(f"stride must be >= 0 and below the {budget} text tokens of a window, got {stride}")
    ids: list[np.ndarray] = []
    owner: list[int] = []
    full: list[int] = []
    step = budget - stride
    for i, row in enumerate(token_ids(tokenizer, texts)):
        for begin in range(0, max(len(row) - stride, 1), step):
            ids.append(np.asarray([*prefix, *row[begin : begin + budget], *suffix], dtype=np.int32))
            owner.append(i)
            full.append(len(row) + len(prefix) + len(suffix))
    return Encoded(ids=ids, full_lengths=np.asarray(full, dtype=np.int64)), np.asarray(owner, dtype=np.int64)


def sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Batches of indices sorted longest first: least padding for inference."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def token_budget_batches(lengths: np.ndarray, budget: int, copies: int = 1) -> list[np.ndarray]:
    """Batches of indices, longest first, each as many texts as keep texts x ``copies`` x its longest
    text's length within ``budget`` tokens (a text alone may exceed it): for passes whose cost grows with
    the padded tokens, e.g. Integrated Gradients' ``copies`` = steps per text."""
    batches: list[np.ndarray] = []
    current: list[int] = []
    lengths = np.asarray(lengths)
    for i in np.argsort(-lengths, kind="stable"):
        if current and (len(current) + 1) * copies * lengths[current[0]] > budget:
            batches.append(np.asarray(current))
            current = []
        current.append(int(i))
    return [*batches, np.asarray(current)] if current else batches


def length_grouped_batches(
    lengths: np.ndarray, batch_size: int, seed: int, mega_batch_factor: int = 50
) -> list[np.ndarray]:
    """Shuffled training batches of similar-length texts.

    Indices are shuffled, cut into mega-batches of ``batch_size * mega_batch_factor``, sorted by length
    inside each, then cut into batches whose order is shuffled again. This keeps randomness for SGD
    while most batches need little padding (the ``group_by_length`` idea of HF's Trainer).
    The order depends only on ``seed``, so a resumed run sees exactly the same batches.
    """
    rng = np.random.default_rng(seed)
    lengths = np.asarray(lengths)
    order = rng.permutation(len(lengths))
    mega = batch_size * mega_batch_factor
    batches: list[np.ndarray] = []
    for start in range(0, len(order), mega):
        chunk = order[start : start + mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def pad_rows(rows: Sequence[np.ndarray], fill, dtype) -> np.ndarray:
    """``rows`` (1-D, of any lengths) as one ``(len(rows), longest)`` array of ``dtype``, ``fill`` after each."""
    width = max(len(r) for r in rows)
    out = np.full((len(rows), width), fill, dtype=dtype)
    for j, row in enumerate(rows):
        out[j, : len(row)] = row
    return out


def collate(encoded: Encoded, indices: np.ndarray, pad_id: int) -> dict[str, np.ndarray]:
    """Pad the texts at ``indices`` to their longest member: int64 ``input_ids`` and ``attention_mask`` (NumPy:
    ONNX Runtime and OpenVINO take them as they are, PyTorch through ``torch.from_numpy`` without a copy)."""
    rows = [encoded.ids[i] for i in indices]
    input_ids = pad_rows(rows, pad_id, np.int64)
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    mask = (np.arange(input_ids.shape[1]) < lengths[:, None]).astype(np.int64)
    return {"input_ids": input_ids, "attention_mask": mask}


def iter_batches(encoded: Encoded, batch_size: int, pad_id: int) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Inference batches, longest first, with the original indices of their rows."""
    for idx in sorted_batches(encoded.lengths, batch_size):
        yield idx, collate(encoded, idx, pad_id)
