"""A folder's ``tokenizer.json`` run by the ``tokenizers`` library alone, without transformers or PyTorch.

``transformers`` imports PyTorch to tokenize (about 2.5 s on a 2-core CPU); the ONNX and OpenVINO routes
need neither, so where ``--backend auto`` picks one of them it also checks :class:`JsonTokenizer` against
the folder's transformers tokenizer (:func:`same_encoding`: the same ids on the folder's validation reviews
and on :data:`PROBE_TEXTS`) and records the verdict, and later runs tokenize with it. It offers the part of
the transformers tokenizer API that :mod:`bertsent.encoding` uses: calling it on texts, ``tokenize``,
``convert_tokens_to_ids``, ``pad_token_id``, ``model_max_length`` and ``is_fast``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bertsent.errors import ModelError, first_line

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
NO_MAX_LENGTH = int(1e30)
"""What transformers reports as ``model_max_length`` when ``tokenizer_config.json`` names none."""
PROBE_TEXTS = (
    "An absolute masterpiece: moving, funny and beautifully acted.",
    "Ceci n'est PAS un film... C'était NUL !!! Ça m'a déçu.",
    "Crème brûlée, naïve façade, Zoë's café — déjà vu",
    "日本の映画はとても良かったです。 中文字幕 很好看",
    "5/10 <br /><br />It's OK-ish; 100% not a 'classic'. #meh @director",
    "Emoji 😀👍🏽 and symbols ™ © ½ ∞",
    "  tabs\tand\nnewlines  and   runs   of   spaces  ",
    "\u200bzero\u00a0width\u00adsoft hyphen\ufeff",
    "UNAFFABLE antidisestablishmentarianism supercalifragilistic",
    "[CLS] [SEP] [PAD] [MASK] [UNK] literal special tokens",
    "",
)
"""Texts beyond the validation reviews on which the two tokenizers must agree: accents, other scripts,
markup, emoji, odd whitespace and the special tokens' own spellings."""


class JsonTokenizer:
    """``tokenizer.json`` through ``tokenizers``, with truncation and padding off (as :mod:`bertsent.encoding`
    calls transformers' tokenizer), and the pad token and max length ``tokenizer_config.json`` names."""

    is_fast = True

    def __init__(self, model_dir: str | os.PathLike) -> None:
        from tokenizers import Tokenizer

        folder = Path(model_dir)
        try:
            self._tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
            config = json.loads((folder / CONFIG_FILE).read_text()) if (folder / CONFIG_FILE).is_file() else {}
        except Exception as e:  # tokenizers raises its own Exception subclasses; JSON errors are ValueErrors
            raise ModelError(f"cannot load {folder / TOKENIZER_FILE} with tokenizers: {first_line(e)}") from e
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        pad = config.get("pad_token")
        pad = pad.get("content") if isinstance(pad, dict) else pad
        self.pad_token_id = self._tokenizer.token_to_id(pad) if isinstance(pad, str) else None
        self.model_max_length = int(config.get("model_max_length", NO_MAX_LENGTH))

    def __call__(
        self, texts: str | Sequence[str], add_special_tokens: bool = True, return_offsets_mapping: bool = False, **_
    ) -> dict:
        """``{"input_ids": ...}`` (and ``"offset_mapping"``) of one text or a list of them, untruncated and
        unpadded: what transformers' tokenizer returns for the same call (its other options, e.g.
        ``return_attention_mask``, are ignored)."""
        if isinstance(texts, str):
            one = self._tokenizer.encode(texts, add_special_tokens=add_special_tokens)
            return {"input_ids": one.ids} | ({"offset_mapping": one.offsets} if return_offsets_mapping else {})
        rows = self._tokenizer.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        out = {"input_ids": [row.ids for row in rows]}
        return out | ({"offset_mapping": [row.offsets for row in rows]} if return_offsets_mapping else {})

    def tokenize(self, text: str) -> list[str]:
        return self._tokenizer.encode(text, add_special_tokens=False).tokens

    def convert_tokens_to_ids(self, tokens: Sequence[str]) -> list[int | None]:
        return [self._tokenizer.token_to_id(token) for token in tokens]


def same_encoding(model_dir: Path, reference, texts: Sequence[str], max_length: int, truncation: str) -> str | None:
    """None when :class:`JsonTokenizer` encodes ``texts`` and :data:`PROBE_TEXTS` exactly as ``reference``
    (the folder's transformers tokenizer) does at ``max_length`` with ``truncation``, and with special tokens
    untruncated; else why not, in a few words."""
    from bertsent.encoding import encode

    try:
        light = JsonTokenizer(model_dir)
    except ModelError as e:
        return first_line(e)
    if light.pad_token_id != reference.pad_token_id:
        return f"pad token id {light.pad_token_id}, transformers {reference.pad_token_id}"
    every = [*texts, *PROBE_TEXTS]
    ours, theirs = encode(light, every, max_length, truncation), encode(reference, every, max_length, truncation)
    if not np.array_equal(ours.full_lengths, theirs.full_lengths):
        return "untruncated lengths differ"
    for i, (a, b) in enumerate(zip(ours.ids, theirs.ids, strict=True)):
        if not np.array_equal(a, b):
            return f"token ids differ on text {i}"
    if light(list(PROBE_TEXTS))["input_ids"] != reference(list(PROBE_TEXTS))["input_ids"]:
        return "ids with special tokens differ"
    return None
