"""Prediction with a fine-tuned model folder: texts in, ``{"label", "score"}`` out, like the pipeline.

:class:`Predictor` is the one object that ``predict``, ``evaluate``, ``compare`` and ``serve`` share; files of any size
are streamed through it by :func:`predict_file`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bertsent.config import InferenceSettings
from bertsent.encoding import Encoded, encode, encode_windows
from bertsent.errors import DataError, ModelError
from bertsent.folder import inference_settings
from bertsent.inference import load_backend, run, softmax
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


class Predictor:
    """A model folder ready to classify texts; the one object ``predict``, ``evaluate``, ``compare`` and
    ``serve`` share.

    It runs with ``settings`` (:class:`InferenceSettings`), any field of which a keyword overrides:
    ``Predictor(folder, batch_size=8, long_text="chunk")``. :attr:`settings` holds the resolved ones (max
    length and truncation filled in from the folder). ``backend="auto"`` picks PyTorch or ONNX Runtime by
    what the folder holds. A PyTorch BERT runs its last layer for [CLS] only (:class:`ClsOnlyLastLayer`:
    same logits to float rounding, fewer FLOPs); ``cls_only=False`` runs the plain forward.
    """

    def __init__(self, model_dir: str | os.PathLike, settings: InferenceSettings | None = None, **overrides) -> None:
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise ModelError(f"{self.model_dir}: not a model folder (no config.json)")
        if settings is not None and not isinstance(settings, InferenceSettings):
            raise TypeError(f"settings must be an InferenceSettings, got {type(settings).__name__}")
        self.tokenizer = load_tokenizer(self.model_dir)
        self.settings = resolve_settings(self.model_dir, self.tokenizer, settings, **overrides)
        s = self.settings
        self.backend = load_backend(self.model_dir, s.device, s.threads, s.precision, s.compile, s.cls_only, s.backend)
        self.id2label = self.backend.id2label
        self.pad_id = self.tokenizer.pad_token_id or 0

    @property
    def max_length(self) -> int:
        return self.settings.max_length

    @property
    def truncation(self) -> str:
        return self.settings.truncation

    @property
    def batch_size(self) -> int:
        return self.settings.batch_size

    @property
    def long_text(self) -> str:
        return self.settings.long_text

    @property
    def stride(self) -> int:
        return self.settings.stride

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

    def __call__(self, texts: str | list[str], top_k: int | None = 1) -> list[dict] | list[list[dict]]:
        """Pipeline-shaped output: ``[{"label": ..., "score": ...}]``; ``top_k=None`` gives all scores."""
        single = isinstance(texts, str)
        probs = self.predict_proba([texts] if single else texts)
        results = []
        for row in probs:
            order = np.argsort(-row)[: top_k or len(row)]
            scored = [{"label": self.id2label[int(i)], "score": float(row[i])} for i in order]
            results.append(scored[0] if top_k == 1 else scored)
        return results


INPUT_FORMATS = (".csv", ".jsonl", ".json", ".txt", ".parquet")


OUTPUT_FORMATS = (".csv", ".jsonl", ".json")


CHUNK = 4096
"""Texts read, predicted and written at a time: memory stays flat whatever the file's size."""

log = logging.getLogger("bertsent.predict")


