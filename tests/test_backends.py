"""The backend interface: every backend offers every member of ``Backend``, ``load_backend`` takes
``InferenceSettings``, ``OnnxBackend`` runs a bare ONNX file, and ``run``'s progress policy."""

from __future__ import annotations

import contextlib
import inspect
import io
import sys

import numpy as np
import pytest
import torch

from bertsent.config import InferenceSettings
from bertsent.encoding import Encoded, encode
from bertsent.errors import ModelError
from bertsent.inference import (
    Backend,
    EarlyExitBackend,
    FullDepth,
    OnnxBackend,
    TorchBackend,
    as_candidate,
    load_backend,
    run,
)
from bertsent.modeling.early_exit import EarlyExitModel, ExitHead
from bertsent.modeling.loading import load_classifier, load_tokenizer
from bertsent.modeling.parity import PARITY_SHAPES, parity_check

MEMBERS = [name for name in vars(Backend) if not name.startswith("_")] + list(Backend.__annotations__)


def check_interface(backend, texts: list[str], tokenizer) -> np.ndarray:
    """Every member of the protocol is there and behaves as it says; returns the texts' logits."""
    for name in ("name", "id2label", "precision", "threads", "mean_layers", "reset_exit_counts", "running"):
        assert name in MEMBERS
        assert hasattr(backend, name), f"{type(backend).__name__} lacks {name}"
    assert isinstance(backend.name, str) and isinstance(backend.precision, str)
    assert isinstance(backend.threads, int) and backend.threads >= 1
    assert isinstance(backend.running(), contextlib.AbstractContextManager)
    backend.reset_exit_counts()
    logits = run(backend, encode(tokenizer, texts, 32), 4, tokenizer.pad_token_id)
    assert logits.shape == (len(texts), len(backend.id2label)) and logits.dtype == np.float32
    return logits


def test_torch_and_early_exit_backends_offer_every_member(trained_tiny_dir, toy_texts):
    tokenizer = load_tokenizer(trained_tiny_dir)
    torch_backend = load_backend(trained_tiny_dir, InferenceSettings(precision="fp32"))
    assert type(torch_backend) is TorchBackend
    check_interface(torch_backend, toy_texts[:10], tokenizer)
    assert torch_backend.mean_layers is None and torch_backend.precision == "fp32"

    model = load_classifier(trained_tiny_dir).eval()
    heads = torch.nn.ModuleList([ExitHead.like(model) for _ in range(model.config.num_hidden_layers - 1)])
    early = EarlyExitBackend(EarlyExitModel(model, heads), torch.device("cpu"))
    check_interface(early, toy_texts[:10], tokenizer)
    assert early.mean_layers is not None and 1 <= early.mean_layers <= model.config.num_hidden_layers
    early.reset_exit_counts()
    assert early.mean_layers is None  # nothing counted since the reset


def test_onnx_backend_offers_every_member_and_runs_a_bare_file(trained_tiny_dir, toy_texts, tmp_path):
    from bertsent.compression.export import export_onnx

    tokenizer = load_tokenizer(trained_tiny_dir)
    onnx_dir = export_onnx(trained_tiny_dir, tmp_path / "onnx")
    from_folder = load_backend(onnx_dir, InferenceSettings(threads=1))
    assert isinstance(from_folder, OnnxBackend) and from_folder.threads == 1
    expected = check_interface(from_folder, toy_texts[:10], tokenizer)
    assert from_folder.mean_layers is None

    # A graph being written: a lone model.onnx, no config.json beside it; the labels come from the caller.
    staged = tmp_path / "staging" / "anything.onnx"
    staged.parent.mkdir()
    staged.write_bytes((onnx_dir / "model.onnx").read_bytes())
    bare = OnnxBackend.from_file(staged, {0: "negative", 1: "positive"}, threads=1)
    assert bare.id2label == {0: "negative", 1: "positive"} and bare.threads == 1
    np.testing.assert_array_equal(check_interface(bare, toy_texts[:10], tokenizer), expected)
    # ... which is how export's parity check can run the graph through the backend that will serve it.
    model = load_classifier(trained_tiny_dir).eval()
    parity = parity_check("ONNX Runtime", as_candidate(bare), model, pad_id=tokenizer.pad_token_id)
    assert parity["max_abs_diff"] <= parity["atol"] and len(parity["shapes"]) == len(PARITY_SHAPES)
    with pytest.raises(ModelError, match="no such ONNX file"):
        OnnxBackend.from_file(tmp_path / "missing.onnx", {0: "a"})


