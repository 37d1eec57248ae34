"""Prediction with a fine-tuned model folder: texts in, ``{"label", "score"}`` out, like the pipeline.

:class:`Predictor` is the one object that ``predict``, ``evaluate``, ``compare`` and ``serve`` share; files of any size
are streamed through it by :func:`predict_file` (with resume). The file formats (readers, writers, gzip)
and the ``{"label", "score"}`` formatter are :mod:`bertsent.tabular`'s, importable from here too.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bertsent.config import ExplainSettings, InferenceSettings, default_stride
from bertsent.encoding import Encoded, encode, encode_windows
from bertsent.errors import DataError, ModelError
from bertsent.folder import inference_settings
from bertsent.inference import TorchBackend, run, softmax
from bertsent.modeling.loading import load_tokenizer
from bertsent.route_choice import Route, load_route
from bertsent.tabular import (
    CHUNK,
    GZIP_FORMATS,
    GZIP_MAGIC,
    INPUT_FORMATS,
    OUTPUT_FORMATS,
    PREDICTION_COLUMNS,
    InputRows,
    format_predictions,
    input_format,
    iter_texts,
    open_input,
    rank_labels,
    read_texts,
)
from bertsent.tokenizer_json import JsonTokenizer

__all__ = [
    "CHUNK",
    "GZIP_FORMATS",
    "GZIP_MAGIC",
    "INPUT_FORMATS",
    "OUTPUT_FORMATS",
    "PREDICTION_COLUMNS",
    "InputRows",
    "Predictor",
    "format_predictions",
    "input_format",
    "iter_texts",
    "open_input",
    "predict_file",
    "rank_labels",
    "read_texts",
    "resolve_settings",
]

if TYPE_CHECKING:  # explanations import PyTorch and Captum: only a Predictor that explains needs them
    from bertsent.explain import Explainer

log = logging.getLogger(__name__)

SETTING_NAMES = frozenset(f.name for f in dataclasses.fields(InferenceSettings))


def resolve_settings(
    model_dir: Path, tokenizer, settings: InferenceSettings | None = None, **overrides
) -> InferenceSettings:
    """``settings`` (default: :class:`InferenceSettings`) with ``overrides`` (field names; None values mean
    "not given"), and max length/truncation left None filled from what the folder was trained with."""
    resolved = _given_settings(settings, **overrides)
    trained_length, trained_truncation = inference_settings(model_dir, tokenizer)
    max_length = resolved.max_length or trained_length
    return dataclasses.replace(
        resolved,
        max_length=max_length,
        truncation=resolved.truncation or trained_truncation,
        stride=default_stride(max_length) if resolved.stride is None else resolved.stride,
    )


def _given_settings(settings: InferenceSettings | None, **overrides) -> InferenceSettings:
    """``settings`` (default: :class:`InferenceSettings`) with ``overrides``, nothing filled from the folder yet."""
    unknown = sorted(set(overrides) - SETTING_NAMES)
    if unknown:
        raise TypeError(f"unknown inference settings {unknown}; known: {', '.join(sorted(SETTING_NAMES))}")
    base = settings if settings is not None else InferenceSettings()
    return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})


def _explain_settings(explain: bool | str | ExplainSettings) -> ExplainSettings:
    """``Predictor``'s ``explain``: True (the defaults), a method name, or settings (on or off as they say)."""
    if isinstance(explain, ExplainSettings):
        return explain
    if isinstance(explain, str):
        return ExplainSettings(explain=True, explain_method=explain)
    if isinstance(explain, bool):
        return ExplainSettings(explain=explain)
    raise TypeError(f"explain must be a bool, a method name or an ExplainSettings, got {type(explain).__name__}")


def _setting(name: str) -> property:
    """A read-only attribute that reads ``self.settings.<name>`` (``predictor.max_length``)."""
    return property(lambda self: getattr(self.settings, name), doc=f"The resolved ``settings.{name}``.")


DESCRIBED_SETTINGS = ("max_length", "truncation", "long_text", "stride", "batch_size")
"""The resolved inference settings a :class:`ModelDescription` repeats."""


