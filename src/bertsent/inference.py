"""The one inference path: backends that turn token batches into logits, and the batched loop over them.

A backend is anything with ``name``, ``id2label`` and ``logits(batch) -> np.ndarray`` (:class:`Backend`):
:class:`TorchBackend` runs a PyTorch folder or an in-memory model, :class:`OnnxBackend` a folder's
``model.onnx``; :func:`load_backend` picks by what the folder holds (or what ``backend=`` insists on).
:func:`run` is the only batched inference loop: ``Predictor``, training's validation, distillation's
teacher logits and pruning's in-memory metrics all go through it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from bertsent.config import INFERENCE_BACKENDS, LONG_TEXT, PRECISIONS
from bertsent.encoding import Encoded, iter_batches
from bertsent.errors import ModelError, SettingsError, first_line
from bertsent.folder import INPUT_NAMES, ONNX_FILE, OUTPUT_NAME, WEIGHT_PATTERNS, read_id2label
from bertsent.modeling.cls_only import cls_only_last_layer
from bertsent.modeling.loading import load_classifier
from bertsent.runtime import require_onnxruntime, session_options, torch_threads

log = logging.getLogger("bertsent.predict")

__all__ = [
    "LONG_TEXT",
    "PRECISIONS",
    "Backend",
    "OnnxBackend",
    "TorchBackend",
    "load_backend",
    "predict_probs",
    "run",
    "softmax",
]


class Backend(Protocol):
    """What :func:`run` needs from a backend. It may also offer ``running()``, a context manager that
    :func:`run` enters around the whole loop (:class:`TorchBackend`: eval mode, inference mode)."""

    name: str
    id2label: dict[int, str]

    def logits(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        """float32 logits, shape ``(rows, num_labels)``, of one padded batch."""
        ...


def run(backend: Backend, encoded: Encoded, batch_size: int, pad_id: int, progress: bool | None = False) -> np.ndarray:
    """Logits for every encoded text, float32 ``(len(encoded), num_labels)``, in input order.

    The one batched inference loop: batches of ``batch_size`` texts sorted longest first
    (:func:`~bertsent.encoding.iter_batches`), each padded to its own longest text with ``pad_id``.
    """
    from tqdm.auto import tqdm

    out = np.zeros((len(encoded), len(backend.id2label)), dtype=np.float32)
    running = getattr(backend, "running", contextlib.nullcontext)
    with running(), tqdm(total=len(encoded), desc="predicting", unit="review", disable=not progress) as bar:
        for idx, batch in iter_batches(encoded, batch_size, pad_id):
            out[idx] = backend.logits(batch)
            bar.update(len(idx))
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities of logits (last axis), in NumPy: what ``Predictor`` reports."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def predict_probs(
    model: torch.nn.Module,
    encoded: Encoded,
    batch_size: int,
    pad_id: int,
    device: torch.device,
    dtype: torch.dtype | None = None,
    progress: bool | None = False,
) -> np.ndarray:
    """Class probabilities of an in-memory model (training's validation, pruning before recovery), in input order.

    :func:`run` on :meth:`TorchBackend.from_model`; the softmax is torch's, on ``device``, as training has
    always computed it (NumPy's :func:`softmax` can differ in the last bit).
    """
    logits = run(TorchBackend.from_model(model, device, dtype), encoded, batch_size, pad_id, progress)
    return torch.softmax(torch.from_numpy(logits).to(device), dim=-1).cpu().numpy()


class TorchBackend:
    """Runs a PyTorch model in fp32, or under autocast to ``dtype`` (bf16, meant for GPUs).

    :meth:`from_folder` loads a folder (its last encoder layer then runs for [CLS] only, see
    :func:`cls_only_last_layer`, unless ``cls_only=False``); :meth:`from_model` wraps a model in memory
    as it is. Either way :func:`run` puts the model in eval mode for the loop and restores its mode after.
    """

    name = "pytorch"

    def __init__(
        self, model: torch.nn.Module, device: torch.device, dtype: torch.dtype | None = None, cls_only: bool = False
    ) -> None:
        self.model, self.device, self.dtype, self.cls_only = model, device, dtype, cls_only
        self.id2label = {int(k): v for k, v in model.config.id2label.items()}
        self.threads = torch.get_num_threads()

    @classmethod
    def from_model(cls, model: torch.nn.Module, device: torch.device, dtype: torch.dtype | None = None):
        """A model in memory (not moved to ``device``, not rewritten): batches go to ``device``."""
        return cls(model, device, dtype)

    @classmethod
    def from_folder(
        cls,
        model_dir: Path,
        device: str = "auto",
        precision: str = "fp32",
        compile: bool = False,
        cls_only: bool = True,
        threads: int | None = None,
    ) -> TorchBackend:
        """A folder's model on ``device`` (``auto``: CUDA when there is one), with ``threads`` CPU threads."""
        from bertsent.runtime import pick_device

        if precision not in PRECISIONS:
            raise SettingsError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        torch_threads(threads)
        model = load_classifier(model_dir)
        target = pick_device(device)
        model.to(target).eval()
        backend = cls(model, target, torch.bfloat16 if precision == "bf16" else None)
        backend.cls_only = cls_only and cls_only_last_layer(model)
        if compile:
            backend.model = backend._compiled(model)
        return backend

    def _compiled(self, model):
        """``torch.compile`` with dynamic shapes (batch and length vary), compiled now on a small batch;
        eager, with a warning, where it cannot compile (e.g. no C++ compiler for the CPU backend)."""
        compiled = torch.compile(model, dynamic=True)
        ids = torch.full((2, 8), 1000, dtype=torch.long, device=self.device)
        try:
            self._forward(compiled, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
        except Exception as e:  # compiler errors come as many types; eager is always correct
            log.warning("torch.compile failed (%s): predicting eagerly", first_line(e))
            return model
        return compiled

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Eval mode and inference mode for a whole :func:`run`; the model's own mode comes back after."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                yield
        finally:
            self.model.train(was_training)

    def logits(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        return self._forward(self.model, batch)

    @torch.inference_mode()
    def _forward(self, model, batch: dict[str, torch.Tensor]) -> np.ndarray:
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
    backend: str = "auto",
) -> Backend:
    """The backend for a folder: ``auto`` picks ONNX Runtime when it holds ``model.onnx``, else PyTorch;
    ``torch`` or ``onnx`` insist on one (a :class:`ModelError` when the folder lacks its files)."""
    if backend not in INFERENCE_BACKENDS:
        raise SettingsError(f"backend must be one of {', '.join(INFERENCE_BACKENDS)}, got {backend!r}")
    has_onnx = (model_dir / ONNX_FILE).is_file()
    if backend == "onnx" and not has_onnx:
        raise ModelError(f"{model_dir}: backend 'onnx' needs {ONNX_FILE}, which it lacks (make one: bertsent export)")
    if backend == "torch" and not any(any(model_dir.glob(p)) for p in WEIGHT_PATTERNS):
        hint = f"; it holds {ONNX_FILE}: use backend 'onnx' or 'auto'" if has_onnx else ""
        raise ModelError(f"{model_dir}: backend 'torch' needs PyTorch weights (model.safetensors){hint}")
    if backend == "onnx" or (backend == "auto" and has_onnx):
        if compile:
            log.warning("--compile is for PyTorch folders; %s runs with ONNX Runtime as it is", model_dir)
        return OnnxBackend(model_dir, threads=threads)
    return TorchBackend.from_folder(model_dir, device, precision, compile, cls_only, threads)


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
            raise ModelError(f"cannot load {path} with onnxruntime: {first_line(e)}") from e
        self.input_names = [i.name for i in self.session.get_inputs()]
        unknown = set(self.input_names) - set(INPUT_NAMES)
        if unknown:
            raise ModelError(f"{path}: expects inputs {sorted(unknown)} that bertsent does not provide")

    def logits(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        feed = {name: batch[name].detach().cpu().numpy().astype(np.int64, copy=False) for name in self.input_names}
        return np.asarray(self.session.run([OUTPUT_NAME], feed)[0], dtype=np.float32)