def test_load_backend_takes_inference_settings(trained_tiny_dir):
    parameters = list(inspect.signature(load_backend).parameters)
    assert parameters[:2] == ["model_dir", "settings"]
    backend = load_backend(trained_tiny_dir, InferenceSettings(precision="fp32", cls_only=False, threads=1))
    assert backend.cls_only is False and backend.threads == 1
    # Keywords override single fields, as Predictor's do; an unknown one is refused.
    assert load_backend(trained_tiny_dir, InferenceSettings(cls_only=False), cls_only=True).cls_only is True
    with pytest.raises(TypeError):
        load_backend(trained_tiny_dir, colour="blue")


class FakeTerminal(io.StringIO):
    """stderr as a terminal sees it: what tqdm's ``disable=None`` checks."""

    def isatty(self) -> bool:
        return True


class Constant(FullDepth):
    """The least a backend for ``run`` is: ``id2label`` and ``logits``, with ``FullDepth``'s defaults for the rest."""

    name, id2label = "constant", {0: "a", 1: "b"}

    def logits(self, batch):
        return np.zeros((len(batch["input_ids"]), 2), dtype=np.float32)


@pytest.mark.parametrize(
    ("progress", "terminal", "shown"),
    [(None, True, True), (None, False, False), (True, False, True), (False, True, False)],
)
def test_run_progress_none_shows_a_bar_on_a_terminal_only(progress, terminal, shown, monkeypatch, capsys):
    encoded = Encoded(ids=[np.arange(1, 6, dtype=np.int32)] * 12, full_lengths=np.full(12, 5))
    stderr = FakeTerminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    logits = run(Constant(), encoded, 4, 0, progress=progress)
    assert logits.shape == (12, 2)
    bar = stderr.getvalue()
    assert ("predicting" in bar and "12/12" in bar) if shown else bar == ""
    assert capsys.readouterr().out == ""  # the bar goes to stderr, never into the output


def test_run_shows_no_bar_by_default(monkeypatch):
    encoded = Encoded(ids=[np.arange(1, 4, dtype=np.int32)] * 3, full_lengths=np.full(3, 3))
    monkeypatch.setattr(sys, "stderr", FakeTerminal())
    run(Constant(), encoded, 2, 0)  # internal passes and a server's batches: quiet even on a terminal
    assert sys.stderr.getvalue() == ""


def test_evaluate_and_calibrate_show_their_bar_on_a_terminal(trained_tiny_dir, toy_data_dir, tmp_path, monkeypatch):
    """Both pass ``progress=None`` (on a terminal), which ``run`` used to read as off."""
    from bertsent.calibration import calibrate
    from bertsent.config import CalibrateConfig, DataConfig
    from bertsent.evaluate import evaluate

    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    evaluate(trained_tiny_dir, DataConfig(str(toy_data_dir)), output_dir=tmp_path / "eval")
    assert "predicting" in terminal.getvalue()
    terminal.seek(0)
    terminal.truncate()
    calibrate(CalibrateConfig(model=str(trained_tiny_dir), output_dir=str(tmp_path / "cal"), evaluate_test=False))
    assert "predicting" in terminal.getvalue()
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file: no bar
    evaluate(trained_tiny_dir, DataConfig(str(toy_data_dir)), output_dir=tmp_path / "eval")
    assert "predicting" not in sys.stderr.getvalue()
