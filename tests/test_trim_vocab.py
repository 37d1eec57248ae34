"""Vocabulary trimming: the [UNK] rule on real text with the embedded MiniLM tokenizer, ids and logits
kept where pieces are kept, the trimmed folder loading in transformers.pipeline, INT8 and ONNX on top."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bertsent.cli import main
from bertsent.compression.trim_vocab import (
    always_kept,
    count_pieces,
    id_map,
    plain_backend,
    select_pieces,
    token_changes,
    tokenizer_state,
    trim_vocab,
    write_tokenizer,
)
from bertsent.config import TrimVocabConfig
from bertsent.errors import ModelError, SettingsError

REPO = Path(__file__).resolve().parents[1]
IMDB = REPO.parent / "shared" / "data" / "imdb"
HARD_TEXTS = [
    "Unwatchable!!! The Émigré's café-au-lait scene was naïve, coöperative… and ＦＵＬＬＷＩＤＴＨ.",
    "東京物語 is a 1953 film; 黑泽明 too. Emoji: 🎬🍿😀 and <br />html &amp; remnants.",
    "supercalifragilisticexpialidocious " + "a" * 120 + " antidisestablishmentarianism",
    "Tabs\tand\x00control\x7fchars, numbers 3.14159 and 1,000,000; URLs https://example.com/x?y=z.",
    "Zeitgeist, schadenfreude, doppelgänger, façade, jalapeño, smörgåsbord, Dvořák, Łódź.",
]


def prose(n_min: int = 40) -> list[str]:
    """Real English text that is always here: the paragraphs of this repository's Markdown files."""
    files = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    paragraphs = [p.strip() for f in files if f.is_file() for p in re.split(r"\n\s*\n", f.read_text())]
    return [p for p in paragraphs if len(p) >= n_min]


@pytest.fixture(scope="module")
def minilm():
    from bertsent.modeling.loading import embedded_model_path, load_tokenizer

    source = embedded_model_path()
    tokenizer = load_tokenizer(source)
    return source, tokenizer, tokenizer_state(tokenizer), json.loads((source / "config.json").read_text())


def trimmed_minilm(minilm, train_texts, out: Path, coverage=1.0, min_count=1):
    source, tokenizer, state, config = minilm
    counts = count_pieces(tokenizer, train_texts, config["vocab_size"])
    keep, _ = select_pieces(counts, always_kept(tokenizer, state, config), coverage, min_count)
    return keep, write_tokenizer(source, tokenizer, state, keep, out)


def word_pieces(encoding) -> dict[int, list[int]]:
    words: dict[int, list[int]] = {}
    for token_id, word in zip(encoding.ids, encoding.word_ids, strict=True):
        words.setdefault(word, []).append(token_id)
    return words


def check_unk_rule(original, trimmed, keep, texts) -> dict:
    """The documented rule, word by word; returns how many words fell in each case."""
    remap = id_map(keep, len(original))
    unk_old, unk_new = original.unk_token_id, trimmed.unk_token_id
    before, after = plain_backend(original), plain_backend(trimmed)
    cases = {"same": 0, "unk": 0, "resplit": 0, "unk_tokens": 0, "resplit_tokens": 0}
    encoded_o = before.encode_batch(texts, add_special_tokens=False)
    encoded_t = after.encode_batch(texts, add_special_tokens=False)
    for enc_o, enc_t in zip(encoded_o, encoded_t, strict=True):
        words_o, words_t = word_pieces(enc_o), word_pieces(enc_t)
        assert words_o.keys() == words_t.keys(), "the pre-tokenizer is unchanged: the same words"
        for word, pieces in words_o.items():
            new, mapped = words_t[word], [int(i) for i in remap[pieces]]
            lost = [k for k, i in enumerate(mapped) if i < 0]
            if not lost:
                if pieces != [unk_old]:
                    assert new == mapped, "a word whose pieces are all kept is split as before"
                cases["same"] += 1
            elif new == [unk_new]:
                cases["unk"] += 1
                cases["unk_tokens"] += len(pieces)
            else:
                assert unk_new not in new, "WordPiece gives [UNK] for the whole word or not at all"
                assert new[: lost[0]] == mapped[: lost[0]], "pieces before the lost one are unchanged"
                cases["resplit"] += 1
                cases["resplit_tokens"] += len(pieces)
    return cases


