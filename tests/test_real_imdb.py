"""Real-model tests: the embedded all-MiniLM-L6-v2 on small slices of the shared IMDB data (minutes)."""

import json
from pathlib import Path

import pytest

from bertsent.config import DataConfig, TrainingArguments
from bertsent.predict import Predictor
from bertsent.training.loop import train

IMDB = Path(__file__).resolve().parents[2] / "shared" / "data" / "imdb"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (IMDB / "train.parquet").is_file(), reason=f"shared IMDB data not found at {IMDB}"),
]


def test_embedded_model_fine_tuned_on_400_reviews_reaches_70_percent(tmp_path):
    args = TrainingArguments(
        output_dir=str(tmp_path / "minilm"),
        max_length=128,
        truncation="head+tail",
        epochs=1,
        batch_size=16,
        lr=1e-4,
        save_steps=None,
        progress=False,
    )
    data = DataConfig(str(IMDB), train_samples=400, validation_size=0.1, validation_samples=100, eval_samples=400)
    result = train(args, data)
    metrics = json.loads((result.output_dir / "metrics.json").read_text())
    assert metrics["train_reviews"] == 400 and metrics["data"]["sizes"]["test"] == 400
    assert metrics["test_accuracy"] >= 0.70, metrics["test_accuracy"]
    predictor = Predictor(result.output_dir)
    assert predictor("An absolute masterpiece: moving, funny and beautifully acted.")[0]["label"] == "positive"
    assert predictor("A dull, lifeless mess. I want my two hours back.")[0]["label"] == "negative"


def test_embedded_model_fine_tuned_with_keras_on_400_reviews_reaches_70_percent(tmp_path):
    pytest.importorskip("keras_hub", reason='the keras extra is not installed: pip install "bertsent[keras]"')
    args = TrainingArguments(
        output_dir=str(tmp_path / "minilm-keras"),
        backend="keras",
        max_length=128,
        truncation="head+tail",
        epochs=1,
        batch_size=16,
        lr=1e-4,
        progress=False,
    )
    data = DataConfig(str(IMDB), train_samples=400, validation_size=0.1, validation_samples=100, eval_samples=400)
    metrics = train(args, data).metrics
    assert metrics["train_reviews"] == 400 and metrics["data"]["sizes"]["test"] == 400
    assert metrics["keras_parity_max_abs_diff"] <= 1e-4
    assert metrics["test_accuracy"] >= 0.70, metrics["test_accuracy"]
