"""The compression-stage scaffold (compression/stage.py) on the tiny trained model: every stage returns one
result type, before and after are scored in the same precision, and a stage killed after its training but
before its record is incomplete and completes on rerun (seconds)."""

import json

import numpy as np
import pytest

from bertsent.compression import stage
from bertsent.compression.export import export
from bertsent.compression.factorize import factorize
from bertsent.compression.prune import prune
from bertsent.compression.trim_vocab import trim_vocab
from bertsent.config import ExportConfig, FactorizeConfig, PruneConfig, TrimVocabConfig
from bertsent.folder import COMPRESSION_FILE, METRICS_FILE
from bertsent.predict import Predictor


@pytest.fixture
def precisions(monkeypatch) -> list[str]:
    """The precision every Predictor the scaffold builds was asked for, in order."""
    import bertsent.predict

    asked: list[str] = []

    class Recording(Predictor):
        def __init__(self, *args, **overrides):
            asked.append(overrides.get("precision", "auto"))
            super().__init__(*args, **overrides)

    monkeypatch.setattr(bertsent.predict, "Predictor", Recording)
    return asked


def test_every_stage_returns_a_stage_result_scored_in_one_precision(trained_tiny_dir, tmp_path, precisions):
    common = {"model": str(trained_tiny_dir), "validation_samples": 20}
    results = {
        "prune": prune(PruneConfig(output_dir=str(tmp_path / "prune"), sparsity=0.5, **common)),
        "factorize": factorize(
            FactorizeConfig(output_dir=str(tmp_path / "factorize"), rank=4, recovery_epochs=0, **common)
        ),
        "trim-vocab": trim_vocab(TrimVocabConfig(output_dir=str(tmp_path / "trim"), **common)),
        "export": export(ExportConfig(model=str(trained_tiny_dir), output_dir=str(tmp_path / "onnx"))),
    }
    for name, result in results.items():
        assert type(result) is stage.StageResult, name
        assert result.record == json.loads((result.output_dir / COMPRESSION_FILE).read_text()), name
        assert result.metrics == json.loads((result.output_dir / METRICS_FILE).read_text()), name
        assert (result.output_dir / "README.md").is_file(), name
    # Two scores (before, after) for each stage that measures, all in the scaffold's one precision.
    assert precisions == [stage.SCORING_PRECISION] * 6
    for name in ("prune", "factorize", "trim-vocab"):
        validation = results[name].record["validation"]
        assert validation["reviews"] == 20
        assert validation["before"]["accuracy"] == pytest.approx(
            results["prune"].record["validation"]["before"]["accuracy"]
        )
        assert 0 <= validation["after"]["accuracy"] <= 1


def test_a_stage_killed_before_its_record_is_incomplete_and_completes_on_rerun(trained_tiny_dir, tmp_path, monkeypatch):
    config = FactorizeConfig(
        model=str(trained_tiny_dir),
        output_dir=str(tmp_path / "factorized"),
        rank=4,
        recovery_epochs=1,
        recovery_samples=32,
        validation_samples=20,
    )
    finish = stage.finish

    def killed(*args, **kwargs):
        raise RuntimeError("killed after training")

    monkeypatch.setattr(stage, "finish", killed)
    with pytest.raises(RuntimeError, match="killed after training"):
        factorize(config)
    out = tmp_path / "factorized"
    assert (out / "model.safetensors").is_file()  # trained and saved ...
    assert not (out / COMPRESSION_FILE).exists()  # ... but not complete: the recipe reruns it

    monkeypatch.setattr(stage, "finish", finish)
    result = factorize(config)
    record = json.loads((out / COMPRESSION_FILE).read_text())
    assert record == result.record and record["recovery"]["epochs"] == 1
    assert json.loads((out / METRICS_FILE).read_text())["method"] == "factorize"
    probs = Predictor(out).predict_proba(["a great film", "dull and boring"])
    assert probs.shape == (2, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
