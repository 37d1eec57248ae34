"""Pruning (heads, FFN neurons, layers, magnitude) on a tiny random BERT and the toy reviews (seconds)."""

import json
import shutil

import numpy as np
import pytest
import torch

from bertsent.compression.prune import (
    compute_importance,
    current_head_scores,
    encoder_sparsity,
    gated,
    prune,
    select_heads,
    select_layers,
    select_neurons,
)
from bertsent.config import DataConfig, PruneConfig
from bertsent.data.loading import load_data, stratified_subset
from bertsent.encoding import collate, encode
from bertsent.errors import BertsentError, ModelError, PruneError
from bertsent.folder import COMPRESSION_FILE
from bertsent.modeling.loading import load_classifier, load_tokenizer
from bertsent.modeling.pruned import PRUNING_KEY, prune_ffn, prune_heads, pruning_layout, retain_layers
from bertsent.predict import Predictor
from bertsent.training.distill import TEACHER_LOGITS

HIDDEN, HEADS, HEAD_SIZE, FFN, LAYERS = 32, 4, 8, 64, 2
MAX_LENGTH = 48
TEXTS = ["a great and moving film", "boring, dull and the worst plot", "i loved it", "the acting was poor"]


@pytest.fixture(scope="module")
def source_dir(tiny_model_dir, tmp_path_factory):
    """The tiny BERT with larger random weights (heads then differ clearly), labels and training args."""
    from transformers import BertConfig, BertForSequenceClassification

    root = tmp_path_factory.mktemp("prune_source")
    config = BertConfig.from_pretrained(tiny_model_dir)
    config.initializer_range = 0.2
    config.id2label, config.label2id = {0: "negative", 1: "positive"}, {"negative": 0, "positive": 1}
    torch.manual_seed(1)
    BertForSequenceClassification(config).save_pretrained(root)
    for path in tiny_model_dir.iterdir():
        if path.name.startswith(("tokenizer", "special_tokens", "vocab")):
            shutil.copy2(path, root / path.name)
    training = {"training": {"max_length": MAX_LENGTH, "truncation": "head"}, "data": {}}
    (root / "training_args.json").write_text(json.dumps(training))
    return root


@pytest.fixture(scope="module")
def pruned(trained_tiny_dir, toy_data_dir, tmp_path_factory):
    config = PruneConfig(
        model=str(trained_tiny_dir),
        output_dir=str(tmp_path_factory.mktemp("pruned")),
        heads_fraction=0.5,
        ffn_fraction=0.25,
        data=DataConfig(str(toy_data_dir), validation_size=40),
        importance_samples=64,
        validation_samples=40,
    )
    return prune(config)


def batch_of(model_dir, texts=TEXTS) -> dict[str, torch.Tensor]:
    encoded = encode(load_tokenizer(model_dir), texts, MAX_LENGTH)
    return {k: torch.from_numpy(v) for k, v in collate(encoded, np.arange(len(texts)), pad_id=0).items()}


@torch.no_grad()
def logits(model, batch) -> torch.Tensor:
    return model.eval()(**batch).logits


def importance_of(model, model_dir, toy_data_dir, n=48):
    train_split = load_data(DataConfig(source=str(toy_data_dir), train_samples=n), splits=("train",)).train
    encoded = encode(load_tokenizer(model_dir), train_split["text"].tolist(), MAX_LENGTH)
    return compute_importance(model, encoded, train_split["label"].to_numpy(), batch_size=16)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_importance_has_one_finite_non_negative_value_per_head_and_neuron(source_dir, toy_data_dir):
    model = load_classifier(source_dir)
    importance = importance_of(model, source_dir, toy_data_dir)
    assert importance.heads.shape == (LAYERS, HEADS)
    assert np.isfinite(importance.heads).all() and (importance.heads >= 0).all()
    assert importance.heads.sum() > 0 and len(np.unique(importance.heads)) == LAYERS * HEADS
    assert [a.shape for a in importance.ffn] == [(FFN,)] * LAYERS
    assert all(np.isfinite(a).all() and (a >= 0).all() and a.sum() > 0 for a in importance.ffn)
    assert importance.samples == 48
    assert not any(p.grad is not None for p in model.parameters())  # only the gates were differentiated


