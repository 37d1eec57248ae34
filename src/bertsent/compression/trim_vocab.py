"""Vocabulary trimming: keep the WordPieces a classifier's training texts use, and only their embedding rows.

The word-embedding table is about half of a MiniLM's parameters (30,522 x 384), and a sentiment
classifier fine-tuned on English reviews never sees most of it. ``trim_vocab`` counts the WordPieces of
the training texts (every training review of the data recorded in the folder by default), keeps the
special tokens and the pieces that occur (optionally only the most frequent ones covering ``coverage``
of the occurrences, and those seen at least ``min_count`` times), and writes a folder whose tokenizer
and embedding matrix hold just those, in their original order: new id ``i`` is the ``i``-th kept
original id, so row ``i`` of the new table is that piece's original row and nothing else moves.

The tokenizer is the source's ``tokenizer.json`` with the WordPiece vocabulary swapped and every id it
holds (added tokens, the post-processor's [CLS]/[SEP], the padding id) renumbered, so normalizer,
pre-tokenizer and post-processor settings stay exactly as they were; ``vocab.txt`` is written to match.

**The [UNK] rule.** The trimmed tokenizer is stock WordPiece (greedy longest match per word) over the
kept pieces, so every consumer (``transformers.pipeline``, ONNX and OpenVINO folders, the Keras string
signature) tokenizes the same way. Per word (the BERT pre-tokenizer's unit):

- a word whose original pieces are all kept is split exactly as before: at each position the original
  longest match is kept, and no longer kept match can exist (it would have been the original one);
- a word that lost a piece keeps its pieces before the lost one; from there WordPiece either finds
  shorter kept pieces (the word is *re-split*: ``Herzog``, ``her ##zog`` before, is ``her ##zo ##g``
  once ``##zog`` is dropped) or finds none, and the whole word becomes one [UNK], as WordPiece does for
  any word it cannot split.

So [UNK] appears only in words that lost a piece (or were [UNK] already). Turning every such word into
[UNK] instead cannot be expressed in a stock ``tokenizer.json`` or ``vocab.txt``: the greedy matcher
always falls back to a shorter kept prefix. Both cases are measured on held-out reviews instead
(:func:`token_changes`): the share of tokens that became [UNK] and the share in re-split words. A text
whose tokens are all kept gets the same ids (renumbered), hence the same logits, as before.

**Recovery** (``recovery_epochs``). A trim that drops pieces still in use (``coverage`` below 1) feeds the
model splits it was never trained on: on IMDB, 95% coverage re-splits about 7% of the tokens. Recovery
fine-tunes the trimmed model in memory with the trimmed tokenizer (``bertsent.training.loop.train``, as
prune's and factorize's recoveries, checkpointed the same way) and keeps its best epoch on the validation
reviews. The record keeps the trimmed model's own scores as ``trimmed``: they are what the rule above and
the logit check speak of.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import shutil
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bertsent.compression import stage
from bertsent.config import TrimVocabConfig
from bertsent.errors import DataError, ModelError, SettingsError
from bertsent.folder import (
    ARGS_FILE,
    COMPRESSION_FILE,
    TOKENIZER_PATTERNS,
    clear_weights,
    weights_bytes,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
VOCAB_FILE = "vocab.txt"
EXAMPLES = 10
"""Most frequent words that became [UNK] / were re-split, listed in the record."""


TrimResult = stage.StageResult
"""The name trim-vocab's result had before every stage returned a :class:`~bertsent.compression.stage.StageResult`."""


# --- choosing the pieces ------------------------------------------------------------------------------


def count_pieces(tokenizer, texts: list[str], size: int) -> np.ndarray:
    """Occurrences of every token id in ``texts`` (whole texts: no truncation, no special tokens)."""
    from bertsent.encoding import token_ids

    counts = np.zeros(size, dtype=np.int64)
    rows = token_ids(tokenizer, texts)
    while chunk := list(itertools.islice(rows, 4096)):
        counts += np.bincount(np.concatenate([np.asarray(r, dtype=np.int64) for r in chunk]), minlength=size)
    return counts


