"""INT8 quantization: quantized graphs, agreement with fp32, calibration, torch round trip, collapse, errors."""

from __future__ import annotations

import argparse
import json
import logging
import shutil

import numpy as np
import onnx
import pytest
import torch

from bertsent.cli import add_command
from bertsent.compression.export import export_onnx
from bertsent.compression.quantize import quantize
from bertsent.config import QuantizeConfig
from bertsent.errors import (
    BertsentError,
    DataError,
    ModelError,
    QuantizationCollapseError,
    QuantizeError,
    QuantizeSettingsError,
)
from bertsent.folder import ONNX_FILE
from bertsent.inference import OnnxBackend
from bertsent.modeling.loading import load_classifier
from bertsent.modeling.quantized import quantize_torch_dynamic
from bertsent.predict import Predictor

DYNAMIC_LINEAR = torch.ao.nn.quantized.dynamic.Linear


@pytest.fixture(scope="module")
def fp32_labels(trained_tiny_dir, toy_texts) -> np.ndarray:
    probs = Predictor(trained_tiny_dir).predict_proba(toy_texts)
    assert np.mean(np.abs(probs[:, 1] - 0.5) > 0.2) > 0.8, "the fixture model should be decisive"
    return probs.argmax(-1)


@pytest.fixture(scope="module")
def dynamic_dir(trained_tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("dynamic") / "out"
    return quantize(QuantizeConfig(model=str(trained_tiny_dir), output_dir=str(out), method="onnx-dynamic")).output_dir


@pytest.fixture(scope="module")
def torch_dir(trained_tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("torch") / "out"
    return quantize(QuantizeConfig(model=str(trained_tiny_dir), output_dir=str(out), method="torch-dynamic")).output_dir


def n_linear(model_dir) -> int:
    return sum(isinstance(m, torch.nn.Linear) for m in load_classifier(model_dir).modules())


def agreement(model_dir, toy_texts, fp32_labels) -> float:
    return float(np.mean(Predictor(model_dir).predict_proba(toy_texts).argmax(-1) == fp32_labels))


def test_onnx_dynamic_quantizes_every_linear_and_agrees(dynamic_dir, trained_tiny_dir, toy_texts, fp32_labels):
    record = json.loads((dynamic_dir / "compression.json").read_text())
    assert record["method"] == "onnx-dynamic"
    assert record["settings"]["per_channel"] is True
    assert record["preprocess"]["applied"] is True
    # Every Linear layer became an integer MatMul; none of the weight MatMuls is left in fp32.
    assert record["quantized_nodes"]["MatMulInteger"] == n_linear(trained_tiny_dir)
    assert record["quantized_nodes"]["DynamicQuantizeLinear"] > 0
    graph = onnx.load(str(dynamic_dir / ONNX_FILE)).graph
    weights = {init.name for init in graph.initializer}
    assert not [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    assert record["quantized_nodes"] == {
        op: n for op, n in record["op_counts"].items() if op in ("MatMulInteger", "DynamicQuantizeLinear")
    }
    # Per-channel: one weight scale per output column.
    scales = [init for init in graph.initializer if init.name.endswith("_scale") and len(init.dims) == 1]
    assert scales and all(init.dims[0] > 1 for init in scales)

    validation = record["validation"]
    assert validation["reviews"] == 40
    assert validation["origin"].startswith("recorded in")
    assert validation["agreement"] >= 0.95
    assert abs(validation["fp32_accuracy"] - validation["int8_accuracy"]) * 100 == pytest.approx(
        abs(validation["accuracy_drop_points"]), abs=1e-3
    )
    assert validation["backends"] == {"fp32": "pytorch", "int8": "onnxruntime"}
    assert record["int8_bytes"] == (dynamic_dir / ONNX_FILE).stat().st_size
    assert record["fp32_bytes"] > record["int8_bytes"]
    metrics = json.loads((dynamic_dir / "metrics.json").read_text())
    assert metrics["validation_agreement"] == validation["agreement"]
    readme = (dynamic_dir / "README.md").read_text()
    assert f"{validation['int8_accuracy']:.4f}" in readme
    assert "WARNING" not in readme

    assert agreement(dynamic_dir, toy_texts, fp32_labels) >= 0.95
    assert Predictor(dynamic_dir).max_length == 32  # training_args.json travelled


def test_quantized_embeddings_shrink_the_file(trained_tiny_dir, dynamic_dir, tmp_path, toy_texts, fp32_labels):
    out = quantize(
        QuantizeConfig(model=str(trained_tiny_dir), output_dir=str(tmp_path / "emb"), quantize_embeddings=True)
    ).output_dir
    record = json.loads((out / "compression.json").read_text())
    assert "Gather" in record["quantization"]["op_types"]
    # The tiny model is mostly its 30k x 32 embedding table: INT8 tables cut the file to under half.
    assert record["int8_bytes"] < 0.5 * json.loads((dynamic_dir / "compression.json").read_text())["int8_bytes"]
    graph = onnx.load(str(out / ONNX_FILE)).graph
    # ONNX Runtime stores Gather data like an activation: 8-bit unsigned, one scale per table.
    eight_bit = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    tables = [init for init in graph.initializer if init.data_type in eight_bit and len(init.dims) == 2]
    assert any(init.dims[0] == load_classifier(trained_tiny_dir).config.vocab_size for init in tables)
    assert agreement(out, toy_texts, fp32_labels) >= 0.95


def test_onnx_static_calibrates_and_agrees(trained_tiny_dir, toy_data_dir, tmp_path, toy_texts, fp32_labels):
    config = QuantizeConfig(
        model=str(trained_tiny_dir),
        output_dir=str(tmp_path / "static"),
        method="onnx-static",
        data=str(toy_data_dir),
        calibration_samples=64,
    )
    out = quantize(config).output_dir
    record = json.loads((out / "compression.json").read_text())
    assert record["quantization"]["format"] == "QDQ"
    assert record["quantization"]["calibration_reviews"] == 64
    assert record["quantized_nodes"]["QuantizeLinear"] > 0
    assert record["quantized_nodes"]["DequantizeLinear"] >= record["quantized_nodes"]["QuantizeLinear"]
    assert record["validation"]["origin"] == "--data"
    assert record["validation"]["agreement"] >= 0.95
    assert agreement(out, toy_texts, fp32_labels) >= 0.95
    # Every weight MatMul/Gemm reads a dequantized INT8 weight; activation x activation MatMuls stay fp32.
    graph = onnx.load(str(out / ONNX_FILE)).graph
    producer = {output: node for node in graph.node for output in node.output}
    weight_ops = [n for n in graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in producer]
    dequantized = [n for n in weight_ops if producer[n.input[1]].op_type == "DequantizeLinear"]
    assert len(dequantized) == n_linear(trained_tiny_dir) == record["quantization"]["weight_nodes_quantized"]
    int8 = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.INT8}
    assert all(producer[n.input[1]].input[0] in int8 for n in dequantized)
    assert all(n.op_type == "MatMul" for n in weight_ops if n not in dequantized)


def test_torch_dynamic_round_trip(torch_dir, trained_tiny_dir, toy_texts, fp32_labels):
    out = torch_dir
    assert (out / "model.safetensors").is_file()
    assert not (out / ONNX_FILE).exists()
    assert json.loads((out / "config.json").read_text())["bertsent_quantization"] == "torch-dynamic"
    model = load_classifier(out)
    quantized = [m for m in model.modules() if isinstance(m, DYNAMIC_LINEAR)]
    assert len(quantized) == n_linear(trained_tiny_dir)
    assert not [m for m in model.modules() if type(m) is torch.nn.Linear]
    assert all(m.weight().qscheme() == torch.per_channel_affine for m in quantized)
    record = json.loads((out / "compression.json").read_text())
    assert record["int8_bytes"] == record["fp32_bytes"]  # fp32 weights on disk, INT8 in memory
    assert record["validation"]["backends"] == {"fp32": "pytorch", "int8": "pytorch"}
    assert "unchanged" in (out / "README.md").read_text()
    assert agreement(out, toy_texts, fp32_labels) >= 0.95


def test_quantize_torch_dynamic_follows_the_per_channel_flag(trained_tiny_dir):
    model = load_classifier(trained_tiny_dir)
    model.config.bertsent_quantization_per_channel = False
    quantized = [m for m in quantize_torch_dynamic(model).modules() if isinstance(m, DYNAMIC_LINEAR)]
    assert quantized and all(m.weight().qscheme() == torch.per_tensor_affine for m in quantized)


_REAL_ONNX_LOGITS = OnnxBackend.logits


def _in_folders(fake):
    """``fake`` as OnnxBackend.logits of a model folder only. Export's parity check runs the bare graph it is
    writing through OnnxBackend too (no config.json beside it yet): that one stays real, or no export passes."""

    def logits(self, batch):
        if not (self.model_dir / "config.json").is_file():
            return _REAL_ONNX_LOGITS(self, batch)
        return fake(self, batch)

    return logits


@_in_folders
def _always_negative(self, batch):
    return np.tile(np.array([[5.0, -5.0]], dtype=np.float32), (len(batch["input_ids"]), 1))


def test_collapse_is_an_error_unless_allowed(trained_tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(OnnxBackend, "logits", _always_negative)
    out = tmp_path / "collapsed"
    with pytest.raises(QuantizationCollapseError, match=r"predicts one class for 100\.0% of 40 validation") as info:
        quantize(QuantizeConfig(model=str(trained_tiny_dir), output_dir=str(out)))
    assert "\n" not in str(info.value)
    assert not (out / ONNX_FILE).exists()

    result = quantize(QuantizeConfig(model=str(trained_tiny_dir), output_dir=str(out), allow_collapse=True))
    validation = result.record["validation"]
    assert validation["collapsed"] is True
    assert validation["int8_top_class_share"] == 1.0
    assert validation["fp32_top_class_share"] < 0.95
    assert any("collapsed" in w for w in json.loads((out / "compression.json").read_text())["warnings"])


def test_accuracy_drop_is_warned_loudly(trained_tiny_dir, tmp_path, monkeypatch, caplog):
    original = OnnxBackend.logits

    @_in_folders
    def flip_every_third(self, batch):
        logits = original(self, batch)
        logits[::3] = logits[::3, ::-1]  # wrong on a third of the reviews, but no single-class collapse
        return logits

    monkeypatch.setattr(OnnxBackend, "logits", flip_every_third)
    with caplog.at_level(logging.WARNING, logger="bertsent.compression.quantize"):
        result = quantize(QuantizeConfig(model=str(trained_tiny_dir), output_dir=str(tmp_path / "drop"), max_drop=1.0))
    validation = result.record["validation"]
    assert validation["drop_exceeded"] is True
    assert validation["accuracy_drop_points"] > 1.0
    assert not validation["collapsed"]
    assert any("points below fp32" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "WARNING" in (result.output_dir / "README.md").read_text()


def test_no_data_skips_the_check_with_a_recorded_warning(tiny_model_dir, tmp_path):
    # The random fixture folder has no training_args.json: there is nothing to check against.
    result = quantize(QuantizeConfig(model=str(tiny_model_dir), output_dir=str(tmp_path / "q")))
    record = json.loads((result.output_dir / "compression.json").read_text())
    assert "records no data" in record["validation"]["skipped"]
    assert any("accuracy check skipped" in w for w in record["warnings"])
    assert "not checked" in (result.output_dir / "README.md").read_text()
    assert record["quantized_nodes"]["MatMulInteger"] == n_linear(tiny_model_dir)


def test_recorded_data_that_moved_skips_the_check(trained_tiny_dir, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(trained_tiny_dir, moved)
    args = json.loads((moved / "training_args.json").read_text())
    args["data"]["source"] = str(tmp_path / "gone")
    (moved / "training_args.json").write_text(json.dumps(args))
    result = quantize(QuantizeConfig(model=str(moved), output_dir=str(tmp_path / "q"), method="torch-dynamic"))
    assert "gone" in result.record["validation"]["skipped"]
    assert "cannot be read" in result.record["validation"]["skipped"]
    assert (result.output_dir / "model.safetensors").is_file()


def test_static_without_data_is_an_error(tiny_model_dir, tmp_path):
    with pytest.raises(QuantizeError, match="onnx-static needs calibration reviews: pass --data"):
        quantize(QuantizeConfig(model=str(tiny_model_dir), output_dir=str(tmp_path / "q"), method="onnx-static"))


def test_rerun_into_the_same_folder_replaces_the_old_weights(trained_tiny_dir, dynamic_dir, tmp_path):
    out = tmp_path / "reused"
    shutil.copytree(dynamic_dir, out)  # an onnx-dynamic result, then torch-dynamic into the same folder
    quantize(QuantizeConfig(model=str(trained_tiny_dir), output_dir=str(out), method="torch-dynamic"))
    assert not (out / ONNX_FILE).exists(), "a stale model.onnx would make Predictor run the old model"
    assert Predictor(out).backend.name == "pytorch"


def test_bad_inputs_give_one_line_errors(trained_tiny_dir, tmp_path):
    base = {"model": str(trained_tiny_dir), "output_dir": str(tmp_path / "q")}
    bad_settings = [
        ({"method": "int4"}, "method must be one of onnx-dynamic, onnx-static, torch-dynamic"),
        ({"validation_samples": 0}, "validation_samples must be an integer >= 1"),
        ({"calibration_samples": -5}, "calibration_samples must be an integer >= 1"),
        ({"max_drop": -1}, "max_drop"),
        ({"opset": 99}, "opset"),
        ({"method": "torch-dynamic", "quantize_embeddings": True}, "quantize_embeddings"),
    ]
    for changes, message in bad_settings:
        with pytest.raises(QuantizeSettingsError, match=message) as info:
            QuantizeConfig(**(base | changes))
        assert isinstance(info.value, ValueError) and isinstance(info.value, BertsentError)

    with pytest.raises(ModelError, match="no such model folder"):
        quantize(QuantizeConfig(model=str(tmp_path / "missing"), output_dir=str(tmp_path / "q")))
    with pytest.raises(DataError, match="nowhere") as info:
        quantize(QuantizeConfig(**base, data=str(tmp_path / "nowhere")))
    assert "\n" not in str(info.value)
    with pytest.raises(QuantizeError, match="is the source folder"):
        quantize(QuantizeConfig(model=str(trained_tiny_dir), output_dir=str(trained_tiny_dir)))


def test_quantized_or_onnx_sources_are_refused(torch_dir, dynamic_dir, tmp_path):
    with pytest.raises(ModelError, match="already quantized"):
        quantize(QuantizeConfig(model=str(torch_dir), output_dir=str(tmp_path / "again")))
    with pytest.raises(ModelError, match="already an ONNX export"):
        quantize(QuantizeConfig(model=str(dynamic_dir), output_dir=str(tmp_path / "again")))
    with pytest.raises(ModelError, match="already an ONNX export"):
        export_onnx(dynamic_dir, tmp_path / "again")


def test_cli_quantize(trained_tiny_dir, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_command(parser.add_subparsers(dest="command"), "quantize")
    out = tmp_path / "cli"
    argv = ["quantize", "--model", str(trained_tiny_dir), "--method", "torch-dynamic", "--output-dir", str(out)]
    ns = parser.parse_args([*argv, "--no-per-channel", "--eval-samples", "20"])
    assert ns.func(ns) == 0
    printed = capsys.readouterr().out
    assert f"quantized model written to {out}" in printed
    assert "int8 accuracy" in printed
    record = json.loads((out / "compression.json").read_text())
    assert record["settings"]["per_channel"] is False
    assert record["validation"]["reviews"] == 20
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["quantize", "--model", str(trained_tiny_dir), "--output-dir", str(out), "--method", "int4"])
    assert info.value.code == 2
