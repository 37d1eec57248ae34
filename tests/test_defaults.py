"""Defaults that fit the folder: every command that reads a model folder runs with only its required flags on a
folder fine-tuned at 128 tokens, where a fixed default (a 128-token chunk stride, factorize's missing rank) would
be invalid."""

import json

import pytest

from bertsent.cli import main
from bertsent.config import DataConfig, InferenceSettings, default_stride


@pytest.fixture(scope="module")
def folder_at_128(tiny_model_dir, toy_data_dir, tmp_path_factory):
    from conftest import tiny_args

    from bertsent.training.loop import train

    args = tiny_args(tiny_model_dir, tmp_path_factory.mktemp("at128"), max_length=128, epochs=1)
    return train(args, DataConfig(str(toy_data_dir), validation_size=40)).output_dir


def test_the_default_stride_fits_any_max_length():
    for max_length in (8, 9, 32, 128, 256, 512):
        stride = default_stride(max_length)
        assert 0 < stride < max_length - 2
        InferenceSettings(max_length=max_length, long_text="chunk", stride=stride)  # valid
    assert default_stride(512) == default_stride(256) == 128


def test_chunked_predict_and_evaluate_take_the_folder_length(folder_at_128, toy_data_dir, capsys):
    from bertsent.predict import Predictor

    predictor = Predictor(folder_at_128, InferenceSettings(long_text="chunk"))
    assert (predictor.settings.max_length, predictor.settings.stride) == (128, 64)
    long_review = "a fine film, " * 200
    assert main(["predict", "--model", str(folder_at_128), "--long-text", "chunk", long_review]) == 0
    assert json.loads(capsys.readouterr().out)["prediction"]["label"] in ("negative", "positive")
    argv = ["evaluate", "--model", str(folder_at_128), "--data", str(toy_data_dir), "--long-text", "chunk"]
    assert main(argv) == 0


@pytest.mark.parametrize("command", ["quantize", "calibrate", "factorize", "trim-vocab", "early-exit", "export"])
def test_a_compression_stage_needs_only_the_folder(folder_at_128, tmp_path, command):
    out = tmp_path / command
    assert main([command, "--model", str(folder_at_128), "--output-dir", str(out)]) == 0
    assert (out / "config.json").is_file() or (out / "model.onnx").is_file()
    if command == "factorize":  # neither --rank nor --energy: the recipe's energy
        record = json.loads((out / "compression.json").read_text())
        assert record["arguments"]["energy"] == 0.9


def test_serve_chunks_long_reviews_with_the_folder_length(folder_at_128):
    from fastapi.testclient import TestClient

    from bertsent.serve import create_app

    with TestClient(create_app(folder_at_128, inference=InferenceSettings(long_text="chunk"))) as client:
        info = client.get("/info").json()
        answer = client.post("/predict", json={"inputs": ["a fine film, " * 200, "dull"]})
    assert answer.status_code == 200 and len(answer.json()) == 2
    assert json.dumps(info).count('"stride": 64') == 1  # half the folder's 128 tokens, as predict and evaluate
