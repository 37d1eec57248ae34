"""Prediction with a fine-tuned model folder: texts in, ``{"label", "score"}`` out, like the pipeline.

:class:`Predictor` is the one object that ``predict``, ``evaluate``, ``compare`` and ``serve`` share; files of any size
are streamed through it by :func:`predict_file`.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import gzip
import io
import itertools
import json
import logging
import os
import threading
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import numpy as np

from bertsent.config import ExplainSettings, InferenceSettings
from bertsent.encoding import Encoded, encode, encode_windows
from bertsent.errors import DataError, ModelError
from bertsent.explain import Explainer
from bertsent.folder import inference_settings
from bertsent.inference import TorchBackend, load_backend, run, softmax
from bertsent.modeling.loading import load_tokenizer

SETTING_NAMES = frozenset(f.name for f in dataclasses.fields(InferenceSettings))


def resolve_settings(
    model_dir: Path, tokenizer, settings: InferenceSettings | None = None, **overrides
) -> InferenceSettings:
    """``settings`` (default: :class:`InferenceSettings`) with ``overrides`` (field names; None values mean
    "not given"), and max length/truncation left None filled from what the folder was trained with."""
    unknown = sorted(set(overrides) - SETTING_NAMES)
    if unknown:
        raise TypeError(f"unknown inference settings {unknown}; known: {', '.join(sorted(SETTING_NAMES))}")
    base = settings if settings is not None else InferenceSettings()
    resolved = dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})
    trained_length, trained_truncation = inference_settings(model_dir, tokenizer)
    return dataclasses.replace(
        resolved,
        max_length=resolved.max_length or trained_length,
        truncation=resolved.truncation or trained_truncation,
    )


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


class Predictor:
    """A model folder ready to classify texts; the one object ``predict``, ``evaluate``, ``compare`` and
    ``serve`` share.

    It runs with ``settings`` (:class:`InferenceSettings`), any field of which a keyword overrides:
    ``Predictor(folder, batch_size=8, long_text="chunk")``. :attr:`settings` holds the resolved ones (max
    length and truncation filled in from the folder). ``backend="auto"`` picks PyTorch, ONNX Runtime or OpenVINO by
    what the folder holds. A PyTorch BERT runs its last layer for [CLS] only (:class:`ClsOnlyLastLayer`:
    same logits to float rounding, fewer FLOPs); ``cls_only=False`` runs the plain forward.

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
        self.tokenizer = load_tokenizer(self.model_dir)
        self.settings = resolve_settings(self.model_dir, self.tokenizer, settings, **overrides)
        s = self.settings
        self.backend = load_backend(
            self.model_dir, s.device, s.threads, s.precision, s.compile, s.cls_only, s.backend, s.exit_threshold
        )
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
                if not isinstance(self.backend, TorchBackend):
                    raise ModelError(
                        f"{self.model_dir}: explanations need the PyTorch backend (they follow gradients), and this "
                        f"folder runs with {self.backend.name}: explain the PyTorch folder it was made from "
                        "(or use backend='torch' if it also holds model.safetensors)"
                    )
                self._explainer = Explainer(
                    self.backend.model, self.tokenizer, self.max_length, self.truncation, self.explain_settings
                )
            return self._explainer

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
            max_length=self.max_length,
            truncation=self.truncation,
            long_text=self.long_text,
            stride=self.stride,
            batch_size=self.batch_size,
            mean_layers=backend.mean_layers,
        )

    def __call__(self, texts: str | list[str], top_k: int | None = 1) -> list[dict] | list[list[dict]]:
        """Pipeline-shaped output: ``[{"label": ..., "score": ...}]``; ``top_k=None`` gives all scores.

        With ``explain``, the best label's dict also holds ``"explanation"`` (see :meth:`explain`).
        """
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        probs = self.predict_proba(texts)
        explained = self.explain(texts, targets=probs.argmax(-1)) if self.explain_settings.explain else None
        results = []
        for n, row in enumerate(probs):
            order = np.argsort(-row)[: top_k or len(row)]
            scored = [{"label": self.id2label[int(i)], "score": float(row[i])} for i in order]
            if explained is not None:
                scored[0]["explanation"] = explained[n]
            results.append(scored[0] if top_k == 1 else scored)
        return results


INPUT_FORMATS = (".csv", ".jsonl", ".json", ".txt", ".parquet")


GZIP_FORMATS = (".csv", ".jsonl", ".json", ".txt")
"""Input formats also read gzip-compressed: ``reviews.csv.gz`` (a gzip file named plain ``.csv`` is read too)."""


GZIP_MAGIC = b"\x1f\x8b"


OUTPUT_FORMATS = (".csv", ".jsonl", ".json")