@dataclasses.dataclass(frozen=True)
class ModelDescription:
    """What a loaded model is and how it runs, in one object (:meth:`Predictor.describe`): what the
    server's ``/info``, its metrics and its start banner show."""

    model_dir: Path
    """The model folder (the server shows only its name, never its path)."""
    labels: dict[int, str]
    """id2label."""
    backend: str
    """The backend's name: ``pytorch``, ``pytorch early-exit``, ``onnxruntime`` or ``openvino``."""
    precision: str
    """What the backend runs in: ``fp32``, ``bf16``, ``as exported``, ..."""
    threads: int
    """CPU threads the backend was given."""
    max_length: int
    truncation: str
    long_text: str
    """``truncate``: one ``max_length`` window per text; ``chunk``: overlapping windows averaged."""
    stride: int
    """Tokens shared by consecutive windows (``long_text="chunk"``)."""
    batch_size: int
    mean_layers: float | None = None
    """Early exit: mean encoder layers per text since counting began; None where every text runs every layer."""
    route: str = "torch"
    """The route: ``torch``, ``onnx`` or ``openvino`` (:mod:`bertsent.route_choice`)."""
    route_reason: str = ""
    """Why that route: ``--backend auto``'s verdict, a forced ``--backend``, or the folder's own format."""
    tokenizer: str = "transformers"
    """Which library tokenizes: ``tokenizers`` (the folder's ``tokenizer.json`` alone, where ``--backend auto``
    checked it against transformers) or ``transformers``."""


