"""Load, clean, validate and split labelled review data for sentiment classification.

``DataConfig.source`` is auto-detected as one of:

1. a folder with ``train`` / ``test`` (and optionally ``validation``/``valid``/``val``/``dev``) files in
   Parquet, CSV/TSV or JSON lines (``train.parquet``, ``test.csv``, sharded ``train-00000-of-00002.parquet``
   ...; directly in the folder or in its ``data/`` subfolder); CSV/TSV/JSON may be gzip-compressed
   (``train.csv.gz``; gzip bytes are recognised whatever the name);
2. a single such file, split deterministically (stratified, seeded) into train/test;
3. the Stanford ``aclImdb/`` folder (or a folder holding it) or the ``aclImdb_v1.tar.gz`` archive, which is
   streamed without unpacking; ``train/unsup`` is ignored;
4. a Hugging Face dataset name (``imdb``, ``stanfordnlp/imdb``), which needs the ``datasets`` package.

Pipeline, in this order (every dropped row is counted in ``Splits.report["dropped"]`` and logged):

- labels are mapped to ids; a value outside the label set is an error naming file, line and column
  (a True/False column is read as 0/1 with the default negative/positive labels);
- text is cleaned (:func:`clean_text`); rows with empty text or a missing label are dropped;
- a source without a test split: its rows form the train pool, which is de-duplicated, then a
  stratified ``test_size`` share is carved off as test (so the drop counts all sit under ``train``);
- test is the benchmark and is kept as it is (its duplicate texts are only counted, ``duplicates_kept``);
- train (and a validation file) lose exact duplicate texts, keeping the first, and any text that also
  occurs in a split held out from them (train: validation and test; validation: test);
- without a validation file, validation is carved from what is left of train (stratified, seeded), so
  evaluating ``splits=("validation",)`` later yields exactly the rows held out during training;
- finally ``train_samples`` / ``validation_samples`` / ``eval_samples`` take stratified seeded subsets.
"""

from __future__ import annotations

import csv
import html
import io
import json
import logging
import lzma
import math
import numbers
import os
import re
import tarfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.model_selection import train_test_split

from bertsent.config import DEFAULT_ID2LABEL, DataConfig, _check_label_names
from bertsent.errors import DataError
from bertsent.tabular import decode, is_gzip, one_line, read_bytes, split_gz

log = logging.getLogger(__name__)


SPLIT_NAMES = ("train", "validation", "test")
TEXT_CANDIDATES = ("text", "review", "sentence", "content")
LABEL_CANDIDATES = ("label", "sentiment", "labels", "polarity")
DROP_REASONS = ("empty_text", "missing_label", "duplicate", "overlaps_validation", "overlaps_test")

_SPLIT_ALIASES = {
    "train": "train",
    "test": "test",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
}
_TABLE_KINDS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "json"}
WHOLE_FILE = "whole file"
"""``report["splits_from"]["test"]`` of ``load_data(..., whole_file=True)`` on a single file: all of it is test."""
_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")
_ACL_FOLDERS = [(split, polarity) for split in ("train", "test") for polarity in ("neg", "pos")]
_SPLIT_FILE = re.compile(r"(?P<split>[a-z]+)(?:-\d+-of-\d+)?")
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(?:/[A-Za-z0-9][\w.-]*)?")
_BR = re.compile(r"<br\s*/?\s*>", re.IGNORECASE)
# Only complete entities ("&amp;", "&#39;"): html.unescape alone turns the "&not" of "&nothing" into "¬".
_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
_OFFLINE_HINT = (
    "download it where you have internet and point --data at a local copy (a folder with "
    "train/test Parquet/CSV/JSONL files, or aclImdb_v1.tar.gz)"
)


