"""The shared pieces every stage uses: the one parity check, the training_args.json reader, weight sizes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from bertsent.errors import ExportParityError, KerasParityError, ModelError, first_line
from bertsent.folder import read_training_args, weight_files, weights_bytes
from bertsent.modeling.loading import load_classifier
from bertsent.modeling.parity import PARITY_SHAPES, parity_check, random_batch, reference_logits


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_classifier(tiny_model_dir).float().eval()


def test_the_reference_itself_passes_on_every_shape(model):
    parity = parity_check("PyTorch", lambda ids, mask: reference_logits(model, ids, mask), model)
    assert [tuple(s["shape"]) for s in parity["shapes"]] == list(PARITY_SHAPES)
    assert parity["max_abs_diff"] == 0.0 and parity["atol"] == 1e-4


def test_one_error_names_the_largest_difference_and_its_shape(model):
    def off_on_long_inputs(ids, mask):
        return reference_logits(model, ids, mask) + (0.5 if ids.shape[1] >= 50 else 0.01)

    with pytest.raises(ExportParityError) as caught:
        parity_check("the candidate's", off_on_long_inputs, model)
    message = str(caught.value)
    assert "differ from PyTorch by 0.5 (> atol 0.0001) on input shape 3x50" in message
    assert "tolerance 0.0001" in message and "1x7: 0.01" in message
    assert KerasParityError is ExportParityError  # the old name still catches it


def test_nan_and_wrong_shapes_fail(model):
    with pytest.raises(ExportParityError, match="by nan"):
        parity_check("NaN", lambda ids, mask: np.full((len(ids), 2), np.nan, np.float32), model)
    with pytest.raises(ExportParityError, match=r"have shape \(1, 3\), PyTorch \(1, 2\) on 1x7"):
        parity_check("wide", lambda ids, mask: np.zeros((len(ids), 3), np.float32), model)


def test_random_batch_pads_the_last_row_and_keeps_a_token():
    ids, mask = random_batch(30522, 0, 2, 1, seed=0)
    assert mask.tolist() == [[1], [1]]
    ids, mask = random_batch(30522, 0, 3, 10, seed=0)
    assert mask[-1].tolist() == [1] * 5 + [0] * 5 and (ids[-1, 5:] == 0).all() and (ids[:, :5] >= 1000).all()


def test_read_training_args(trained_tiny_dir, tiny_model_dir, tmp_path):
    assert read_training_args(tiny_model_dir) == {}
    assert read_training_args(trained_tiny_dir) == json.loads((trained_tiny_dir / "training_args.json").read_text())
    (tmp_path / "training_args.json").write_text("{not json")
    with pytest.raises(ModelError, match="cannot read .*training_args.json"):
        read_training_args(tmp_path)


def test_weights_bytes_counts_safetensors_and_onnx_files(tiny_model_dir, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "model.onnx").write_bytes(b"x" * 10)
    (folder / "model.onnx.data").write_bytes(b"x" * 5)
    names = [p.name for p in weight_files(folder)]
    assert names == ["model.onnx", "model.onnx.data", "model.safetensors"]
    assert weights_bytes(folder) == (folder / "model.safetensors").stat().st_size + 15


def test_first_line():
    assert first_line(ValueError("\n  one\ntwo")) == "one"
    assert first_line(KeyError()) == "KeyError"
