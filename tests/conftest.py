"""Shared fixtures: a tiny random BERT saved as a Hugging Face folder, and a small toy review set.

Everything here is offline and takes seconds: the tokenizer comes from the embedded
all-MiniLM-L6-v2 package, the weights are random.
"""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
import pytest

POSITIVE_WORDS = ["great", "wonderful", "brilliant", "superb", "moving", "excellent", "loved", "fantastic"]
NEGATIVE_WORDS = ["awful", "boring", "terrible", "dull", "worst", "hated", "waste", "poor"]
FILLER = ["the", "movie", "film", "plot", "acting", "was", "and", "really", "story", "cast", "i", "it"]


def make_reviews(n: int, seed: int) -> pd.DataFrame:
    """Short synthetic reviews whose label is decided by sentiment words (learnable in a few steps)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        cue = POSITIVE_WORDS if label else NEGATIVE_WORDS
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 30))]
        for _ in range(rng.randint(1, 3)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(cue))
        rows.append({"text": " ".join(words), "label": label})
    return pd.DataFrame(rows)


@pytest.fixture(scope="session")
def toy_data_dir(tmp_path_factory) -> Path:
    """A folder with train.parquet (240 reviews) and test.parquet (80 reviews), unique texts."""
    root = tmp_path_factory.mktemp("toy_data")
    train = make_reviews(400, seed=1).drop_duplicates("text").head(240)
    test = make_reviews(300, seed=2)
    test = test[~test.text.isin(train.text)].drop_duplicates("text").head(80)
    train.to_parquet(root / "train.parquet", index=False)
    test.to_parquet(root / "test.parquet", index=False)
    return root


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random BERT (2 layers, hidden 32) with the embedded uncased WordPiece tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from bertsent.modeling import embedded_model_path

    root = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


@pytest.fixture(scope="session")
def trained_tiny_dir(tiny_model_dir, toy_data_dir, tmp_path_factory) -> Path:
    """The tiny BERT fine-tuned on the toy reviews (~5 s): a teacher/source for compression tests."""
    from bertsent.data import DataConfig
    from bertsent.train import TrainingArguments, train

    out = tmp_path_factory.mktemp("trained_tiny")
    args = TrainingArguments(
        model=str(tiny_model_dir),
        output_dir=str(out),
        max_length=32,
        epochs=6,
        lr=5e-3,
        warmup_ratio=0.0,
        save_steps=None,
        progress=False,
        metric_for_best_model="loss",  # accuracy reaches 1.0 while probabilities still hover near 0.5
    )
    return train(args, DataConfig(str(toy_data_dir), validation_size=40)).output_dir