# --- choosing the pieces ------------------------------------------------------------------------------


def test_coverage_keeps_the_most_frequent_pieces_and_min_count_the_common_ones():
    counts = np.array([9, 0, 50, 30, 10, 5, 5, 1, 0])
    always = np.array([0, 1])
    keep, info = select_pieces(counts, always)
    assert keep.tolist() == [0, 1, 2, 3, 4, 5, 6, 7] and info["pieces_seen"] == 6 and info["covered_share"] == 1
    keep, info = select_pieces(counts, always, coverage=0.79)  # 50 + 30 = 80 of the 101 occurrences
    assert keep.tolist() == [0, 1, 2, 3] and info["covered_share"] == pytest.approx(80 / 101)
    assert select_pieces(counts, always, coverage=0.8)[0].tolist() == [0, 1, 2, 3, 4]  # 80 < 80.8
    assert select_pieces(counts, always, coverage=0.9)[0].tolist() == [0, 1, 2, 3, 4, 5]  # ties by id
    assert select_pieces(counts, always, min_count=6)[0].tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"coverage": 0}, "coverage"),
        ({"coverage": 1.5}, "coverage"),
        ({"coverage": float("nan")}, "coverage"),
        ({"coverage": True}, "coverage"),
        ({"min_count": 0}, "min_count"),
        ({"train_samples": 0}, "train_samples"),
        ({"validation_samples": -1}, "validation_samples"),
        ({"output_dir": ""}, "output_dir"),
    ],
)
def test_bad_settings_are_settings_errors(change, message):
    with pytest.raises(SettingsError, match=message):
        TrimVocabConfig(**({"model": "m", "output_dir": "o"} | change))


# --- the tokenizer, on the embedded MiniLM's WordPiece -----------------------------------------------


def test_the_unk_rule_holds_on_real_text(minilm, tmp_path):
    _, original, _, _ = minilm
    paragraphs = prose()
    train, test = paragraphs[::2], paragraphs[1::2] + HARD_TEXTS
    keep, trimmed = trimmed_minilm(minilm, train, tmp_path, coverage=0.98)
    assert len(trimmed) == len(keep) < len(original)
    cases = check_unk_rule(original, trimmed, keep, test)
    assert cases["same"] and cases["unk"] and cases["resplit"], cases  # every case of the rule occurs
    summary = token_changes(original, trimmed, keep, test)  # what the stage reports, counted its own way
    assert summary["unk_token_share"] * summary["tokens"] == pytest.approx(cases["unk_tokens"])
    assert summary["resplit_token_share"] * summary["tokens"] == pytest.approx(cases["resplit_tokens"])
    assert 0 < summary["unk_token_share"] < summary["unk_token_share"] + summary["resplit_token_share"] < 1
    assert summary["unk_share_before"] < summary["unk_share_after"]
    # A text whose pieces are all kept tokenizes exactly as before (renumbered).
    remap = id_map(keep, len(original))
    kept_texts = [t for t in train + test if (remap[original(t)["input_ids"]] >= 0).all()]
    assert len(kept_texts) > 10
    for text in kept_texts:
        assert trimmed(text)["input_ids"] == remap[original(text)["input_ids"]].tolist()


@pytest.mark.skipif(not (IMDB / "train.parquet").is_file(), reason=f"shared IMDB data not found at {IMDB}")
def test_the_unk_rule_holds_on_imdb_reviews(minilm, tmp_path):
    from bertsent.data.loading import clean_text

    _, original, _, _ = minilm
    train = [clean_text(t) for t in pd.read_parquet(IMDB / "train.parquet")["text"].sample(1000, random_state=0)]
    test = [clean_text(t) for t in pd.read_parquet(IMDB / "test.parquet")["text"].sample(300, random_state=0)]
    keep, trimmed = trimmed_minilm(minilm, train, tmp_path, min_count=2)
    cases = check_unk_rule(original, trimmed, keep, test + HARD_TEXTS)
    assert cases["same"] > 10 * (cases["unk"] + cases["resplit"]) and cases["unk"] and cases["resplit"], cases


