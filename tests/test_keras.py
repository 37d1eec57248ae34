"""The Keras 3 / KerasHub path: conversion parity, tokenizer parity, training, exports, the missing extra.

Without the ``keras`` extra these are skipped, except in CI (``CI`` set), where a missing extra fails.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch

if os.environ.get("CI"):
    import keras_hub  # noqa: F401  (CI installs the extra: fail loudly instead of skipping)
else:
    pytest.importorskip("keras_hub", reason='the keras extra is not installed: pip install "bertsent[keras]"')

from bertsent.cli import main
from bertsent.config import DataConfig, TrainingArguments
from bertsent.errors import ExportParityError, KerasParityError, ModelError
from bertsent.keras.model import (
    KerasTokenizer,
    _import_keras,
    check_parity,
    keras_from_torch,
    keras_inputs,
    require_keras,
    torch_from_keras,
)
from bertsent.modeling.loading import embedded_model_path, load_classifier, load_tokenizer
from bertsent.modeling.parity import random_batch
from bertsent.training.loop import train

TRICKY = [
    "Café déjà vu — naïve résumé!",
    "<br /><br />This movie... wasn't GOOD!!!",
    "I ❤️ it 😂👍 10/10",
    "日本語の映画はすばらしい 한국어 영화 ไทย العربية עברית",
    "price: $5.99 (50% off) #1 @home ~cool~ a^b `x` {y} |z|",
    "tab\there\nnewline  spaces\r\n",
    "Ünïcödé ÀÉÎÕÜ ß æ ø",
    "don't won't it's",
    "e-mail: foo@bar.com http://x.y/z?a=1&b=2",
    "\u200bzero\u00a0width\ufeff",
    "Ω≈ç√∫ µ≤≥÷ §¶†‡•…‰′″‹›«»",
    "ﬁ ligature ½ ² ＦＵＬＬ 𝔘𝔫𝔦",
    "控制\x00char\x7f \ufffd",
    "İstanbul Σίσυφος ΣΑΣ",
    "x\u0301y\u0327z",
    "",
    "supercalifragilisticexpialidocious " * 3,
]


@pytest.fixture(scope="module")
def keras():
    return require_keras()


def test_tokenizer_ids_equal_the_hf_fast_tokenizer_on_tricky_strings(keras):
    hf = load_tokenizer(embedded_model_path())
    ids = KerasTokenizer(hf)(TRICKY)
    for text, got in zip(TRICKY, ids, strict=True):
        expected = hf(text, add_special_tokens=False)["input_ids"]
        assert list(got) == expected, (text, hf.convert_ids_to_tokens(expected))


def test_keras_encoder_and_logits_match_pytorch_and_convert_back_exactly(keras, tiny_model_dir):
    hf_model = load_classifier(tiny_model_dir).eval()
    model = keras_from_torch(hf_model)
    parity = check_parity(model, hf_model)
    assert parity["max_abs_diff"] <= 1e-4 and len(parity["shapes"]) == 3
    # The encoder itself, token by token (padded positions excluded: neither side defines them).
    ids, mask = random_batch(hf_model.config.vocab_size, 0, 3, 40, seed=7)
    with torch.inference_mode():
        expected = hf_model.bert(
            input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)
        ).last_hidden_state
    got = np.asarray(model.backbone(keras_inputs(ids, mask))["sequence_output"])
    keep = mask.astype(bool)
    assert np.max(np.abs(got[keep] - expected.numpy()[keep])) <= 1e-4
    # Keras -> PyTorch gives back the very same tensors.
    back = torch_from_keras(model, load_classifier(tiny_model_dir))
    for (name, a), b in zip(hf_model.state_dict().items(), back.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_mean_pooling_layer_converts_to_keras_with_the_same_logits(keras, tiny_model_dir):
    from bertsent.modeling.pooling import add_mean_pooling

    hf_model = load_classifier(tiny_model_dir)
    add_mean_pooling(hf_model)  # a stock BertLayer: KerasHub's backbone just has one more
    model = keras_from_torch(hf_model.eval())
    assert len(model.backbone.transformer_layers) == 3
    assert check_parity(model, hf_model)["max_abs_diff"] <= 1e-4


def test_gelu_is_exact_like_hf_not_keras_hubs_tanh_approximation(keras, tiny_model_dir):
    model = keras_from_torch(load_classifier(tiny_model_dir))
    layer = model.backbone.transformer_layers[0]._feedforward_intermediate_dense
    x = np.linspace(-6, 6, 2001, dtype=np.float32)
    exact = torch.nn.functional.gelu(torch.from_numpy(x)).numpy()
    tanh = torch.nn.functional.gelu(torch.from_numpy(x), approximate="tanh").numpy()
    got = np.asarray(layer.activation(x))
    assert np.max(np.abs(got - exact)) < 1e-6
    assert np.max(np.abs(tanh - exact)) > 1e-4  # the difference the fix removes is real


def test_parity_error_is_typed_and_names_the_difference(keras, tiny_model_dir):
    hf_model = load_classifier(tiny_model_dir).eval()
    model = keras_from_torch(hf_model)
    head = model.output_dense.bias
    head.assign(head.numpy() + 0.01)
    with pytest.raises(KerasParityError, match=r"differ from PyTorch by 0\.01"):
        check_parity(model, hf_model)


def test_pruned_or_non_bert_models_are_refused_with_one_line(keras, tiny_model_dir):
    hf_model = load_classifier(tiny_model_dir)
    hf_model.config.bertsent_pruning = {"heads": {"0": [1]}}
    with pytest.raises(ModelError, match="pruned layouts"):
        keras_from_torch(hf_model)


def _keras_args(tiny_model_dir, out, **changes) -> TrainingArguments:
    settings = dict(
        model=str(tiny_model_dir),
        output_dir=str(out),
        backend="keras",
        max_length=32,
        epochs=6,
        batch_size=16,
        lr=5e-3,
        progress=False,
    )
    return TrainingArguments(**(settings | changes))


@pytest.fixture(scope="module")
def keras_trained(tiny_model_dir, toy_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("keras_trained")
    return train(_keras_args(tiny_model_dir, out), DataConfig(str(toy_data_dir)))


def test_keras_training_lowers_the_loss_and_writes_the_usual_folder(keras_trained):
    out, metrics = keras_trained.output_dir, keras_trained.metrics
    history = json.loads((out / "history.json").read_text())
    losses = [h["loss"] for h in history if "loss" in h]
    evals = [h for h in history if "eval_accuracy" in h]
    assert losses[-1] < 0.5 * losses[0] and len(evals) == 6
    assert metrics["validation_accuracy"] >= 0.9 and metrics["test_accuracy"] >= 0.9
    assert metrics["keras_parity_max_abs_diff"] <= 1e-4 and "tensorflow" in metrics["keras_versions"]
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert json.loads((out / "training_args.json").read_text())["training"]["backend"] == "keras"
    assert "Trained with Keras" in (out / "README.md").read_text()
    assert (out / "training_curves.png").is_file() and not (out / "checkpoints").exists()


def test_keras_trained_folder_reloads_with_identical_predictions(keras, keras_trained, toy_data_dir):
    from transformers import pipeline

    from bertsent.evaluate import evaluate
    from bertsent.predict import Predictor

    out = keras_trained.output_dir
    # bertsent's own evaluation of the folder reproduces the test metrics written at the end of training.
    again = evaluate(out, DataConfig(str(toy_data_dir)))
    assert again["accuracy"] == pytest.approx(keras_trained.metrics["test_accuracy"])
    # The folder converted back to Keras predicts what PyTorch (and pipeline) predicts.
    texts = ["a great and moving film", "boring awful plot", "the cast was superb"]
    tokenizer = load_tokenizer(out)
    batch = tokenizer(texts, padding=True, return_tensors="np")
    model = keras_from_torch(load_classifier(out).eval())
    keras_labels = np.asarray(model(keras_inputs(batch["input_ids"], batch["attention_mask"]))).argmax(-1)
    predictor_labels = [p["label"] for p in Predictor(out)(texts)]
    pipeline_labels = [p["label"] for p in pipeline("text-classification", model=str(out))(texts)]
    names = [load_classifier(out).config.id2label[int(i)] for i in keras_labels]
    assert names == predictor_labels == pipeline_labels


def test_savedmodel_export_with_string_signature_matches_pytorch(keras, keras_trained, tmp_path):
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the tokenizer ops the string signature uses)

    from bertsent.keras.export import export_keras_model

    source = tmp_path / "source"
    shutil.copytree(keras_trained.output_dir, source)
    # head+tail truncation is rebuilt inside the graph: check it on a review longer than the budget.
    args = json.loads((source / "training_args.json").read_text())
    args["training"] |= {"truncation": "head+tail", "max_length": 24}
    (source / "training_args.json").write_text(json.dumps(args))
    out = export_keras_model(source, tmp_path / "tf", strings=True)
    record = json.loads((out / "compression.json").read_text())
    assert record["parity"]["max_abs_diff"] <= 1e-4 and record["string_parity"]["max_abs_diff"] <= 1e-4
    loaded = tf.saved_model.load(str(out / "saved_model"))
    hf_model, tokenizer = load_classifier(source).eval(), load_tokenizer(source)
    texts = ["the plot was dull and the acting awful " * 6, "wonderful"]
    rows = [r[:5] + r[-17:] if len(r) > 22 else r for r in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    rows = [[tokenizer.cls_token_id, *r, tokenizer.sep_token_id] for r in rows]
    width = max(map(len, rows))
    ids = [r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows]
    mask = [[1] * len(r) + [0] * (width - len(r)) for r in rows]
    with torch.inference_mode():
        expected = hf_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    by_ids = loaded.signatures["serving_default"](
        input_ids=tf.constant(ids, tf.int32), attention_mask=tf.constant(mask, tf.int32)
    )
    by_text = loaded.signatures["serving_strings"](text=tf.constant(texts))
    assert np.max(np.abs(by_ids["logits"].numpy() - expected)) <= 1e-4
    assert np.max(np.abs(by_text["logits"].numpy() - expected)) <= 1e-4
    assert "tensorflow_text" in (out / "README.md").read_text()


def test_keras_file_export_reloads_and_matches(keras, trained_tiny_dir, tmp_path):
    out = tmp_path / "k"
    assert main(["export", "--model", str(trained_tiny_dir), "--output-dir", str(out), "--format", "keras"]) == 0
    reloaded = keras.saving.load_model(out / "model.keras")
    hf_model = load_classifier(trained_tiny_dir).eval()
    ids, mask = random_batch(hf_model.config.vocab_size, 0, 2, 20, seed=3)
    with torch.inference_mode():
        expected = hf_model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    assert np.max(np.abs(np.asarray(reloaded(keras_inputs(ids, mask))) - expected)) <= 1e-4
    assert json.loads((out / "compression.json").read_text())["method"] == "keras"


def test_export_parity_failure_raises_the_typed_error(keras, trained_tiny_dir):
    from bertsent.modeling.parity import parity_check as _check

    hf_model = load_classifier(trained_tiny_dir).eval()
    with pytest.raises(ExportParityError, match="tolerance 0.0001"):
        _check("a broken model's", lambda ids, mask: np.zeros((len(ids), 2), np.float32) + 5, hf_model, 1e-4, 0)


def test_cli_refuses_keras_options_it_cannot_honour(tiny_model_dir, toy_data_dir, tmp_path, capsys):
    code = main(
        [
            "train",
            "--backend",
            "keras",
            "--resume",
            "--model",
            str(tiny_model_dir),
            "--data",
            str(toy_data_dir),
            "--output-dir",
            str(tmp_path),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--backend keras does not support resume" in err and len(err.splitlines()) == 1


def test_missing_extra_gives_a_one_line_install_hint(monkeypatch, tiny_model_dir, toy_data_dir, tmp_path, capsys):
    _import_keras.cache_clear()
    monkeypatch.setitem(sys.modules, "keras_hub", None)  # "import keras_hub" now fails
    try:
        code = main(
            [
                "train",
                "--backend",
                "keras",
                "--model",
                str(tiny_model_dir),
                "--data",
                str(toy_data_dir),
                "--output-dir",
                str(tmp_path),
            ]
        )
        err = capsys.readouterr().err.strip()
        assert code == 2 and 'pip install "bertsent[keras]"' in err and len(err.splitlines()) == 1
        code = main(
            ["export", "--model", str(tiny_model_dir), "--output-dir", str(tmp_path / "x"), "--format", "keras"]
        )
        err = capsys.readouterr().err.strip()
        assert code == 2 and 'pip install "bertsent[keras]"' in err and len(err.splitlines()) == 1
    finally:
        _import_keras.cache_clear()


def test_keras_trained_folder_goes_through_onnx_export_and_predict(keras_trained, tmp_path, capsys):
    onnx_dir = tmp_path / "onnx"
    assert main(["export", "--model", str(keras_trained.output_dir), "--output-dir", str(onnx_dir)]) == 0
    capsys.readouterr()
    assert main(["predict", "--model", str(onnx_dir), "a great and moving film"]) == 0
    assert "positive" in capsys.readouterr().out
