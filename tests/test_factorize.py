"""Low-rank factorization (SVD, weighting, ranks, reload, exports, CLI) on the tiny BERT and toy reviews (seconds)."""

import copy
import itertools
import json

import numpy as np
import pytest
import torch
from torch import nn

from bertsent.cli import main
from bertsent.compression.factorize import activation_scales, factorize, factorize_layers, fisher_scales
from bertsent.config import FactorizeConfig
from bertsent.encoding import collate, encode
from bertsent.errors import ModelError, SettingsError
from bertsent.folder import COMPRESSION_FILE
from bertsent.modeling.factorized import (
    FACTORIZATION_KEY,
    FactorizedLinear,
    factorization_ranks,
    factorize_module,
    low_rank,
    rank_for_energy,
    target_linears,
    weighted_svd,
)
from bertsent.modeling.loading import load_classifier, load_tokenizer
from bertsent.predict import Predictor

MAX_LENGTH = 32
TEXTS = ["a great and moving film", "boring, dull and the worst plot", "i loved it", "the acting was poor"]


def batch_of(model_dir, texts=TEXTS) -> dict[str, torch.Tensor]:
    encoded = encode(load_tokenizer(model_dir), texts, MAX_LENGTH)
    return {k: torch.from_numpy(v) for k, v in collate(encoded, np.arange(len(texts)), pad_id=0).items()}


@torch.no_grad()
def logits(model, batch) -> torch.Tensor:
    return model.eval()(**batch).logits


@pytest.fixture(scope="module")
def factorized(trained_tiny_dir, tmp_path_factory):
    """Rank 4 everywhere, activation-weighted, one recovery epoch; data: what the source recorded."""
    config = FactorizeConfig(
        model=str(trained_tiny_dir),
        output_dir=str(tmp_path_factory.mktemp("factorized") / "out"),
        rank=4,
        weighting="activation",
        calibration_samples=32,
        recovery_samples=64,
        validation_samples=40,
    )
    return factorize(config)


# --- the SVD and the ranks ---------------------------------------------------------------------------


@pytest.mark.parametrize("weighting", ["none", "activation", "fisher"])
def test_full_rank_reproduces_the_logits(trained_tiny_dir, weighting):
    model = load_classifier(trained_tiny_dir).eval()
    batch = batch_of(trained_tiny_dir)
    expected = logits(model, batch)
    linears = target_linears(model, ["ffn", "attention"])
    scales = {path: torch.rand(linear.in_features if weighting == "activation" else linear.out_features) + 0.1
              for path, linear in linears.items()}  # fmt: skip
    for path, linear in linears.items():
        row = scales[path] if weighting == "fisher" else None
        col = scales[path] if weighting == "activation" else None
        spectrum = weighted_svd(linear.weight, row, col)
        factorize_module(model, path, spectrum, len(spectrum.s))  # full rank: no saving, exact
    assert all(isinstance(model.get_submodule(path), FactorizedLinear) for path in linears)
    torch.testing.assert_close(logits(model, batch), expected, atol=1e-4, rtol=0)


def test_energy_picks_ranks_monotonically(trained_tiny_dir):
    s = torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5, 0.1])
    energies = [0.01, 0.3, 0.5, 0.7, 0.9, 0.95, 0.99, 0.999, 1.0]
    ranks = [rank_for_energy(s, e) for e in energies]
    assert ranks == sorted(ranks) and ranks[0] == 1 and ranks[-1] == len(s)
    squared = s.square()
    for energy, rank in zip(energies, ranks, strict=True):
        kept = squared[:rank].sum() / squared.sum()
        assert kept >= energy - 1e-12 and (rank == 1 or squared[: rank - 1].sum() / squared.sum() < energy)
    # Per layer of a real model, too: a larger energy never gives a smaller rank.
    source = load_classifier(trained_tiny_dir).eval()
    per_energy = []
    for energy in (0.3, 0.6, 0.8, 0.95):
        model = copy.deepcopy(source)
        decisions = factorize_layers(model, target_linears(model, ["ffn", "attention"]), energy=energy)
        per_energy.append([d["rank"] for d in decisions])
        assert all(d["energy_kept"] >= energy - 1e-9 for d in decisions)
    for lower, higher in itertools.pairwise(per_energy):
        assert all(a <= b for a, b in zip(lower, higher, strict=True))
    assert per_energy[0] != per_energy[-1]


def test_activation_weighting_beats_plain_svd_on_skewed_inputs():
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    # Input features whose scales span 3 orders of magnitude, as hidden states' outlier dimensions do.
    scales = torch.logspace(-1.5, 1.5, 64)
    inputs = torch.randn(4096, 64) * scales
    rms = inputs.square().mean(0).sqrt()

    def output_error(col_scale) -> float:
        module = low_rank(linear, weighted_svd(linear.weight, col_scale=col_scale), rank=8)
        with torch.no_grad():
            return float((module(inputs) - linear(inputs)).square().mean())

    plain, weighted = output_error(None), output_error(rms)
    assert weighted < 0.5 * plain, (weighted, plain)


