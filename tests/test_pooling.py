"""Mean pooling as one more stock BERT layer: what it computes, when ``auto`` adds it, and that the folder
it ends in is still a plain BERT every consumer reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_bert, tiny_args

from bertsent.config import DataConfig
from bertsent.errors import ModelError
from bertsent.modeling.loading import load_classifier
from bertsent.modeling.pooling import POOLING_KEY, add_mean_pooling, declared_pooling, pooling_layer

LABELS = {0: "negative", 1: "positive"}


def make_sentence_encoder(root: Path, mode: str = "mean_tokens") -> Path:
    """A tiny base encoder laid out as a sentence-transformers folder whose Pooling module uses ``mode``."""
    from transformers import AutoModel

    make_tiny_bert(root / "classifier")
    AutoModel.from_pretrained(root / "classifier").save_pretrained(root / "encoder")  # no classifier weights
    encoder = root / "encoder"
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (encoder / name).write_bytes((root / "classifier" / name).read_bytes())
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (encoder / "modules.json").write_text(json.dumps(modules))
    (encoder / "1_Pooling").mkdir()
    modes = {f"pooling_mode_{m}": m == mode for m in ("cls_token", "mean_tokens", "max_tokens")}
    (encoder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32} | modes))
    return encoder


@pytest.fixture(scope="module")
def sentence_encoder(tmp_path_factory) -> Path:
    return make_sentence_encoder(tmp_path_factory.mktemp("st_encoder"))


def test_added_layer_reads_the_masked_mean_of_the_layer_below(tiny_model_dir):
    model = load_classifier(tiny_model_dir).eval()
    below = model.bert.encoder.layer[-1].output.LayerNorm
    index = add_mean_pooling(model)
    model.eval()
    assert index == 2 and pooling_layer(model.config) == 2 and model.config.num_hidden_layers == 3
    assert torch.equal(model.bert.pooler.dense.weight, torch.eye(32))  # the head reads the mean itself
    ids = torch.tensor([[101, 2307, 3185, 2001, 6429, 102], [101, 9643, 102, 0, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        out = model.bert(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        hidden, weights = out.hidden_states[-2], mask.unsqueeze(-1).float()
        mean = (hidden * weights).sum(1) / weights.sum(1)
        expected = torch.nn.functional.layer_norm(mean, (32,), below.weight, below.bias)
        got = out.last_hidden_state[:, 0]
        assert ((got - expected).norm(dim=-1) / expected.norm(dim=-1)).max() < 0.05
        # The padded row pools over its own three tokens only: the same as the row alone.
        alone = model.bert(input_ids=ids[1:, :3]).last_hidden_state[:, 0]
    torch.testing.assert_close(got[1], alone[0], atol=1e-5, rtol=1e-4)
    with pytest.raises(ModelError, match="already mean-pools"):
        add_mean_pooling(model)


def test_auto_adds_mean_pooling_only_for_a_new_head_on_a_mean_pooled_encoder(
    sentence_encoder, tiny_model_dir, trained_tiny_dir, tmp_path
):
    assert declared_pooling(str(sentence_encoder)) == "mean"
    assert declared_pooling(str(tiny_model_dir)) is None
    assert declared_pooling(str(make_sentence_encoder(tmp_path, "cls_token"))) == "cls"
    assert pooling_layer(load_classifier(sentence_encoder, LABELS, "auto").config) == 2
    assert pooling_layer(load_classifier(sentence_encoder, LABELS, "cls").config) is None
    assert pooling_layer(load_classifier(tmp_path / "encoder", LABELS, "auto").config) is None  # declares [CLS]
    assert pooling_layer(load_classifier(tmp_path / "encoder", LABELS, "mean").config) == 2  # asked for: added
    assert pooling_layer(load_classifier(trained_tiny_dir, LABELS, "auto").config) is None  # trained head kept
    with pytest.raises(ModelError, match="trained classifier"):
        load_classifier(trained_tiny_dir, LABELS, "mean")
    assert pooling_layer(load_classifier(sentence_encoder).config) is None  # loading for inference adds nothing


@pytest.fixture(scope="module")
def pooled_run(sentence_encoder, toy_data_dir, tmp_path_factory) -> Path:
    """The tiny sentence encoder fine-tuned with ``--pooling auto`` (the default)."""
    from bertsent.training.loop import train

    # head truncation, as the transformers pipeline this folder is checked against truncates
    args = tiny_args(sentence_encoder, tmp_path_factory.mktemp("pooled_run"), epochs=4, truncation="head")
    return train(args, DataConfig(str(toy_data_dir), validation_size=40)).output_dir


def test_mean_pooled_run_is_a_stock_bert_folder_that_pipeline_and_onnx_read(pooled_run, toy_texts, tmp_path):
    from transformers import pipeline

    from bertsent.compression.export import export_onnx
    from bertsent.predict import Predictor

    metrics = json.loads((pooled_run / "metrics.json").read_text())
    config = json.loads((pooled_run / "config.json").read_text())
    assert metrics["pooling"] == "mean" and metrics["validation_accuracy"] >= 0.9
    assert config[POOLING_KEY] == {"layer": 2} and config["num_hidden_layers"] == 3
    assert config["architectures"] == ["BertForSequenceClassification"]
    ours = Predictor(pooled_run)(toy_texts[:8])
    theirs = pipeline("text-classification", model=str(pooled_run), device="cpu")(toy_texts[:8], truncation=True)
    assert [r["label"] for r in ours] == [r["label"] for r in theirs]
    assert [r["score"] for r in ours] == pytest.approx([r["score"] for r in theirs], abs=1e-4)
    export_onnx(pooled_run, tmp_path / "onnx")  # raises unless ONNX Runtime matches PyTorch
    exported = Predictor(tmp_path / "onnx")(toy_texts[:8])
    assert [r["label"] for r in exported] == [r["label"] for r in ours]
    assert [r["score"] for r in exported] == pytest.approx([r["score"] for r in ours], abs=1e-4)


def test_student_from_a_mean_pooled_teacher_keeps_the_pooling_layer_last(pooled_run):
    from bertsent.training.distill import student_from_teacher

    student, kept = student_from_teacher(load_classifier(pooled_run), 1)
    assert kept == [0, 2]
    assert student.config.num_hidden_layers == 2 and pooling_layer(student.config) == 1


def test_pruning_a_mean_pooled_model_keeps_the_pooling_layer_whole_and_last(pooled_run, toy_data_dir, tmp_path):
    from bertsent.compression.prune import prune
    from bertsent.config import PruneConfig
    from bertsent.errors import PruneError
    from bertsent.predict import Predictor

    common = dict(model=str(pooled_run), data=DataConfig(str(toy_data_dir), validation_size=40), validation_samples=0)
    # Each of the pooling layer's heads carries one slice of the mean: none of them is a candidate. Its
    # near-zero feed-forward goes down to the one neuron a layer keeps.
    result = prune(PruneConfig(output_dir=str(tmp_path / "heads"), heads_fraction=0.5, ffn_fraction=0.5, **common))
    layout = result.record["layout"]
    assert len(layout["heads"]["2"]) == 4
    assert sum(len(layout["heads"][str(i)]) for i in range(2)) == 4  # half of the 8 heads of the real layers
    assert layout["intermediate"]["2"] == 1 and layout["intermediate"]["0"] == 32
    assert "mean-pooling layer's near-zero feed-forward" in result.record["resolved"]["ffn_selection"]
    # A one-neuron feed-forward exports and quantizes like any other (the recipe's student INT8).
    from bertsent.compression.quantize import quantize
    from bertsent.config import QuantizeConfig

    int8 = quantize(QuantizeConfig(model=str(tmp_path / "heads"), output_dir=str(tmp_path / "int8")))
    texts = ["a fine film", "dull and far too long", "I loved every minute"]
    pruned, quantized = Predictor(tmp_path / "heads"), Predictor(int8.output_dir)
    assert pruned.predict_proba(texts).argmax(-1).tolist() == quantized.predict_proba(texts).argmax(-1).tolist()
    assert json.loads((tmp_path / "heads" / "config.json").read_text())[POOLING_KEY] == {"layer": 2}
    # keep_layers counts the encoder's own layers; the pooling layer comes along, renumbered.
    kept = prune(PruneConfig(output_dir=str(tmp_path / "layers"), keep_layers=1, **common))
    assert kept.record["resolved"]["kept_layers"] == [1, 2]
    config = json.loads((tmp_path / "layers" / "config.json").read_text())
    assert config["num_hidden_layers"] == 2 and config[POOLING_KEY] == {"layer": 1}
    assert len(Predictor(tmp_path / "layers")(["a fine film"])) == 1
    with pytest.raises(PruneError, match="unknown layer index 2"):
        prune(PruneConfig(output_dir=str(tmp_path / "bad"), drop_layers=[2], **common))


def test_factorize_leaves_the_pooling_layer_dense(pooled_run):
    from bertsent.modeling.factorized import target_linears

    found = target_linears(load_classifier(pooled_run), ["ffn", "attention"])
    assert found and {name.split(".")[3] for name in found} == {"0", "1"}


def test_early_exit_on_a_mean_pooled_model_counts_the_encoder_s_own_layers(pooled_run, toy_texts, tmp_path):
    import numpy as np

    from bertsent.compression.early_exit import early_exit
    from bertsent.config import EarlyExitConfig
    from bertsent.folder import EARLY_EXIT_KEY
    from bertsent.predict import Predictor

    out = early_exit(EarlyExitConfig(model=str(pooled_run), output_dir=str(tmp_path / "exit"), validation_samples=40))
    config = json.loads((out.output_dir / "config.json").read_text())
    assert config[EARLY_EXIT_KEY]["layers"] == 2  # two encoder layers; the pooling layer is the head's
    record = json.loads((out.output_dir / "compression.json").read_text())
    assert record["training"]["features"] == "the mean of the token vectors"  # what the model's own head reads
    full = Predictor(out.output_dir, exit_threshold=0)
    np.testing.assert_allclose(full.predict_proba(toy_texts), Predictor(pooled_run).predict_proba(toy_texts), atol=1e-6)
    assert full.backend.mean_layers == 2
    first = Predictor(out.output_dir, exit_threshold=1.0)
    first.predict_proba(toy_texts)
    assert first.backend.mean_layers == 1
