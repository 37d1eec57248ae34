"""OpenVINO: export + parity, the backend behind Predictor/evaluate/compare, and NNCF INT8 quantization."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from bertsent.compression.export import export
from bertsent.compression.quantize import quantize
from bertsent.config import CompareConfig, DataConfig, ExportConfig, InferenceSettings, QuantizeConfig
from bertsent.errors import ExportParityError, ModelError
from bertsent.folder import OPENVINO_BIN, OPENVINO_XML
from bertsent.inference import OpenVinoBackend, load_backend
from bertsent.predict import Predictor


@pytest.fixture(scope="module")
def openvino_dir(trained_tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("openvino")
    return export(ExportConfig(model=str(trained_tiny_dir), output_dir=str(out), format="openvino")).output_dir


def test_export_writes_a_parity_checked_ir_folder(openvino_dir, trained_tiny_dir):
    for name in (OPENVINO_XML, OPENVINO_BIN, "config.json", "tokenizer.json", "training_args.json", "README.md"):
        assert (openvino_dir / name).is_file(), name
    assert not (openvino_dir / "model.onnx").exists() and not (openvino_dir / "model.safetensors").exists()
    record = json.loads((openvino_dir / "compression.json").read_text())
    assert record["method"] == "openvino-export" and record["parity_inference_precision"] == "f32"
    assert record["parity"]["max_abs_diff"] <= record["parity"]["atol"]
    assert [s["shape"] for s in record["parity"]["shapes"]] == [[1, 7], [3, 50], [2, 300]]
    assert "OpenVINO" in (openvino_dir / "README.md").read_text()


def test_parity_failure_is_typed_and_writes_nothing(trained_tiny_dir, tmp_path, monkeypatch):
    import bertsent.compression.export as export_module

    real = export_module._openvino_logits
    monkeypatch.setattr(export_module, "_openvino_logits", lambda folder: lambda i, m: real(folder)(i, m) + 1.0)
    with pytest.raises(ExportParityError, match="OpenVINO logits differ"):
        export(ExportConfig(model=str(trained_tiny_dir), output_dir=str(tmp_path / "ov"), format="openvino"))
    assert not (tmp_path / "ov" / OPENVINO_XML).exists()


def test_predictor_runs_the_folder_with_openvino(openvino_dir, trained_tiny_dir, toy_texts):
    texts = toy_texts[:20]
    torch_probs = Predictor(trained_tiny_dir, precision="fp32").predict_proba(texts)
    fp32 = Predictor(openvino_dir, precision="fp32", threads=1)
    assert fp32.backend.name == "openvino" and fp32.backend.precision == "fp32" and fp32.backend.threads == 1
    np.testing.assert_allclose(fp32.predict_proba(texts), torch_probs, atol=1e-4)
    auto = Predictor(openvino_dir)  # OpenVINO's own choice (bf16 with AVX512-BF16/AMX), checked against fp32
    assert auto.backend.name == "openvino"
    assert (auto.predict_proba(texts).argmax(1) == torch_probs.argmax(1)).mean() >= 0.9
    assert auto([texts[0]])[0]["label"] in ("negative", "positive")


def test_openvino_own_precision_is_what_it_compiles_at_unhinted(openvino_dir):
    """What the recipe's probe times OpenVINO at: its own choice for this CPU, as an unhinted compile runs."""
    from bertsent.runtime import openvino_own_precision

    own = openvino_own_precision()
    assert own in ("fp32", "bf16", "fp16") and OpenVinoBackend(openvino_dir, threads=1).precision == own


def test_backend_choice(openvino_dir, trained_tiny_dir):
    assert isinstance(load_backend(openvino_dir, precision="fp32"), OpenVinoBackend)
    assert isinstance(load_backend(openvino_dir, backend="openvino", precision="fp32"), OpenVinoBackend)
    with pytest.raises(ModelError, match="backend 'openvino' needs openvino_model.xml"):
        load_backend(trained_tiny_dir, backend="openvino")
    with pytest.raises(ModelError, match="use backend 'openvino'"):
        load_backend(openvino_dir, backend="torch")


def test_evaluate_and_compare_read_an_openvino_folder(openvino_dir, trained_tiny_dir, toy_data_dir, tmp_path):
    from bertsent.evaluate import evaluate
    from bertsent.recipes.compare import compare

    data = DataConfig(str(toy_data_dir))
    settings = InferenceSettings(precision="fp32")
    metrics = evaluate(openvino_dir, data, output_dir=tmp_path / "eval", settings=settings)
    assert metrics["accuracy"] > 0.9
    config = CompareConfig(
        models=[str(trained_tiny_dir), str(openvino_dir)],
        data=data,
        latency_samples=2,
        output_dir=str(tmp_path / "cmp"),
        inference=settings,
    )
    rows = compare(config)
    assert rows[1]["backend"] == "openvino" and rows[1]["precision"] == "fp32"
    assert rows[1]["accuracy"] == rows[0]["accuracy"] and rows[1]["parameters"] > 0
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert set(saved["cpu"]) >= {"model_name", "amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx2"}


def test_openvino_int8_quantization_writes_a_folder_that_predicts(trained_tiny_dir, toy_texts, tmp_path):
    config = QuantizeConfig(
        model=str(trained_tiny_dir),
        output_dir=str(tmp_path / "int8"),
        method="openvino-int8",
        calibration_samples=32,
        validation_samples=40,
    )
    result = quantize(config)
    record = result.record
    assert record["quantized_nodes"]["FakeQuantize"] > 0
    assert record["validation"]["reviews"] > 0 and not record["validation"]["collapsed"]
    assert record["validation"]["backends"]["int8"] == "openvino"
    assert record["int8_bytes"] < record["fp32_bytes"]
    predictor = Predictor(result.output_dir)
    assert predictor.backend.name == "openvino"
    fp32 = Predictor(trained_tiny_dir, precision="fp32").predict_proba(toy_texts[:40]).argmax(1)
    assert (predictor.predict_proba(toy_texts[:40]).argmax(1) == fp32).mean() >= 0.8
    assert "openvino-int8" in (result.output_dir / "README.md").read_text()


def test_openvino_int8_refuses_a_collapse(trained_tiny_dir, tmp_path, monkeypatch):
    from bertsent.compression import quantize as quantize_module
    from bertsent.errors import QuantizationCollapseError

    real = quantize_module.check_accuracy

    def collapsed(*args, **kwargs):
        check = real(*args, **kwargs)
        check["int8_probs"] = np.tile([0.9, 0.1], (len(check["labels"]), 1))
        return check

    monkeypatch.setattr(quantize_module, "check_accuracy", collapsed)
    config = QuantizeConfig(
        model=str(trained_tiny_dir),
        output_dir=str(tmp_path / "int8"),
        method="openvino-int8",
        calibration_samples=8,
        validation_samples=40,
    )
    with pytest.raises(QuantizationCollapseError):
        quantize(config)
    assert not (tmp_path / "int8").exists()