def test_activation_scales_are_the_rms_over_real_tokens(trained_tiny_dir):
    model = load_classifier(trained_tiny_dir).eval()
    tokenizer = load_tokenizer(trained_tiny_dir)
    path = "bert.encoder.layer.0.intermediate.dense"
    encoded = encode(tokenizer, TEXTS, MAX_LENGTH)
    together = activation_scales(model, encoded, [path], batch_size=4)[path]  # padded to the longest
    seen = []
    hook = model.get_submodule(path).register_forward_pre_hook(lambda m, args: seen.append(args[0].reshape(-1, 32)))
    for text in TEXTS:  # one at a time: no padding at all
        logits(model, batch_of(trained_tiny_dir, [text]))
    hook.remove()
    expected = torch.cat(seen).double().square().mean(0).sqrt()
    torch.testing.assert_close(together, expected, atol=1e-6, rtol=1e-6)


def test_fisher_scales_weight_rows_by_their_gradients(trained_tiny_dir):
    model = load_classifier(trained_tiny_dir).eval()
    encoded = encode(load_tokenizer(trained_tiny_dir), TEXTS, MAX_LENGTH)
    paths = ["bert.encoder.layer.1.output.dense", "bert.encoder.layer.0.attention.self.query"]
    scales = fisher_scales(model, encoded, np.array([1, 0, 1, 0]), paths, batch_size=2)
    assert [tuple(scales[p].shape) for p in paths] == [(32,), (32,)]
    assert all(torch.isfinite(s).all() and (s > 0).any() for s in scales.values())
    assert all(p.grad is None for p in model.parameters())  # nothing left behind for a later optimizer


def test_a_rank_that_saves_nothing_keeps_the_layer_dense(trained_tiny_dir):
    model = load_classifier(trained_tiny_dir).eval()
    # Rank 16: attention 32x32 would hold 16*64 = 1024 = 32*32 weights (kept); FFN 32x64: 1536 < 2048.
    decisions = factorize_layers(model, target_linears(model, ["ffn", "attention"]), rank=16)
    kept = {d["module"].split(".", 4)[-1] for d in decisions if not d["factorized"]}
    done = {d["module"].split(".", 4)[-1] for d in decisions if d["factorized"]}
    assert kept == {"attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"}
    assert done == {"intermediate.dense", "output.dense"}
    assert set(factorization_ranks(model).values()) == {16}


# --- the stage and the folder ------------------------------------------------------------------------


def test_low_rank_shrinks_the_model_and_the_folder_reloads(factorized, trained_tiny_dir):
    out, record = factorized.output_dir, factorized.record
    assert record["parameters"]["after"] < record["parameters"]["before"]
    assert record["weights_bytes"]["after"] < record["weights_bytes"]["before"]
    assert record["factorized_weights"]["after"] == 12 * 4 * 96 - 8 * 4 * 32  # 4 FFN (32+64), 8 attention (32+32)
    assert set(record["ranks"].values()) == {4} and len(record["ranks"]) == 12
    assert record["kept_dense"] == []
    config = json.loads((out / "config.json").read_text())
    assert config[FACTORIZATION_KEY]["ranks"] == record["ranks"] and "bertsent_pruning" not in config
    reloaded = load_classifier(out)
    assert factorization_ranks(reloaded) == record["ranks"]
    batch = batch_of(out)
    torch.testing.assert_close(logits(reloaded, batch), logits(factorized.model, batch), atol=1e-6, rtol=0)
    # Every consumer loads it as any folder: Predictor (with the [CLS]-only last layer) gives the same scores.
    probs = Predictor(out, precision="fp32").predict_proba(TEXTS)
    np.testing.assert_allclose(probs, torch.softmax(logits(reloaded, batch), -1).numpy(), atol=1e-5)


def test_the_record_measures_before_after_and_recovery(factorized):
    record = json.loads((factorized.output_dir / COMPRESSION_FILE).read_text())
    validation = record["validation"]
    assert validation["reviews"] == 40 and {"before", "factorized", "after"} <= set(validation)
    assert record["recovery"]["epochs"] == 1 and record["recovery"]["train_reviews"] == 64
    assert record["resolved"]["calibration_reviews"] == 32 and "ASVD" in record["resolved"]["weighting"]
    assert record["data"]["origin"].startswith("recorded in")
    assert all(0 < layer["energy_kept"] <= 1 for layer in record["layers"])
    metrics = json.loads((factorized.output_dir / "metrics.json").read_text())
    assert metrics["num_parameters"] == record["parameters"]["after"] and "validation_accuracy_factorized" in metrics
    card = (factorized.output_dir / "README.md").read_text()
    assert "bertsent factorize" in card and "cannot load this folder" in card and "factorized" in card