@dataclass
class Splits:
    """Cleaned splits: DataFrames with columns exactly ``text`` (str) and ``label`` (int64 id)."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame | None
    id2label: dict[int, str]
    report: dict = field(default_factory=dict)

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in self.id2label.items()}


def clean_text(text: str) -> str:
    """Turn ``<br />`` breaks into spaces, unescape HTML entities and collapse whitespace.

    Deliberately conservative: other markup (``<i>``, ``<3``) is left alone, as it may be content.
    """
    text = _BR.sub(" ", text)
    if "&" in text:
        text = _ENTITY.sub(lambda m: html.unescape(m.group()), text)
    return " ".join(text.split())


def stratified_subset(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """``n`` rows of ``frame`` with label proportions kept, in their original order, index reset."""
    picked = _stratified_positions(frame["label"].to_numpy(), n, seed)
    return frame.iloc[picked].reset_index(drop=True)


def load_data(config: DataConfig, splits: tuple[str, ...] = SPLIT_NAMES, *, whole_file: bool = False) -> Splits:
    """Read, clean, check and split ``config.source``.

    ``splits`` names the splits wanted; the others come back empty (``test`` as None). Asking only for
    test reads only the test split when the source has one; asking for validation runs the same carve as
    training (train_samples plays no part in it), so the rows are identical.

    ``whole_file`` (with ``splits=("test",)`` only): a single-file source, which has no split structure,
    comes back whole as test: every usable row, nothing carved, duplicates kept (and counted), with
    ``report["splits_from"]["test"] ==`` :data:`WHOLE_FILE`. Other sources are read as without it.
    """
    wanted = set(splits)
    if not wanted or not wanted <= set(SPLIT_NAMES):
        raise ValueError(f"splits must be a non-empty subset of {SPLIT_NAMES}, got {splits!r}")
    if whole_file and wanted != {"test"}:
        raise ValueError(f"whole_file reads the file as its test split: splits must be ('test',), got {splits!r}")
    need = {"test"} if wanted == {"test"} else set(SPLIT_NAMES)
    raw = _read_source(config, need)
    whole = whole_file and raw.format.startswith("file/")
    if whole:
        raw = _Raw(raw.format, {"test": raw.parts["train"]}, {"test"}, {"test": raw.files["train"]})
    if "test" not in raw.available and "train" not in raw.parts:
        raw = _read_source(config, set(SPLIT_NAMES))  # no test split: it is carved from train
    if "test" not in raw.available and "train" not in raw.available:
        raise DataError(f"{config.source}: found neither a train nor a test split")
    if need != {"test"} and "train" not in raw.parts:
        raise DataError(f"{config.source}: has no train split (found: {', '.join(sorted(raw.parts))})")

    id2label = _resolve_id2label(config.labels, raw.label_names)
    labels = _LabelMap(id2label)
    frames: dict[str, pd.DataFrame] = {}
    dropped: dict[str, dict[str, int]] = {}
    rows_read: dict[str, int] = {}
    for name in (n for n in SPLIT_NAMES if n in raw.parts):
        frames[name], dropped[name] = _prepare(name, raw.parts[name], labels, config.source)
        rows_read[name] = sum(len(p.frame) for p in raw.parts[name])
    provenance = {"test": "file" if "test" in frames else f"carved from train (test_size={config.test_size})"}
    if whole:
        provenance["test"] = WHOLE_FILE
    if "train" in frames and "test" not in frames:
        dropped["test"] = dict.fromkeys(DROP_REASONS, 0)  # test is carved below from the de-duplicated pool
        dropped = {name: dropped[name] for name in SPLIT_NAMES if name in dropped}

    if "train" in frames:
        _split_train(frames, dropped, provenance, config)
    result = {name: frames[name] for name in SPLIT_NAMES if name in wanted}
    for name, n in (
        ("train", config.train_samples),
        ("validation", config.validation_samples),
        ("test", config.eval_samples),
    ):
        if name in result and n is not None:
            result[name] = stratified_subset(result[name], n, config.seed)
    if "train" in result:
        _check_train_classes(result["train"], id2label)

    report = {
        "source": config.source,
        "format": raw.format,
        "files": raw.files,
        "rows_read": rows_read,
        "dropped": dropped,
        "duplicates_kept": {"test": int(frames["test"]["text"].duplicated().sum())},
        "splits_from": {k: v for k, v in provenance.items() if k in frames},
        "seed": config.seed,
        "sizes": {name: len(df) for name, df in result.items()},
        "label_counts": {name: _label_counts(df, id2label) for name, df in result.items()},
    }
    _log_dropped(config.source, dropped)
    empty = pd.DataFrame({"text": pd.Series(dtype="str"), "label": pd.Series(dtype="int64")})
    return Splits(
        train=result.get("train", empty),
        validation=result.get("validation", empty.copy()),
        test=result.get("test"),
        id2label=id2label,
        report=report,
    )


def _split_train(frames: dict, dropped: dict, provenance: dict, config: DataConfig) -> None:
    """De-duplicate train, carve test (if the source has none) and validation from it, and drop every
    training review that also stands in validation or test, counting each drop by reason (in place)."""
    frames["train"], dropped["train"]["duplicate"] = _drop_duplicates(frames["train"])
    if "test" not in frames:
        frames["train"], frames["test"] = _carve(frames["train"], config.test_size, config.seed, "test")
    if "validation" in frames:
        val, dropped["validation"]["duplicate"] = _drop_duplicates(frames["validation"])
        frames["validation"], dropped["validation"]["overlaps_test"] = _drop_overlap(val, frames["test"])
        frames["train"], dropped["train"]["overlaps_validation"] = _drop_overlap(frames["train"], frames["validation"])
        provenance["validation"] = "file"
    frames["train"], dropped["train"]["overlaps_test"] = _drop_overlap(frames["train"], frames["test"])
    if "validation" not in frames:
        frames["train"], frames["validation"] = _carve(
            frames["train"], config.validation_size, config.seed, "validation"
        )
        provenance["validation"] = f"carved from train (validation_size={config.validation_size})"


# --- labels --------------------------------------------------------------------------------------------


def _resolve_id2label(declared: list[str] | None, dataset_names: list[str] | None) -> dict[int, str]:
    if declared is not None:
        return dict(enumerate(declared))
    lowered = [str(n).lower() for n in dataset_names or []]
    if dataset_names is None or lowered in (["neg", "pos"], ["negative", "positive"]):
        return dict(DEFAULT_ID2LABEL)  # same names whichever copy of IMDB a model was trained on
    return dict(enumerate(_check_label_names(list(dataset_names))))


_BAD = object()  # sentinel: a label value outside the label set


class _LabelMap:
    """Maps raw label values (ids, int-like strings, names in any case) to ids.

    If any label name looks like an integer (e.g. star ratings "1".."5"), numbers are read as names,
    never as ids, so a CSV "1" and a Parquet 1 mean the same label. With the default negative/positive
    labels a column of nothing but True/False (Parquet or JSON booleans, or those words in a CSV) reads
    as 0/1; a lone boolean among other labels is still an error.
    """

    def __init__(self, id2label: dict[int, str]):
        self.names = [id2label[i] for i in range(len(id2label))]
        self.by_name = {name.lower(): i for i, name in enumerate(self.names)}
        self.default_pair = id2label == DEFAULT_ID2LABEL
        if self.default_pair:
            self.by_name |= {"neg": 0, "pos": 1}
        self.numeric_names = any(_as_int(name) is not None for name in self.names)

    def resolve(self, value) -> int | object | None:
        """Id of ``value``; None when it is missing; ``_BAD`` when it is not a known label."""
        if isinstance(value, str):
            value = value.strip()
            if not value:
                return None
            if (i := self.by_name.get(value.lower())) is not None:
                return i
            number = _as_int(value)
        elif isinstance(value, (bool, np.bool_)):
            return _BAD  # True/False says nothing about which label is meant
        elif isinstance(value, numbers.Integral):
            number = int(value)
        elif isinstance(value, numbers.Real):
            if math.isnan(value):
                return None
            number = int(value) if float(value).is_integer() else None
        else:
            return _BAD
        if number is None:
            return _BAD
        if self.numeric_names:
            return self.by_name.get(str(number), _BAD)
        return number if 0 <= number < len(self.names) else _BAD

    def ids(self, part: _Part) -> np.ndarray:
        """Label ids of ``part``'s rows, -1 where missing; raises DataError at the first bad value."""
        # Resolve each distinct value once: fast on 25k rows, and factorize keeps first-seen order, so
        # the first bad unique value is also the first bad row of the file.
        codes, uniques = pd.factorize(part.frame["label"], use_na_sentinel=True)
        lut = np.full(len(uniques) + 1, -1, dtype=np.int64)  # last slot serves code -1 (missing)
        flags = _boolean_ids(uniques) if self.default_pair else None
        for k, value in enumerate(uniques):
            i = self.resolve(value) if flags is None else flags[k]
            if i is _BAD:
                row = int(np.flatnonzero(codes == k)[0])
                shown = repr(value[:60]) if isinstance(value, str) else str(value)
                hint = "" if self.numeric_names else f" or 0-{len(self.names) - 1}"
                raise DataError(
                    f"{part.where(row)}, column {part.label_column!r}: label {shown} is not one of "
                    f"{', '.join(self.names)}{hint} (declare other labels with --labels)"
                )
            lut[k] = -1 if i is None else i
        return lut[codes]