class Predictor:
    """A model folder ready to classify texts; the one object ``predict``, ``evaluate``, ``compare`` and
    ``serve`` share.

    It runs with ``settings`` (:class:`InferenceSettings`), any field of which a keyword overrides:
    ``Predictor(folder, batch_size=8, long_text="chunk")``. :attr:`settings` holds the resolved ones (max
    length and truncation filled in from the folder). ``backend="auto"`` runs an ONNX or OpenVINO folder as
    it is, and a PyTorch folder by the route :mod:`bertsent.route_choice` measured fastest on this CPU among
    those that agree with fp32 PyTorch (:attr:`route` says which and why). A PyTorch BERT runs its last
    layer for [CLS] only (:class:`ClsOnlyLastLayer`: same logits to float rounding, fewer FLOPs);
    ``cls_only=False`` runs the plain forward.

    ``explain=True`` (or a method name, or an :class:`ExplainSettings`) makes :meth:`__call__` add each
    text's ``"explanation"`` (:meth:`explain`); a folder that cannot be explained (ONNX, OpenVINO, INT8)
    is then a :class:`ModelError` at once, not at the first text.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        settings: InferenceSettings | None = None,
        *,
        explain: bool | str | ExplainSettings = False,
        **overrides,
    ) -> None:
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise ModelError(f"{self.model_dir}: not a model folder (no config.json)")
        if settings is not None and not isinstance(settings, InferenceSettings):
            raise TypeError(f"settings must be an InferenceSettings, got {type(settings).__name__}")
        # The route first: it does not depend on the length settings, and it says which library tokenizes.
        self.backend, route = load_route(self.model_dir, _given_settings(settings, **overrides))
        self.route: Route = route
        """Which route runs the folder and why (:class:`~bertsent.route_choice.Route`)."""
        self.tokenizer = JsonTokenizer(self.model_dir) if route.light_tokenizer else load_tokenizer(self.model_dir)
        self.settings = resolve_settings(self.model_dir, self.tokenizer, settings, **overrides)
        self.id2label = self.backend.id2label
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.explain_settings = _explain_settings(explain)
        self._explainer: Explainer | None = None
        self._explainer_lock = threading.Lock()
        if self.explain_settings.explain:
            _ = self.explainer  # refuse a folder that cannot be explained now, before any text is read

    @property
    def explainer(self) -> Explainer:
        """The :class:`~bertsent.explain.Explainer` of this folder, made on first use (thread-safe).

        It attributes on its own module tree over the backend's weight tensors (no second copy of the
        weights), so explanations may run while other threads predict. A :class:`ModelError` where the
        backend is not PyTorch: ONNX Runtime and OpenVINO give no gradients.
        """
        with self._explainer_lock:
            if self._explainer is None:
                from bertsent.explain import Explainer

                tokenizer = load_tokenizer(self.model_dir) if self.route.light_tokenizer else self.tokenizer  # offsets
                self._explainer = Explainer(
                    self._explained_model(), tokenizer, self.max_length, self.truncation, self.explain_settings
                )
            return self._explainer

    def _explained_model(self):
        """The PyTorch model explanations follow: the backend's, or, where ``--backend auto`` runs a PyTorch
        folder with another route, the folder's model loaded now (explanations only; predictions keep the route)."""
        if isinstance(self.backend, TorchBackend):
            return self.backend.model
        if self.route.auto:
            from bertsent.modeling.loading import load_classifier

            log.info("explanations run on %s's PyTorch model; predictions with %s", self.model_dir, self.route.name)
            return load_classifier(self.model_dir).eval()
        raise ModelError(
            f"{self.model_dir}: explanations need the PyTorch backend (they follow gradients), and this "
            f"folder runs with {self.backend.name}: explain the PyTorch folder it was made from "
            "(or use backend='torch' if it also holds model.safetensors)"
        )

    def explain(
        self, texts: list[str], method: str | None = None, targets: Sequence[int] | None = None
    ) -> list[list[dict]]:
        """Each text's ``[{"word", "start", "end", "score"}, ...]`` for its predicted label (or ``targets``' label).

        ``text[start:end] == word``; scores in [-1, 1], > 0 where the word supports the label. ``method``:
        ``integrated-gradients`` or ``input-x-gradient`` (default: the ``explain`` setting's). The text is
        truncated as for prediction (``max_length``, ``truncation``; ``long_text="chunk"`` too): words cut
        away get no entry. See :mod:`bertsent.explain`.
        """
        return self.explainer.explain(texts, targets, method)

    max_length = _setting("max_length")
    truncation = _setting("truncation")
    batch_size = _setting("batch_size")
    long_text = _setting("long_text")
    stride = _setting("stride")

    def encode(self, texts: list[str]) -> Encoded:
        """Texts tokenized and truncated to the max length (one row each, whatever ``long_text`` says)."""
        return encode(self.tokenizer, texts, self.max_length, self.truncation)

    def prepare(self, texts: list[str]) -> tuple[Encoded, np.ndarray | None]:
        """Texts tokenized as the settings say: truncated (and None), or ``long_text="chunk"``'s windows
        and the text each window belongs to."""
        if self.long_text == "chunk":
            return encode_windows(self.tokenizer, list(texts), self.max_length, self.stride)
        return self.encode(list(texts)), None

    def scores(self, encoded: Encoded, owner: np.ndarray | None = None, progress: bool | None = False) -> np.ndarray:
        """Probabilities of encoded rows; with ``owner`` (from :meth:`prepare`), each text's mean over its windows."""
        probs = softmax(run(self.backend, encoded, self.batch_size, self.pad_id, progress))
        if owner is None:
            return probs
        per_text = np.zeros((int(owner.max()) + 1 if len(owner) else 0, probs.shape[1]), dtype=np.float32)
        np.add.at(per_text, owner, probs)
        return per_text / np.bincount(owner)[:, None]

    def predict_proba(self, texts: list[str] | Encoded, progress: bool | None = False) -> np.ndarray:
        """Probabilities, shape ``(len(texts), num_labels)``, in input order (batches sorted by length).

        ``Encoded`` input is scored row by row as it is (no windows).
        """
        if isinstance(texts, Encoded):
            return self.scores(texts, None, progress)
        return self.scores(*self.prepare(texts), progress=progress)

    def describe(self) -> ModelDescription:
        """What this Predictor runs and how, now (early exit's ``mean_layers`` changes as texts are scored)."""
        backend = self.backend
        return ModelDescription(
            model_dir=self.model_dir,
            labels={int(k): str(v) for k, v in self.id2label.items()},
            backend=backend.name,
            precision=str(backend.precision),
            threads=backend.threads,
            mean_layers=backend.mean_layers,
            route=self.route.name,
            route_reason=self.route.reason,
            tokenizer="tokenizers" if isinstance(self.tokenizer, JsonTokenizer) else "transformers",
            **{name: getattr(self.settings, name) for name in DESCRIBED_SETTINGS},
        )

    def __call__(self, texts: str | list[str], top_k: int | None = 1) -> list[dict] | list[list[dict]]:
        """Pipeline-shaped output: ``[{"label": ..., "score": ...}]``; ``top_k=None`` gives all scores.

        With ``explain``, the best label's dict also holds ``"explanation"`` (see :meth:`explain`).
        """
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        probs = self.predict_proba(texts)
        ranked = rank_labels(probs, self.id2label, top_k)
        if self.explain_settings.explain:
            for scored, words in zip(ranked, self.explain(texts, targets=probs.argmax(-1)), strict=True):
                scored[0]["explanation"] = words
        return [scored[0] for scored in ranked] if top_k == 1 else ranked


def _batched(items: Iterator[list], size: int) -> Iterator[list[list]]:
    chunk: list[list] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _progress_file(output_path: Path) -> Path:
    return output_path.with_name(output_path.name + ".progress.json")


def _resume_point(marker: Path, output_path: Path, columns: list[str]) -> tuple[int, int]:
    """Rows done and bytes written by an interrupted run, from its progress file (0, 0 without one)."""
    if not marker.is_file():
        log.warning("--resume: no progress file %s; starting from the first row", marker)
        return 0, 0
    try:
        state = json.loads(marker.read_text())
        done, offset = int(state["rows"]), int(state["bytes"])
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{marker}: unreadable progress file ({e}); delete it and {output_path} to start over") from e
    started = state.get("columns", columns)
    if started != columns:
        raise DataError(
            f"{output_path} was started with columns {','.join(started)} but this run writes {','.join(columns)}: "
            f"resume with the same --keep-columns/--text-column, or delete {output_path} and {marker}"
        )
    log.info("resuming %s after %d rows", output_path, done)
    return done, offset