def test_the_trimmed_files_agree_with_each_other(minilm, tmp_path):
    """tokenizer.json, vocab.txt and the special tokens all carry the new ids."""
    from transformers import BertTokenizer
    from transformers.models.bert.tokenization_bert import load_vocab

    _, original, _, _ = minilm
    keep, trimmed = trimmed_minilm(minilm, prose()[::2], tmp_path)
    vocab = load_vocab(tmp_path / "vocab.txt")
    assert list(vocab.values()) == list(range(len(keep))) and vocab == trimmed.get_vocab()
    from_vocab = BertTokenizer(vocab=dict(vocab), do_lower_case=True)
    texts = prose()[1::2][:30] + HARD_TEXTS
    assert from_vocab(texts)["input_ids"] == trimmed(texts)["input_ids"]
    remap = id_map(keep, len(original))
    for name in ("pad", "unk", "cls", "sep", "mask"):
        old, new = getattr(original, f"{name}_token_id"), getattr(trimmed, f"{name}_token_id")
        assert remap[old] == new and trimmed.convert_ids_to_tokens(new) == getattr(original, f"{name}_token")
    state = json.loads((tmp_path / "tokenizer.json").read_text())
    assert state["post_processor"]["special_tokens"]["[CLS]"]["ids"] == [trimmed.cls_token_id]
    assert state["normalizer"] == tokenizer_state(original)["normalizer"]
    assert trimmed("a film")["input_ids"][0] == trimmed.cls_token_id


# --- the stage, on the fine-tuned tiny BERT ---------------------------------------------------------


