"""The one context for a pass over a model in memory: inference, gradients (explanations, pruning's
importance, Fisher weighting) or features without gradients (early exit's cached states, activation
statistics). :func:`model_pass` sets the train/eval mode and the grad mode asked for and gives every
submodule its own mode back in ``finally``; :func:`pass_batches` is the batched loop such a pass runs,
on the model's device, with bertsent's progress policy.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import numpy as np
import torch

from bertsent.encoding import Encoded, iter_batches
from bertsent.runtime import progress_bar

log = logging.getLogger(__name__)

__all__ = ["model_pass", "pass_batches"]


@contextlib.contextmanager
def model_pass(
    model: torch.nn.Module, *, train: bool = False, grad: bool = False, inference: bool = False
) -> Iterator[torch.nn.Module]:
    """While open, ``model`` is in training mode (``train=True``: dropout on) or eval mode, and autograd is

    - ``grad=True``: on, even inside an outer ``torch.inference_mode()`` or ``no_grad`` (a server thread);
    - ``inference=True``: off, in ``torch.inference_mode()`` (the fastest; its tensors never join autograd);
    - neither: off, in ``torch.no_grad()`` (features that later train something, e.g. cached states).

    On exit, an exception included, every submodule gets back the mode it had (a model whose heads were
    in eval mode and its body in training mode stays so).
    """
    if grad and inference:
        raise ValueError("a pass is either for gradients (grad=True) or inference (inference=True), not both")
    modes = [(module, module.training) for module in model.modules()]
    model.train(train)
    with contextlib.ExitStack() as stack:
        try:
            if grad:
                stack.enter_context(torch.inference_mode(False))
                stack.enter_context(torch.enable_grad())
            else:
                stack.enter_context(torch.inference_mode() if inference else torch.no_grad())
            yield model
        finally:
            for module, training in modes:
                module.training = training


def pass_batches(
    model: torch.nn.Module,
    encoded: Encoded,
    batch_size: int,
    pad_id: int,
    *,
    desc: str,
    progress: bool | None = None,
) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    """:func:`~bertsent.encoding.iter_batches` (longest first, each padded to its longest text) moved to
    ``model``'s device, with the rows' original indices; a bar named ``desc`` under ``progress`` (None: on a
    terminal, see :func:`~bertsent.runtime.progress_bar`)."""
    device = next(model.parameters()).device
    with progress_bar(progress, total=len(encoded), desc=desc, unit="review") as bar:
        for idx, batch in iter_batches(encoded, batch_size, pad_id):
            yield idx, {name: torch.from_numpy(array).to(device) for name, array in batch.items()}
            bar.update(len(idx))
