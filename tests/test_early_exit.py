"""Early exit: the exit rules, full depth = the model, the batching rule, the stage's folder, the consumers."""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil

import numpy as np
import pytest
import torch

from bertsent.compression.early_exit import CURVE_PLOT, early_exit
from bertsent.config import DataConfig, EarlyExitConfig, InferenceSettings
from bertsent.errors import EarlyExitError, ModelError, SettingsError
from bertsent.folder import COMPRESSION_FILE, EARLY_EXIT_FILE, EARLY_EXIT_KEY
from bertsent.inference import EarlyExitBackend, TorchBackend
from bertsent.modeling.cls_only import cls_only_last_layer
from bertsent.modeling.early_exit import EarlyExitModel, ExitHead, ExitRule
from bertsent.modeling.loading import load_classifier
from bertsent.predict import Predictor

# --- the model: rules, full depth, batching ----------------------------------------------------------


@pytest.fixture(scope="module", params=["cls", "mean"])
def random_exit_model(request):
    """A random 4-layer BERT with perturbed heads (so layers disagree), its plain copy, and a padded batch;
    its head reads [CLS], or (``mean``) the mean-pooling layer added on top (``modeling.pooling``), which
    counts as part of the head: still 4 layers, 3 exit heads, reading the mean of each layer's tokens."""
    from transformers import BertConfig, BertForSequenceClassification

    from bertsent.modeling.pooling import add_mean_pooling

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64
    )
    plain = BertForSequenceClassification(config).eval()
    if request.param == "mean":
        add_mean_pooling(plain)
        plain.eval()  # the added layer is a new module, in training mode
    model = copy.deepcopy(plain)
    cls_only_last_layer(model)  # as Predictor runs it
    heads = torch.nn.ModuleList([ExitHead.like(model) for _ in range(3)])
    lengths = [12, 11, 9, 9, 7, 5, 4, 3]
    ids = torch.randint(5, 100, (len(lengths), max(lengths)))
    mask = (torch.arange(max(lengths))[None] < torch.tensor(lengths)[:, None]).long()
    exit_model = EarlyExitModel(model, heads).eval()
    assert exit_model.num_layers == 4
    with torch.no_grad():
        states = exit_model.cls_states(ids * mask, mask)
        for i, head in enumerate(heads):
            head.standardise(states[:, i])
            for p in head.parameters():
                p += torch.randn_like(p)  # large random heads: rows and layers disagree
    return exit_model, plain, ids * mask, mask


def entropies(exit_model: EarlyExitModel, ids, mask) -> torch.Tensor:
    """Normalised entropy of every layer's head, ``(rows, layers)``."""
    with torch.no_grad():
        probs = torch.softmax(exit_model.layer_logits(exit_model.cls_states(ids, mask)), -1)
    return torch.special.entr(probs).sum(-1) / math.log(probs.shape[-1])


def split_threshold(values: torch.Tensor) -> float:
    """A threshold that sends about half the rows each way, far from every value (no row on the edge, where
    float rounding between a batch and a single row could flip the decision): the middle of the widest gap
    among the middle half of the sorted values."""
    ordered = values.sort().values
    low, high = len(ordered) // 4, max(3 * len(ordered) // 4, len(ordered) // 4 + 1)
    gaps = ordered[low + 1 : high + 1] - ordered[low:high]
    i = low + int(gaps.argmax())
    return float(ordered[i] + ordered[i + 1]) / 2


def test_threshold_zero_is_the_full_model(random_exit_model):
    exit_model, plain, ids, mask = random_exit_model
    with torch.no_grad():
        expected = plain(input_ids=ids, attention_mask=mask).logits
        for rule in (ExitRule("entropy", 0), ExitRule("patience", 0)):
            out = exit_model(ids, mask, rule=rule)
            assert out.layers.tolist() == [4] * len(ids)
            torch.testing.assert_close(out.logits, expected, atol=1e-6, rtol=0)