def iter_texts(path: Path, text_column: str = "text", encoding: str = "utf-8") -> Iterator[str]:
    """Stream the texts of a CSV/JSONL/Parquet/TXT file (TXT: one text a line, blank lines skipped)."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in INPUT_FORMATS:
        raise DataError(f"{path}: unknown input format '{suffix}' (use {', '.join(INPUT_FORMATS)})")
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        if text_column not in parquet.schema_arrow.names:
            found = ", ".join(parquet.schema_arrow.names)
            raise DataError(f"{path}: no column '{text_column}' (found: {found}); pass --text-column")
        for batch in parquet.iter_batches(batch_size=CHUNK, columns=[text_column]):
            yield from ("" if t is None else str(t) for t in batch.column(0).to_pylist())
        return
    line_no = 0
    try:
        with path.open(encoding=encoding, newline="" if suffix == ".csv" else None) as f:
            if suffix == ".txt":
                for line_no, line in enumerate(f, 1):  # noqa: B007 (line_no is reported on errors)
                    if line.strip():
                        yield line.rstrip("\n")
            elif suffix == ".csv":
                reader = csv.DictReader(f)
                if text_column not in (reader.fieldnames or []):
                    found = ", ".join(reader.fieldnames or [])
                    raise DataError(f"{path}: no column '{text_column}' (found: {found}); pass --text-column")
                for row in reader:
                    line_no = reader.line_num
                    yield row[text_column] or ""
            else:
                for line_no, line in enumerate(f, 1):
                    if line.strip():
                        yield _json_text(line, path, line_no, text_column)
    except UnicodeDecodeError as e:
        raise DataError(f"{path} after line {line_no}: not valid {encoding} ({e.reason}); pass --encoding") from e


def _json_text(line: str, path: Path, line_no: int, text_column: str) -> str:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{path} line {line_no}: invalid JSON ({e.msg})") from e
    if isinstance(row, str):
        return row
    if isinstance(row, dict) and text_column in row:
        return "" if row[text_column] is None else str(row[text_column])
    raise DataError(f"{path} line {line_no}: no field '{text_column}'; pass --text-column")


def read_texts(path: Path, text_column: str = "text", encoding: str = "utf-8") -> list[str]:
    """All texts of a file (see :func:`iter_texts`)."""
    return list(iter_texts(path, text_column, encoding))


def format_predictions(suffix: str, texts: list[str], predictions: list[dict], header: bool) -> str:
    """Predictions as CSV or JSONL text (one record per input, in order)."""
    if suffix == ".csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        if header:
            writer.writerow(["text", "label", "score"])
        writer.writerows([t, p["label"], p["score"]] for t, p in zip(texts, predictions, strict=True))
        return buffer.getvalue()
    return "".join(
        json.dumps({"text": t} | p, ensure_ascii=False) + "\n" for t, p in zip(texts, predictions, strict=True)
    )


def _batched(items: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def predict_file(
    predictor: Predictor,
    input_path: Path,
    output_path: Path,
    text_column: str = "text",
    *,
    resume: bool = False,
    encoding: str = "utf-8",
    progress: bool | None = None,
    chunk_size: int = CHUNK,
) -> int:
    """Classify every text of ``input_path`` into ``output_path`` in input order; returns the rows written.

    Works in chunks, so files larger than memory stream through. After each chunk a sidecar
    ``<output>.progress.json`` records rows and bytes written; ``resume`` truncates the output to that
    point and skips the rows already done, so an interrupted run neither duplicates nor loses rows.
    """
    from tqdm.auto import tqdm

    suffix = output_path.suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise DataError(f"{output_path}: unknown output format '{output_path.suffix}' (use .csv or .jsonl)")
    texts = iter_texts(input_path, text_column, encoding)
    marker = output_path.with_name(output_path.name + ".progress.json")
    done, offset = 0, 0
    if resume and marker.is_file():
        try:
            state = json.loads(marker.read_text())
            done, offset = int(state["rows"]), int(state["bytes"])
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(
                f"{marker}: unreadable progress file ({e}); delete it and {output_path} to start over"
            ) from e
        log.info("resuming %s after %d rows", output_path, done)
    elif resume:
        log.warning("--resume: no progress file %s; starting from the first row", marker)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    with output_path.open("r+b" if offset else "wb") as out:
        out.truncate(offset)  # drop anything written after the last recorded chunk
        out.seek(offset)
        skipped = sum(1 for _ in zip(range(done), texts, strict=False))
        if skipped < done:
            raise DataError(f"{input_path}: has {skipped} rows but {output_path} already holds {done}: wrong file?")
        with tqdm(
            desc="predicting", unit="review", initial=done, disable=not progress if progress is not None else None
        ) as bar:
            for chunk in _batched(texts, chunk_size):
                probs = predictor.predict_proba(chunk)
                rows = [{"label": predictor.id2label[int(r.argmax())], "score": float(r.max())} for r in probs]
                out.write(format_predictions(suffix, chunk, rows, header=done == 0).encode("utf-8"))
                out.flush()
                done += len(chunk)
                # Write-then-rename: an interrupt never leaves a half-written progress file.
                staged = marker.with_suffix(".tmp")
                staged.write_text(json.dumps({"rows": done, "bytes": out.tell(), "input": str(input_path)}))
                os.replace(staged, marker)
                bar.update(len(chunk))
    if done == 0 and offset == 0:
        output_path.write_bytes(format_predictions(suffix, [], [], header=True).encode("utf-8"))
    marker.unlink(missing_ok=True)
    return done
