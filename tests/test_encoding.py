import numpy as np
import pytest

from bertsent.encoding import (
    collate,
    encode,
    encode_with_offsets,
    length_grouped_batches,
    pad_rows,
    shorten,
    sorted_batches,
    token_budget_batches,
    truncate,
)
from bertsent.errors import ModelError, SettingsError
from bertsent.modeling.loading import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(None)


def test_truncate_strategies():
    ids = list(range(10))
    assert truncate(ids, 4, "head") == [0, 1, 2, 3]
    assert truncate(ids, 4, "tail") == [6, 7, 8, 9]
    assert truncate(ids, 8, "head+tail") == [0, 1, 4, 5, 6, 7, 8, 9]  # a quarter from the start
    assert truncate(ids, 20, "head") == ids
    with pytest.raises(ValueError, match="truncation"):
        truncate(ids, 4, "middle")


def test_encode_truncates_with_special_tokens(tokenizer):
    long_text = "start " + "word " * 600 + "finale"
    enc = encode(tokenizer, ["short review", long_text], max_length=16, truncation="head+tail")
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    assert [len(x) for x in enc.ids] == [4, 16]
    assert enc.ids[1][0] == cls and enc.ids[1][-1] == sep
    assert tokenizer.convert_ids_to_tokens([int(enc.ids[1][1])]) == ["start"]
    assert tokenizer.convert_ids_to_tokens([int(enc.ids[1][-2])]) == ["finale"]
    assert enc.full_lengths.tolist() == [4, 604]
    assert enc.ids[1].dtype == np.int32


def test_encode_matches_tokenizer_head_truncation(tokenizer):
    text = "an unexpectedly moving film about grief " * 20
    ours = encode(tokenizer, [text], max_length=32, truncation="head").ids[0].tolist()
    theirs = tokenizer(text, truncation=True, max_length=32)["input_ids"]
    assert ours == theirs


@pytest.mark.parametrize("strategy", ["head", "tail", "head+tail"])
def test_shorten_gives_what_encoding_at_the_shorter_length_gives(tokenizer, strategy):
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda"]
    texts = [" ".join(words[i % 11] + str(i) for i in range(n)) for n in (3, 10, 40, 200)]
    long, short = encode(tokenizer, texts, 64, strategy), encode(tokenizer, texts, 24, strategy)
    cut = shorten(long, tokenizer, 24, strategy)
    assert [x.tolist() for x in cut.ids] == [x.tolist() for x in short.ids]
    assert cut.full_lengths.tolist() == long.full_lengths.tolist() and cut.ids[0].dtype == np.int32


def test_length_grouped_batches_cover_every_row_once_and_are_seeded():
    lengths = np.random.default_rng(0).integers(5, 300, size=1000)
    batches = length_grouped_batches(lengths, batch_size=16, seed=3)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1000))
    again = length_grouped_batches(lengths, batch_size=16, seed=3)
    assert all((a == b).all() for a, b in zip(batches, again, strict=True))
    other = length_grouped_batches(lengths, batch_size=16, seed=4)
    assert any((a != b).any() for a, b in zip(batches, other, strict=False) if len(a) == len(b))
    # Grouping by length means far less padding than random batches.
    padded = sum(len(b) * lengths[b].max() for b in batches)
    random_batches = np.array_split(np.random.default_rng(1).permutation(1000), len(batches))
    padded_random = sum(len(b) * lengths[b].max() for b in random_batches)
    assert padded < 0.8 * padded_random


def test_sorted_batches_and_collate(tokenizer):
    enc = encode(tokenizer, ["a b c d e", "a", "a b c"], max_length=32)
    batches = sorted_batches(enc.lengths, batch_size=2)
    assert [b.tolist() for b in batches] == [[0, 2], [1]]
    batch = collate(enc, batches[0], pad_id=0)
    assert batch["input_ids"].shape == (2, 7)
    assert batch["attention_mask"].sum(1).tolist() == [7, 5]
    assert batch["input_ids"][1, 5:].tolist() == [0, 0]


@pytest.mark.parametrize("strategy", ["head", "tail", "head+tail"])
def test_encode_with_offsets_is_encode_with_the_map_back_to_characters(tokenizer, strategy):
    texts = ["A wonderful, moving film!", "", "start " + "word " * 40 + "finale", "unexpectedly grieving"]
    encoded, where = encode_with_offsets(tokenizer, texts, 16, strategy)
    plain = encode(tokenizer, texts, 16, strategy)
    for ours, theirs in zip(encoded.ids, plain.ids, strict=True):
        np.testing.assert_array_equal(ours, theirs)
        assert ours.dtype == theirs.dtype
    np.testing.assert_array_equal(encoded.full_lengths, plain.full_lengths)
    for text, ids, tokens in zip(texts, encoded.ids, where, strict=True):
        assert len(tokens.kept) == len(ids) - 2  # [CLS] and [SEP] around the kept tokens
        assert len(tokens.offsets) == len(tokenizer.tokenize(text))  # every token of the whole text
        for position, token in zip(tokens.kept, ids[1:-1], strict=True):
            start, end = tokens.offsets[position]
            piece = tokenizer.convert_ids_to_tokens(int(token)).removeprefix("##")
            assert text[start:end].lower() == piece or piece == "[UNK]"
    assert where[2].kept[-1] == len(where[2].offsets) - 1 if strategy != "head" else where[2].kept[0] == 0


def test_encode_with_offsets_refuses_what_encode_refuses(tokenizer):
    with pytest.raises(SettingsError, match="truncation must be one of"):
        encode_with_offsets(tokenizer, ["a"], 16, "middle")
    with pytest.raises(SettingsError, match="leaves no room"):
        encode_with_offsets(tokenizer, ["a"], 2)
    slow = type("SlowTokenizer", (), {"is_fast": False})()  # a Python tokenizer gives no character offsets
    with pytest.raises(ModelError, match="fast tokenizer, not a SlowTokenizer"):
        encode_with_offsets(slow, ["a"], 16)


def test_token_budget_batches_keep_each_batch_within_its_budget():
    lengths = np.array([5, 30, 12, 12, 7, 30, 1])
    batches = token_budget_batches(lengths, budget=100, copies=2)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))  # every row once
    order = np.concatenate(batches)
    assert list(lengths[order]) == sorted(lengths, reverse=True)  # longest first
    for batch in batches:
        assert len(batch) == 1 or len(batch) * 2 * lengths[batch].max() <= 100
    assert [len(b) for b in token_budget_batches(np.array([300, 2]), budget=10)] == [1, 1]  # alone, over budget
    assert token_budget_batches(np.array([], dtype=np.int64), budget=10) == []


def test_pad_rows():
    padded = pad_rows([np.array([1, 2, 3]), np.array([4])], -1, np.int64)
    np.testing.assert_array_equal(padded, [[1, 2, 3], [4, -1, -1]])
    assert padded.dtype == np.int64
    flags = pad_rows([np.array([True]), np.array([False, True])], False, bool)
    np.testing.assert_array_equal(flags, [[True, False], [False, True]])