def test_a_pruned_model_factorizes_and_reloads(trained_tiny_dir, tmp_path):
    from bertsent.modeling.pruned import prune_heads

    model = load_classifier(trained_tiny_dir).eval()
    prune_heads(model, {0: [1, 3], 1: [0]})
    factorize_layers(model, target_linears(model, ["ffn", "attention"]), rank=3)
    model.save_pretrained(tmp_path)
    reloaded = load_classifier(tmp_path)
    assert reloaded.bert.encoder.layer[0].attention.self.num_attention_heads == 2
    assert factorization_ranks(reloaded) == factorization_ranks(model)
    batch = batch_of(trained_tiny_dir)
    torch.testing.assert_close(logits(reloaded, batch), logits(model, batch), atol=1e-6, rtol=0)


def test_broken_records_and_refactorizing_are_one_line_errors(factorized, tmp_path):
    from bertsent.compression.prune import prune
    from bertsent.config import PruneConfig
    from bertsent.errors import PruneError

    with pytest.raises(ModelError, match="factorized already"):
        target_linears(load_classifier(factorized.output_dir), ["ffn"])
    with pytest.raises(PruneError, match="prune its source first"):
        prune(PruneConfig(model=str(factorized.output_dir), output_dir=str(tmp_path / "p"), sparsity=0.1))
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((factorized.output_dir / name).read_bytes())
    config = json.loads((tmp_path / "config.json").read_text())
    config[FACTORIZATION_KEY]["ranks"]["bert.encoder.layer.0.output.dense"] = 5  # the weights hold rank 4
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="do not match"):
        load_classifier(tmp_path)
    config[FACTORIZATION_KEY]["ranks"] = {"bert.encoder.layer.9.output.dense": 4}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="not a Linear"):
        load_classifier(tmp_path)


# --- exports -----------------------------------------------------------------------------------------


def test_onnx_export_keeps_the_thin_matmuls_and_passes_parity(factorized, tmp_path):
    import onnx

    from bertsent.compression.export import export_onnx

    out = export_onnx(factorized.output_dir, tmp_path / "onnx")  # raises ExportParityError unless ORT matches
    record = json.loads((out / COMPRESSION_FILE).read_text())
    assert record["parity"]["max_abs_diff"] < 1e-4
    graph = onnx.load(str(out / "model.onnx")).graph
    shapes = [tuple(init.dims) for init in graph.initializer if len(init.dims) == 2]
    # The factors as MatMul weights, (in, r) and (r, out); no dense 32x64 FFN matrix is left.
    assert shapes.count((32, 4)) >= 6 and shapes.count((4, 64)) == 2 and shapes.count((4, 32)) >= 8
    assert (32, 64) not in shapes and (64, 32) not in shapes
    probs = Predictor(out).predict_proba(TEXTS)
    np.testing.assert_allclose(
        probs, Predictor(factorized.output_dir, precision="fp32").predict_proba(TEXTS), atol=1e-4
    )


def test_openvino_export_passes_parity(factorized, tmp_path):
    pytest.importorskip("openvino")
    from bertsent.compression.export import export_openvino

    out = export_openvino(factorized.output_dir, tmp_path / "ov")  # raises ExportParityError unless it matches
    assert json.loads((out / COMPRESSION_FILE).read_text())["parity"]["max_abs_diff"] < 1e-4
    probs = Predictor(out, precision="fp32").predict_proba(TEXTS)
    np.testing.assert_allclose(
        probs, Predictor(factorized.output_dir, precision="fp32").predict_proba(TEXTS), atol=1e-4
    )


def test_int8_quantization_keeps_the_factorized_shape(factorized, tmp_path):
    from bertsent.compression.quantize import quantize
    from bertsent.config import QuantizeConfig

    config = QuantizeConfig(model=str(factorized.output_dir), output_dir=str(tmp_path / "int8"), validation_samples=40)
    result = quantize(config)
    assert result.record["validation"]["agreement"] >= 0.9
    torch_int8 = QuantizeConfig(
        model=str(factorized.output_dir), output_dir=str(tmp_path / "t"), method="torch-dynamic"
    )
    model = load_classifier(quantize(torch_int8).output_dir)
    factor = model.bert.encoder.layer[0].intermediate.dense
    assert isinstance(factor, FactorizedLinear) and "quantized" in type(factor.down).__module__


# --- the command -------------------------------------------------------------------------------------


