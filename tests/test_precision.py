"""precision="auto": CPU capability detection from flag strings, and the check against fp32 that falls back."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

import bertsent.inference as inference
from bertsent.config import InferenceSettings
from bertsent.errors import SettingsError
from bertsent.folder import PRECISION_CHECK_FILE
from bertsent.predict import Predictor
from bertsent.runtime import cpu_summary, parse_cpu_flags, parse_cpuinfo

SAPPHIRE_RAPIDS = "flags : fpu vme sse2 avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8 avx512_fp16"
ICE_LAKE = "fpu vme sse2 avx avx2 avx512f avx512_vnni"


@pytest.fixture(autouse=True)
def pytorch_route(tmp_path, monkeypatch):
    """These tests are about PyTorch's precision under ``backend="auto"``: the route choice (test_auto_backend)
    keeps PyTorch here, and its cache is the test's own."""
    from bertsent import route_choice

    monkeypatch.setenv(route_choice.ROUTES_ENV, "torch")
    monkeypatch.setenv(route_choice.CACHE_ENV, str(tmp_path / "route-cache"))


CPUINFO = f"""processor	: 0
vendor_id	: GenuineIntel
model name	: Intel(R) Xeon(R) Platinum 8480+
{SAPPHIRE_RAPIDS}

processor	: 1
vendor_id	: GenuineIntel
model name	: something else
flags		: fpu
"""


def test_capabilities_from_sample_flag_strings():
    assert parse_cpu_flags(SAPPHIRE_RAPIDS) == dict.fromkeys(
        ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx2"), True
    )
    assert parse_cpu_flags(ICE_LAKE) == {
        "amx_bf16": False,
        "amx_int8": False,
        "avx512_bf16": False,
        "avx512_vnni": True,
        "avx2": True,
    }
    assert not any(parse_cpu_flags("").values())
    assert not parse_cpu_flags("amx_tile")["amx_bf16"]  # whole flags only, not substrings
    info = parse_cpuinfo(CPUINFO)
    assert info["vendor"] == "GenuineIntel" and info["model_name"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert info["amx_bf16"] and info["amx_int8"]
    summary = cpu_summary()
    assert {"model_name", "features", "physical_cores", *parse_cpu_flags("")} <= set(summary)
    json.dumps(summary)


def test_auto_is_the_default_and_fp32_without_amx(trained_tiny_dir, monkeypatch):
    assert InferenceSettings().precision == "auto"
    monkeypatch.setattr(inference, "auto_precision", lambda device: "fp32")
    monkeypatch.setattr(inference, "_measure_precision", _no_measuring)
    assert Predictor(trained_tiny_dir).backend.precision == "fp32"


def _no_measuring(*args):
    raise AssertionError("the check must not run")


@pytest.fixture
def bf16_candidate(trained_tiny_dir, tmp_path, monkeypatch):
    """A copy of the trained folder on a machine whose CPU 'has AMX'."""
    folder = tmp_path / "model"
    shutil.copytree(trained_tiny_dir, folder)
    (folder / PRECISION_CHECK_FILE).unlink(missing_ok=True)
    monkeypatch.setattr(inference, "auto_precision", lambda device: "bf16")
    return folder


def test_a_failed_check_falls_back_to_fp32_once_per_machine(bf16_candidate, monkeypatch, caplog):
    monkeypatch.setattr(inference, "PRECISION_MIN_AGREEMENT", 1.01)  # a tolerance nothing meets
    with caplog.at_level(logging.WARNING, logger="bertsent.inference"):
        predictor = Predictor(bf16_candidate, device="cpu")
    assert predictor.backend.precision == "fp32"
    assert "falling back to fp32" in caplog.text
    verdicts = json.loads((bf16_candidate / PRECISION_CHECK_FILE).read_text())
    (key, verdict), *_ = verdicts.items()
    assert "torch" in key and verdict["passed"] is False and verdict["reviews"] > 0 and verdict["precision"] == "bf16"
    # Cached: the next Predictor on this machine reads the verdict instead of measuring again.
    monkeypatch.setattr(inference, "_measure_precision", _no_measuring)
    assert Predictor(bf16_candidate, device="cpu").backend.precision == "fp32"


def test_a_passed_check_runs_bf16(bf16_candidate, monkeypatch):
    monkeypatch.setattr(inference, "PRECISION_MIN_AGREEMENT", 0.0)
    monkeypatch.setattr(inference, "PRECISION_MAX_DROP_POINTS", 100.0)
    assert Predictor(bf16_candidate, device="cpu").backend.precision == "bf16"
    assert next(iter(json.loads((bf16_candidate / PRECISION_CHECK_FILE).read_text()).values()))["passed"]


def test_no_recorded_data_means_fp32_with_a_warning(tiny_model_dir, tmp_path, monkeypatch, caplog):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)  # no training_args.json: nothing to check against
    monkeypatch.setattr(inference, "auto_precision", lambda device: "bf16")
    with caplog.at_level(logging.WARNING, logger="bertsent.inference"):
        assert Predictor(folder, device="cpu").backend.precision == "fp32"
    assert "no validation reviews to check it" in caplog.text and "records no data" in caplog.text
    assert not (folder / PRECISION_CHECK_FILE).exists()


