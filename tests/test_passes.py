"""``model_pass``: the mode and grad mode asked for while open, every submodule's own mode back after,
an exception included; ``pass_batches``: the batched loop on the model's device."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bertsent.encoding import Encoded
from bertsent.modeling.passes import model_pass, pass_batches


def mixed_model() -> torch.nn.Module:
    """A body in training mode with a head in eval mode (as early exit's heads sit on a backbone)."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Dropout(0.5), torch.nn.Linear(4, 2)).train()
    model[2].eval()
    return model


def modes(model: torch.nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


def test_the_previous_modes_come_back_after_an_exception():
    model = mixed_model()
    before = modes(model)
    with pytest.raises(RuntimeError, match="mid-pass"), model_pass(model):
        assert not any(modes(model))  # eval everywhere while open
        raise RuntimeError("mid-pass")
    assert modes(model) == before == [True, True, True, False]
    with pytest.raises(KeyError), model_pass(model, train=True, grad=True):
        assert all(modes(model))
        raise KeyError("x")
    assert modes(model) == before
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()


def test_grad_modes():
    model = mixed_model()
    x = torch.ones(2, 3)
    with torch.inference_mode(), model_pass(model, grad=True):  # e.g. explaining from a server's thread
        model(x).sum().backward()
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0
    with model_pass(model):
        features = model(x)
    assert not features.requires_grad and not features.is_inference()  # no_grad: usable for later training
    with model_pass(model, inference=True):
        assert model(x).is_inference()
    with pytest.raises(ValueError, match="not both"), model_pass(model, grad=True, inference=True):
        pass
    assert modes(model) == [True, True, True, False]


def test_train_true_turns_dropout_on_and_eval_off():
    model = torch.nn.Sequential(torch.nn.Dropout(0.5)).eval()
    x = torch.ones(1, 1000)
    with model_pass(model, train=True):
        assert (model(x) == 0).any()
    with model_pass(model):
        assert torch.equal(model(x), x)
    assert not model.training


def test_pass_batches_cover_every_row_once_longest_first():
    encoded = Encoded(ids=[np.arange(n, dtype=np.int32) + 1 for n in (2, 5, 3, 4)], full_lengths=np.array([2, 5, 3, 4]))
    model = torch.nn.Linear(1, 1)
    seen, widths = [], []
    for idx, batch in pass_batches(model, encoded, 3, 0, desc="test", progress=False):
        assert batch["input_ids"].device == model.weight.device and batch["input_ids"].dtype == torch.long
        np.testing.assert_array_equal(batch["attention_mask"].sum(1).numpy(), [len(encoded.ids[i]) for i in idx])
        seen.extend(idx.tolist())
        widths.append(batch["input_ids"].shape[1])
    assert sorted(seen) == [0, 1, 2, 3] and widths == [5, 2]