def select_pieces(
    counts: np.ndarray, always: np.ndarray, coverage: float = 1.0, min_count: int = 1
) -> tuple[np.ndarray, dict]:
    """The sorted ids to keep: ``always`` plus the most frequent pieces covering ``coverage`` of the
    occurrences (``always`` not counted), each seen at least ``min_count`` times; and how it went."""
    pool = counts.astype(np.int64, copy=True)
    pool[always] = 0
    total = int(pool.sum())
    if total == 0:
        raise DataError("the training texts hold no WordPiece outside the special tokens: nothing to count")
    order = np.lexsort((np.arange(len(pool)), -pool))  # most frequent first, ties by id: deterministic
    cumulative = np.cumsum(pool[order])
    n = int(np.searchsorted(cumulative, coverage * total, side="left")) + 1
    chosen = order[:n]
    chosen = chosen[pool[chosen] >= max(min_count, 1)]
    keep = np.union1d(chosen, always).astype(np.int64)
    return keep, {
        "pieces_seen": int((pool > 0).sum()),
        "occurrences": total,
        "covered_share": float(pool[chosen].sum() / total),
        "always_kept": len(always),
    }


def always_kept(tokenizer, state: dict, config: dict) -> np.ndarray:
    """Ids that stay whatever the counts: special and added tokens, the post-processor's and padding's
    ids, and the model config's ``*_token_id`` (pad, bos, eos...) within the table."""
    ids = set(tokenizer.all_special_ids)
    ids |= {int(token["id"]) for token in state.get("added_tokens") or ()}
    ids |= set(processor_ids(state.get("post_processor")))
    if state.get("padding"):
        ids.add(int(state["padding"]["pad_id"]))
    ids |= {v for k, v in config.items() if k.endswith("_token_id") and isinstance(v, int) and not isinstance(v, bool)}
    return np.asarray(sorted(i for i in ids if 0 <= i < config["vocab_size"]), dtype=np.int64)


# --- the tokenizer -----------------------------------------------------------------------------------


def processor_ids(processor: dict | None, remap: dict[int, int] | None = None) -> list[int]:
    """The token ids a post-processor holds ([CLS], [SEP]...); with ``remap``, rewritten in place."""
    if not processor:
        return []
    kind = processor.get("type")
    if kind == "Sequence":
        return [i for inner in processor["processors"] for i in processor_ids(inner, remap)]
    if kind == "TemplateProcessing":
        found = [i for special in processor["special_tokens"].values() for i in special["ids"]]
        if remap is not None:
            for special in processor["special_tokens"].values():
                special["ids"] = [remap[i] for i in special["ids"]]
        return found
    if kind in ("BertProcessing", "RobertaProcessing"):
        found = [processor[name][1] for name in ("sep", "cls")]
        if remap is not None:
            for name in ("sep", "cls"):
                processor[name] = [processor[name][0], remap[processor[name][1]]]
        return found
    if kind == "ByteLevel":
        return []
    raise ModelError(f"unsupported tokenizer post-processor {kind!r}: trim-vocab cannot renumber its ids")


def trimmed_state(state: dict, keep: np.ndarray) -> dict:
    """A ``tokenizer.json`` state with only the ``keep`` ids, renumbered ``0..len(keep)-1`` in order."""
    model = state["model"]
    if model.get("type") != "WordPiece":
        raise ModelError(f"trim-vocab needs a WordPiece tokenizer (BERT family), this one is {model.get('type')}")
    remap = {int(old): new for new, old in enumerate(keep)}
    id2token = {int(i): token for token, i in model["vocab"].items()}
    in_model = [int(i) for i in keep if int(i) in id2token]
    # vocab.txt lists the WordPiece vocabulary by id: tokens added outside it must come after it.
    if any(int(i) < max(in_model, default=-1) for i in keep if int(i) not in id2token):
        raise ModelError("added tokens are numbered among the WordPiece vocabulary: cannot renumber them")
    new = copy.deepcopy(state)
    new["model"]["vocab"] = {id2token[old]: remap[old] for old in in_model}
    for token in new.get("added_tokens") or ():
        token["id"] = remap[int(token["id"])]
    processor_ids(new.get("post_processor"), remap)
    if new.get("padding"):
        new["padding"]["pad_id"] = remap[int(new["padding"]["pad_id"])]
    return new