def test_cli_factorizes_and_prints_what_it_did(trained_tiny_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["factorize", "--model", str(trained_tiny_dir), "--output-dir", str(out), "--energy", "0.5"]
    assert main([*argv, "--targets", "ffn", "--recovery-epochs", "0", "--eval-samples", "20"]) == 0
    printed = capsys.readouterr().out
    assert "factorized layers" in printed and "validation accuracy" in printed and str(out) in printed
    record = json.loads((out / COMPRESSION_FILE).read_text())
    assert all(name.endswith(("intermediate.dense", "output.dense")) for name in record["ranks"])
    assert not any("attention" in name for name in record["ranks"]) and record["recovery"] is None
    assert Predictor(out)(TEXTS[:1])[0]["label"] in ("negative", "positive")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--rank", "0"], "rank must be an integer >= 1"),
        (["--energy", "0"], "energy must be a share in (0, 1]"),
        (["--energy", "1.5"], "energy must be a share in (0, 1]"),
        (["--rank", "4", "--energy", "0.9"], "not both"),
        (["--rank", "4", "--targets", "ffn,embeddings"], "unknown target 'embeddings'"),
        (["--rank", "64"], "no layer would get fewer weights"),
        (["--energy", "1"], "no layer would get fewer weights"),  # full rank everywhere saves nothing
    ],
)
def test_cli_bad_input_is_exit_2_with_one_line(trained_tiny_dir, tmp_path, capsys, flags, message):
    argv = ["factorize", "--model", str(trained_tiny_dir), "--output-dir", str(tmp_path / "x"), *flags]
    assert main([*argv, "--recovery-epochs", "0", "--eval-samples", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_without_data_recovery_and_weighting_say_what_they_need(tiny_model_dir, tmp_path, capsys):
    argv = ["factorize", "--model", str(tiny_model_dir), "--output-dir", str(tmp_path / "x"), "--rank", "4"]
    assert main([*argv, "--weighting", "activation"]) == 2  # the folder records no data, none is given
    err = capsys.readouterr().err.strip()
    assert "labelled reviews are needed for activation weighting and recovery" in err and "--data" in err
    assert main([*argv, "--recovery-epochs", "0"]) == 0  # validation is then skipped, and the record says why
    record = json.loads((tmp_path / "x" / COMPRESSION_FILE).read_text())
    assert record["validation"]["reviews"] == 0 and "records no data" in record["validation"]["skipped"]


def test_settings_normalise_targets_and_need_validation_for_recovery():
    config = FactorizeConfig(model="m", output_dir="o", rank=2, targets="Attention, ffn")
    assert config.targets == "ffn,attention" and config.target_list == ["ffn", "attention"]
    with pytest.raises(SettingsError, match="validation_samples must be >= 1"):
        FactorizeConfig(model="m", output_dir="o", rank=2, validation_samples=0, recovery_epochs=1)
    with pytest.raises(SettingsError, match="no target given"):
        FactorizeConfig(model="m", output_dir="o", rank=2, targets=" , ")


def test_a_killed_recovery_continues_from_its_checkpoint(trained_tiny_dir, tmp_path, monkeypatch, caplog):
    """Recovery checkpoints as it goes; the stage run again after a kill rebuilds the factorized model, loads
    the checkpoint into it and ends where an uninterrupted run ends."""
    import logging

    from bertsent.training import loop

    monkeypatch.setattr(loop, "RECOVERY_SAVE_STEPS", 2)  # 64 reviews, batch 16: 4 steps, a checkpoint at 2

    def config(name: str) -> FactorizeConfig:
        return FactorizeConfig(
            model=str(trained_tiny_dir),
            output_dir=str(tmp_path / name),
            rank=4,
            recovery_samples=64,
            validation_samples=40,
        )

    factorize(config("whole"))
    save, killed = loop.save_checkpoint, RuntimeError("killed")

    def save_then_die(*args, **kwargs):
        save(*args, **kwargs)
        raise killed

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(RuntimeError, match="killed"):
        factorize(config("resumed"))
    assert [p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()] == ["step-2"]
    monkeypatch.setattr(loop, "save_checkpoint", save)
    with caplog.at_level(logging.INFO, logger="bertsent.training"):
        factorize(config("resumed"))
    assert "resumed from" in caplog.text and "(epoch 0, step 2)" in caplog.text
    assert not (tmp_path / "resumed" / "checkpoints").exists()  # gone once the stage ends
    records = [json.loads((tmp_path / name / COMPRESSION_FILE).read_text()) for name in ("whole", "resumed")]
    assert records[0]["recovery"]["steps"] == records[1]["recovery"]["steps"] == 4
    whole, resumed = (Predictor(tmp_path / name).predict_proba(TEXTS) for name in ("whole", "resumed"))
    np.testing.assert_allclose(resumed, whole, atol=1e-5)
