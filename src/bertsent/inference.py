"""The one inference path: backends that turn token batches into logits, and the batched loop over them.

:class:`Backend` declares every member a caller uses (``name``, ``id2label``, ``precision``, ``threads``,
``mean_layers``, ``reset_exit_counts()``, ``running()``, ``logits(batch)``), and every backend has them all:
:class:`TorchBackend` runs a PyTorch folder or an in-memory model, :class:`EarlyExitBackend` an early-exit
folder, :class:`OnnxBackend` a folder's ``model.onnx`` (or any ONNX file: :meth:`OnnxBackend.from_file`),
:class:`OpenVinoBackend` its ``openvino_model.xml``. :func:`load_backend` picks one by what the folder holds
(or what ``settings.backend`` insists on) and runs it as its :class:`~bertsent.config.InferenceSettings`
say; :func:`as_candidate` hands a backend to the parity check. :func:`validation_sample` and
:func:`agreement_verdict` are the guard against fp32 that ``precision="auto"`` and ``backend="auto"``
(:mod:`bertsent.route_choice`) share.

``precision="auto"`` lets a backend run a reduced precision (bf16) where the hardware runs it fast, but
only once :func:`precision_verdict` has found it agrees with fp32 on the folder's validation reviews
(checked once per machine, cached in ``precision_check.json``); fp32 otherwise.
:func:`run` is the only batched inference loop: ``Predictor``, training's validation, distillation's
teacher logits and pruning's in-memory metrics all go through it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from bertsent.config import INFERENCE_BACKENDS, LONG_TEXT, PRECISIONS, InferenceSettings
from bertsent.encoding import Encoded, iter_batches
from bertsent.errors import BertsentError, ModelError, SettingsError, first_line
from bertsent.folder import (
    INPUT_NAMES,
    ONNX_FILE,
    OPENVINO_XML,
    OUTPUT_NAME,
    PRECISION_CHECK_FILE,
    WEIGHT_PATTERNS,
    read_id2label,
    recorded_early_exit,
    write_json_whole,
)
from bertsent.runtime import (
    OPENVINO_PRECISIONS,
    auto_precision,
    cpu_capabilities,
    openvino_config,
    precision_name,
    progress_bar,
    require_onnxruntime,
    require_openvino,
    session_options,
    torch_threads,
)

if TYPE_CHECKING:  # PyTorch is imported where a PyTorch backend is made: the ONNX and OpenVINO routes start without it
    import torch

    from bertsent.modeling.early_exit import EarlyExitModel
    from bertsent.modeling.parity import Candidate

log = logging.getLogger(__name__)

__all__ = [
    "LONG_TEXT",
    "PRECISIONS",
    "Backend",
    "EarlyExitBackend",
    "FullDepth",
    "OnnxBackend",
    "OpenVinoBackend",
    "TorchBackend",
    "as_candidate",
    "load_backend",
    "precision_verdict",
    "predict_probs",
    "run",
    "softmax",
]


class Backend(Protocol):
    """Every member a caller of a backend may use; all four backends implement all of them.

    ``precision`` says what it actually runs (``fp32``, ``bf16``, ``as exported``, ...); ``threads`` the CPU
    threads it was given; ``mean_layers`` the mean encoder layers per row since :meth:`reset_exit_counts`
    (early exit only; None elsewhere, where reset is a no-op). :func:`run` enters :meth:`running` around its
    whole loop (PyTorch: eval mode and inference mode, the model's own mode restored after; a no-op
    elsewhere)."""

    name: str
    id2label: dict[int, str]
    precision: str
    threads: int

    @property
    def mean_layers(self) -> float | None: ...

    def reset_exit_counts(self) -> None:
        """Start counting exits afresh (early exit; a no-op elsewhere)."""
        ...

    def running(self) -> contextlib.AbstractContextManager:
        """The context :func:`run` holds for a whole loop."""
        ...

    def logits(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """float32 logits, shape ``(rows, num_labels)``, of one padded batch (int64 ``input_ids`` and
        ``attention_mask``, as :func:`~bertsent.encoding.collate` makes them)."""
        ...


class FullDepth:
    """What a backend without early exit says of it, and the loop context of a backend that needs none:
    the defaults :class:`OnnxBackend`, :class:`OpenVinoBackend` and :class:`TorchBackend` share."""

    mean_layers: float | None = None

    def reset_exit_counts(self) -> None:
        """Nothing to reset: every row runs every layer."""

    def running(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()


def run(backend: Backend, encoded: Encoded, batch_size: int, pad_id: int, progress: bool | None = False) -> np.ndarray:
    """Logits for every encoded text, float32 ``(len(encoded), num_labels)``, in input order.

    The one batched inference loop: batches of ``batch_size`` texts sorted longest first
    (:func:`~bertsent.encoding.iter_batches`), each padded to its own longest text with ``pad_id``.
    ``progress``: bertsent's one policy (:func:`~bertsent.runtime.progress_bar`): None shows a bar on a
    terminal, True always, False (the default: short internal passes, a server's batches) never.
    """
    out = np.zeros((len(encoded), len(backend.id2label)), dtype=np.float32)
    with backend.running(), progress_bar(progress, total=len(encoded), desc="predicting", unit="review") as bar:
        for idx, batch in iter_batches(encoded, batch_size, pad_id):
            out[idx] = backend.logits(batch)
            bar.update(len(idx))
    return out


def as_candidate(backend: Backend) -> Candidate:
    """``backend`` as :func:`~bertsent.modeling.parity.parity_check`'s candidate: int64 ``(input_ids,
    attention_mask)`` arrays in, float32 logits out (export checks its graph through the backend that runs it)."""

    def candidate(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        with backend.running():
            return backend.logits(batch)

    return candidate


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
    import torch

    logits = run(TorchBackend.from_model(model, device, dtype), encoded, batch_size, pad_id, progress)
    return torch.softmax(torch.from_numpy(logits).to(device), dim=-1).cpu().numpy()


class TorchBackend(FullDepth):
    """Runs a PyTorch model in fp32, or under autocast to ``dtype`` (bf16: GPUs, and CPUs with AMX).

    :meth:`from_folder` loads a folder (its last encoder layer then runs for [CLS] only, see
    :func:`cls_only_last_layer`, unless ``cls_only=False``); :meth:`from_model` wraps a model in memory
    as it is. Either way :func:`run` puts the model in eval mode for the loop and restores its mode after.
    """

    name = "pytorch"

    def __init__(
        self, model: torch.nn.Module, device: torch.device, dtype: torch.dtype | None = None, cls_only: bool = False
    ) -> None:
        import torch

        self.model, self.device, self.dtype, self.cls_only = model, device, dtype, cls_only
        self.id2label = {int(k): v for k, v in model.config.id2label.items()}
        self.threads = torch.get_num_threads()

    @property
    def precision(self) -> str:
        """``bf16`` under bf16 autocast, else ``fp32`` (what a comparison row records)."""
        return precision_name(self.dtype)

    @classmethod
    def from_model(cls, model: torch.nn.Module, device: torch.device, dtype: torch.dtype | None = None):
        """A model in memory (not moved to ``device``, not rewritten): batches go to ``device``."""
        return cls(model, device, dtype)

    @classmethod
    def from_folder(cls, model_dir: Path, settings: InferenceSettings | None = None) -> TorchBackend:
        """A folder's model as ``settings`` say: ``device`` (``auto``: CUDA when there is one), ``threads``
        CPU threads, ``cls_only``, ``compile``.

        ``precision="auto"``: bf16 autocast where :func:`~bertsent.runtime.auto_precision` says the device
        runs it fast and :func:`precision_verdict` accepts it, else fp32; ``fp32``/``bf16`` force one."""
        import torch

        from bertsent.modeling.cls_only import cls_only_last_layer
        from bertsent.modeling.loading import load_classifier
        from bertsent.modeling.quantized import is_torch_dynamic
        from bertsent.runtime import pick_device

        settings = settings if settings is not None else InferenceSettings()
        precision = settings.precision
        _check_precision(precision)
        torch_threads(settings.threads)
        model = load_classifier(model_dir)
        target = pick_device(settings.device)
        model.to(target).eval()
        chosen = auto_precision(target) if precision == "auto" else precision
        if chosen != "fp32" and is_torch_dynamic(model):
            if precision != "auto":
                raise SettingsError(
                    f"{model_dir}: a torch-dynamic INT8 folder runs fp32 activations; --precision {precision} "
                    "cannot apply to it (use auto or fp32)"
                )
            chosen = "fp32"  # its INT8 kernels are what makes it fast; bf16 autocast would break them
        backend = cls(model, target, torch.bfloat16 if chosen == "bf16" else None)
        backend.cls_only = settings.cls_only and cls_only_last_layer(model)
        if precision == "auto" and backend.dtype is not None:
            fp32 = functools.partial(cls, model, target, None, backend.cls_only)  # the same model, in fp32
            if not precision_verdict(Path(model_dir), backend, fp32, _torch_key(target)):
                backend.dtype = None
        if settings.compile:
            backend.model = backend._compiled(model)
        return backend

    def _compiled(self, model):
        """``torch.compile`` with dynamic shapes (batch and length vary), compiled now on a small batch;
        eager, with a warning, where it cannot compile (e.g. no C++ compiler for the CPU backend)."""
        import torch

        compiled = torch.compile(model, dynamic=True)
        ids = torch.full((2, 8), 1000, dtype=torch.long, device=self.device)
        try:
            self._forward(compiled, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
        except Exception as e:  # compiler errors come as many types; eager is always correct
            log.warning("torch.compile failed (%s): predicting eagerly", first_line(e))
            return model
        return compiled

    def running(self) -> contextlib.AbstractContextManager:
        """Eval mode and inference mode for a whole :func:`run`; the model's own mode comes back after."""
        from bertsent.modeling.passes import model_pass

        return model_pass(self.model, inference=True)

    def logits(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        return self._forward(self.model, batch)

    def _forward(self, model, batch: dict) -> np.ndarray:
        import torch

        with torch.inference_mode():
            batch = {k: torch.as_tensor(v).to(self.device) for k, v in batch.items()}
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                return model(**batch).logits.float().cpu().numpy()


class EarlyExitBackend(TorchBackend):
    """A PyTorch early-exit folder (``bertsent early-exit``): each row leaves the encoder at the first layer
    whose prediction is confident enough, by the rule the folder records
    (:class:`~bertsent.modeling.early_exit.EarlyExitModel`; its docstring states the batching rule: a batch
    goes on with the rows not yet exited only, so batched results equal one-at-a-time ones).

    ``model`` stays the full-depth classifier (what explanations and the precision check use); ``exit_model``
    is what :meth:`logits` runs. ``exit_counts[i]`` counts the rows that left after layer ``i + 1`` since the
    backend was made or :meth:`reset_exit_counts`; :attr:`mean_layers` is their mean.
    """

    name = "pytorch early-exit"

    def __init__(self, exit_model: EarlyExitModel, device: torch.device, dtype: torch.dtype | None = None) -> None:
        super().__init__(exit_model.model, device, dtype)
        self.exit_model = exit_model
        self.exit_counts = np.zeros(exit_model.num_layers, dtype=np.int64)

    @classmethod
    def wrapping(cls, backend: TorchBackend, exit_model: EarlyExitModel) -> EarlyExitBackend:
        """``exit_model`` on ``backend``'s device and precision (its model is ``backend.model``)."""
        wrapped = cls(exit_model.to(backend.device), backend.device, backend.dtype)
        wrapped.cls_only, wrapped.threads = backend.cls_only, backend.threads
        return wrapped

    @property
    def rule(self):
        """The :class:`~bertsent.modeling.early_exit.ExitRule` in use (criterion, threshold)."""
        return self.exit_model.rule

    @property
    def mean_layers(self) -> float | None:
        """Mean encoder layers per row counted so far (None before any row)."""
        rows = int(self.exit_counts.sum())
        return float(self.exit_counts @ np.arange(1, len(self.exit_counts) + 1)) / rows if rows else None

    def reset_exit_counts(self) -> None:
        self.exit_counts[:] = 0

    def running(self) -> contextlib.AbstractContextManager:
        """Eval and inference mode for the heads and the model, as :meth:`TorchBackend.running`."""
        from bertsent.modeling.passes import model_pass

        return model_pass(self.exit_model, inference=True)

    def logits(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            batch = {k: torch.as_tensor(v).to(self.device) for k, v in batch.items()}
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                out = self.exit_model(**batch)
        self.exit_counts += np.bincount(out.layers.cpu().numpy() - 1, minlength=len(self.exit_counts))
        return out.logits.float().cpu().numpy()


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise SettingsError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def load_backend(model_dir: Path, settings: InferenceSettings | None = None, **overrides) -> Backend:
    """The backend for a folder, run as ``settings`` say (default: :class:`InferenceSettings`; keywords
    override single fields, ``load_backend(folder, settings, threads=1)``).

    ``backend="auto"`` picks OpenVINO when the folder holds ``openvino_model.xml``, ONNX Runtime when it
    holds ``model.onnx``, else PyTorch (the measured choice of a route for a PyTorch folder, what
    ``Predictor`` runs, is :func:`bertsent.route_choice.load_route`'s, on top of this function); ``torch``,
    ``onnx`` or ``openvino`` insist on one (a :class:`ModelError` when the folder lacks its files). A
    PyTorch folder that records early exit runs as an :class:`EarlyExitBackend` (``exit_threshold``:
    instead of its recorded threshold)."""
    settings = dataclasses.replace(settings if settings is not None else InferenceSettings(), **overrides)
    backend, precision = settings.backend, settings.precision
    if backend not in INFERENCE_BACKENDS:
        raise SettingsError(f"backend must be one of {', '.join(INFERENCE_BACKENDS)}, got {backend!r}")
    _check_precision(precision)
    model_dir = Path(model_dir)
    has_onnx = (model_dir / ONNX_FILE).is_file()
    has_openvino = (model_dir / OPENVINO_XML).is_file()
    _check_files(model_dir, backend, has_onnx, has_openvino)
    exported = backend in ("onnx", "openvino") or (backend == "auto" and (has_onnx or has_openvino))
    if exported and settings.exit_threshold is not None:
        log.warning(
            "exit_threshold is for PyTorch early-exit folders; %s runs its exported graph at full depth", model_dir
        )
    if backend == "openvino" or (backend == "auto" and has_openvino):
        if settings.compile:
            log.warning("--compile is for PyTorch folders; %s runs with OpenVINO as it is", model_dir)
        return OpenVinoBackend.from_folder(model_dir, settings)
    if backend == "onnx" or (backend == "auto" and has_onnx):
        if settings.compile:
            log.warning("--compile is for PyTorch folders; %s runs with ONNX Runtime as it is", model_dir)
        if precision == "bf16":
            log.warning(
                "precision bf16 is for PyTorch and OpenVINO folders; %s runs with ONNX Runtime as exported", model_dir
            )
        return OnnxBackend(model_dir, threads=settings.threads)
    return _torch_backend(model_dir, settings)


def _check_files(model_dir: Path, backend: str, has_onnx: bool, has_openvino: bool) -> None:
    """A :class:`ModelError` when ``backend`` insists on files the folder lacks."""
    if backend == "onnx" and not has_onnx:
        raise ModelError(f"{model_dir}: backend 'onnx' needs {ONNX_FILE}, which it lacks (make one: bertsent export)")
    if backend == "openvino" and not has_openvino:
        raise ModelError(
            f"{model_dir}: backend 'openvino' needs {OPENVINO_XML}, which it lacks "
            "(make one: bertsent export --format openvino)"
        )
    if backend == "torch" and not any(any(model_dir.glob(p)) for p in WEIGHT_PATTERNS):
        held = OPENVINO_XML if has_openvino else ONNX_FILE if has_onnx else None
        hint = f"; it holds {held}: use backend '{'openvino' if has_openvino else 'onnx'}' or 'auto'" if held else ""
        raise ModelError(f"{model_dir}: backend 'torch' needs PyTorch weights (model.safetensors){hint}")


def _torch_backend(model_dir: Path, settings: InferenceSettings) -> TorchBackend:
    """:meth:`TorchBackend.from_folder`, as an :class:`EarlyExitBackend` when the folder records early exit."""
    from bertsent.modeling.early_exit import load_early_exit

    early_exit = recorded_early_exit(model_dir) is not None
    if settings.exit_threshold is not None and not early_exit:
        log.warning("exit_threshold is for early-exit folders (bertsent early-exit); %s runs at full depth", model_dir)
    if settings.compile and early_exit:
        # The layer loop shrinks the batch by data-dependent amounts: nothing a compiled graph would reuse.
        log.warning("--compile does not apply to early exit: %s runs eagerly", model_dir)
        settings = dataclasses.replace(settings, compile=False)
    backend = TorchBackend.from_folder(model_dir, settings)
    exit_model = load_early_exit(backend.model, model_dir, settings.exit_threshold) if early_exit else None
    return backend if exit_model is None else EarlyExitBackend.wrapping(backend, exit_model)


def _known_inputs(path: Path, names: list[str]) -> list[str]:
    """An exported graph's input names, refused when it wants inputs that bertsent does not feed."""
    unknown = set(names) - set(INPUT_NAMES)
    if unknown:
        raise ModelError(f"{path}: expects inputs {sorted(unknown)} that bertsent does not provide")
    return names


class OnnxBackend(FullDepth):
    """Runs a folder's ``model.onnx`` with ONNX Runtime on the CPU (the ``Predictor`` backend for it)."""

    name = "onnxruntime"
    precision = "as exported"

    def __init__(self, model_dir: str | os.PathLike, threads: int | None = None) -> None:
        self.model_dir = Path(model_dir)
        path = self.model_dir / ONNX_FILE
        if not path.is_file():
            raise ModelError(f"{self.model_dir}: no {ONNX_FILE}")
        self._open(path, read_id2label(self.model_dir), threads)

    @classmethod
    def from_file(cls, path: str | os.PathLike, id2label: dict, threads: int | None = None) -> OnnxBackend:
        """Any ONNX graph file, labelled by ``id2label`` (no folder around it needed: export's parity check
        runs the graph it is writing, before the folder holds a ``config.json``)."""
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"{path}: no such ONNX file")
        backend = cls.__new__(cls)
        backend.model_dir = path.parent
        backend._open(path, {int(k): str(v) for k, v in id2label.items()}, threads)
        return backend

    def _open(self, path: Path, id2label: dict[int, str], threads: int | None) -> None:
        """An ONNX Runtime session on ``path`` with :func:`~bertsent.runtime.session_options`."""
        ort = require_onnxruntime()
        self.id2label = id2label
        options = session_options(threads)
        self.threads = options.intra_op_num_threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own Fail/InvalidGraph/InvalidProtobuf types
            raise ModelError(f"cannot load {path} with onnxruntime: {first_line(e)}") from e
        self.input_names = _known_inputs(path, [i.name for i in self.session.get_inputs()])

    def logits(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        feed = {name: np.asarray(batch[name], dtype=np.int64) for name in self.input_names}
        return np.asarray(self.session.run([OUTPUT_NAME], feed)[0], dtype=np.float32)


class OpenVinoBackend(FullDepth):
    """Runs a folder's ``openvino_model.xml`` with OpenVINO on the CPU.

    ``precision``: ``None``/``"auto"`` keeps OpenVINO's own inference precision for the CPU (bf16 where
    it has AMX or AVX512-BF16, else f32); ``fp32`` or ``bf16`` set ``INFERENCE_PRECISION_HINT``. Threads:
    ``INFERENCE_NUM_THREADS`` by bertsent's thread policy. One infer request per calling thread.
    """

    name = "openvino"

    def __init__(self, model_dir: str | os.PathLike, threads: int | None = None, precision: str | None = None) -> None:
        self.model_dir = Path(model_dir)
        path = self.model_dir / OPENVINO_XML
        if not path.is_file():
            raise ModelError(f"{self.model_dir}: no {OPENVINO_XML}")
        self._open(path, read_id2label(self.model_dir), threads, precision)

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike,
        id2label: dict,
        threads: int | None = None,
        precision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> OpenVinoBackend:
        """Any OpenVINO IR file (``.xml`` beside its ``.bin``), labelled by ``id2label``: the IR that
        ``--backend auto`` converted into its cache. ``cache_dir``: OpenVINO's ``CACHE_DIR`` (compiled blobs;
        the IR is then compiled from its path, so a cached blob loads without reading the graph)."""
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"{path}: no such OpenVINO IR file")
        backend = cls.__new__(cls)
        backend.model_dir = path.parent
        backend._open(path, {int(k): str(v) for k, v in id2label.items()}, threads, precision, cache_dir)
        return backend

    def _open(
        self,
        path: Path,
        id2label: dict[int, str],
        threads: int | None,
        precision: str | None,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        """The IR at ``path`` compiled for the CPU by :func:`~bertsent.runtime.openvino_config`."""
        ov = require_openvino()
        import openvino.properties as props
        import openvino.properties.hint as hints

        self.id2label = id2label
        config = openvino_config(threads, precision, cache_dir)
        try:
            core = ov.Core()
            model = str(path) if cache_dir is not None else core.read_model(str(path))
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as e:  # OpenVINO raises RuntimeError and its own types
            raise ModelError(f"cannot load {path} with OpenVINO: {first_line(e)}") from e
        self.threads = int(self.compiled.get_property(props.inference_num_threads))
        inference_type = self.compiled.get_property(hints.inference_precision)
        self.precision = OPENVINO_PRECISIONS.get(inference_type.to_string(), str(inference_type))
        self.input_names = _known_inputs(path, [port.get_any_name() for port in self.compiled.inputs])
        self.output = self.compiled.output(0)
        self._local = threading.local()

    @classmethod
    def from_folder(cls, model_dir: Path, settings: InferenceSettings | None = None) -> OpenVinoBackend:
        """``settings``' threads and precision: OpenVINO's own under ``auto``, checked by
        :func:`precision_verdict` when it is not fp32."""
        settings = settings if settings is not None else InferenceSettings()
        threads, precision = settings.threads, settings.precision
        _check_precision(precision)
        backend = cls(model_dir, threads, None if precision == "auto" else precision)
        if precision == "auto" and backend.precision != "fp32":
            fp32 = functools.partial(cls, model_dir, threads, "fp32")  # compiled only if the check runs or fails
            if not precision_verdict(Path(model_dir), backend, fp32, _openvino_key()):
                return fp32()
        return backend

    def logits(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        feed = {name: np.asarray(batch[name], dtype=np.int64) for name in self.input_names}
        return np.array(request.infer(feed)[self.output], dtype=np.float32)


# --- precision="auto": the check of a reduced precision against fp32 ---------------------------------

PRECISION_MIN_AGREEMENT = 0.995
"""Share of validation reviews on which a reduced precision must give fp32's label."""
PRECISION_MAX_DROP_POINTS = 0.3
"""Accuracy points a reduced precision may lose against fp32 on the validation reviews."""
PRECISION_CHECK_REVIEWS = 500
"""Validation reviews the check classifies (at most; the folder's validation split may hold fewer)."""


def _torch_key(device: torch.device) -> str:
    import torch

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_capabilities()["model_name"]
    return f"pytorch | {where} | torch {torch.__version__}"


def _openvino_key() -> str:
    return f"openvino | {cpu_capabilities()['model_name']} | openvino {require_openvino().__version__}"


def _read_verdicts(path: Path) -> dict:
    try:
        verdicts = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return verdicts if isinstance(verdicts, dict) else {}


@dataclasses.dataclass(frozen=True)
class ValidationSample:
    """A folder's recorded validation reviews, encoded as it was trained (its max length and truncation):
    what a reduced precision or another route is checked on against fp32 PyTorch."""

    encoded: Encoded
    labels: np.ndarray
    pad_id: int
    source: str | None
    """Where the reviews came from (the recorded data's source)."""
    texts: list[str]
    tokenizer: object
    """The folder's transformers tokenizer that encoded ``texts`` (at the folder's ``max_length`` and
    ``truncation``, the fields below)."""
    max_length: int
    truncation: str


def validation_sample(model_dir: Path, id2label: dict[int, str]) -> tuple[ValidationSample | None, str | None]:
    """Up to :data:`PRECISION_CHECK_REVIEWS` of the folder's recorded validation reviews; ``(None, reason)``
    where it records none that can be read (no evidence either way)."""
    from bertsent.data.recorded import recorded_reviews
    from bertsent.encoding import encode
    from bertsent.folder import inference_settings
    from bertsent.modeling.loading import load_tokenizer

    try:
        reviews, reason = recorded_reviews(model_dir, id2label, validation_samples=PRECISION_CHECK_REVIEWS)
    except BertsentError as e:  # e.g. labels that differ: no usable reviews, so no evidence either way
        reviews, reason = None, first_line(e)
    if reviews is None:
        return None, reason
    tokenizer = load_tokenizer(model_dir)
    max_length, truncation = inference_settings(model_dir, tokenizer)
    texts = reviews.validation["text"].tolist()
    encoded = encode(tokenizer, texts, max_length, truncation)
    labels = reviews.validation["label"].to_numpy()
    pad_id, source = tokenizer.pad_token_id or 0, reviews.report.get("source")
    return ValidationSample(encoded, labels, pad_id, source, texts, tokenizer, max_length, truncation), None


def agreement_verdict(fp32: np.ndarray, candidate: np.ndarray, labels: np.ndarray) -> dict:
    """The guard of ``precision="auto"`` and ``backend="auto"``: a candidate's predicted labels against fp32
    PyTorch's on the same reviews; ``passed`` when they agree on at least :data:`PRECISION_MIN_AGREEMENT`
    of them and accuracy drops at most :data:`PRECISION_MAX_DROP_POINTS` points."""
    fp32_accuracy, accuracy = float(np.mean(fp32 == labels)), float(np.mean(candidate == labels))
    agreement = float(np.mean(fp32 == candidate))
    drop = 100 * (fp32_accuracy - accuracy)
    return {
        "reviews": len(labels),
        "agreement": round(agreement, 5),
        "fp32_accuracy": round(fp32_accuracy, 5),
        "accuracy": round(accuracy, 5),
        "accuracy_drop_points": round(drop, 3),
        "min_agreement": PRECISION_MIN_AGREEMENT,
        "max_drop_points": PRECISION_MAX_DROP_POINTS,
        "passed": agreement >= PRECISION_MIN_AGREEMENT and drop <= PRECISION_MAX_DROP_POINTS,
    }


def _measure_precision(model_dir: Path, candidate: Backend, reference) -> tuple[dict | None, str | None]:
    """Both backends on the folder's recorded validation reviews; (None, reason) when it records none."""
    sample, reason = validation_sample(model_dir, candidate.id2label)
    if sample is None:
        return None, reason
    fp32 = run(reference(), sample.encoded, 32, sample.pad_id).argmax(-1)
    reduced = run(candidate, sample.encoded, 32, sample.pad_id).argmax(-1)
    verdict = agreement_verdict(fp32, reduced, sample.labels)
    return {"precision": candidate.precision, "data": sample.source} | verdict, None


def precision_verdict(model_dir: Path, candidate: Backend, reference: Callable[[], Backend], key: str) -> bool:
    """Whether ``candidate`` (a reduced precision that ``precision="auto"`` chose) may replace the fp32
    backend that ``reference()`` builds (only when the check runs, not when the verdict is cached): their
    labels agree on at least :data:`PRECISION_MIN_AGREEMENT` of the folder's validation reviews and
    accuracy drops at most :data:`PRECISION_MAX_DROP_POINTS` points.

    Measured once per ``key`` (backend, CPU or GPU model, library version) and cached in the folder's
    ``precision_check.json``; a folder that records no readable data gets fp32, with a warning (no
    evidence is no licence). A failed check warns too.
    """
    path = model_dir / PRECISION_CHECK_FILE
    cached = _read_verdicts(path).get(key)
    if isinstance(cached, dict) and isinstance(cached.get("passed"), bool):
        return cached["passed"]
    verdict, reason = _measure_precision(model_dir, candidate, reference)
    if verdict is None:
        log.warning(
            "precision auto: %s could run %s, but %s has no validation reviews to check it against fp32 (%s): "
            "running fp32 (--precision %s skips the check)",
            candidate.name,
            candidate.precision,
            model_dir,
            reason,
            candidate.precision,
        )
        return False
    if verdict["passed"]:
        log.info("precision auto: %s %s agrees with fp32 (%s)", candidate.name, candidate.precision, verdict)
    else:
        log.warning(
            "precision auto: %s %s agreed with fp32 on %.2f%% of %d validation reviews (accuracy %+.2f points; "
            "needs >= %.1f%% and a drop <= %.1f points): falling back to fp32",
            candidate.name,
            candidate.precision,
            100 * verdict["agreement"],
            verdict["reviews"],
            -verdict["accuracy_drop_points"],
            100 * PRECISION_MIN_AGREEMENT,
            PRECISION_MAX_DROP_POINTS,
        )
    verdicts = _read_verdicts(path) | {key: verdict}
    try:
        # Processes checking the same folder at once (Ray actors, several servers) never read half a file.
        write_json_whole(path, verdicts)
    except OSError as e:  # a read-only folder: the check simply runs again next time
        log.info("precision auto: cannot cache the verdict in %s (%s)", path, first_line(e))
    return verdict["passed"]