EXPLAIN_CHUNK = 64
"""Texts per chunk when explaining: an explanation costs ~100 forward passes, so the progress file (and
``--resume``) moves on every few seconds, not every 4,096 reviews."""


def _explanation_column(predictor: Predictor, table: InputRows) -> tuple[str, ...]:
    """``("explanation",)`` when the predictor explains (an input column of that name is renamed
    ``input_explanation``, as ``label`` and ``score`` are), else ``()``."""
    settings = getattr(predictor, "explain_settings", None)
    if settings is None or not settings.explain:
        return ()
    if "explanation" in table.columns:
        at = table.columns.index("explanation")
        table.columns[at] = new = next(
            name
            for name in (f"input_explanation{'' if k == 1 else f'_{k}'}" for k in itertools.count(1))
            if name not in table.columns
        )
        log.warning("writing input column 'explanation' as %r (explanation is the output's own)", new)
    return ("explanation",)


def _predict_rows(predictor: Predictor, texts: list[str], explain: bool) -> list[dict]:
    """One ``{"label", "score"}`` per text, with ``"explanation"`` (of that label) when ``explain``."""
    probs = predictor.predict_proba(texts)
    rows = [ranked[0] for ranked in rank_labels(probs, predictor.id2label)]
    if explain:
        for row, words in zip(rows, predictor.explain(texts, targets=probs.argmax(-1)), strict=True):
            row["explanation"] = words
    return rows


def predict_file(
    predictor: Predictor,
    input_path: Path,
    output_path: Path,
    text_column: str = "text",
    *,
    keep_columns: Sequence[str] | None = None,
    resume: bool = False,
    encoding: str = "utf-8",
    progress: bool | None = None,
    chunk_size: int = CHUNK,
) -> int:
    """Classify every text of ``input_path`` into ``output_path`` in input order; returns the rows written.

    Each output row holds the input row's columns (``keep_columns``: None, the default, keeps all;
    ``[]`` only the text; see :func:`open_input`), then ``label`` and ``score`` (and ``explanation`` when
    the predictor explains: a list in JSONL, a JSON string in CSV). Works in chunks, so
    files larger than memory stream through. After each chunk a sidecar ``<output>.progress.json``
    records rows and bytes written; ``resume`` truncates the output to that point and skips the rows
    already done, so an interrupted run neither duplicates nor loses rows.
    """
    from tqdm.auto import tqdm

    suffix = output_path.suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise DataError(f"{output_path}: unknown output format '{output_path.suffix}' (use .csv or .jsonl)")
    table = open_input(input_path, text_column, encoding, keep_columns)
    if output_path.exists() and output_path.resolve() == Path(input_path).resolve():
        raise DataError(f"{output_path}: is the input file too; write the predictions elsewhere")
    marker = _progress_file(output_path)
    extra = _explanation_column(predictor, table)
    chunk_size = min(chunk_size, EXPLAIN_CHUNK) if extra else chunk_size
    written = [*table.columns, *extra]  # what a resumed run must write too
    done, offset = _resume_point(marker, output_path, written) if resume else (0, 0)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    with output_path.open("r+b" if offset else "wb") as out:
        out.truncate(offset)  # drop anything written after the last recorded chunk
        out.seek(offset)
        skipped = sum(1 for _ in zip(range(done), table.rows, strict=False))
        if skipped < done:
            raise DataError(f"{input_path}: has {skipped} rows but {output_path} already holds {done}: wrong file?")
        with tqdm(
            desc="predicting", unit="review", initial=done, disable=not progress if progress is not None else None
        ) as bar:
            for chunk in _batched(table.rows, chunk_size):
                rows = _predict_rows(predictor, [row[table.text_index] for row in chunk], bool(extra))
                text = format_predictions(suffix, table.columns, chunk, rows, header=done == 0, extra=extra)
                out.write(text.encode("utf-8"))
                out.flush()
                done += len(chunk)
                # Write-then-rename: an interrupt never leaves a half-written progress file.
                staged = marker.with_suffix(".tmp")
                state = {"rows": done, "bytes": out.tell(), "input": str(input_path), "columns": written}
                staged.write_text(json.dumps(state))
                os.replace(staged, marker)
                bar.update(len(chunk))
    if done == 0 and offset == 0:
        output_path.write_bytes(format_predictions(suffix, table.columns, [], [], True, extra).encode("utf-8"))
    marker.unlink(missing_ok=True)
    return done
