"""Backends that turn token batches into logits, and the batched loop over encoded texts.

:class:`TorchBackend` runs PyTorch folders, :class:`OnnxBackend` ONNX Runtime folders; :func:`load_backend`
picks by what the folder holds. Stages never write their own inference loop: they call these.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from bertsent.encoding import Encoded, iter_batches
from bertsent.errors import ModelError
from bertsent.folder import INPUT_NAMES, ONNX_FILE, OUTPUT_NAME, read_id2label
from bertsent.modeling.cls_only import cls_only_last_layer
from bertsent.modeling.loading import load_classifier
from bertsent.runtime import require_onnxruntime, session_options

log = logging.getLogger("bertsent.predict")

LONG_TEXT = ("truncate", "chunk")
PRECISIONS = ("fp32", "bf16")


@torch.inference_mode()
def predict_probs(
    model: torch.nn.Module,
    encoded: Encoded,
    batch_size: int,
    pad_id: int,
    device: torch.device,
    dtype: torch.dtype | None = None,
    progress: bool | None = False,
) -> np.ndarray:
    """Class probabilities for every encoded text, in input order (batches sorted by length)."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    out = np.zeros((len(encoded), model.config.num_labels), dtype=np.float32)
    with tqdm(total=len(encoded), desc="predicting", unit="review", disable=not progress) as bar:
        for idx, batch in iter_batches(encoded, batch_size, pad_id):
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = model(**batch).logits
            out[idx] = torch.softmax(logits.float(), dim=-1).cpu().numpy()
            bar.update(len(idx))
    model.train(was_training)
    return out


class TorchBackend:
    """Runs a PyTorch model folder in fp32, or under bf16 autocast (``precision="bf16"``, meant for GPUs).

    The last encoder layer runs for [CLS] only (:func:`cls_only_last_layer`) unless ``cls_only=False``.
    """

    name = "pytorch"

    def __init__(
        self,
        model_dir: Path,
        device: str = "auto",
        precision: str = "fp32",
        compile: bool = False,
        cls_only: bool = True,
    ) -> None:
        from bertsent.runtime import pick_device

        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.model = load_classifier(model_dir)
        self.device = pick_device(device)
        self.dtype = torch.bfloat16 if precision == "bf16" else None
        self.model.to(self.device).eval()
        self.id2label = {int(k): v for k, v in self.model.config.id2label.items()}
        self.cls_only = cls_only and cls_only_last_layer(self.model)
        if compile:
            self.model = self._compiled(self.model)

    def _compiled(self, model):
        """``torch.compile`` with dynamic shapes (batch and length vary), compiled now on a small batch;
        eager, with a warning, where it cannot compile (e.g. no C++ compiler for the CPU backend)."""
        compiled = torch.compile(model, dynamic=True)
        ids = torch.full((2, 8), 1000, dtype=torch.long, device=self.device)
        try:
            self.logits_of(compiled, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
        except Exception as e:  # compiler errors come as many types; eager is always correct
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            log.warning("torch.compile failed (%s): predicting eagerly", reason)
            return model
        return compiled

    def logits(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        return self.logits_of(self.model, batch)

    @torch.inference_mode()
    def logits_of(self, model, batch: dict[str, torch.Tensor]) -> np.ndarray:
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            return model(**batch).logits.float().cpu().numpy()


def load_backend(
    model_dir: Path,
    device: str = "auto",
    threads: int | None = None,
    precision: str = "fp32",
    compile: bool = False,
    cls_only: bool = True,
):
    """The backend a folder calls for: ONNX Runtime when it holds ``model.onnx``, else PyTorch."""
    if (model_dir / ONNX_FILE).is_file():
        from bertsent.inference import OnnxBackend

        if compile:
            log.warning("--compile is for PyTorch folders; %s runs with ONNX Runtime as it is", model_dir)
        return OnnxBackend(model_dir, threads=threads)
    return TorchBackend(model_dir, device, precision, compile, cls_only)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


class OnnxBackend:
    """Runs a folder's ``model.onnx`` with ONNX Runtime on the CPU (the ``Predictor`` backend for it)."""

    name = "onnxruntime"

    def __init__(self, model_dir: str | os.PathLike, threads: int | None = None) -> None:
        ort = require_onnxruntime()
        self.model_dir = Path(model_dir)
        path = self.model_dir / ONNX_FILE
        if not path.is_file():
            raise ModelError(f"{self.model_dir}: no {ONNX_FILE}")
        self.id2label = read_id2label(self.model_dir)
        options = session_options(threads)
        self.threads = options.intra_op_num_threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own Fail/InvalidGraph/InvalidProtobuf types
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelError(f"cannot load {path} with onnxruntime: {reason}") from e
        self.input_names = [i.name for i in self.session.get_inputs()]
        unknown = set(self.input_names) - set(INPUT_NAMES)
        if unknown:
            raise ModelError(f"{path}: expects inputs {sorted(unknown)} that bertsent does not provide")

    def logits(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        feed = {name: batch[name].detach().cpu().numpy().astype(np.int64, copy=False) for name in self.input_names}
        return np.asarray(self.session.run([OUTPUT_NAME], feed)[0], dtype=np.float32)