_TRUTH = {"true": 1, "false": 0, "": None}


def _boolean_ids(uniques) -> list[int | None] | None:
    """Ids (False 0, True 1, blank None) of a label column's distinct values when they are all booleans
    or the words true/false in any case; None when the column holds anything else."""
    ids = []
    for value in uniques:
        if isinstance(value, (bool, np.bool_)):
            ids.append(int(value))
        elif isinstance(value, str) and value.strip().lower() in _TRUTH:
            ids.append(_TRUTH[value.strip().lower()])
        else:
            return None
    return ids if any(i is not None for i in ids) else None


def _as_int(text: str) -> int | None:
    """``"1"``, ``" 01 "``, ``"1.0"`` -> 1; anything else None."""
    try:
        return int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            return None
        return int(number) if number.is_integer() else None


# --- cleaning, splitting, subsetting ----------------------------------------------------------------


def _clean_value(value) -> str:
    if isinstance(value, str):
        return clean_text(value)
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return clean_text(str(value))


def _prepare(split: str, parts: list[_Part], labels: _LabelMap, source: str) -> tuple[pd.DataFrame, dict]:
    """Map labels, clean text and drop rows with empty text or no label; counts the drops."""
    dropped = dict.fromkeys(DROP_REASONS, 0)
    frames = []
    for part in parts:
        ids = labels.ids(part)
        text = np.array([_clean_value(v) for v in part.frame["text"]], dtype=object)
        empty = text == ""
        missing = ~empty & (ids < 0)  # a row with neither is counted once, as empty text
        dropped["empty_text"] += int(empty.sum())
        dropped["missing_label"] += int(missing.sum())
        keep = ~(empty | missing)
        frames.append(pd.DataFrame({"text": pd.Series(text[keep], dtype="str"), "label": ids[keep]}))
    frame = pd.concat(frames, ignore_index=True)
    if frame.empty:
        where = parts[0].origin if len(parts) == 1 else f"{source} ({split})"
        read = sum(len(p.frame) for p in parts)
        raise DataError(
            f"{where}: no usable rows ({read} read, {dropped['empty_text']} with empty text, "
            f"{dropped['missing_label']} without a label)"
        )
    return frame, dropped