def test_pruning_half_the_heads_removes_their_weights_and_equals_masking_them(source_dir, toy_data_dir):
    model = load_classifier(source_dir)
    importance = importance_of(model, source_dir, toy_data_dir)
    remove = select_heads(current_head_scores(importance, model), 0.5)
    removed = [(li, h) for li, hs in remove.items() for h in hs]
    assert len(removed) == LAYERS * HEADS // 2
    assert all(len(hs) < HEADS for hs in remove.values())

    # The least important heads go (L2-normalised per layer), unless a layer would lose its last head.
    normed = importance.heads / np.linalg.norm(importance.heads, axis=1, keepdims=True)
    worst_removed = max(normed[li, h] for li, h in removed)
    for li in range(LAYERS):
        kept = [h for h in range(HEADS) if h not in remove.get(li, [])]
        assert all(normed[li, h] >= worst_removed for h in kept) or len(kept) == 1

    batch = batch_of(source_dir)
    original = logits(model, batch)
    gates = [[0.0 if h in remove.get(li, []) else 1.0 for h in range(HEADS)] for li in range(LAYERS)]
    with gated(model, heads=gates):
        masked = logits(model, batch)
    before = n_params(model)
    prune_heads(model, remove)
    after_logits = logits(model, batch)

    torch.testing.assert_close(after_logits, masked, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(after_logits, original, atol=1e-3)  # the removed heads did matter
    per_head = 3 * (HIDDEN * HEAD_SIZE + HEAD_SIZE) + HIDDEN * HEAD_SIZE  # q/k/v rows + output columns
    assert before - n_params(model) == len(removed) * per_head
    layout = pruning_layout(model)
    for li, layer in enumerate(model.bert.encoder.layer):
        kept = [h for h in range(HEADS) if h not in remove.get(li, [])]
        assert layout["heads"][str(li)] == kept
        assert layer.attention.self.num_attention_heads == len(kept)
        assert layer.attention.self.all_head_size == len(kept) * HEAD_SIZE
        assert layer.attention.self.query.weight.shape == (len(kept) * HEAD_SIZE, HIDDEN)
        assert layer.attention.output.dense.weight.shape == (HIDDEN, len(kept) * HEAD_SIZE)


def test_ffn_pruning_removes_exactly_the_least_important_neurons(source_dir, toy_data_dir):
    model = load_classifier(source_dir)
    importance = importance_of(model, source_dir, toy_data_dir)
    keep = select_neurons(importance.ffn, 0.5)
    batch = batch_of(source_dir)
    gates = [np.isin(np.arange(FFN), keep[li]).astype(np.float32) for li in range(LAYERS)]
    with gated(model, ffn=gates):
        masked = logits(model, batch)
    before = n_params(model)
    prune_ffn(model, keep)

    torch.testing.assert_close(logits(model, batch), masked, atol=1e-5, rtol=1e-5)
    for li, layer in enumerate(model.bert.encoder.layer):
        assert len(keep[li]) == FFN // 2
        gone = np.setdiff1d(np.arange(FFN), keep[li])
        assert importance.ffn[li][keep[li]].min() >= importance.ffn[li][gone].max()
        assert layer.intermediate.dense.weight.shape == (FFN // 2, HIDDEN)
        assert layer.output.dense.weight.shape == (HIDDEN, FFN // 2)
    assert before - n_params(model) == LAYERS * (FFN // 2) * (2 * HIDDEN + 1)
    assert pruning_layout(model)["intermediate"] == {str(li): FFN // 2 for li in range(LAYERS)}


def test_layer_selection_keeps_evenly_spaced_layers_ending_with_the_last():
    for n, k in ((12, 6), (12, 4), (12, 5), (6, 3), (2, 1), (4, 4)):
        kept = select_layers(n, keep_count=k)
        assert len(kept) == k and kept[-1] == n - 1 and kept == sorted(set(kept))
        if n % k == 0:
            assert set(np.diff(kept)) <= {n // k}
    assert select_layers(12, keep_count=6) == list(range(1, 12, 2))  # every other layer
    assert select_layers(4, drop=[1, 3]) == [0, 2]
    with pytest.raises(PruneError, match="unknown layer index 4"):
        select_layers(4, drop=[4])
    with pytest.raises(PruneError, match="cannot drop all"):
        select_layers(2, drop=[0, 1])
    with pytest.raises(PruneError, match="keep_layers"):
        select_layers(2, keep_count=3)


def test_dropping_a_layer_shrinks_the_model_and_renumbers(source_dir):
    model = load_classifier(source_dir)
    layer0 = sum(p.numel() for p in model.bert.encoder.layer[0].parameters())
    last = model.bert.encoder.layer[1]
    before = n_params(model)
    retain_layers(model, [1])
    assert model.config.num_hidden_layers == 1 and len(model.bert.encoder.layer) == 1
    assert model.bert.encoder.layer[0] is last
    assert before - n_params(model) == layer0
    assert pruning_layout(model) == {"layers": [1], "heads": {"0": list(range(HEADS))}, "intermediate": {"0": FFN}}
    assert logits(model, batch_of(source_dir)).shape == (len(TEXTS), 2)


def test_pruned_folder_is_self_describing_and_reloads_with_identical_logits(pruned, trained_tiny_dir, toy_data_dir):
    out = pruned.output_dir
    for name in ("config.json", "model.safetensors", "tokenizer.json", "training_args.json", "metrics.json"):
        assert (out / name).is_file(), name
    assert (out / "training_args.json").read_text() == (trained_tiny_dir / "training_args.json").read_text()
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert config[PRUNING_KEY] == pruned.record["layout"] == pruning_layout(pruned.model)
    assert sum(len(h) for h in config[PRUNING_KEY]["heads"].values()) == LAYERS * HEADS // 2
    assert set(config[PRUNING_KEY]["intermediate"].values()) == {FFN - FFN // 4}

    reloaded = load_classifier(out)
    assert not reloaded.training
    batch = batch_of(out)
    torch.testing.assert_close(logits(reloaded, batch), logits(pruned.model, batch), atol=0, rtol=0)
    c = pruned.record
    assert c["parameters"]["after"] == n_params(reloaded) < c["parameters"]["before"]
    assert c["heads"] == {"before": LAYERS * HEADS, "after": LAYERS * HEADS // 2}
    assert c["ffn_neurons"] == {"before": LAYERS * FFN, "after": LAYERS * (FFN - FFN // 4)}
    assert c["weights_bytes"]["after"] < c["weights_bytes"]["before"]
    assert np.asarray(c["head_importance"]).shape == (LAYERS, HEADS)
    assert not c["stock_loadable"]

    # The reported accuracies are what Predictor gives on the held-out validation reviews.
    validation = load_data(DataConfig(source=str(toy_data_dir), validation_size=40), splits=("validation",))
    reviews = stratified_subset(validation.validation, 40, 42)
    for folder, stage in ((trained_tiny_dir, "before"), (out, "after")):
        probs = Predictor(folder).predict_proba(reviews["text"].tolist())
        accuracy = float(np.mean(probs.argmax(1) == reviews["label"].to_numpy()))
        assert c["validation"][stage]["accuracy"] == pytest.approx(accuracy)
    assert c["validation"]["before"]["accuracy"] > 0.8  # the fixture did learn
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["validation_accuracy"] == c["validation"]["after"]["accuracy"]
    assert metrics["validation_accuracy_before"] == c["validation"]["before"]["accuracy"]
    assert metrics["num_parameters"] == c["parameters"]["after"]
    assert json.loads((out / COMPRESSION_FILE).read_text())["method"] == "prune"

    [prediction] = Predictor(out)(["a wonderful film"])
    assert prediction["label"] in ("negative", "positive") and 0.5 <= prediction["score"] <= 1
    card = (out / "README.md").read_text()
    assert "cannot load this folder" in card and f"{c['parameters']['after']:,}" in card


def test_stock_from_pretrained_cannot_rebuild_a_non_uniform_folder(pruned):
    from transformers import AutoModelForSequenceClassification

    with pytest.raises(RuntimeError, match="mismatched"):
        AutoModelForSequenceClassification.from_pretrained(pruned.output_dir)


def test_pruning_a_pruned_model_composes(pruned, toy_data_dir, tmp_path):
    config = PruneConfig(
        model=str(pruned.output_dir),
        output_dir=str(tmp_path / "again"),
        heads_fraction=0.5,
        data=DataConfig(str(toy_data_dir), validation_size=40),
        importance_samples=32,
        validation_samples=0,
    )
    again = prune(config)
    first, second = pruned.record["layout"], again.record["layout"]
    assert again.record["heads"] == {"before": LAYERS * HEADS // 2, "after": LAYERS * HEADS // 4}
    for li, heads in second["heads"].items():
        assert heads and set(heads) <= set(first["heads"][li])  # original head ids carry through
    assert second["intermediate"] == first["intermediate"]
    importance = np.asarray(again.record["head_importance"], dtype=float)
    assert np.isnan(importance).sum() == LAYERS * HEADS // 2  # heads already gone have no importance
    batch = batch_of(again.output_dir)
    torch.testing.assert_close(logits(load_classifier(again.output_dir), batch), logits(again.model, batch))


def test_magnitude_sparsity_is_reached_and_baked_into_the_saved_weights(source_dir, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    result = prune(
        PruneConfig(model=str(source_dir), output_dir=str(tmp_path / "sparse"), sparsity=0.5, validation_samples=0)
    )
    achieved = result.record["sparsity"]["encoder_linear_after"]
    assert abs(achieved - 0.5) < 0.01 and result.record["sparsity"]["encoder_linear_before"] == 0
    saved = load_file(tmp_path / "sparse" / "model.safetensors")
    assert not [k for k in saved if k.endswith(("_orig", "_mask"))]
    linear_weights = [k for k in saved if ".encoder." in k and k.endswith(".weight") and "LayerNorm" not in k]
    assert len(linear_weights) == LAYERS * 6  # query, key, value, attention output, intermediate, output
    for key in linear_weights:
        assert abs(float((saved[key] == 0).float().mean()) - 0.5) < 0.01, key
    assert float((saved["classifier.weight"] == 0).float().mean()) == 0  # only the encoder is sparsified
    reloaded = load_classifier(tmp_path / "sparse")
    assert encoder_sparsity(reloaded) == pytest.approx(achieved)
    # Shapes are untouched, so stock from_pretrained (and pipeline) load it, as the card says.
    assert result.record["stock_loadable"] and "pipeline` and stock" in (tmp_path / "sparse/README.md").read_text()
    stock = AutoModelForSequenceClassification.from_pretrained(tmp_path / "sparse")
    batch = batch_of(source_dir)
    torch.testing.assert_close(logits(stock, batch), logits(reloaded, batch))
    assert "no speed" in (tmp_path / "sparse/README.md").read_text().lower()


def test_recovery_fine_tuning_keeps_pruned_shapes_and_zeros(source_dir, toy_data_dir, tmp_path):
    settings = dict(
        model=str(source_dir),
        heads_fraction=0.5,
        sparsity=0.3,
        data=DataConfig(str(toy_data_dir), validation_size=40, train_samples=64),
        importance_samples=32,
        validation_samples=40,
        recovery_lr=1e-3,
    )
    plain = prune(PruneConfig(output_dir=str(tmp_path / "plain"), **settings))
    recovered = prune(PruneConfig(output_dir=str(tmp_path / "recovered"), recovery_epochs=1, **settings))
    c = recovered.record
    assert c["layout"] == plain.record["layout"]  # same importance, same heads removed
    assert c["recovery"]["steps"] == 4 and c["recovery"]["train_reviews"] == 64
    assert "pruned" in c["validation"] and "after" in c["validation"]
    assert c["validation"]["pruned"]["accuracy"] == pytest.approx(plain.record["validation"]["after"]["accuracy"])

    out = tmp_path / "recovered"
    assert json.loads((out / "training_args.json").read_text())["training"]["max_length"] == MAX_LENGTH
    reloaded = load_classifier(out)
    assert pruning_layout(reloaded) == c["layout"] and n_params(reloaded) == plain.record["parameters"]["after"]
    trained_state, plain_state = reloaded.state_dict(), load_classifier(tmp_path / "plain").state_dict()
    changed = [k for k in plain_state if not torch.equal(plain_state[k], trained_state[k])]
    assert changed  # recovery did train
    for key, weight in plain_state.items():
        if ".encoder." in key and key.endswith("weight") and "LayerNorm" not in key:
            assert torch.equal(trained_state[key][weight == 0], weight[weight == 0])  # zeros held at zero
    assert c["sparsity"]["encoder_linear_after"] == pytest.approx(plain.record["sparsity"]["encoder_linear_after"])
    assert json.loads((out / "metrics.json").read_text())["validation_accuracy_pruned"] == pytest.approx(
        c["validation"]["pruned"]["accuracy"]
    )


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run ``bertsent prune`` through the real CLI entry point."""
    from bertsent.cli import main

    rc = main(["prune", *argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err.strip().removeprefix("bertsent prune: error: ")


def test_cli_drops_a_layer_and_sparsifies(source_dir, toy_data_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["--model", str(source_dir), "--output-dir", str(out), "--drop-layers", "0", "--sparsity", "0.25"]
    argv += ["--data", str(toy_data_dir), "--validation-size", "40", "--eval-samples", "20"]
    rc, printed, error = run_cli(argv, capsys)
    assert (rc, error) == (0, "")
    assert f"pruned model saved to {out}" in printed and "validation accuracy" in printed
    c = json.loads((out / COMPRESSION_FILE).read_text())
    assert c["layers"] == {"before": LAYERS, "after": 1} and c["resolved"]["dropped_layers"] == [0]
    assert c["arguments"]["sparsity"] == 0.25 and c["validation"]["reviews"] == 20
    assert abs(c["sparsity"]["encoder_linear_after"] - 0.25) < 0.01
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 1
    assert f"{c['parameters']['before']:,} -> {c['parameters']['after']:,}" in printed


@pytest.mark.parametrize(
    ("extra", "message", "kind"),
    [
        (["--heads-fraction", "1.0"], "heads_fraction must be a fraction in [0, 1)", ValueError),
        (["--sparsity", "-0.1"], "sparsity must be a fraction in [0, 1)", ValueError),
        (["--ffn-fraction", "1.5"], "ffn_fraction must be a fraction in [0, 1)", ValueError),
        (["--drop-layers", "5"], "unknown layer index 5", PruneError),
        (["--drop-layers", "0,1"], "cannot drop all 2 layers", PruneError),
        (["--drop-layers", "one"], "drop_layers: expected comma-separated", ValueError),
        (["--drop-layers", "0", "--keep-layers", "1"], "exclude each other", ValueError),
        (["--keep-layers", "3"], "keep_layers", PruneError),
        (["--heads-fraction", "0.9"], "at most 0.750", PruneError),
        ([], "nothing to prune", ValueError),
        (["--sparsity", "0.5", "--data", "/no/such/data"], "/no/such/data", BertsentError),
    ],
)
def test_bad_input_is_one_clear_line(extra, message, kind, source_dir, toy_data_dir, tmp_path, capsys):
    argv = ["--model", str(source_dir), "--output-dir", str(tmp_path / "out"), "--data", str(toy_data_dir), *extra]
    rc, _, error = run_cli(argv, capsys)
    assert rc == 2 and message in error and "\n" not in error
    if kind is not ValueError:
        with pytest.raises(kind):
            prune_from_argv(argv)
    assert not (tmp_path / "out" / "model.safetensors").exists()  # nothing half-written


def prune_from_argv(argv: list[str]) -> None:
    from bertsent.cli import build_parser, prune_config

    prune(prune_config(build_parser().parse_args(["prune", *argv])))


def test_missing_model_folder_and_bad_output_folder(source_dir, tmp_path, capsys):
    rc, _, error = run_cli(
        ["--model", str(tmp_path / "nope"), "--output-dir", str(tmp_path / "o"), "--sparsity", "0.5"], capsys
    )
    assert rc == 2 and error == f"{tmp_path / 'nope'}: no such model folder"
    with pytest.raises(PruneError, match="is the source model folder"):
        prune(PruneConfig(model=str(source_dir), output_dir=str(source_dir), sparsity=0.5, validation_samples=0))
    with pytest.raises(ValueError, match="data: ranking heads"):
        PruneConfig(model=str(source_dir), output_dir=str(tmp_path), heads_fraction=0.5)


def test_broken_pruned_folders_give_model_errors(pruned, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(pruned.output_dir, folder)
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text())

    assert len(config[PRUNING_KEY]["heads"]["0"]) < HEADS
    config[PRUNING_KEY]["heads"]["0"] = list(range(HEADS))  # more heads than the weights hold
    config_file.write_text(json.dumps(config))
    with pytest.raises(ModelError, match="do not match the pruned layout"):
        load_classifier(folder)

    config[PRUNING_KEY]["intermediate"] = {"7": 3}
    config_file.write_text(json.dumps(config))
    with pytest.raises(ModelError, match="names layer '7' of a 2-layer model"):
        load_classifier(folder)

    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="no model.safetensors"):
        load_classifier(folder)


def test_recovery_can_learn_the_teachers_logits_too(source_dir, toy_data_dir, tmp_path):
    settings = dict(
        model=str(source_dir),
        heads_fraction=0.5,
        data=DataConfig(str(toy_data_dir), validation_size=40, train_samples=64),
        importance_samples=32,
        validation_samples=40,
        recovery_lr=1e-3,
        recovery_epochs=1,
    )
    labels_only = prune(PruneConfig(output_dir=str(tmp_path / "labels"), **settings))
    taught = prune(PruneConfig(output_dir=str(tmp_path / "taught"), recovery_teacher=str(source_dir), **settings))
    assert taught.record["recovery"]["teacher"] == str(source_dir)
    assert "teacher" not in labels_only.record["recovery"]
    # The teacher's logits on the 64 recovery reviews, computed once and kept next to the run.
    assert np.load(tmp_path / "taught" / TEACHER_LOGITS).shape == (64, 2)
    taught_state = load_classifier(tmp_path / "taught").state_dict()
    labels_state = load_classifier(tmp_path / "labels").state_dict()
    assert any(not torch.equal(labels_state[k], taught_state[k]) for k in labels_state)  # another loss


def test_a_recovery_teacher_with_another_vocabulary_is_refused(source_dir, toy_data_dir, tmp_path):
    other = load_classifier(source_dir)
    other.resize_token_embeddings(other.config.vocab_size + 8)
    other.save_pretrained(tmp_path / "other")
    config = PruneConfig(
        model=str(source_dir),
        output_dir=str(tmp_path / "out"),
        heads_fraction=0.5,
        data=DataConfig(str(toy_data_dir), validation_size=40, train_samples=64),
        importance_samples=32,
        validation_samples=0,
        recovery_epochs=1,
        recovery_teacher=str(tmp_path / "other"),
    )
    with pytest.raises(ModelError, match="vocabulary"):
        prune(config)