def test_forced_precisions_are_not_checked(bf16_candidate, monkeypatch):
    monkeypatch.setattr(inference, "_measure_precision", _no_measuring)
    assert Predictor(bf16_candidate, device="cpu", precision="bf16").backend.precision == "bf16"
    assert Predictor(bf16_candidate, device="cpu", precision="fp32").backend.precision == "fp32"


def test_a_cached_verdict_does_not_build_the_fp32_reference(tmp_path):
    from types import SimpleNamespace

    (tmp_path / PRECISION_CHECK_FILE).write_text(json.dumps({"k": {"passed": True}}))

    def reference():
        raise AssertionError("the fp32 reference is built only when the check runs")

    candidate = SimpleNamespace(name="pytorch", precision="bf16", id2label={0: "negative", 1: "positive"})
    assert inference.precision_verdict(tmp_path, candidate, reference, "k") is True


def test_a_torch_dynamic_int8_folder_stays_fp32_where_auto_would_take_bf16(trained_tiny_dir, tmp_path, monkeypatch):
    """Its INT8 Linears take fp32 activations: bf16 autocast fed them bf16 and crashed (the first AMX CPU)."""
    from bertsent.compression.quantize import quantize
    from bertsent.config import QuantizeConfig

    out = tmp_path / "int8"
    quantize(QuantizeConfig(model=str(trained_tiny_dir), output_dir=str(out), method="torch-dynamic"))
    monkeypatch.setattr(inference, "auto_precision", lambda device: "bf16")
    monkeypatch.setattr(inference, "_measure_precision", _no_measuring)
    predictor = Predictor(out, device="cpu")
    assert predictor.backend.precision == "fp32"
    assert predictor.predict_proba(["a fine film"]).shape == (1, 2)
    with pytest.raises(SettingsError, match="torch-dynamic INT8 folder runs fp32 activations"):
        Predictor(out, device="cpu", precision="bf16")


@pytest.fixture(scope="module")
def folder_kinds(trained_tiny_dir, toy_data_dir, tmp_path_factory) -> dict[str, Path]:
    """One PyTorch folder of every kind bertsent writes, each made by its real stage on the tiny model."""
    from bertsent.compression.early_exit import early_exit
    from bertsent.compression.factorize import factorize
    from bertsent.compression.prune import prune
    from bertsent.compression.quantize import quantize
    from bertsent.compression.trim_vocab import trim_vocab
    from bertsent.config import (
        DataConfig,
        EarlyExitConfig,
        FactorizeConfig,
        PruneConfig,
        QuantizeConfig,
        TrimVocabConfig,
    )

    root = tmp_path_factory.mktemp("kinds")
    source = str(trained_tiny_dir)
    shutil.copytree(trained_tiny_dir, root / "fine-tuned")  # its verdicts stay out of the shared folder
    data = DataConfig(str(toy_data_dir), validation_size=40)
    prune_config = PruneConfig(
        source,
        str(root / "pruned"),
        heads_fraction=0.5,
        ffn_fraction=0.5,
        data=data,
        importance_samples=64,
        validation_samples=40,
        device="cpu",
    )
    factorize_config = FactorizeConfig(
        source, str(root / "factorized"), rank=4, calibration_samples=32, recovery_samples=64, validation_samples=40
    )
    results = {
        "fine-tuned": root / "fine-tuned",
        "pruned": prune(prune_config),
        "factorized": factorize(factorize_config),
        "early exit": early_exit(EarlyExitConfig(source, str(root / "exit"), validation_samples=40, head_epochs=5)),
        "trimmed vocabulary": trim_vocab(TrimVocabConfig(source, str(root / "trimmed"))),
        "torch-dynamic INT8": quantize(QuantizeConfig(source, str(root / "int8"), method="torch-dynamic")),
    }
    return {kind: getattr(result, "output_dir", result) for kind, result in results.items()}


@pytest.mark.parametrize(
    "kind", ["fine-tuned", "pruned", "factorized", "early exit", "trimmed vocabulary", "torch-dynamic INT8"]
)
def test_every_pytorch_folder_kind_runs_where_auto_takes_bf16(folder_kinds, kind, toy_texts, monkeypatch):
    """What a CPU with AMX does to each kind of folder (two of them crashed there before): ``auto`` takes
    bf16, the check against fp32 runs (passed here by any agreement), the labels stay close to fp32's."""
    folder = folder_kinds[kind]
    reference = Predictor(folder, device="cpu", precision="fp32").predict_proba(toy_texts)
    monkeypatch.setattr(inference, "auto_precision", lambda device: "bf16")
    monkeypatch.setattr(inference, "PRECISION_MIN_AGREEMENT", 0.0)
    monkeypatch.setattr(inference, "PRECISION_MAX_DROP_POINTS", 100.0)
    predictor = Predictor(folder, device="cpu")
    assert predictor.backend.precision == ("fp32" if kind == "torch-dynamic INT8" else "bf16")
    probs = predictor.predict_proba(toy_texts)
    assert probs.dtype == np.float32 and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert (probs.argmax(axis=1) == reference.argmax(axis=1)).mean() >= 0.9
