"""ONNX export: parity with PyTorch on new shapes, the loadable folder, the ONNX Runtime backend, errors."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil

import numpy as np
import onnx
import pytest
import torch

from bertsent.cli import add_command
from bertsent.compression.export import export_onnx
from bertsent.errors import BertsentError, ExportError, ExportParityError, ModelError
from bertsent.folder import ONNX_FILE
from bertsent.inference import OnnxBackend
from bertsent.modeling.loading import load_classifier
from bertsent.modeling.parity import PARITY_SHAPES
from bertsent.predict import Predictor
from bertsent.runtime import physical_cores, resolve_threads


@pytest.fixture(scope="module")
def onnx_dir(trained_tiny_dir, tmp_path_factory):
    return export_onnx(trained_tiny_dir, tmp_path_factory.mktemp("onnx") / "out")


def _batch(vocab_size: int, batch: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(100, vocab_size, (batch, length), generator=generator)
    mask = torch.ones_like(ids)
    if batch > 1:  # padding in the mask, as Predictor's batches have (a real row keeps at least [CLS])
        keep = max(1, length // 3)
        ids[0, keep:] = 0
        mask[0, keep:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_export_writes_a_self_describing_folder(onnx_dir, trained_tiny_dir):
    for name in (ONNX_FILE, "config.json", "tokenizer.json", "training_args.json", "compression.json", "README.md"):
        assert (onnx_dir / name).is_file(), name
    record = json.loads((onnx_dir / "compression.json").read_text())
    assert record["method"] == "onnx-export"
    assert record["opset"] == 17
    assert record["exporter"] == "torchscript"
    assert [tuple(s["shape"]) for s in record["parity"]["shapes"]] == list(PARITY_SHAPES)
    assert 0 <= record["parity"]["max_abs_diff"] <= 1e-4
    assert record["onnx_bytes"] == (onnx_dir / ONNX_FILE).stat().st_size
    assert (
        json.loads((onnx_dir / "metrics.json").read_text())["parity_max_abs_diff"] == record["parity"]["max_abs_diff"]
    )
    # max_length / truncation travel with the folder.
    assert json.loads((onnx_dir / "training_args.json").read_text()) == json.loads(
        (trained_tiny_dir / "training_args.json").read_text()
    )
    assert "Max abs logit difference" in (onnx_dir / "README.md").read_text()

    model = onnx.load(str(onnx_dir / ONNX_FILE))
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in model.graph.output] == ["logits"]
    assert {op.version for op in model.opset_import if op.domain in ("", "ai.onnx")} == {17}
    for graph_input in model.graph.input:
        dims = graph_input.type.tensor_type.shape.dim
        assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert all(d.dim_param for d in dims), "batch and sequence axes must be dynamic"


@pytest.mark.parametrize(("batch", "length"), [(1, 7), (3, 50), (2, 300), (5, 1)])
def test_onnx_runtime_matches_pytorch_on_other_shapes(onnx_dir, trained_tiny_dir, batch, length):
    torch_model = load_classifier(trained_tiny_dir).eval()
    inputs = _batch(torch_model.config.vocab_size, batch, length, seed=batch * 1000 + length)
    with torch.inference_mode():
        expected = torch_model(**inputs).logits.numpy()
    got = OnnxBackend(onnx_dir).logits(inputs)
    assert got.shape == (batch, 2)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_predictor_runs_the_onnx_folder_like_the_pytorch_one(onnx_dir, trained_tiny_dir, toy_texts):
    onnx_predictor, torch_predictor = Predictor(onnx_dir), Predictor(trained_tiny_dir)
    assert onnx_predictor.backend.name == "onnxruntime"
    assert torch_predictor.backend.name == "pytorch"
    assert onnx_predictor.id2label == torch_predictor.id2label
    assert (onnx_predictor.max_length, onnx_predictor.truncation) == (32, "head+tail")
    onnx_probs, torch_probs = onnx_predictor.predict_proba(toy_texts), torch_predictor.predict_proba(toy_texts)
    np.testing.assert_allclose(onnx_probs, torch_probs, atol=1e-4, rtol=0)
    assert [p["label"] for p in onnx_predictor(toy_texts)] == [p["label"] for p in torch_predictor(toy_texts)]
    # The trained model is decisive, so equal labels above are a real check.
    assert np.mean(np.abs(torch_probs[:, 1] - 0.5) > 0.2) > 0.8


def test_parity_failure_raises_with_the_difference_and_shape(trained_tiny_dir, tmp_path, monkeypatch):
    import bertsent.compression.export as export

    original = export._torch_export

    def export_a_changed_model(model, *args):
        # The exported copy, not the reference parity compares with: the graph is off by exactly 0.5.
        with torch.no_grad():
            model.classifier.bias -= 0.5
        original(model, *args)

    monkeypatch.setattr(export, "_torch_export", export_a_changed_model)
    out = tmp_path / "out"
    with pytest.raises(
        ExportParityError, match=r"differ from PyTorch by 0\.5 \(> atol 0\.0001\) on input shape \d+x\d+"
    ):
        export_onnx(trained_tiny_dir, out)
    assert not (out / ONNX_FILE).exists(), "a failed export must not leave a model.onnx Predictor would pick up"


def test_tolerance_is_applied(trained_tiny_dir, tmp_path):
    out = export_onnx(trained_tiny_dir, tmp_path / "loose", atol=1.0)
    record = json.loads((out / "compression.json").read_text())
    assert record["parity"]["atol"] == 1.0
    with pytest.raises(ValueError, match="atol"):
        export_onnx(trained_tiny_dir, tmp_path / "bad", atol=0)


def test_threads_argument_env_and_default(onnx_dir, monkeypatch):
    monkeypatch.delenv("BERTSENT_THREADS", raising=False)
    assert resolve_threads() == physical_cores()
    assert 1 <= physical_cores() <= (os.cpu_count() or 1)
    monkeypatch.setenv("BERTSENT_THREADS", "1")
    assert resolve_threads() == 1
    assert resolve_threads(3) == 3  # an explicit argument wins over the environment
    backend = OnnxBackend(onnx_dir)
    assert backend.threads == 1
    options = backend.session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)
    assert backend.session.get_providers() == ["CPUExecutionProvider"]
    monkeypatch.setenv("BERTSENT_THREADS", "many")
    with pytest.raises(BertsentError, match="BERTSENT_THREADS must be an integer >= 1, got 'many'"):
        OnnxBackend(onnx_dir)
    with pytest.raises(ValueError, match="threads"):
        resolve_threads(0)


def test_bad_sources_give_one_line_errors(trained_tiny_dir, onnx_dir, tmp_path):
    cases = [
        (tmp_path / "missing", "no such model folder"),
        (tmp_path, "not a model folder"),
        (onnx_dir, "already an ONNX export"),
    ]
    for source, message in cases:
        with pytest.raises(ModelError, match=message) as info:
            export_onnx(source, tmp_path / "out")
        assert "\n" not in str(info.value)
    with pytest.raises(ExportError, match="is the source folder"):
        export_onnx(trained_tiny_dir, trained_tiny_dir)
    with pytest.raises(ValueError, match="opset"):
        export_onnx(trained_tiny_dir, tmp_path / "out", opset=9)
    with pytest.raises(ValueError, match="exporter"):
        export_onnx(trained_tiny_dir, tmp_path / "out", exporter="tf")


def test_corrupt_onnx_file_is_a_model_error(onnx_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(onnx_dir, broken)
    (broken / ONNX_FILE).write_bytes(b"not a protobuf")
    with pytest.raises(ModelError, match="cannot load .*model.onnx with onnxruntime") as info:
        Predictor(broken)
    assert "\n" not in str(info.value)


@pytest.mark.skipif(importlib.util.find_spec("onnxscript") is not None, reason="onnxscript is installed")
def test_dynamo_exporter_without_onnxscript_says_how_to_install(trained_tiny_dir, tmp_path):
    with pytest.raises(ExportError, match="pip install onnxscript"):
        export_onnx(trained_tiny_dir, tmp_path / "out", exporter="dynamo")


@pytest.mark.skipif(importlib.util.find_spec("onnxscript") is None, reason="needs onnxscript")
def test_dynamo_exporter_passes_parity(trained_tiny_dir, tmp_path):
    out = export_onnx(trained_tiny_dir, tmp_path / "out", exporter="dynamo", opset=18)
    record = json.loads((out / "compression.json").read_text())
    assert record["exporter"] == "dynamo"
    assert record["parity"]["max_abs_diff"] <= 1e-4


def test_cli_export(trained_tiny_dir, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_command(parser.add_subparsers(dest="command"), "export")
    out = tmp_path / "cli"
    ns = parser.parse_args(["export", "--model", str(trained_tiny_dir), "--output-dir", str(out), "--opset", "18"])
    assert ns.func(ns) == 0
    printed = capsys.readouterr().out
    assert f"ONNX model written to {out}" in printed
    assert "parity max |diff|" in printed
    assert json.loads((out / "compression.json").read_text())["opset"] == 18


def test_pruned_folder_exports_with_parity(trained_tiny_dir, toy_data_dir, tmp_path, toy_texts):
    from bertsent.compression.prune import prune
    from bertsent.config import DataConfig, PruneConfig

    pruned = prune(
        PruneConfig(
            model=str(trained_tiny_dir),
            output_dir=str(tmp_path / "pruned"),
            heads_fraction=0.5,
            ffn_fraction=0.5,
            data=DataConfig(str(toy_data_dir), validation_size=40),
            importance_samples=64,
            validation_samples=40,
            device="cpu",
        )
    ).output_dir
    out = export_onnx(pruned, tmp_path / "onnx")
    assert json.loads((out / "compression.json").read_text())["parity"]["max_abs_diff"] <= 1e-4
    heads = load_classifier(pruned).bert.encoder.layer[0].attention.self.query.out_features
    graph = onnx.load(str(out / ONNX_FILE)).graph
    assert any(list(init.dims) == [32, heads] for init in graph.initializer), "pruned Q/K/V widths are exported"
    np.testing.assert_allclose(
        Predictor(out).predict_proba(toy_texts), Predictor(pruned).predict_proba(toy_texts), atol=1e-4, rtol=0
    )


def test_modules_are_light_to_import():
    """``bertsent --help`` builds every parser: export/quantize must not pull in torch to register theirs."""
    import subprocess
    import sys

    import bertsent.compression.export
    import bertsent.inference

    assert bertsent.compression.export.ONNX_FILE == bertsent.inference.ONNX_FILE
    code = "import sys, bertsent.compression.export, bertsent.compression.quantize; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "False"