def test_a_permissive_threshold_uses_fewer_layers(random_exit_model):
    exit_model, plain, ids, mask = random_exit_model
    with torch.no_grad():
        first = exit_model(ids, mask, rule=ExitRule("entropy", 1.0))
        assert first.layers.tolist() == [1] * len(ids)
        # The first head read layer 0's [CLS], or for the mean-pooled model its masked token mean.
        hidden = plain(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[1]
        weights = mask[..., None].float()
        feature = hidden[:, 0] if exit_model.pooling is None else (hidden * weights).sum(1) / weights.sum(1)
        torch.testing.assert_close(first.logits, exit_model.heads[0](feature), atol=1e-5, rtol=0)
        patient = exit_model(ids, mask, rule=ExitRule("patience", 1)).layers
    assert patient.float().mean() < 4 and patient.min() >= 2  # patience 1: two layers in a row must agree


def test_patience_counts_layers_in_a_row():
    rule = ExitRule("patience", 2)
    state = rule.start(2, torch.device("cpu"))
    # Labels per layer of two rows: row 0 says 0, 0, 1, 1 (never 3 in a row); row 1 says 1, 0, 0, 0.
    labels = [[0, 1], [0, 0], [1, 0], [1, 0]]
    exits = []
    for step in labels:
        logits = torch.nn.functional.one_hot(torch.tensor(step), 2).float()
        done, state = rule.step(logits, state)
        exits.append(done.tolist())
    assert exits == [[False, False], [False, False], [False, False], [False, True]]


@pytest.mark.parametrize("criterion", ["entropy", "patience"])
def test_batched_equals_one_at_a_time(random_exit_model, criterion):
    exit_model, _, ids, mask = random_exit_model
    # A threshold that splits the batch: some rows leave early, others run on (the batch shrinks).
    threshold = split_threshold(entropies(exit_model, ids, mask)[:, 0]) if criterion == "entropy" else 1
    rule = ExitRule(criterion, threshold)
    with torch.no_grad():
        batched = exit_model(ids, mask, rule=rule)
        alone = [exit_model(ids[i : i + 1, : int(mask[i].sum())], rule=rule) for i in range(len(ids))]
    assert batched.layers.tolist() == [int(o.layers) for o in alone]
    assert len(set(batched.layers.tolist())) > 1, "the test needs rows that exit at different layers"
    torch.testing.assert_close(batched.logits, torch.cat([o.logits for o in alone]), atol=1e-5, rtol=0)


def test_rules_refuse_bad_thresholds():
    with pytest.raises(SettingsError, match="integer"):
        ExitRule("patience", 1.5)
    with pytest.raises(SettingsError, match=">= 0"):
        ExitRule("entropy", -0.1)
    with pytest.raises(SettingsError, match="criterion"):
        ExitRule("confidence", 0.1)
    with pytest.raises(SettingsError, match="exit_threshold"):
        InferenceSettings(exit_threshold=-1)


# --- the stage and its folder ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exit_dir(trained_tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("early_exit") / "out"
    config = EarlyExitConfig(model=str(trained_tiny_dir), output_dir=str(out), validation_samples=40, head_epochs=5)
    return early_exit(config).output_dir


def test_the_folder_records_heads_rule_and_curve(exit_dir, trained_tiny_dir):
    config = json.loads((exit_dir / "config.json").read_text())
    record = json.loads((exit_dir / COMPRESSION_FILE).read_text())
    rule = config[EARLY_EXIT_KEY]
    assert rule["criterion"] == "entropy" and rule["heads"] == EARLY_EXIT_FILE and rule["layers"] == 2
    assert rule["threshold"] == record["rule"]["threshold"] == record["validation"]["chosen"]["threshold"]
    assert (exit_dir / EARLY_EXIT_FILE).is_file() and (exit_dir / CURVE_PLOT).stat().st_size > 0
    # The model's weights are the source's, byte for byte: full depth is the source model.
    assert (exit_dir / "model.safetensors").read_bytes() == (trained_tiny_dir / "model.safetensors").read_bytes()
    validation = record["validation"]
    curve = {p["threshold"]: p for p in validation["curve"]}
    assert curve[0.0]["mean_layers"] == 2 and curve[0.0]["accuracy"] == validation["full_depth"]["accuracy"]
    for point in validation["curve"]:
        assert 1 <= point["mean_layers"] <= 2 and point["reviews_per_second"] > 0
        assert sum(point["exit_share_by_layer"]) == pytest.approx(1)
    chosen = validation["chosen"]
    assert chosen["accuracy_drop_points"] <= 0.5 + 1e-9
    within = [p for p in validation["curve"] if p["accuracy_drop_points"] <= 0.5 + 1e-9]
    assert chosen["mean_layers"] == min(p["mean_layers"] for p in within)
    assert len(validation["accuracy_by_layer"]) == 2 and validation["reviews"] == 40
    assert record["training"]["train_reviews"] > 0 and len(record["training"]["loss_by_epoch"]) == 5


def test_predictor_runs_early_exit_and_reports_layers(exit_dir, trained_tiny_dir, toy_texts):
    predictor = Predictor(exit_dir)
    assert isinstance(predictor.backend, EarlyExitBackend)
    recorded = json.loads((exit_dir / "config.json").read_text())[EARLY_EXIT_KEY]
    assert predictor.backend.rule == ExitRule("entropy", recorded["threshold"])
    assert predictor.backend.mean_layers is None
    predictor(toy_texts)
    assert 1 <= predictor.backend.mean_layers <= 2 and predictor.backend.exit_counts.sum() == len(toy_texts)
    # Threshold 0: the source model's probabilities; threshold 1: the first layer only.
    full = Predictor(exit_dir, exit_threshold=0)
    np.testing.assert_allclose(
        full.predict_proba(toy_texts), Predictor(trained_tiny_dir).predict_proba(toy_texts), atol=1e-6
    )
    assert full.backend.mean_layers == 2
    first = Predictor(exit_dir, exit_threshold=1.0)
    first.predict_proba(toy_texts)
    assert first.backend.mean_layers == 1


def test_predictor_runs_early_exit_under_bf16(exit_dir, toy_texts):
    """bf16 autocast (what ``auto`` takes on a CPU with AMX; forced here, so any CPU runs it): rows leaving
    at the last layer (bf16 logits) and at an exit head (fp32 logits) land in one fp32 output."""
    threshold = split_threshold(entropies_of_layer_one(Predictor(exit_dir, exit_threshold=0), toy_texts))
    fp32 = Predictor(exit_dir, exit_threshold=threshold, precision="fp32")
    bf16 = Predictor(exit_dir, exit_threshold=threshold, precision="bf16")
    assert bf16.backend.precision == "bf16"
    probs = bf16.predict_proba(toy_texts)
    assert probs.dtype == np.float32 and 0 < bf16.backend.exit_counts[0] < len(toy_texts)
    close = np.abs(probs - fp32.predict_proba(toy_texts)).max(axis=1) < 0.05
    assert close.mean() >= 0.9  # the rest left at another layer: bf16 rounding can flip a threshold decision


def entropies_of_layer_one(predictor: Predictor, texts: list[str]) -> torch.Tensor:
    """Layer 1's normalised entropy for each text, one text at a time (no padding)."""
    ids = [torch.as_tensor(row)[None] for row in predictor.encode(texts).ids]
    return torch.cat([entropies(predictor.backend.exit_model, row, torch.ones_like(row))[:, 0] for row in ids])


def test_predictor_batched_equals_one_at_a_time(exit_dir, toy_texts):
    layer_one = entropies_of_layer_one(Predictor(exit_dir, exit_threshold=0), toy_texts)
    threshold = split_threshold(layer_one)  # about half the reviews leave after layer 1, the others run on
    # fp32: under bf16 (``auto`` on a CPU with AMX) a batch's rounding differs from a single row's.
    batched, alone = (Predictor(exit_dir, exit_threshold=threshold, precision="fp32") for _ in range(2))
    np.testing.assert_allclose(
        batched.predict_proba(toy_texts), np.concatenate([alone.predict_proba([t]) for t in toy_texts]), atol=1e-5
    )
    assert 0 < batched.backend.exit_counts[0] < len(toy_texts)
    np.testing.assert_array_equal(batched.backend.exit_counts, alone.backend.exit_counts)


def test_evaluate_on_the_folder_reports_mean_layers(exit_dir, toy_data_dir, tmp_path):
    from bertsent.evaluate import evaluate

    metrics = evaluate(exit_dir, DataConfig(str(toy_data_dir)), output_dir=tmp_path / "eval")
    assert metrics["n"] == 80 and 1 <= metrics["mean_layers"] <= 2
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["mean_layers"] == metrics["mean_layers"]


def test_serve_runs_the_folder_with_early_exit(exit_dir, toy_texts):
    from fastapi.testclient import TestClient

    from bertsent.config import ServeSettings
    from bertsent.serve import create_app

    alone = Predictor(exit_dir)
    with TestClient(create_app(exit_dir, ServeSettings(max_batch_size=8, max_inputs=8))) as client:
        assert client.get("/info").json()["backend"] == "pytorch early-exit"
        answer = client.post("/predict", json={"inputs": toy_texts[:8], "parameters": {"top_k": None}}).json()
    for text, scores in zip(toy_texts[:8], answer, strict=True):
        probs = alone.predict_proba([text])[0]
        assert {d["label"]: d["score"] for d in scores} == pytest.approx(
            {alone.id2label[i]: float(p) for i, p in enumerate(probs)}, abs=1e-5
        )


def test_pipeline_loads_the_full_depth_model(exit_dir, trained_tiny_dir, toy_texts):
    from transformers import pipeline

    def scores(folder):
        classify = pipeline("text-classification", model=str(folder), device="cpu", top_k=None)
        return [sorted((d["label"], d["score"]) for d in row) for row in classify(toy_texts[:8], truncation=True)]

    for ours, source in zip(scores(exit_dir), scores(trained_tiny_dir), strict=True):
        assert [label for label, _ in ours] == [label for label, _ in source]
        np.testing.assert_allclose([s for _, s in ours], [s for _, s in source], atol=1e-6)


def test_derived_folders_do_not_claim_the_heads(exit_dir, tmp_path, caplog):
    from bertsent.compression.export import export_onnx
    from bertsent.config import ExportConfig

    model = load_classifier(exit_dir)
    assert not hasattr(model.config, EARLY_EXIT_KEY)
    model.save_pretrained(tmp_path / "saved")
    assert EARLY_EXIT_KEY not in json.loads((tmp_path / "saved" / "config.json").read_text())
    from bertsent.compression.export import export

    with caplog.at_level(logging.WARNING, logger="bertsent.compression.export"):
        onnx_dir = export(ExportConfig(model=str(exit_dir), output_dir=str(tmp_path / "onnx"))).output_dir
    assert "full-depth model" in caplog.text
    assert EARLY_EXIT_KEY not in json.loads((onnx_dir / "config.json").read_text())
    assert not (onnx_dir / EARLY_EXIT_FILE).exists() and export_onnx  # the graph is the full-depth model


def test_a_record_without_its_heads_runs_full_depth(exit_dir, tmp_path, caplog):
    broken = tmp_path / "no-heads"
    shutil.copytree(exit_dir, broken)
    (broken / EARLY_EXIT_FILE).unlink()
    with caplog.at_level(logging.WARNING, logger="bertsent.modeling"):
        predictor = Predictor(broken)
    assert type(predictor.backend) is TorchBackend and "full-depth" in caplog.text
    config = json.loads((broken / "config.json").read_text())
    config[EARLY_EXIT_KEY]["threshold"] = "high"
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=EARLY_EXIT_KEY):
        Predictor(broken)


