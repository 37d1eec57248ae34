import numpy as np
import pytest

from bertsent.encoding import collate, encode, length_grouped_batches, shorten, sorted_batches, truncate
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