def _drop_duplicates(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    dup = frame["text"].duplicated(keep="first").to_numpy()
    return frame[~dup].reset_index(drop=True), int(dup.sum())


def _drop_overlap(frame: pd.DataFrame, other: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Remove rows of ``frame`` whose text also appears in ``other`` (a held-out split)."""
    seen = frame["text"].isin(set(other["text"])).to_numpy()
    return frame[~seen].reset_index(drop=True), int(seen.sum())


def _carve(frame: pd.DataFrame, size: float | int, seed: int, what: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``frame`` into (rest, carved) with ``size`` rows or share carved, stratified and seeded."""
    n_carved = size if isinstance(size, numbers.Integral) else math.ceil(size * len(frame))
    if n_carved >= len(frame):
        raise DataError(
            f"cannot carve {n_carved} {what} rows from {len(frame)} usable training rows: "
            f"lower the {what} size or provide more data"
        )
    positions = np.arange(len(frame))
    try:
        rest, carved = train_test_split(positions, test_size=int(n_carved), stratify=frame["label"], random_state=seed)
    except ValueError:
        # sklearn needs >= 2 rows per class and room for every class. Tiny data still gets a stratified
        # draw; drawing the part that is kept means a class with a single row stays in training.
        rest = _stratified_positions(frame["label"].to_numpy(), len(frame) - int(n_carved), seed)
        carved = np.setdiff1d(positions, rest)
    # Keep the source order inside each part: reproducible to look at, and the trainer shuffles anyway.
    rest_frame = frame.iloc[np.sort(rest)].reset_index(drop=True)
    return rest_frame, frame.iloc[np.sort(carved)].reset_index(drop=True)


def _stratified_positions(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted positions of ``n`` rows drawn per class in proportion; every class gets one if room."""
    if n >= len(labels):
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * n / len(labels)
    quota = np.floor(exact).astype(int)
    leftover = n - quota.sum()
    quota[np.argsort(-(exact - quota), kind="stable")[:leftover]] += 1  # largest remainders, ties by id
    if n >= len(classes):
        for c in np.flatnonzero(quota == 0):  # a tiny class would vanish: take a row from the largest
            quota[np.argmax(quota)] -= 1
            quota[c] += 1
    rng = np.random.default_rng(seed)
    picked = [
        rng.choice(np.flatnonzero(labels == c), size=q, replace=False) for c, q in zip(classes, quota, strict=True)
    ]
    return np.sort(np.concatenate(picked))


def _check_train_classes(train: pd.DataFrame, id2label: dict[int, str]) -> None:
    present = sorted(int(i) for i in train["label"].unique())
    if len(present) < 2:
        only = ", ".join(id2label[i] for i in present) or "none"
        raise DataError(f"training data has only one class ({only}): need at least two")
    if len(present) < len(id2label):
        absent = ", ".join(name for i, name in id2label.items() if i not in present)
        log.warning("training data has no rows labelled %s", absent)


def _label_counts(frame: pd.DataFrame, id2label: dict[int, str]) -> dict[str, int]:
    counts = frame["label"].value_counts()
    return {name: int(counts.get(i, 0)) for i, name in id2label.items()}


def _log_dropped(source: str, dropped: dict[str, dict[str, int]]) -> None:
    summary = "; ".join(
        f"{split}: " + (", ".join(f"{n} {why}" for why, n in reasons.items() if n) or "none")
        for split, reasons in dropped.items()
    )
    log.info("%s: dropped rows by reason: %s", source, summary)


# --- reading sources ------------------------------------------------------------------------------------


@dataclass
class _Part:
    """One file's (or archive split's) rows before cleaning, and how to name a row in a message."""

    frame: pd.DataFrame  # columns "text" and "label", raw values
    origin: str  # the file as a user would recognise it
    label_column: str
    where: Callable[[int], str]  # 0-based row -> "train.csv line 17"


@dataclass
class _Raw:
    format: str
    parts: dict[str, list[_Part]]  # the splits read
    available: set[str]  # the splits the source has (read or not)
    files: dict[str, list[str]] = field(default_factory=dict)
    label_names: list[str] | None = None  # class names the dataset declares itself


def _read_source(config: DataConfig, need: set[str]) -> _Raw:
    source = config.source
    path = Path(source).expanduser()
    if path.is_dir():
        return _read_folder(path, config, need)
    if path.is_file():
        if path.name.lower().endswith(_TAR_SUFFIXES):
            return _read_aclimdb_tar(path, source, need, config.encoding)
        _, kind = _table_name(path)
        if kind is None:
            suffix = "".join(path.suffixes[-2:] if split_gz(path.name)[1] else path.suffixes[-1:])
            raise DataError(
                f"{source}: unknown data format {suffix or '(no suffix)'!r}: expected a folder, .parquet, .csv, "
                ".tsv, .jsonl or .json (the last four also gzip-compressed, .csv.gz), or an aclImdb .tar.gz archive"
            )
        part = _read_table(path, source, kind, config)
        return _Raw(f"file/{kind}", {"train": [part]}, {"train"}, {"train": [source]})
    if path.exists():
        raise DataError(f"{source}: not a regular file or folder")
    if _looks_like_path(source):
        raise DataError(f"no such file or directory: {source}")
    return _read_hub(source, config)


def _looks_like_path(source: str) -> bool:
    """A missing ``source`` that is clearly meant as a path rather than a Hugging Face ``org/name``."""
    if source.startswith((".", "~", os.sep)) or (os.altsep and os.altsep in source):
        return True
    suffix = Path(source).suffix
    if suffix[1:].isalpha() or not _HUB_NAME.fullmatch(source):
        return True
    first = source.split("/", 1)[0]
    return "/" in source and Path(first).is_dir()  # "data/reviews" when ./data exists: a mistyped path


def _read_folder(root: Path, config: DataConfig, need: set[str]) -> _Raw:
    files = _find_split_files(root, config.source)
    if files:
        available = set(files)
        wanted = need if "test" in available else need | {"train", "validation"}
        parts = {
            split: [_read_table(p, d, kind, config) for p, d, kind in found]
            for split, found in files.items()
            if split in wanted
        }
        kinds = sorted({kind for found in files.values() for _, _, kind in found})
        shown = {split: [d for _, d, _ in found] for split, found in files.items()}
        return _Raw(f"folder/{'+'.join(kinds)}", parts, available, shown)
    if (acl := _find_aclimdb_root(root)) is not None:
        display = config.source if acl == root else os.path.join(config.source, acl.name)
        return _read_aclimdb_dir(acl, display, need, config.encoding)
    raise DataError(
        f"{config.source}: no train/test files found (expected e.g. train.parquet and test.parquet, "
        "train.csv, train.jsonl, or the aclImdb train/pos, train/neg layout)"
    )


def _find_split_files(root: Path, display_root: str) -> dict[str, list[tuple[Path, str, str]]]:
    """``{split: [(path, display name, kind), ...]}`` for files named like a split, sorted."""
    for folder in (root, root / "data"):  # data/: the layout of a Hugging Face dataset repository
        groups: dict[str, dict[tuple[str, str], list[Path]]] = {}
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            stem, kind = _table_name(path)
            match = _SPLIT_FILE.fullmatch(stem.lower())
            if kind and match and match["split"] in _SPLIT_ALIASES and path.is_file():
                split = _SPLIT_ALIASES[match["split"]]
                key = (match["split"], kind, split_gz(path.name)[1])  # train.csv and train.csv.gz: two
                groups.setdefault(split, {}).setdefault(key, []).append(path)
        if groups:
            break
    found = {}
    for split in (name for name in SPLIT_NAMES if name in groups):
        by_name = groups[split]
        if len(by_name) > 1:
            names = ", ".join(p.name for paths in by_name.values() for p in paths)
            raise DataError(f"{display_root}: several files for the {split} split ({names}): keep one")
        [((_, kind, _), paths)] = by_name.items()
        found[split] = [(p, os.path.join(display_root, os.path.relpath(p, root)), kind) for p in paths]
    return found


def _table_name(path: Path) -> tuple[str, str | None]:
    """``(stem, kind)`` of a data file's name (``train.csv.gz`` -> ``("train", "csv")``); kind None if not a table."""
    name, compressed = split_gz(path.name)
    if compressed:
        inner = Path(name)
        kind = _TABLE_KINDS.get(inner.suffix.lower())
        return inner.stem, None if kind == "parquet" else kind  # Parquet compresses inside itself
    return path.stem, _TABLE_KINDS.get(path.suffix.lower())


def _read_table(path: Path, display: str, kind: str, config: DataConfig) -> _Part:
    if path.stat().st_size == 0:
        raise DataError(f"{display}: file is empty")
    if kind == "parquet":
        if is_gzip(path):
            raise DataError(f"{display}: is gzip-compressed; Parquet compresses inside itself: gunzip it first")
        return _read_parquet(path, display, config)
    text = decode(read_bytes(path, display), display, config.encoding)
    if kind in ("csv", "tsv"):
        return _read_csv(text, display, "\t" if kind == "tsv" else ",", config)
    return _read_json(text, display, config)


def _pick_column(
    columns: Iterable[str], wanted: str | None, candidates: tuple[str, ...], what: str, display: str
) -> str:
    columns = [str(c) for c in columns]
    found = ", ".join(columns) or "none"
    flag = f"--{what}-column"
    if wanted is not None:
        if wanted in columns:
            return wanted
        matches = [c for c in columns if c.lower() == wanted.lower()]
        if len(matches) == 1:
            return matches[0]
        raise DataError(f"{display}: no column {wanted!r} (columns found: {found}); fix {flag}")
    by_lower = {c.lower(): c for c in reversed(columns)}
    for candidate in candidates:
        if candidate in by_lower:
            return by_lower[candidate]
    looked = ", ".join(candidates)
    raise DataError(f"{display}: no {what} column (looked for {looked}; columns found: {found}); name it with {flag}")


def _pick_columns(columns: Iterable[str], config: DataConfig, display: str) -> tuple[str, str]:
    columns = list(columns)
    text = _pick_column(columns, config.text_column, TEXT_CANDIDATES, "text", display)
    label = _pick_column(columns, config.label_column, LABEL_CANDIDATES, "label", display)
    if text == label:
        raise DataError(f"{display}: column {text!r} cannot be both text and label")
    return text, label


def _read_parquet(path: Path, display: str, config: DataConfig) -> _Part:
    try:
        text_col, label_col = _pick_columns(pq.read_schema(path).names, config, display)
        frame = pq.read_table(path, columns=[text_col, label_col]).to_pandas()
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{display}: not a readable Parquet file ({one_line(e)})") from None
    frame.columns = ["text", "label"]
    return _Part(frame, display, label_col, lambda i: f"{display} row {i + 1}")


def _read_csv(text: str, display: str, sep: str, config: DataConfig) -> _Part:
    try:
        # Everything as str and no NA parsing: a review that reads "NA" or "None" stays a review; an empty
        # field is "" and is dropped (and counted) later.
        frame = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, na_filter=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{display}: file is empty") from None
    except (pd.errors.ParserError, csv.Error, ValueError) as e:
        raise DataError(f"{display}: malformed CSV ({one_line(e)})") from None
    text_col, label_col = _pick_columns(frame.columns, config, display)
    frame = frame[[text_col, label_col]].set_axis(["text", "label"], axis=1)
    return _Part(frame, display, label_col, lambda i: f"{display} line {_csv_line(text, sep, i)}")


def _csv_line(text: str, sep: str, row: int) -> int:
    """Line where data row ``row`` (0-based) starts, counting the header; quoted newlines included."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
    record = -1  # the header is record -1
    try:
        while True:
            start = reader.line_num + 1
            fields = next(reader, None)
            if fields is None:
                break
            if not fields:
                continue  # blank line: pandas skips it too
            if record == row:
                return start
            record += 1
    except csv.Error:
        pass
    return row + 2  # fallback: one line per row after the header


def _read_json(text: str, display: str, config: DataConfig) -> _Part:
    records, lines = [], []
    if text.lstrip().startswith("["):  # a .json file holding one array of objects
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{display} line {e.lineno}: invalid JSON ({e.msg})") from None
        lines = None
    else:
        # split("\n"), not splitlines(): U+2028 and friends may legally sit inside a JSON string.
        for n, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{display} line {n}: invalid JSON ({e.msg} at column {e.colno})") from None
            lines.append(n)
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            where = f"line {lines[i]}" if lines is not None else f"item {i + 1}"
            raise DataError(
                f"{display} {where}: expected a JSON object with text and label fields, got {type(record).__name__}"
            )
    if not records:
        raise DataError(f"{display}: no records")
    columns = list(dict.fromkeys(key for record in records for key in record))
    text_col, label_col = _pick_columns(columns, config, display)
    columns = {"text": [r.get(text_col) for r in records], "label": [r.get(label_col) for r in records]}
    frame = pd.DataFrame(columns, dtype=object)
    if lines is None:
        return _Part(frame, display, label_col, lambda i: f"{display} item {i + 1}")
    return _Part(frame, display, label_col, lambda i: f"{display} line {lines[i]}")


def _find_aclimdb_root(folder: Path) -> Path | None:
    for candidate in (folder, folder / "aclImdb"):
        if any((candidate / split / polarity).is_dir() for split, polarity in _ACL_FOLDERS):
            return candidate
    return None


def _review_order(name: str) -> tuple[int, str]:
    """``123_9.txt`` sorts by review id 123, so folder and archive give the same row order."""
    stem = name.rsplit("/", 1)[-1].split("_", 1)[0]
    return (int(stem) if stem.isdigit() else 2**62, name)


def _aclimdb_raw(rows: dict[str, list[tuple[int, str, str]]], display: str, fmt: str, seen: set[str]) -> _Raw:
    """Rows ``(label, member name, text)`` per split -> parts, negatives first, each by review id."""
    if not seen:
        raise DataError(f"{display}: no reviews found (expected train/pos/*.txt, train/neg/*.txt, test/...)")
    parts = {}
    for split, found in rows.items():
        found.sort(key=lambda r: (r[0], *_review_order(r[1])))
        frame = pd.DataFrame({"text": [r[2] for r in found], "label": [r[0] for r in found]})
        names = [r[1] for r in found]
        parts[split] = [_Part(frame, f"{display} ({split})", "folder", lambda i, names=names: names[i])]
    return _Raw(fmt, parts, seen, {split: [display] for split in seen})


def _read_aclimdb_dir(root: Path, display: str, need: set[str], encoding: str) -> _Raw:
    rows: dict[str, list] = {}
    seen = set()
    for split in ("train", "test"):
        for label, polarity in enumerate(("neg", "pos")):
            folder = root / split / polarity
            if not folder.is_dir():
                continue
            seen.add(split)
            if split not in need:
                continue
            for path in folder.glob("*.txt"):
                name = os.path.join(display, split, polarity, path.name)
                rows.setdefault(split, []).append((label, name, decode(path.read_bytes(), name, encoding)))
    return _aclimdb_raw(rows, display, "aclimdb/folder", seen)


def _read_aclimdb_tar(path: Path, display: str, need: set[str], encoding: str) -> _Raw:
    rows: dict[str, list] = {}
    seen = set()
    try:
        # "r|*" streams the (compressed) archive member by member: nothing is unpacked to disk.
        with tarfile.open(path, mode="r|*") as archive:
            for member in archive:
                parts = PurePosixPath(member.name).parts
                if not member.isfile() or len(parts) < 3 or not parts[-1].endswith(".txt"):
                    continue
                split, polarity = parts[-3], parts[-2]
                if split not in ("train", "test") or polarity not in ("neg", "pos"):
                    continue  # train/unsup and the README/vocabulary files
                seen.add(split)
                if split in need:
                    name = f"{display}:{member.name}"
                    text = decode(archive.extractfile(member).read(), name, encoding)
                    rows.setdefault(split, []).append((int(polarity == "pos"), name, text))
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as e:
        raise DataError(f"{display}: not a readable tar archive ({one_line(e)})") from None
    return _aclimdb_raw(rows, display, "aclimdb/archive", seen)


def _read_hub(name: str, config: DataConfig) -> _Raw:
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"{name!r} is not a local file or folder; to read it as a Hugging Face dataset install the "
            'datasets package: pip install "bertsent[hub]"'
        ) from None
    offline = any(
        os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )
    try:
        loaded = datasets.load_dataset(name)  # offline, this still works from the local cache
    except Exception as e:  # any failure of a third-party download becomes one line for the user
        if offline or _is_network_error(e):
            raise DataError(f"cannot download dataset {name!r} (offline?): {_OFFLINE_HINT}") from None
        raise DataError(
            f"cannot load dataset {name!r} from the Hugging Face Hub ({one_line(e)}); "
            "no local file or folder has that name either"
        ) from None
    parts, label_names = {}, None
    for key in loaded:
        split = _SPLIT_ALIASES.get(str(key).lower())
        if split is None or split in parts:
            continue  # "unsupervised" and other extra splits
        dataset = loaded[key]
        frame = dataset.to_pandas()
        display = f"{name} ({key})"
        text_col, label_col = _pick_columns(frame.columns, config, display)
        names = getattr(dataset.features.get(label_col), "names", None)
        if names:
            # ClassLabel writes -1 for "no label": GLUE-style test splits hold nothing else.
            unlabelled = frame[label_col] == -1
            if unlabelled.all():
                log.warning("%s: the %s split has no labels; ignored", name, key)
                continue
            frame[label_col] = frame[label_col].astype(object).where(~unlabelled, None)
            label_names = label_names or list(names)
        frame = frame[[text_col, label_col]].set_axis(["text", "label"], axis=1)
        parts[split] = [_Part(frame, display, label_col, lambda i, d=display: f"{d} row {i + 1}")]
    if not parts:
        raise DataError(f"dataset {name!r} has no train/test split (found: {', '.join(map(str, loaded))})")
    return _Raw("hub", parts, set(parts), {split: [name] for split in parts}, label_names)


def _is_network_error(error: BaseException) -> bool:
    """True for connection problems, including the hub's and requests' own exception classes."""
    markers = ("Connection", "Offline", "Timeout", "LocalEntryNotFound", "HTTP")
    for _ in range(10):  # the cause chain, bounded: contexts can form cycles
        if error is None:
            break
        if isinstance(error, (ConnectionError, TimeoutError)):
            return True
        if any(marker in type(error).__name__ for marker in markers):
            return True
        error = error.__cause__ or error.__context__
    return False