def test_exit_threshold_on_a_plain_folder_is_ignored_with_a_warning(trained_tiny_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="bertsent.predict"):
        predictor = Predictor(trained_tiny_dir, exit_threshold=0.2)
    assert type(predictor.backend) is TorchBackend and "early-exit folders" in caplog.text


def test_patience_stage_and_a_given_threshold(trained_tiny_dir, tmp_path):
    out = tmp_path / "patience"
    config = EarlyExitConfig(
        model=str(trained_tiny_dir), output_dir=str(out), criterion="patience", exit_threshold=1, validation_samples=20
    )
    record = early_exit(config).record
    assert record["rule"] == {"criterion": "patience", "threshold": 1.0}
    assert record["validation"]["chosen_by"] == "--exit-threshold"
    # Two layers: patience 1 needs both to agree, so every review runs both.
    assert [p["threshold"] for p in record["validation"]["curve"]] == [0.0, 1.0]
    assert all(p["mean_layers"] == 2 for p in record["validation"]["curve"])


def test_the_stage_needs_labelled_reviews(tiny_model_dir, tmp_path):
    with pytest.raises(EarlyExitError, match="pass --data"):
        early_exit(EarlyExitConfig(model=str(tiny_model_dir), output_dir=str(tmp_path / "out")))


# --- the command ------------------------------------------------------------------------------------


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from bertsent.cli import main

    rc = main(["early-exit", *argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err.strip().removeprefix("bertsent early-exit: error: ")


def test_cli_writes_the_folder(trained_tiny_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["--model", str(trained_tiny_dir), "--output-dir", str(out), "--eval-samples", "20", "--head-epochs", "2"]
    rc, printed, error = run_cli([*argv, "--thresholds", "0", "0.3", "1"], capsys)
    assert (rc, error) == (0, "")
    assert f"early-exit model written to {out}" in printed and "<- chosen" in printed
    curve = json.loads((out / COMPRESSION_FILE).read_text())["validation"]["curve"]
    assert [p["threshold"] for p in curve] == [0.0, 0.3, 1.0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max-drop", "-1"], "max_drop must be a number of accuracy points >= 0"),
        (["--criterion", "patience", "--exit-threshold", "0.5"], "a patience threshold is a number of layers"),
        (["--exit-threshold", "-0.2"], "exit thresholds must be numbers >= 0"),
        (["--eval-samples", "0"], "validation_samples must be an integer >= 1"),
        (["--data", "/no/such/data"], "/no/such/data"),
    ],
)
def test_bad_input_is_one_clear_line(extra, message, trained_tiny_dir, tmp_path, capsys):
    rc, _, error = run_cli(["--model", str(trained_tiny_dir), "--output-dir", str(tmp_path / "out"), *extra], capsys)
    assert rc == 2 and message in error and "\n" not in error
    assert not (tmp_path / "out").exists()


def test_cli_refuses_missing_and_same_folders(trained_tiny_dir, tmp_path, capsys):
    rc, _, error = run_cli(["--model", str(tmp_path / "nope"), "--output-dir", str(tmp_path / "o")], capsys)
    assert rc == 2 and error == f"{tmp_path / 'nope'}: no such model folder"
    rc, _, error = run_cli(["--model", str(trained_tiny_dir), "--output-dir", str(trained_tiny_dir)], capsys)
    assert rc == 2 and "is the source folder" in error


def test_calibrating_an_early_exit_folder_is_refused_in_one_line(exit_dir, capsys):
    from bertsent.cli import main

    # One temperature folded into the last classifier would leave the exit heads' logits unscaled.
    before = (exit_dir / "config.json").read_text()
    assert main(["calibrate", "--model", str(exit_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "early-exit folder" in err and "calibrate its source" in err
    assert (exit_dir / "config.json").read_text() == before
