"""Tables in and out, torch-free: the file readers and writers of ``predict`` (and ``--engine ray``),
the byte-level handling ``data`` shares with them, and the one ``{"label", "score"}`` formatter.

- gzip is known by its bytes whatever the name (:func:`is_gzip`) and by a ``.gz`` name (:func:`split_gz`);
  a UTF-8 BOM is dropped (:func:`text_encoding`); :func:`open_text`, :func:`read_bytes`, :func:`decode`;
- :func:`open_input` streams a CSV/JSONL/Parquet/TXT file (all but Parquet also gzip) as rows;
  :func:`format_predictions` writes rows and their predictions as CSV or JSONL text;
- :func:`rank_labels` turns probabilities into ``{"label", "score"}`` records with one tie rule.
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
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

import numpy as np

from bertsent.errors import DataError

log = logging.getLogger(__name__)

INPUT_FORMATS = (".csv", ".jsonl", ".json", ".txt", ".parquet")


GZIP_FORMATS = (".csv", ".jsonl", ".json", ".txt")
"""Input formats also read gzip-compressed: ``reviews.csv.gz`` (a gzip file named plain ``.csv`` is read too)."""


GZIP_MAGIC = b"\x1f\x8b"


OUTPUT_FORMATS = (".csv", ".jsonl", ".json")


PREDICTION_COLUMNS = ("label", "score")
"""What each output row ends with; a kept input column of that name is written as ``input_<name>``."""


CHUNK = 4096
"""Texts read, predicted and written at a time: memory stays flat whatever the file's size."""


# --- bytes and text -------------------------------------------------------------------------------------


def split_gz(name: str) -> tuple[str, bool]:
    """``name`` without a ``.gz`` ending (of any case), and whether it had one: ``a.csv.GZ`` -> ``("a.csv", True)``."""
    if name.lower().endswith(".gz"):
        return name[:-3], True
    return name, False


def is_gzip(path: Path) -> bool:
    """Whether the file's first bytes are gzip's, whatever its name."""
    with Path(path).open("rb") as f:
        return f.read(2) == GZIP_MAGIC


def text_encoding(encoding: str) -> str:
    """``encoding`` as to decode with: UTF-8 (any spelling) as ``utf-8-sig``, so a BOM is dropped rather
    than glued to the first column name."""
    return "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding


def one_line(error: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, at most ``limit`` characters (its type name when it has none)."""
    return " ".join(str(error).split())[:limit] or type(error).__name__


def _reading_gzip(path: Path, display: str | Path) -> None:
    if not split_gz(path.name)[1]:
        log.info("%s is gzip-compressed: reading it decompressed", display)


def open_text(path: Path, encoding: str, newline: str | None = None) -> IO[str]:
    """``path`` opened as text, decompressed when its bytes are gzip whatever its name; a UTF-8 BOM is dropped."""
    path = Path(path)
    encoding = text_encoding(encoding)
    if not is_gzip(path):
        return path.open(encoding=encoding, newline=newline)
    _reading_gzip(path, path)
    return gzip.open(path, "rt", encoding=encoding, newline=newline)


def read_bytes(path: Path, display: str) -> bytes:
    """The file's bytes, decompressed when they are gzip (known by their first two bytes, whatever the name)."""
    raw = Path(path).read_bytes()
    if raw[:2] != GZIP_MAGIC:
        return raw
    _reading_gzip(Path(path), display)
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{display}: not a readable gzip file ({one_line(e)})") from None


def decode(raw: bytes, display: str, encoding: str) -> str:
    """``raw`` decoded (a UTF-8 BOM dropped); a bad byte is a :class:`DataError` naming its line and position."""
    encoding = text_encoding(encoding)
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        name = encoding.removesuffix("-sig")
        raise DataError(
            f"{display} line {line}: not valid {name} (byte 0x{raw[e.start]:02x} at position {column}); "
            "pass --encoding latin-1 if that is the file's encoding"
        ) from None


# --- reading input files -----------------------------------------------------------------------------


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
    name, compressed = split_gz(path.name.lower())
    suffix = Path(name).suffix
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
        raise DataError(f"{path}: not a readable Parquet file ({one_line(e, 200)})") from None
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
        with open_text(path, encoding, newline="" if suffix == ".csv" else None) as f:
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


# --- writing predictions -------------------------------------------------------------------------------


def rank_labels(probs: np.ndarray, id2label: Mapping[int, str], top_k: int | None = 1) -> list[list[dict]]:
    """Each row of ``probs`` (``(n, num_labels)``) as its ``top_k`` best ``{"label", "score"}``, best first
    (``top_k`` None or 0: every label; more than there are: every label).

    The one tie rule of every consumer (``Predictor``, predict's files, serve, ``--engine ray``): the
    higher score first, then the lower label id (a stable sort, so the best agrees with ``argmax``).
    """
    probs = np.asarray(probs)
    if top_k is not None and top_k < 0:
        raise ValueError(f"top_k must be None or >= 0, got {top_k}")
    k = min(top_k or probs.shape[-1], probs.shape[-1])
    order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    ranked = zip(order, probs, strict=True)
    return [[{"label": id2label[int(i)], "score": float(row[i])} for i in ids] for ids, row in ranked]


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