def tokenizer_state(tokenizer) -> dict:
    """The fast tokenizer's full ``tokenizer.json`` state (also for folders that only have a vocab.txt)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError("trim-vocab needs a fast (tokenizers) tokenizer")
    return json.loads(tokenizer.backend_tokenizer.to_str())


def write_tokenizer(source: Path, tokenizer, state: dict, keep: np.ndarray, out: Path):
    """The trimmed tokenizer files in ``out`` (the source's, with every id renumbered), loaded back and
    checked to hold exactly the kept tokens under their new ids."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    new = trimmed_state(state, keep)
    remap = {int(old): new_id for new_id, old in enumerate(keep)}
    swapped = {TOKENIZER_FILE, VOCAB_FILE, "added_tokens.json"}
    names = {p.name for pattern in TOKENIZER_PATTERNS for p in source.glob(pattern) if p.is_file()}
    for name in sorted(names - swapped):
        shutil.copy2(source / name, out / name)
    if "tokenizer_config.json" not in names:
        tokenizer.save_pretrained(out)  # a folder without its tokenizer files (hub-style): write them
    _renumber_added_tokens_decoder(out / "tokenizer_config.json", remap)
    if (source / "added_tokens.json").is_file():
        added = json.loads((source / "added_tokens.json").read_text())
        (out / "added_tokens.json").write_text(json.dumps({t: remap[int(i)] for t, i in added.items()}, indent=2))
    Tokenizer.from_str(json.dumps(new)).save(str(out / TOKENIZER_FILE))  # parsed by tokenizers: valid
    vocab = sorted(new["model"]["vocab"].items(), key=lambda item: item[1])
    (out / VOCAB_FILE).write_text("".join(f"{token}\n" for token, _ in vocab), encoding="utf-8")

    trimmed = AutoTokenizer.from_pretrained(out)  # as pipeline and Predictor will load it
    expected = new["model"]["vocab"] | {t["content"]: t["id"] for t in new.get("added_tokens") or ()}
    if trimmed.get_vocab() != expected or len(trimmed) != len(keep):
        raise ModelError(f"{out}: the trimmed tokenizer does not load back with the kept vocabulary")
    return trimmed


def _renumber_added_tokens_decoder(path: Path, remap: dict[int, int]) -> None:
    """``tokenizer_config.json`` may list the added tokens by id (``added_tokens_decoder``): renumber them."""
    if not path.is_file():
        return
    saved = json.loads(path.read_text())
    if isinstance(saved.get("added_tokens_decoder"), dict):
        saved["added_tokens_decoder"] = {str(remap[int(k)]): v for k, v in saved["added_tokens_decoder"].items()}
        path.write_text(json.dumps(saved, indent=2, ensure_ascii=False) + "\n")


# --- the model ---------------------------------------------------------------------------------------


def trim_embeddings(model: PreTrainedModel, keep: np.ndarray) -> None:
    """Keep only the ``keep`` rows of the word-embedding table, in order; renumber the config's token ids."""
    import torch
    from torch import nn

    table = model.get_input_embeddings()
    if not isinstance(table, nn.Embedding):
        raise ModelError(f"trim-vocab needs an nn.Embedding word table, the model has {type(table).__name__}")
    if model.get_output_embeddings() is not None:
        raise ModelError("the model has output embeddings tied to the vocabulary: trim-vocab takes a classifier")
    remap = {int(old): new for new, old in enumerate(keep)}
    rows = torch.as_tensor(keep, dtype=torch.long, device=table.weight.device)
    trimmed = nn.Embedding(
        len(keep),
        table.embedding_dim,
        padding_idx=remap.get(table.padding_idx) if table.padding_idx is not None else None,
        device=table.weight.device,
        dtype=table.weight.dtype,
    )
    with torch.no_grad():
        trimmed.weight.copy_(table.weight.index_select(0, rows))
    model.set_input_embeddings(trimmed)
    config = model.config
    for name, value in config.to_dict().items():
        if name.endswith("_token_id") and isinstance(value, int) and not isinstance(value, bool) and value in remap:
            setattr(config, name, remap[value])
    config.vocab_size = len(keep)


# --- measuring ---------------------------------------------------------------------------------------


def id_map(keep: np.ndarray, size: int) -> np.ndarray:
    """Original id -> trimmed id (-1 for a dropped one), as an array of ``size`` entries."""
    remap = np.full(size, -1, dtype=np.int64)
    remap[keep] = np.arange(len(keep))
    return remap


def plain_backend(tokenizer):
    """A copy of the tokenizer's backend without padding or truncation (word ids and offsets per token)."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_padding()
    backend.no_truncation()
    return backend


def token_changes(original, trimmed, keep: np.ndarray, texts: list[str], chunk: int = 1024) -> dict:
    """How the trimmed tokenizer treats ``texts`` compared with the original, per word and per token.

    ``unk_token_share``: share of the original tokens standing in words that became [UNK] (they were not
    [UNK] before); ``resplit_token_share``: in words split into other, kept pieces; ``unchanged_reviews``:
    share of texts whose ids are the original ones renumbered (so their logits are the original ones).
    """
    remap = id_map(keep, len(original))
    before, after = plain_backend(original), plain_backend(trimmed)
    unk_old, unk_new = original.unk_token_id, trimmed.unk_token_id
    counts: Counter = Counter()
    unk_words: Counter = Counter()
    resplit_words: Counter = Counter()
    for start in range(0, len(texts), chunk):  # chunks bound the memory the Encoding objects take
        part = texts[start : start + chunk]
        encoded_o = before.encode_batch(part, add_special_tokens=False)
        encoded_t = after.encode_batch(part, add_special_tokens=False)
        for text, enc_o, enc_t in zip(part, encoded_o, encoded_t, strict=True):
            ids_o, ids_t = np.asarray(enc_o.ids, dtype=np.int64), np.asarray(enc_t.ids, dtype=np.int64)
            counts.update(tokens=len(ids_o), tokens_after=len(ids_t))
            counts.update(unk_before=int((ids_o == unk_old).sum()), unk_after=int((ids_t == unk_new).sum()))
            if len(ids_o) == len(ids_t) and np.array_equal(remap[ids_o], ids_t):
                continue
            counts["changed"] += 1
            words_o, words_t = np.asarray(enc_o.word_ids), np.asarray(enc_t.word_ids)
            # Only a word with a lost piece (or an [UNK] already) can change: one whose pieces are all kept
            # is split as before (the module docstring says why; tests check every word).
            for word in np.unique(words_o[(remap[ids_o] < 0) | (ids_o == unk_old)]):
                pieces, new = ids_o[words_o == word].tolist(), ids_t[words_t == word].tolist()
                if remap[pieces].tolist() == new:
                    continue
                start_char, end_char = enc_o.word_to_chars(int(word))
                if new == [unk_new] and pieces != [unk_old]:
                    counts["unk"] += len(pieces)
                    unk_words[text[start_char:end_char]] += 1
                else:
                    counts["resplit"] += len(pieces)
                    resplit_words[(text[start_char:end_char], tuple(trimmed.convert_ids_to_tokens(new)))] += 1
    return _token_summary(len(texts), counts, unk_words, resplit_words)


def _token_summary(n_texts: int, counts: Counter, unk_words: Counter, resplit_words: Counter) -> dict:
    tokens = max(counts["tokens"], 1)
    return {
        "reviews": n_texts,
        "tokens": counts["tokens"],
        "unchanged_reviews": 1 - counts["changed"] / n_texts if n_texts else 1.0,
        "unk_token_share": counts["unk"] / tokens,
        "resplit_token_share": counts["resplit"] / tokens,
        "unk_share_before": counts["unk_before"] / tokens,
        "unk_share_after": counts["unk_after"] / max(counts["tokens_after"], 1),
        "tokens_after": counts["tokens_after"],
        "top_unk_words": [{"word": w, "count": n} for w, n in unk_words.most_common(EXAMPLES)],
        "top_resplit_words": [
            {"word": w, "pieces": list(p), "count": n} for (w, p), n in resplit_words.most_common(EXAMPLES)
        ],
    }


def _validation(source: Path, out: Path, reviews, remap: np.ndarray, config: TrimVocabConfig) -> dict:
    """The source and the trimmed folder on the same validation reviews (the scaffold's fp32 scoring)."""
    texts, labels = reviews["text"].tolist(), reviews["label"].to_numpy()
    result: dict = {"reviews": len(texts)}
    scores = {
        name: stage.score_folder(folder, texts, labels, config) for name, folder in (("before", source), ("after", out))
    }
    result |= {name: score.metrics for name, score in scores.items()}
    before, after = scores["before"], scores["after"]
    # Reviews whose (truncated) ids are the source's renumbered: their scores must be the source's.
    pairs = enumerate(zip(before.ids, after.ids, strict=True))
    same = [i for i, (o, t) in pairs if len(o) == len(t) and np.array_equal(remap[o], t)]
    result["agreement"] = float(np.mean(before.probs.argmax(-1) == after.probs.argmax(-1)))
    result["unchanged_reviews"] = len(same)
    diff = np.abs(before.probs[same] - after.probs[same])
    result["max_abs_prob_diff_unchanged"] = float(diff.max()) if same else 0.0
    return result


def _recover(config: TrimVocabConfig, src: stage.Source, reviews) -> tuple[dict | None, dict | None]:
    """Fine-tune the trimmed model (in memory, its tokenizer the trimmed one in ``out``) into ``out``;
    ``(recovery record, its validation metrics)``. The trimmed model's own scores, the ones the [UNK]
    rule is checked on, stay in the record as ``trimmed``."""
    out = src.output_dir
    data = stage.recovery_data(out, config, config.recovery_samples)
    recovery = stage.recover(config, src.model, out, data, (src.max_length, src.truncation))
    if recovery is None:  # a launcher's other rank: the main one scores and writes
        return None, None
    return recovery, stage.score_folder(out, reviews["text"].tolist(), reviews["label"].to_numpy(), config).metrics


# --- the stage ---------------------------------------------------------------------------------------


def _load_source(config: TrimVocabConfig) -> tuple[stage.Source, dict]:
    """The scaffold's source (checked to have a WordPiece tokenizer that fits its embedding table) and
    the tokenizer's ``tokenizer.json`` state."""
    src = stage.open_source(config, SettingsError)
    state = tokenizer_state(src.tokenizer)
    if (kind := state["model"].get("type")) != "WordPiece":
        raise ModelError(f"{src.folder}: trim-vocab needs a WordPiece tokenizer (BERT family), not {kind}")
    rows = src.model.get_input_embeddings().weight.shape[0]
    if len(src.tokenizer) > rows:
        raise ModelError(
            f"{src.folder}: the tokenizer has {len(src.tokenizer)} tokens but the embedding table {rows} rows"
        )
    return src, state


def _load_splits(config: TrimVocabConfig, source: Path):
    """Train (counted), validation (scored) and test (token statistics) reviews of the recorded or given data."""
    from bertsent.data.loading import stratified_subset

    splits, reason = stage.stage_reviews(
        source, config, train_samples=config.train_samples, train=True, extra=("test",)
    )
    if splits is None:
        raise DataError(f"trim-vocab counts the WordPieces of training reviews: {reason}; pass --data")
    if len(splits.train) == 0:
        raise DataError(f"{splits.report['source']}: no training reviews to count WordPieces in")
    if config.unk_samples is not None and splits.test is not None:
        splits.test = stratified_subset(splits.test, config.unk_samples, splits.report["seed"])
    return splits


def trim_vocab(config: TrimVocabConfig) -> stage.StageResult:
    """Trim ``config.model``'s vocabulary to the pieces of its training texts and write a measured folder."""
    started = time.perf_counter()
    src, state = _load_source(config)
    source, out, model, tokenizer = src.folder, src.output_dir, src.model, src.tokenizer
    splits = _load_splits(config, source)
    train_texts = splits.train["text"].tolist()
    rows = model.get_input_embeddings().weight.shape[0]
    always = always_kept(tokenizer, state, model.config.to_dict())
    counts = count_pieces(tokenizer, train_texts, rows)
    keep, selection = select_pieces(counts, always, config.coverage, config.min_count)
    log.info(
        "keeping %d of %d tokens: %d of the %d pieces in %d training reviews (%.4f of their occurrences), %d special",
        len(keep), rows, len(keep) - len(always), selection["pieces_seen"], len(train_texts),
        selection["covered_share"], len(always),
    )  # fmt: skip
    before = _sizes(model, source)
    trimmed = _write_trimmed(source, out, model, tokenizer, state, keep)
    tokens = _token_changes(config, splits, tokenizer, trimmed, keep)
    validation, recovery = {"reviews": 0}, None
    if config.validation_samples and len(splits.validation):
        validation = _validation(source, out, splits.validation, id_map(keep, rows), config)
    if config.recovery_epochs:
        recovery, recovered = _recover(config, src, splits.validation)
        if recovery is None:  # under a launcher the recovery ran on every rank; the main one writes the folder
            return stage.StageResult(output_dir=out, record={}, metrics={}, model=model)
        validation |= {"trimmed": validation.pop("after", None), "after": recovered}
    after = _sizes(model, out)
    record = {
        "method": "trim-vocab",
        "source": str(source),
        "arguments": asdict(config),
        "data": {"source": splits.report.get("source"), "origin": splits.report.get("origin")},
        "train_reviews": len(train_texts),
        "selection": selection | {"coverage": config.coverage, "min_count": config.min_count},
        "vocab_size": {"before": rows, "after": len(keep)},
        **{key: {"before": value, "after": after[key]} for key, value in before.items()},
        "tokens": tokens,
        "validation": validation,
        "recovery": recovery,
        "unk_rule": UNK_RULE,
        "seconds": round(time.perf_counter() - started, 1),
    }
    return stage.finish(out, record, _flat_metrics, write_trim_card, model)


def _token_changes(config: TrimVocabConfig, splits, tokenizer, trimmed, keep: np.ndarray) -> dict:
    """:func:`token_changes` on the held-out splits (test, and validation when it is scored), logged."""
    held_out = {"test": splits.test, "validation": splits.validation if config.validation_samples else None}
    tokens = {
        split: token_changes(tokenizer, trimmed, keep, frame["text"].tolist())
        for split, frame in held_out.items()
        if frame is not None and len(frame)
    }
    for split, summary in tokens.items():
        log.info(
            "%s: %.4f%% of %d tokens became [UNK], %.4f%% were re-split; %.2f%% of %d reviews tokenize as before",
            split, 100 * summary["unk_token_share"], summary["tokens"], 100 * summary["resplit_token_share"],
            100 * summary["unchanged_reviews"], summary["reviews"],
        )  # fmt: skip
    return tokens


def _write_trimmed(source: Path, out: Path, model, tokenizer, state: dict, keep: np.ndarray):
    """Slice the model's embeddings, save it with the trimmed tokenizer and the training record; the
    trimmed tokenizer, loaded back from ``out``."""
    trim_embeddings(model, keep)
    out.mkdir(parents=True, exist_ok=True)
    clear_weights(out)
    model.save_pretrained(out)
    trimmed = write_tokenizer(source, tokenizer, state, keep, out)
    if (source / ARGS_FILE).is_file():
        shutil.copy2(source / ARGS_FILE, out / ARGS_FILE)  # max_length, truncation and the data travel
    return trimmed


UNK_RULE = (
    "stock WordPiece over the kept pieces: a word whose pieces are all kept is split as before; a word that "
    "lost a piece keeps its pieces before the lost one, then is re-split into shorter kept pieces or, when "
    "none fits, becomes one [UNK] (as WordPiece does for any word it cannot split)"
)


def _sizes(model, folder: Path) -> dict:
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "embedding_parameters": model.get_input_embeddings().weight.numel(),
        "weights_bytes": weights_bytes(folder),
    }


def _flat_metrics(record: dict) -> dict:
    from bertsent.folder import stage_metrics

    validation = record["validation"]
    metrics = {"method": "trim-vocab"} | stage_metrics(record["parameters"], validation, ("after", "before", "trimmed"))
    metrics |= {
        "vocab_size": record["vocab_size"]["after"],
        "vocab_size_before": record["vocab_size"]["before"],
        "weights_bytes": record["weights_bytes"]["after"],
        "weights_bytes_before": record["weights_bytes"]["before"],
    }
    for split, summary in record["tokens"].items():
        for key in ("unk_token_share", "resplit_token_share", "unchanged_reviews", "reviews"):
            metrics[f"{split}_tokens_{key}" if key == "reviews" else f"{split}_{key}"] = summary[key]
    if "agreement" in validation:
        metrics["validation_agreement"] = validation["agreement"]
    return metrics


def write_trim_card(out: Path, record: dict) -> Path:
    """The README.md of a trimmed folder: what was kept, the [UNK] rule, what was measured."""
    validation = record["validation"]
    names = (
        ("Vocabulary (embedding rows)", "vocab_size"),
        ("Parameters", "parameters"),
        ("Embedding parameters", "embedding_parameters"),
        ("Weights file (bytes)", "weights_bytes"),
    )
    metrics = tuple((key, f"{name} ({validation['reviews']} reviews)") for key, name in stage.CARD_METRICS)
    rows = stage.pair_rows(record, names) + stage.validation_rows(validation, "trimmed", metrics)
    recovery = record.get("recovery")
    line = stage.recovery_text(recovery)
    recovery_line = f"\n\n{line[:1].upper()}{line[1:]}." if line else ""
    token_lines = [
        f"- {split} ({s['reviews']} reviews, {s['tokens']:,} tokens): {100 * s['unk_token_share']:.3f}% of the "
        f"tokens became [UNK], {100 * s['resplit_token_share']:.3f}% stand in re-split words; "
        f"{100 * s['unchanged_reviews']:.2f}% of the reviews tokenize exactly as before"
        for split, s in record["tokens"].items()
    ]
    selection = record["selection"]
    pruned = json.loads((out / "config.json").read_text()).get("bertsent_pruning")
    loading = (
        "The pruned layers have non-uniform shapes: load it with `bertsent.predict.Predictor` or `bertsent predict`."
        if pruned
        else f'`transformers.pipeline("text-classification", model="{out}")` loads it.'
    )
    sections = {
        "What was done": f"Kept {record['vocab_size']['after']:,} of {record['vocab_size']['before']:,} tokens: "
        f"the {selection['always_kept']} special tokens and the WordPieces of {record['train_reviews']:,} "
        f"training reviews (coverage {selection['coverage']:g}, min count {selection['min_count']}: "
        f"{selection['covered_share']:.4%} of their occurrences). Ids were renumbered in their original order and "
        f"the embedding rows sliced to match.\n\nTokenization: {record['unk_rule']}.{recovery_line}",
        "What was measured": "\n".join(["| | Before | After |", "|---|---|---|", *rows, "", *token_lines]),
        "Use": f"{loading} `bertsent quantize --model {out}` composes with INT8. "
        f"The full record is in `{COMPRESSION_FILE}`.",
    }
    title = "Vocabulary-trimmed sentiment classifier (bertsent trim-vocab)"
    summary = f"Vocabulary trimmed from `{record['source']}`."
    return stage.stage_card(out, record, sections, title=title, summary=summary, tags=["vocabulary-trimming"])