PREDICTION_COLUMNS = ("label", "score")
"""What each output row ends with; a kept input column of that name is written as ``input_<name>``."""


CHUNK = 4096
"""Texts read, predicted and written at a time: memory stays flat whatever the file's size."""

log = logging.getLogger("bertsent.predict")


@dataclasses.dataclass
class InputRows:
    """An input file opened for streaming: the output's columns from the input, and its rows, lazily.

    Each row holds one value per column; ``row[text_index]`` is the text (a str). The text column is
    always among the columns and is named ``text`` whatever it is called in the input.
    """

    columns: list[str]
    text_index: int
    rows: Iterator[list]


def input_format(path: Path) -> str:
    """The format of an input file by its name (``.csv``; ``reviews.csv.gz`` -> ``.csv``)."""
    name = path.name.lower()
    compressed = name.endswith(".gz")
    suffix = Path(name.removesuffix(".gz")).suffix
    if suffix not in (GZIP_FORMATS if compressed else INPUT_FORMATS):
        known = ", ".join([*INPUT_FORMATS, *(f"{s}.gz" for s in GZIP_FORMATS)])
        raise DataError(f"{path}: unknown input format '{suffix}{'.gz' if compressed else ''}' (use {known})")
    return suffix


def open_input(
    path: Path, text_column: str = "text", encoding: str = "utf-8", keep_columns: Sequence[str] | None = None
) -> InputRows:
    """Open a CSV/JSONL/Parquet/TXT file (CSV/JSONL/TXT may be gzip-compressed) for streaming.

    ``keep_columns``: the input columns to carry into the output besides the text (None: all, in input
    order; ``[]``: none). A JSONL file's columns are the keys of all its records, so keeping them reads
    the file once more up front. Bad input (missing file or column) is a :class:`DataError` here,
    before any row is read; a bad row is one when it is reached.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = input_format(path)
    keep = None if keep_columns is None else list(keep_columns)
    if suffix == ".parquet":
        return _parquet_input(path, text_column, keep)
    if suffix == ".txt":
        if keep:
            raise DataError(f"{path}: a TXT file has one text a line and no columns to keep; drop --keep-columns")
        return InputRows(["text"], 0, ([line] for _, line in _records(path, suffix, encoding)))
    if suffix == ".csv":
        records = _records(path, suffix, encoding)
        header = next(records, (0, []))[1]
        picked, columns, text_index = _select_columns(path, header, text_column, keep)
        rows = ([r[i] if i < len(r) else "" for i in picked] for _, r in records)
        return InputRows(columns, text_index, rows)
    return _jsonl_input(path, suffix, text_column, encoding, keep)


def _select_columns(
    path: Path, names: list[str], text_column: str, keep: list[str] | None
) -> tuple[list[int], list[str], int]:
    """Positions in ``names`` of the columns to write (input order), their output names, and the text's place.

    The text column is written as ``text``; another kept column named ``text``, ``label`` or ``score``
    (or one repeating an earlier name) is renamed ``input_<name>``, with a warning, never overwritten.
    """
    found = ", ".join(names) or "none"
    if text_column not in names:
        raise DataError(f"{path}: no column '{text_column}' (found: {found}); pass --text-column")
    missing = [name for name in keep or [] if name not in names]
    if missing:
        raise DataError(
            f"{path}: no column {', '.join(map(repr, missing))} to keep (found: {found}); fix --keep-columns"
        )
    text_at = names.index(text_column)
    picked = [i for i, name in enumerate(names) if i == text_at or keep is None or name in keep]
    taken, columns, renamed = {"text", *PREDICTION_COLUMNS}, [], []
    for i in picked:
        name = new = "text" if i == text_at else names[i]
        for k in itertools.count(1):
            if i == text_at or new not in taken:
                break
            new = f"input_{name}" if k == 1 else f"input_{name}_{k}"
        if new != name:
            renamed.append(f"{name!r} as {new!r}")
        taken.add(new)
        columns.append(new)
    if renamed:
        log.warning("%s: writing column %s (text, label and score are the output's own)", path, ", ".join(renamed))
    return picked, columns, picked.index(text_at)


def _parquet_input(path: Path, text_column: str, keep: list[str] | None) -> InputRows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({' '.join(str(e).split())[:200]})") from None
    names = parquet.schema_arrow.names
    picked, columns, text_index = _select_columns(path, names, text_column, keep)
    fields = [names[i] for i in picked]

    def rows() -> Iterator[list]:
        for batch in parquet.iter_batches(batch_size=CHUNK, columns=fields):
            for row in zip(*(batch.column(f).to_pylist() for f in fields), strict=True):
                row = list(row)
                row[text_index] = "" if row[text_index] is None else str(row[text_index])
                yield row

    return InputRows(columns, text_index, rows())


def _jsonl_input(path: Path, suffix: str, text_column: str, encoding: str, keep: list[str] | None) -> InputRows:
    names: dict[str, None] = {}
    if keep != []:  # the columns are every record's keys, in order of first appearance
        for line_no, line in _records(path, suffix, encoding):
            record = _json_record(line, path, line_no)
            if isinstance(record, dict):
                names.update(dict.fromkeys(record))
    names = list(names) if text_column in names else [text_column, *names]  # a record lacking it fails on its line
    picked, columns, text_index = _select_columns(path, names, text_column, keep)
    fields = [names[i] for i in picked]

    def rows() -> Iterator[list]:
        for line_no, line in _records(path, suffix, encoding):
            record = _json_record(line, path, line_no)
            text = _json_text(record, path, line_no, text_column)
            row = [record.get(f) for f in fields] if isinstance(record, dict) else [None] * len(fields)
            row[text_index] = text
            yield row

    return InputRows(columns, text_index, rows())


def _records(path: Path, suffix: str, encoding: str) -> Iterator[tuple[int, str | list[str]]]:
    """``(line number, record)`` of a text input, gzip or not: CSV rows (the header first), or the
    non-blank lines of other formats without their newline."""
    line_no = 0
    try:
        with _open_text(path, encoding, newline="" if suffix == ".csv" else None) as f:
            if suffix == ".csv":
                reader = csv.reader(f)
                for row in reader:
                    line_no = reader.line_num
                    if row:  # a blank line, as csv.DictReader skips it
                        yield line_no, row
            else:
                for line_no, line in enumerate(f, 1):
                    if line.strip():
                        yield line_no, line.rstrip("\n")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} after line {line_no}: not valid {encoding} ({e.reason}); pass --encoding") from e
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"{path} after line {line_no}: not a readable gzip file ({e})") from e
    except csv.Error as e:
        raise DataError(f"{path} after line {line_no}: malformed CSV ({e})") from e


def _open_text(path: Path, encoding: str, newline: str | None) -> IO[str]:
    """``path`` opened as text, decompressed when its bytes are gzip whatever its name; a UTF-8 BOM is dropped."""
    if codecs.lookup(encoding).name == "utf-8":
        encoding = "utf-8-sig"
    with path.open("rb") as f:
        compressed = f.read(2) == GZIP_MAGIC
    if not compressed:
        return path.open(encoding=encoding, newline=newline)
    if not path.name.lower().endswith(".gz"):
        log.info("%s is gzip-compressed: reading it decompressed", path)
    return gzip.open(path, "rt", encoding=encoding, newline=newline)


def _json_record(line: str, path: Path, line_no: int):
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{path} line {line_no}: invalid JSON ({e.msg})") from e


def _json_text(record, path: Path, line_no: int, text_column: str) -> str:
    if isinstance(record, str):
        return record
    if isinstance(record, dict) and text_column in record:
        return "" if record[text_column] is None else str(record[text_column])
    raise DataError(f"{path} line {line_no}: no field '{text_column}'; pass --text-column")


def iter_texts(path: Path, text_column: str = "text", encoding: str = "utf-8") -> Iterator[str]:
    """Stream the texts of a CSV/JSONL/Parquet/TXT file (TXT: one text a line, blank lines skipped)."""
    table = open_input(path, text_column, encoding, keep_columns=[])
    yield from (row[table.text_index] for row in table.rows)


def read_texts(path: Path, text_column: str = "text", encoding: str = "utf-8") -> list[str]:
    """All texts of a file (see :func:`iter_texts`)."""
    return list(iter_texts(path, text_column, encoding))


def _csv_value(value):
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, default=_json_value)
    return value


def _json_value(value):
    """What JSON cannot hold as it is (Parquet dates, decimals, bytes): its ISO or plain text form."""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def format_predictions(
    suffix: str, columns: list[str], rows: list[list], predictions: list[dict], header: bool, extra: Sequence[str] = ()
) -> str:
    """Predictions as CSV or JSONL text: per input row, its ``columns`` values, then label and score (and the
    ``extra`` keys of each prediction, e.g. ``explanation``: a list in JSONL, a JSON string in CSV)."""
    names = [*columns, *PREDICTION_COLUMNS, *extra]
    records = ([*row, p["label"], p["score"], *(p[k] for k in extra)] for row, p in zip(rows, predictions, strict=True))
    if suffix == ".csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        if header:
            writer.writerow(names)
        writer.writerows([_csv_value(v) for v in record] for record in records)
        return buffer.getvalue()
    return "".join(
        json.dumps(dict(zip(names, record, strict=True)), ensure_ascii=False, default=_json_value) + "\n"
        for record in records
    )


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
    rows = [{"label": predictor.id2label[int(r.argmax())], "score": float(r.max())} for r in probs]
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