@pytest.fixture(scope="module")
def trimmed_tiny(trained_tiny_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trimmed") / "model"
    trim_vocab(TrimVocabConfig(model=str(trained_tiny_dir), output_dir=str(out)))
    return out


def test_the_folder_records_sizes_tokens_and_accuracy(trimmed_tiny, trained_tiny_dir):
    from bertsent.modeling.loading import load_tokenizer

    record = json.loads((trimmed_tiny / "compression.json").read_text())
    metrics = json.loads((trimmed_tiny / "metrics.json").read_text())
    config = json.loads((trimmed_tiny / "config.json").read_text())
    tokenizer = load_tokenizer(trimmed_tiny)
    assert record["method"] == "trim-vocab" and "recorded in" in record["data"]["origin"]
    assert config["vocab_size"] == len(tokenizer) == record["vocab_size"]["after"] < record["vocab_size"]["before"]
    assert config["pad_token_id"] == tokenizer.pad_token_id == 0
    for key in ("parameters", "embedding_parameters", "weights_bytes"):
        assert record[key]["after"] < record[key]["before"]
    assert record["embedding_parameters"]["after"] == len(tokenizer) * 32
    assert set(record["tokens"]) == {"test", "validation"} and record["tokens"]["test"]["reviews"] == 80
    assert metrics["test_unk_token_share"] == 0  # the toy test reviews use the training words
    assert metrics["validation_accuracy"] == metrics["validation_accuracy_before"]
    assert record["validation"]["max_abs_prob_diff_unchanged"] < 1e-6
    assert (trimmed_tiny / "training_args.json").read_text() == (trained_tiny_dir / "training_args.json").read_text()
    assert "[UNK]" in (trimmed_tiny / "README.md").read_text()


def test_logits_equal_where_no_piece_was_dropped_and_unk_where_one_was(trimmed_tiny, trained_tiny_dir, toy_texts):
    from bertsent.modeling.loading import load_classifier, load_tokenizer

    texts = toy_texts[:16]
    logits = {}
    for name, folder in (("before", trained_tiny_dir), ("after", trimmed_tiny)):
        tokenizer, model = load_tokenizer(folder), load_classifier(folder).eval()
        batch = tokenizer(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            logits[name] = model(**batch).logits
    assert torch.allclose(logits["before"], logits["after"], atol=1e-5, rtol=0)
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("the zeppelin movie was great")["input_ids"])
    assert tokens == ["[CLS]", "the", "[UNK]", "movie", "was", "great", "[SEP]"]


def test_transformers_pipeline_loads_the_trimmed_folder(trimmed_tiny, trained_tiny_dir, toy_texts):
    from transformers import pipeline

    texts = toy_texts[:8]
    before = pipeline("text-classification", model=str(trained_tiny_dir), device="cpu")(texts, truncation=True)
    after = pipeline("text-classification", model=str(trimmed_tiny), device="cpu")(texts, truncation=True)
    assert [p["label"] for p in after] == [p["label"] for p in before]
    assert np.allclose([p["score"] for p in after], [p["score"] for p in before], atol=1e-6)


def test_coverage_and_min_count_trim_further_and_unknown_words_are_counted(trained_tiny_dir, tmp_path):
    full = json.loads((trained_tiny_dir / "training_args.json").read_text())["data"]["source"]
    test = pd.DataFrame({"text": ["the zeppelin plot was superb", "the acting was dull"], "label": [1, 0]})
    data = tmp_path / "data"
    data.mkdir()
    pd.read_parquet(Path(full) / "train.parquet").to_parquet(data / "train.parquet")
    test.to_parquet(data / "test.parquet")
    result = trim_vocab(
        TrimVocabConfig(
            model=str(trained_tiny_dir), output_dir=str(tmp_path / "out"), data=str(data), coverage=0.9, min_count=3
        )
    )
    record = result.record
    assert record["data"]["origin"] == "--data"
    assert record["selection"]["covered_share"] >= 0.9 and record["vocab_size"]["after"] < 33
    tokens = record["tokens"]["test"]
    assert tokens["unk_token_share"] > 0 and {"word": "zeppelin", "count": 1} in tokens["top_unk_words"]
    assert result.metrics["test_unk_token_share"] == tokens["unk_token_share"]


def test_a_pruned_folder_trims_and_loads_back(trained_tiny_dir, tmp_path, toy_texts):
    from bertsent.compression.prune import prune
    from bertsent.config import PruneConfig
    from bertsent.predict import Predictor

    pruned = prune(PruneConfig(str(trained_tiny_dir), str(tmp_path / "pruned"), drop_layers=[0], validation_samples=0))
    out = tmp_path / "trimmed"
    trim_vocab(TrimVocabConfig(model=str(pruned.output_dir), output_dir=str(out), validation_samples=20))
    config = json.loads((out / "config.json").read_text())
    assert "bertsent_pruning" in config and config["vocab_size"] < 30522
    before, after = Predictor(pruned.output_dir), Predictor(out)
    assert np.allclose(before.predict_proba(toy_texts[:8]), after.predict_proba(toy_texts[:8]), atol=1e-6)


# --- composing ----------------------------------------------------------------------------------------


def test_int8_and_onnx_compose_with_trimming(trimmed_tiny, tmp_path, toy_texts, capsys):
    from bertsent.predict import Predictor

    assert main(["trim-vocab", "--model", str(trimmed_tiny), "--output-dir", str(tmp_path / "again")]) == 0
    assert "vocabulary" in capsys.readouterr().out  # trimming a trimmed folder keeps what is used
    int8 = tmp_path / "int8"
    assert main(["quantize", "--model", str(trimmed_tiny), "--output-dir", str(int8), "--eval-samples", "40"]) == 0
    record = json.loads((int8 / "compression.json").read_text())
    assert record["validation"]["agreement"] >= 0.9 and record["quantized_nodes"]
    onnx = tmp_path / "onnx"
    assert main(["export", "--model", str(trimmed_tiny), "--output-dir", str(onnx)]) == 0
    fp32 = Predictor(trimmed_tiny).predict_proba(toy_texts[:8])
    assert np.allclose(Predictor(onnx).predict_proba(toy_texts[:8]), fp32, atol=1e-4)
    assert Predictor(int8).predict_proba(toy_texts[:8]).shape == fp32.shape


# --- bad input ----------------------------------------------------------------------------------------


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_input_is_a_one_line_error(trained_tiny_dir, tiny_model_dir, tmp_path, capsys):
    base = ["trim-vocab", "--model", str(trained_tiny_dir), "--output-dir", str(tmp_path / "out")]
    assert "coverage" in one_line_error(capsys, [*base, "--coverage", "0"])
    assert "coverage" in one_line_error(capsys, [*base, "--coverage", "1.01"])
    assert "min_count" in one_line_error(capsys, [*base, "--min-count", "0"])
    assert "no such model folder" in one_line_error(capsys, [*base[:2], str(tmp_path / "nope"), *base[3:]])
    no_weights = tmp_path / "onnx-like"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((trained_tiny_dir / "config.json").read_text())
    (no_weights / "model.onnx").write_bytes(b"")
    assert "ONNX" in one_line_error(capsys, [*base[:2], str(no_weights), *base[3:]])
    # The untrained tiny folder records no data: the reviews must be given.
    assert "--data" in one_line_error(capsys, [*base[:2], str(tiny_model_dir), *base[3:]])
    assert "source folder" in one_line_error(capsys, [*base[:4], str(trained_tiny_dir)])


def test_a_tokenizer_that_is_not_wordpiece_is_a_model_error(trained_tiny_dir, tmp_path):
    folder = tmp_path / "bpe"
    folder.mkdir()
    for path in trained_tiny_dir.iterdir():
        if path.is_file():
            (folder / path.name).write_bytes(path.read_bytes())
    from tokenizers import Tokenizer, models, pre_tokenizers

    bpe = Tokenizer(models.BPE(vocab={"[UNK]": 0, "a": 1}, merges=[], unk_token="[UNK]"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe.save(str(folder / "tokenizer.json"))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps(config | {"tokenizer_class": "PreTrainedTokenizerFast"}))
    with pytest.raises(ModelError, match="WordPiece"):
        trim_vocab(TrimVocabConfig(model=str(folder), output_dir=str(tmp_path / "out")))


def test_recovery_fine_tunes_the_trimmed_model_on_its_own_tokenizer(trained_tiny_dir, tmp_path, capsys):
    from safetensors.torch import load_file

    from bertsent.modeling.loading import load_tokenizer

    out = tmp_path / "recovered"
    flags = ["--coverage", "0.8", "--recovery-epochs", "2", "--recovery-lr", "5e-3", "--eval-samples", "40"]
    assert main(["trim-vocab", "--model", str(trained_tiny_dir), "--output-dir", str(out), *flags]) == 0
    printed = capsys.readouterr().out
    assert "before recovery" in printed and "after" in printed
    record = json.loads((out / "compression.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    validation = record["validation"]
    assert record["recovery"]["epochs"] == 2 and record["recovery"]["steps"] > 0
    changed = record["tokens"]["validation"]
    assert changed["unk_token_share"] + changed["resplit_token_share"] > 0  # what recovery is for
    assert set(validation) >= {"before", "trimmed", "after"}
    assert metrics["validation_accuracy"] == validation["after"]["accuracy"]
    assert metrics["validation_accuracy_trimmed"] == validation["trimmed"]["accuracy"]
    # The folder is the recovered model with the trimmed tokenizer: rows and ids still match.
    tokenizer = load_tokenizer(out)
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == len(tokenizer) == record["vocab_size"]["after"]
    keep = np.asarray(
        [
            load_tokenizer(trained_tiny_dir).convert_tokens_to_ids(t)
            for t in tokenizer.convert_ids_to_tokens(range(len(tokenizer)))
        ]
    )
    key = "bert.embeddings.word_embeddings.weight"
    recovered, source = (
        load_file(out / "model.safetensors")[key],
        load_file(trained_tiny_dir / "model.safetensors")[key],
    )
    assert recovered.shape == source[keep].shape and not torch.allclose(recovered, source[keep])
    assert not list(out.glob("checkpoint-*"))  # recovery's checkpoints go when it ends
    assert "Recovery fine-tuning: 2 epoch(s)" in (out / "README.md").read_text()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"recovery_lr": 0}, "recovery_lr must be > 0"),
        ({"recovery_epochs": 1, "validation_samples": 0}, "validation_samples"),
    ],
)
def test_bad_recovery_settings_are_settings_errors(change, message, tmp_path):
    with pytest.raises(SettingsError, match=message):
        TrimVocabConfig(model=str(tmp_path), output_dir=str(tmp_path / "out"), **change)
