"""Tests for bertsent.data: every source format, cleaning and drop accounting, splitting and subsetting,
and one test per untrusted-input error (checking that the message names the file and line)."""

from __future__ import annotations

import gzip
import json
import logging
import sys
import tarfile
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bertsent.config import DEFAULT_ID2LABEL, DataConfig, parse_label_names
from bertsent.data.loading import DROP_REASONS, WHOLE_FILE, Splits, clean_text, load_data, stratified_subset
from bertsent.errors import BertsentError, DataError

IMDB = Path(__file__).parents[1].parent / "shared/data/imdb"


def reviews(n: int, prefix: str = "review", labels: tuple = (0, 1)) -> pd.DataFrame:
    """``n`` distinct texts, labels cycling through ``labels``."""
    return pd.DataFrame(
        {
            "text": [f"{prefix} number {i} of the set" for i in range(n)],
            "label": [labels[i % len(labels)] for i in range(n)],
        }
    )


def write(path: Path, frame: pd.DataFrame) -> Path:
    """Write ``frame`` in the format named by ``path``'s suffix."""
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    elif path.suffix in (".csv", ".tsv"):
        frame.to_csv(path, index=False, sep="," if path.suffix == ".csv" else "\t")
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in frame.to_dict("records")))
    return path


def folder(tmp_path: Path, suffix: str = ".parquet", n_train: int = 100, n_test: int = 40) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    write(root / f"train{suffix}", reviews(n_train, "train"))
    write(root / f"test{suffix}", reviews(n_test, "test"))
    return root


def load_error(tmp_path_or_source, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_data(DataConfig(str(tmp_path_or_source), **kwargs))
    message = str(info.value)
    assert "\n" not in message  # the CLI prints it as one line
    return message


# --- clean_text, parse_label_names, DataConfig -------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Great film.<br /><br />Loved it", "Great film. Loved it"),
        ("a<br>b<BR/>c<Br  />d", "a b c d"),
        ("Tom &amp; Jerry &#39;rocks&#39; &quot;ok&quot; &#x41;", "Tom & Jerry 'rocks' \"ok\" A"),
        ("  lots \t of\n\n  space\u00a0here  ", "lots of space here"),
        ("<br />   <br />", ""),
        ("AT&T and &nothing else; <i>italic</i> <3", "AT&T and &nothing else; <i>italic</i> <3"),
    ],
)
def test_clean_text(raw, clean):
    assert clean_text(raw) == clean
    assert clean_text(clean) == clean  # idempotent: cleaning twice changes nothing


def test_parse_label_names():
    assert parse_label_names("neg, neutral ,pos") == ["neg", "neutral", "pos"]
    for bad, fragment in [
        ("", "empty"),
        ("a,,b", "non-empty"),
        ("a,b,A", "duplicate label name 'A'"),
        ("only", "at least two"),
    ]:
        with pytest.raises(DataError, match=fragment):
            parse_label_names(bad)


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("source", "  ", "data source is empty"),
        ("validation_size", 0, "validation_size"),
        ("validation_size", 1.5, "validation_size"),
        ("validation_size", True, "validation_size"),
        ("train_samples", 0, "train_samples must be a count >= 1"),
        ("eval_samples", -3, "eval_samples"),
        ("validation_samples", 2.5, "validation_samples"),
        ("test_size", 1.0, "test_size"),
        ("seed", -1, "seed"),
        ("encoding", "no-such-codec", "unknown encoding 'no-such-codec'"),
        ("labels", ["a"], "at least two"),
        ("text_column", "", "text_column"),
    ],
)
def test_config_rejects_bad_values(field, value, fragment):
    kwargs = {"source": "x", field: value}
    with pytest.raises(DataError, match=fragment):
        DataConfig(**kwargs)


def test_config_normalises_inputs(tmp_path):
    config = DataConfig(tmp_path, validation_size=500.0, labels="a, b")
    assert config.source == str(tmp_path)
    assert config.validation_size == 500 and isinstance(config.validation_size, int)
    assert config.labels == ["a", "b"]
    with pytest.raises(DataError, match="both 'x'"):
        DataConfig("s", text_column="x", label_column="x")
    assert issubclass(DataError, BertsentError)


# --- formats -----------------------------------------------------------------------------------------


def test_folder_of_parquet_files(toy_data_dir):
    splits = load_data(DataConfig(str(toy_data_dir)))
    test_file = pd.read_parquet(toy_data_dir / "test.parquet")
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (216, 24, 80)
    for frame in (splits.train, splits.validation, splits.test):
        assert list(frame.columns) == ["text", "label"]
        assert frame["label"].dtype == np.int64
        assert list(frame.index) == list(range(len(frame)))
    assert splits.test["text"].tolist() == test_file["text"].tolist()
    assert splits.report["label_counts"]["validation"] == {"negative": 12, "positive": 12}
    assert splits.report["label_counts"]["train"] == {"negative": 108, "positive": 108}
    assert splits.report["format"] == "folder/parquet"
    assert splits.report["splits_from"]["validation"] == "carved from train (validation_size=0.1)"
    assert not set(splits.train["text"]) & set(splits.validation["text"])
    assert splits.id2label == DEFAULT_ID2LABEL
    assert splits.label2id == {"negative": 0, "positive": 1}


def test_folder_of_csv_cleans_counts_and_reports(tmp_path, caplog):
    root = tmp_path / "csvs"
    root.mkdir()
    train = pd.DataFrame(
        {
            "id": range(12),
            "text": [
                "Great  film<br />",
                "Great film",
                "",
                "<br />",
                "NA",
                "None",
                "meh",
                "awful",
                "shared with test",
                "fine &amp; dandy",
                "so bad",
                "no label here",
            ],
            "label": ["1", "1", "0", "1", "0", "1", "0", "0", "1", "1", "0", ""],
            "rating": [9] * 12,
        }
    )
    train.to_csv(root / "train.csv", index=False)
    pd.DataFrame({"text": ["shared with test", "dup", "dup", "x"], "label": [1, 0, 0, 1]}).to_csv(
        root / "test.csv", index=False
    )
    with caplog.at_level(logging.INFO, logger="bertsent.data"):
        splits = load_data(DataConfig(str(root), validation_size=2))
    report = splits.report
    assert report["rows_read"] == {"train": 12, "test": 4}
    assert report["dropped"]["train"] == {
        "empty_text": 2,
        "missing_label": 1,
        "duplicate": 1,
        "overlaps_validation": 0,
        "overlaps_test": 1,
    }
    assert report["dropped"]["test"]["duplicate"] == 0 and report["duplicates_kept"] == {"test": 1}
    assert splits.test["text"].tolist() == ["shared with test", "dup", "dup", "x"]  # the benchmark is kept
    kept = sorted(splits.train["text"].tolist() + splits.validation["text"].tolist())
    # "NA" and "None" are reviews, not missing values.
    assert kept == sorted(["Great film", "NA", "None", "meh", "awful", "fine & dandy", "so bad"])
    assert len(splits.validation) == 2 and report["sizes"] == {"train": 5, "validation": 2, "test": 4}
    assert json.loads(json.dumps(report)) == report
    [record] = [r for r in caplog.records if r.name == "bertsent.data.loading"]
    assert "train: 2 empty_text, 1 missing_label, 1 duplicate, 1 overlaps_test; test: none" in record.message


def test_column_names_auto_detected_and_overridable(tmp_path):
    root = tmp_path / "cols"
    root.mkdir()
    frame = reviews(30).rename(columns={"text": "Review", "label": "Sentiment"})
    frame["body"], frame["stars"] = frame["Review"] + " body", frame["Sentiment"]
    write(root / "train.parquet", frame.iloc[:20])
    write(root / "test.parquet", frame.iloc[20:])
    auto = load_data(DataConfig(str(root), validation_size=4))
    assert auto.test["text"].tolist() == frame["Review"].iloc[20:].tolist()
    chosen = load_data(DataConfig(str(root), text_column="body", label_column="stars", validation_size=4))
    assert chosen.test["text"].tolist() == [f"review number {i} of the set body" for i in range(20, 30)]


def test_jsonl_folder_uses_its_dev_file(tmp_path):
    root = tmp_path / "jsonl"
    root.mkdir()
    write(root / "train.jsonl", reviews(40, "t"))
    dev = pd.concat([reviews(6, "d"), reviews(40, "t").iloc[[0, 1]], reviews(4, "x").iloc[[3]]])
    write(root / "dev.jsonl", dev)
    write(root / "test.jsonl", reviews(4, "x"))
    splits = load_data(DataConfig(str(root), validation_size=0.5))
    assert splits.report["splits_from"] == {"validation": "file", "test": "file"}
    expected = [*reviews(6, "d")["text"], "t number 0 of the set", "t number 1 of the set"]
    assert splits.validation["text"].tolist() == expected
    assert splits.report["dropped"]["validation"]["overlaps_test"] == 1
    assert splits.report["dropped"]["train"]["overlaps_validation"] == 2
    assert len(splits.train) == 38  # validation_size is ignored when the source has a validation file


def test_json_array_file_and_sharded_parquet(tmp_path):
    path = tmp_path / "reviews.json"
    path.write_text(json.dumps(reviews(50).to_dict("records")))
    splits = load_data(DataConfig(str(path)))
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (36, 4, 10)

    root = tmp_path / "hf" / "data"
    root.mkdir(parents=True)
    write(root / "train-00000-of-00002.parquet", reviews(20, "a"))
    write(root / "train-00001-of-00002.parquet", reviews(20, "b"))
    write(root / "test-00000-of-00001.parquet", reviews(10, "c"))
    sharded = load_data(DataConfig(str(tmp_path / "hf"), validation_size=4))
    assert (len(sharded.train), len(sharded.validation), len(sharded.test)) == (36, 4, 10)
    assert len(sharded.report["files"]["train"]) == 2


KAGGLE_CSV = 'review,sentiment\n"Loved it, truly.<br /><br />A gem",positive\n"Meh.\nNot great",negative\n'


def test_single_kaggle_style_csv_is_split_stratified_and_seeded(tmp_path):
    body = "".join(f'"Review {i}, part two<br />end",{"positive" if i % 2 else "negative"}\n' for i in range(98))
    path = tmp_path / "IMDB Dataset.csv"
    path.write_text(KAGGLE_CSV + body)
    config = DataConfig(str(path))
    splits = load_data(config)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (72, 8, 20)
    assert splits.report["label_counts"]["test"] == {"negative": 10, "positive": 10}
    assert splits.report["format"] == "file/csv"
    assert splits.report["splits_from"]["test"] == "carved from train (test_size=0.2)"
    everything = pd.concat([splits.train, splits.validation, splits.test])
    assert "Loved it, truly. A gem" in set(everything["text"]) and "Meh. Not great" in set(everything["text"])
    assert not everything["text"].str.contains("<br").any()
    again = load_data(config)
    assert again.test.equals(splits.test) and again.train.equals(splits.train)
    other_seed = load_data(DataConfig(str(path), seed=7))
    assert set(other_seed.test["text"]) != set(splits.test["text"])


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".csv", ".tsv"])
def test_single_file_formats_agree(tmp_path, suffix):
    frame = reviews(60)
    splits = load_data(DataConfig(str(write(tmp_path / f"all{suffix}", frame)), test_size=0.25))
    reference = load_data(DataConfig(str(write(tmp_path / "ref.parquet", frame)), test_size=0.25))
    assert splits.test.equals(reference.test) and splits.validation.equals(reference.validation)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (40, 5, 15)


# --- aclImdb folder and archive ------------------------------------------------------------------------


@pytest.fixture
def acl_parent(tmp_path) -> Path:
    """``tmp/aclImdb/{train,test}/{pos,neg}/ID_RATING.txt`` plus the unlabelled train/unsup folder."""
    root = tmp_path / "acl" / "aclImdb"
    for split, n in (("train", 12), ("test", 6)):
        for polarity in ("pos", "neg"):
            (root / split / polarity).mkdir(parents=True)
            for i in range(n // 2):
                rating = 8 if polarity == "pos" else 2
                text = f"{split} {polarity} {i}: superb<br /><br />caf\u00e9 &amp; more"
                (root / split / polarity / f"{i * 5}_{rating}.txt").write_text(text, encoding="utf-8")
    (root / "train" / "unsup").mkdir()
    (root / "train" / "unsup" / "0_0.txt").write_text("no label")
    (root / "README").write_text("readme")
    return root.parent


def test_aclimdb_folder_and_parent(acl_parent):
    splits = load_data(DataConfig(str(acl_parent / "aclImdb"), validation_size=2))
    assert splits.report["format"] == "aclimdb/folder"
    assert splits.report["rows_read"] == {"train": 12, "test": 6}  # train/unsup ignored
    assert splits.test["text"].tolist()[:2] == [
        "test neg 0: superb caf\u00e9 & more",
        "test neg 1: superb caf\u00e9 & more",
    ]
    assert splits.test["label"].tolist() == [0, 0, 0, 1, 1, 1]
    parent = load_data(DataConfig(str(acl_parent), validation_size=2))
    assert parent.train.equals(splits.train) and parent.test.equals(splits.test)


def test_aclimdb_archive_is_streamed_and_matches_folder(acl_parent, tmp_path, monkeypatch):
    archive = tmp_path / "aclImdb_v1.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(acl_parent / "aclImdb", arcname="aclImdb")
    folder_splits = load_data(DataConfig(str(acl_parent), validation_size=2))

    def refuse(*args, **kwargs):
        raise AssertionError("the archive must not be unpacked")

    monkeypatch.setattr(tarfile.TarFile, "extractall", refuse)
    monkeypatch.setattr(tarfile.TarFile, "extract", refuse)
    before = sorted(tmp_path.rglob("*"))
    splits = load_data(DataConfig(str(archive), validation_size=2))
    assert sorted(tmp_path.rglob("*")) == before
    assert splits.report["format"] == "aclimdb/archive"
    assert splits.train.equals(folder_splits.train) and splits.test.equals(folder_splits.test)
    assert splits.validation.equals(folder_splits.validation)


def test_corrupt_archive(tmp_path):
    archive = tmp_path / "aclImdb_v1.tar.gz"
    archive.write_bytes(b"\x1f\x8b\x08\x00not really gzip at all" * 10)
    assert "aclImdb_v1.tar.gz: not a readable tar archive" in load_error(archive)


# --- Hugging Face datasets -------------------------------------------------------------------------------


class FakeDataset:
    def __init__(self, frame: pd.DataFrame, names: list[str] | None):
        self.frame = frame
        self.features = {"text": object(), "label": types.SimpleNamespace(names=names) if names else object()}

    def to_pandas(self) -> pd.DataFrame:
        return self.frame.copy()


def fake_datasets(monkeypatch, load_dataset) -> None:
    module = types.ModuleType("datasets")
    module.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", module)


def test_hub_dataset_without_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    message = load_error("stanfordnlp/imdb")
    assert 'pip install "bertsent[hub]"' in message and "'stanfordnlp/imdb'" in message


@pytest.mark.parametrize("env", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", None])
def test_hub_dataset_offline(monkeypatch, env):
    def load_dataset(name):
        raise (ConnectionError if env is None else FileNotFoundError)(f"Couldn't reach {name} on the Hub")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    if env:
        monkeypatch.setenv(env, "1")
    fake_datasets(monkeypatch, load_dataset)
    assert load_error("stanfordnlp/imdb") == (
        "cannot download dataset 'stanfordnlp/imdb' (offline?): download it where you have internet and "
        "point --data at a local copy (a folder with train/test Parquet/CSV/JSONL files, "
        "or aclImdb_v1.tar.gz)"
    )


def test_hub_dataset_other_failure(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)

    def load_dataset(name):
        raise ValueError("Dataset 'nosuchname' doesn't exist on the Hub")

    fake_datasets(monkeypatch, load_dataset)
    message = load_error("nosuchname")
    assert message.startswith("cannot load dataset 'nosuchname'") and "doesn't exist" in message


def test_hub_dataset_loads_train_and_test(monkeypatch):
    loaded = {
        "train": FakeDataset(reviews(40, "tr"), ["neg", "pos"]),
        "test": FakeDataset(reviews(10, "te"), ["neg", "pos"]),
        "unsupervised": FakeDataset(pd.DataFrame({"text": ["u"], "label": [-1]}), ["neg", "pos"]),
    }
    fake_datasets(monkeypatch, lambda name: loaded)
    splits = load_data(DataConfig("stanfordnlp/imdb", validation_size=4))
    assert splits.id2label == DEFAULT_ID2LABEL  # neg/pos class names map onto the default names
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (36, 4, 10)
    assert splits.report["format"] == "hub" and splits.report["rows_read"] == {"train": 40, "test": 10}

    loaded = {
        "train": FakeDataset(reviews(30, labels=(0, 1, 2)), ["sad", "meh", "glad"]),
        "test": FakeDataset(reviews(9, "te", labels=(0, 1, 2)), ["sad", "meh", "glad"]),
    }
    fake_datasets(monkeypatch, lambda name: loaded)
    splits = load_data(DataConfig("org/three-way", validation_size=3))
    assert splits.id2label == {0: "sad", 1: "meh", 2: "glad"}
    assert splits.report["label_counts"]["validation"] == {"sad": 1, "meh": 1, "glad": 1}


def test_hub_dataset_unlabelled_test_split_is_ignored(monkeypatch, caplog):
    train = reviews(40, "tr")
    train.loc[[3, 5], "label"] = -1  # ClassLabel's "no label"
    unlabelled = reviews(10, "te").assign(label=-1)
    loaded = {
        "train": FakeDataset(train, ["negative", "positive"]),
        "validation": FakeDataset(reviews(6, "va"), ["negative", "positive"]),
        "test": FakeDataset(unlabelled, ["negative", "positive"]),
    }
    fake_datasets(monkeypatch, lambda name: loaded)
    with caplog.at_level(logging.WARNING, logger="bertsent.data"):
        splits = load_data(DataConfig("glue-like"))
    assert "the test split has no labels; ignored" in caplog.text
    assert splits.report["dropped"]["train"]["missing_label"] == 2
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (30, 6, 8)
    assert splits.report["splits_from"] == {"test": "carved from train (test_size=0.2)", "validation": "file"}


@pytest.mark.parametrize("source", ["./nope", "nope.csv", "a/b/c", "~/surely/missing", "/abs/missing", "data/x"])
def test_missing_path_is_not_mistaken_for_a_dataset(source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()  # "data/x" is then a mistyped path, not a Hugging Face org/name
    assert load_error(source) == f"no such file or directory: {source}"


# --- labels ------------------------------------------------------------------------------------------------


def test_binary_label_spellings(tmp_path):
    values = ["POS", " neg ", "Negative", "positive", "1", "0", 1, 0, 1.0, None]
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(10)], "label": values}, dtype=object)
    path = write(tmp_path / "mixed.jsonl", frame)
    splits = load_data(DataConfig(str(path), test_size=0.3, validation_size=1))
    everything = pd.concat([splits.train, splits.validation, splits.test]).sort_values("text")
    assert everything["label"].tolist() == [1, 0, 0, 1, 1, 0, 1, 0, 1]
    assert splits.report["dropped"]["train"]["missing_label"] == 1


def test_multiclass_names_and_indices(tmp_path):
    root = tmp_path / "multi"
    root.mkdir()
    names = ["bad", "ok", "good"]
    train = pd.DataFrame(
        {"text": [f"r{i}" for i in range(30)], "label": [["Good", "1", "BAD"][i % 3] for i in range(30)]}
    )
    write(root / "train.csv", train)
    write(root / "test.jsonl", pd.DataFrame({"text": ["a", "b", "c"], "label": [2, 0, "ok"]}, dtype=object))
    splits = load_data(DataConfig(str(root), labels=names, validation_size=3))
    assert splits.test["label"].tolist() == [2, 0, 1]
    assert splits.report["label_counts"]["train"] == {"bad": 9, "ok": 9, "good": 9}
    write(root / "test.jsonl", pd.DataFrame({"text": ["a"], "label": [3]}))
    assert load_error(root, labels=names) == (
        f"{root / 'test.jsonl'} line 1, column 'label': label 3 is not one of bad, ok, good or 0-2 "
        "(declare other labels with --labels)"
    )


def test_numeric_label_names_are_names_not_ids(tmp_path):
    root = tmp_path / "stars"
    root.mkdir()
    write(
        root / "train.parquet",
        pd.DataFrame({"text": [f"r{i}" for i in range(50)], "label": [i % 5 + 1 for i in range(50)]}),
    )
    write(root / "test.csv", pd.DataFrame({"text": ["x", "y"], "label": ["5", "1"]}))
    splits = load_data(DataConfig(str(root), labels=["1", "2", "3", "4", "5"], validation_size=5))
    assert splits.test["label"].tolist() == [4, 0]
    assert splits.report["label_counts"]["train"] == dict.fromkeys(["1", "2", "3", "4", "5"], 9)


def test_bad_label_in_csv_names_the_line_after_a_multiline_review(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "train.csv").write_text('text,label\ngood one,1\n"multi\nline\nreview",0\n\nbad one,postive\n')
    write(root / "test.csv", reviews(4))
    assert load_error(root) == (
        f"{root / 'train.csv'} line 7, column 'label': label 'postive' is not one of negative, positive "
        "or 0-1 (declare other labels with --labels)"
    )


def test_bad_label_in_parquet_and_jsonl(tmp_path):
    path = write(tmp_path / "reviews.parquet", pd.DataFrame({"text": ["a", "b", "c"], "label": [0, 1, 7]}))
    assert load_error(path).startswith(f"{path} row 3, column 'label': label 7 is not one of")
    path = tmp_path / "reviews.jsonl"
    path.write_text('{"text": "a", "sentiment": "pos"}\n\n{"text": "b", "sentiment": true}\n')
    assert load_error(path).startswith(f"{path} line 3, column 'sentiment': label True is not one of")


# --- untrusted input ---------------------------------------------------------------------------------------


def test_empty_and_unusable_files(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert load_error(empty) == f"{empty}: file is empty"
    header = tmp_path / "header.csv"
    header.write_text("text,label\n")
    assert load_error(header) == f"{header}: no usable rows (0 read, 0 with empty text, 0 without a label)"
    blank = tmp_path / "blank.csv"
    blank.write_text('text,label\n"<br />",1\n"  ",0\nok,\n')
    assert load_error(blank) == f"{blank}: no usable rows (3 read, 2 with empty text, 1 without a label)"


def test_unknown_format_and_unrecognised_folder(tmp_path):
    sheet = tmp_path / "reviews.xlsx"
    sheet.write_bytes(b"PK")
    assert load_error(sheet).startswith(f"{sheet}: unknown data format '.xlsx'")
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.csv").write_text("a,b\n1,2\n")
    assert load_error(tmp_path / "stuff").startswith(f"{tmp_path / 'stuff'}: no train/test files found")


def test_ambiguous_split_files(tmp_path):
    root = folder(tmp_path)
    write(root / "train.csv", reviews(5))
    assert load_error(root) == f"{root}: several files for the train split (train.csv, train.parquet): keep one"


def test_missing_columns_list_what_was_found(tmp_path):
    path = write(tmp_path / "reviews.csv", pd.DataFrame({"body": ["a"], "label": [1], "id": [3]}))
    assert load_error(path) == (
        f"{path}: no text column (looked for text, review, sentence, content; "
        "columns found: body, label, id); name it with --text-column"
    )
    path = write(tmp_path / "reviews.parquet", pd.DataFrame({"text": ["a"], "stars": [1]}))
    assert "no label column" in load_error(path) and "--label-column" in load_error(path)
    assert load_error(path, label_column="score") == (
        f"{path}: no column 'score' (columns found: text, stars); fix --label-column"
    )


def test_non_utf8_bytes_name_the_line_and_suggest_encoding(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_bytes(b"review,sentiment\nfine film,positive\nA great caf\xe9 film,positive\nbad,negative\n")
    assert load_error(path) == (
        f"{path} line 3: not valid utf-8 (byte 0xe9 at position 12); "
        "pass --encoding latin-1 if that is the file's encoding"
    )
    rows = ["A great caf\u00e9 film,positive"] + [f"review {i},{('negative', 'positive')[i % 2]}" for i in range(9)]
    path.write_bytes("\n".join(["review,sentiment", *rows]).encode("latin-1"))
    splits = load_data(DataConfig(str(path), encoding="latin-1", validation_size=2))
    everything = pd.concat([splits.train, splits.validation, splits.test])
    assert "A great caf\u00e9 film" in set(everything["text"])


def test_malformed_jsonl(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"text": f"t{i}", "label": i % 2}) + "\n" for i in range(4)) + '{"text": "cut')
    assert load_error(path).startswith(f"{path} line 5: invalid JSON (Unterminated string")
    path.write_text('{"text": "a", "label": 1}\n["text", 0]\n')
    assert load_error(path) == f"{path} line 2: expected a JSON object with text and label fields, got list"


def test_corrupt_parquet(tmp_path):
    root = folder(tmp_path)
    (root / "test.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    assert load_error(root).startswith(f"{root / 'test.parquet'}: not a readable Parquet file (")


def test_single_class_training_data(tmp_path):
    path = write(tmp_path / "pos.parquet", reviews(20, labels=(1,)))
    assert load_error(path) == "training data has only one class (positive): need at least two"
    # Subsetting down to one row also leaves a single class.
    root = folder(tmp_path)
    assert "only one class" in load_error(root, train_samples=1)


def test_validation_size_larger_than_train(tmp_path):
    root = folder(tmp_path, n_train=10)
    assert load_error(root, validation_size=10).startswith("cannot carve 10 validation rows from 10")


# --- splits, subsets, determinism ---------------------------------------------------------------------------


def test_only_test_split_reads_only_test(tmp_path):
    root = folder(tmp_path, ".csv")
    full = load_data(DataConfig(str(root), eval_samples=10))
    (root / "train.csv").write_text("text,label\nbroken,notalabel\n")  # proves train is not read
    splits = load_data(DataConfig(str(root), eval_samples=10), splits=("test",))
    assert splits.test.equals(full.test) and len(splits.test) == 10
    assert list(splits.train.columns) == ["text", "label"] and len(splits.train) == len(splits.validation) == 0
    assert splits.report["rows_read"] == {"test": 40} and splits.report["sizes"] == {"test": 10}


def test_validation_alone_matches_training_time_validation(tmp_path):
    root = folder(tmp_path, n_train=201)
    (root / "test.parquet").unlink()
    write(root / "test.parquet", pd.concat([reviews(40, "test"), reviews(201, "train").iloc[:7]]))
    trained = load_data(DataConfig(str(root), train_samples=50, validation_samples=15))
    alone = load_data(DataConfig(str(root), validation_samples=15), splits=("validation",))
    assert alone.validation.equals(trained.validation) and len(alone.validation) == 15
    assert alone.test is None and len(alone.train) == 0
    assert trained.report["dropped"]["train"]["overlaps_test"] == 7
    train_only = load_data(DataConfig(str(root), train_samples=50), splits=("train",))
    assert train_only.train.equals(trained.train) and train_only.test is None
    with pytest.raises(ValueError, match="splits must be"):
        load_data(DataConfig(str(root)), splits=("dev",))


def test_test_carved_from_single_file_is_the_same_when_asked_alone(tmp_path):
    path = write(tmp_path / "all.csv", reviews(80))
    assert load_data(DataConfig(str(path)), ("test",)).test.equals(load_data(DataConfig(str(path))).test)


def test_subset_sizes_are_exact_and_stratified(tmp_path):
    root = folder(tmp_path, n_train=400, n_test=200)
    splits = load_data(DataConfig(str(root), train_samples=100, validation_samples=20, eval_samples=30))
    assert splits.report["sizes"] == {"train": 100, "validation": 20, "test": 30}
    assert splits.report["label_counts"] == {
        "train": {"negative": 50, "positive": 50},
        "validation": {"negative": 10, "positive": 10},
        "test": {"negative": 15, "positive": 15},
    }
    same = load_data(DataConfig(str(root), train_samples=100, validation_samples=20, eval_samples=30))
    assert same.train.equals(splits.train) and same.test.equals(splits.test)
    everything = load_data(DataConfig(str(root), train_samples=10_000, eval_samples=200))
    assert len(everything.train) == 360 and len(everything.test) == 200


def test_stratified_subset_proportions_tiny_classes_and_seed():
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(100)], "label": [0] * 60 + [1] * 30 + [2] * 10})
    subset = stratified_subset(frame, 10, seed=3)
    assert subset["label"].value_counts().sort_index().tolist() == [6, 3, 1]
    assert list(subset.index) == list(range(10))
    assert subset.equals(stratified_subset(frame, 10, seed=3))
    assert not subset.equals(stratified_subset(frame, 10, seed=4))
    assert stratified_subset(frame, 100, seed=0).equals(frame) and stratified_subset(frame, 500, seed=0).equals(frame)
    tiny = pd.DataFrame({"text": [f"t{i}" for i in range(51)], "label": [0] * 50 + [1]})
    assert stratified_subset(tiny, 5, seed=0)["label"].tolist() == [0, 0, 0, 0, 1]  # the rare class survives


def test_carving_with_a_class_too_small_for_sklearn(tmp_path):
    root = tmp_path / "tiny"
    root.mkdir()
    write(
        root / "train.csv",
        pd.DataFrame({"text": [f"t{i}" for i in range(21)], "label": ["a", "b"] * 10 + ["c"]}),
    )
    write(root / "test.csv", pd.DataFrame({"text": ["x", "y", "z"], "label": ["a", "b", "c"]}))
    splits = load_data(DataConfig(str(root), labels=["a", "b", "c"], validation_size=4))
    assert (len(splits.train), len(splits.validation)) == (17, 4)
    assert splits.report["label_counts"]["validation"] == {"a": 2, "b": 2, "c": 0}
    assert splits.report["label_counts"]["train"] == {"a": 8, "b": 8, "c": 1}  # the single "c" row trains


def test_splits_dataclass_label2id():
    empty = pd.DataFrame({"text": [], "label": []})
    splits = Splits(empty, empty, None, {0: "neg", 1: "neutral", 2: "pos"}, {})
    assert splits.label2id == {"neg": 0, "neutral": 1, "pos": 2}


# --- the real IMDB data ------------------------------------------------------------------------------------

needs_imdb = pytest.mark.skipif(not (IMDB / "train.parquet").is_file(), reason=f"no IMDB data at {IMDB}")


@pytest.mark.slow
@needs_imdb
def test_real_imdb_full_load():
    splits = load_data(DataConfig(str(IMDB)))
    report = splits.report
    assert report["rows_read"] == {"train": 25000, "test": 25000}
    assert len(splits.test) == 25000 and report["label_counts"]["test"] == {
        "negative": 12500,
        "positive": 12500,
    }
    dropped = report["dropped"]["train"]
    assert dropped["duplicate"] > 0 and dropped["overlaps_test"] > 0
    assert len(splits.train) + len(splits.validation) == 25000 - dropped["duplicate"] - dropped["overlaps_test"]
    assert len(splits.validation) == int(np.ceil(0.1 * (len(splits.train) + len(splits.validation))))
    for frame in (splits.train, splits.validation, splits.test):
        assert not frame["text"].str.contains("<br", regex=False).any()
    assert not set(splits.train["text"]) & (set(splits.test["text"]) | set(splits.validation["text"]))
    assert splits.train["text"].is_unique


@pytest.mark.slow
@needs_imdb
def test_real_imdb_subsets_and_evaluation_splits():
    full = load_data(DataConfig(str(IMDB), seed=1)).report["label_counts"]
    config = DataConfig(str(IMDB), train_samples=2000, validation_samples=500, eval_samples=1000, seed=1)
    splits = load_data(config)
    counts = splits.report["label_counts"]
    assert splits.report["sizes"] == {"train": 2000, "validation": 500, "test": 1000}
    assert counts["test"] == {"negative": 500, "positive": 500}  # the test set is balanced
    # Train and validation lost a few duplicates, so they are not exactly balanced: the subsets keep
    # each label's share to within one row.
    for split, n in (("train", 2000), ("validation", 500)):
        total = sum(full[split].values())
        for name, count in counts[split].items():
            assert abs(count - n * full[split][name] / total) < 1, (split, name)
    assert load_data(config, ("validation",)).validation.equals(splits.validation)
    assert load_data(config, ("test",)).test.equals(splits.test)


# --- boolean labels, gzip-compressed files, a single file read whole ---------------------------------------


def test_a_boolean_label_column_reads_as_0_1_with_the_default_labels(tmp_path):
    frame = reviews(20).assign(label=[i % 2 == 1 for i in range(20)])
    expected = load_data(DataConfig(str(write(tmp_path / "ints.parquet", reviews(20))), validation_size=2))
    splits = load_data(DataConfig(str(write(tmp_path / "flags.parquet", frame)), validation_size=2))
    assert splits.train.equals(expected.train) and splits.test.equals(expected.test)
    as_words = load_data(DataConfig(str(write(tmp_path / "flags.csv", frame)), validation_size=2))  # True/False
    assert as_words.train.equals(expected.train)
    with_gaps = frame.astype({"label": object})
    with_gaps.loc[3, "label"] = None
    gaps = load_data(DataConfig(str(write(tmp_path / "gaps.parquet", with_gaps)), validation_size=2))
    assert gaps.report["dropped"]["train"]["missing_label"] == 1
    assert load_error(tmp_path / "flags.parquet", labels=["bad", "good"]).startswith(
        f"{tmp_path / 'flags.parquet'} row 1, column 'label': label False is not one of bad, good"
    )


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".json"])
def test_gzip_files_read_like_their_plain_form(tmp_path, suffix):
    frame = reviews(30)
    plain = write(tmp_path / f"all{suffix}", frame)
    expected = load_data(DataConfig(str(plain), validation_size=3))
    named = tmp_path / f"all{suffix}.gz"
    named.write_bytes(gzip.compress(plain.read_bytes()))
    splits = load_data(DataConfig(str(named), validation_size=3))
    assert splits.train.equals(expected.train) and splits.test.equals(expected.test)
    assert splits.report["format"] == expected.report["format"]
    root = tmp_path / "folder"
    root.mkdir()
    for split, part in (("train", reviews(30, "train")), ("test", reviews(8, "test"))):
        data = write(tmp_path / f"{split}{suffix}", part).read_bytes()
        (root / f"{split}{suffix}.gz").write_bytes(gzip.compress(data))
    splits = load_data(DataConfig(str(root), validation_size=3))
    assert splits.test["text"].tolist() == reviews(8, "test")["text"].tolist()
    assert splits.report["files"]["train"] == [str(root / f"train{suffix}.gz")]


def test_gzip_bytes_under_a_plain_name_are_read_not_blamed_on_the_encoding(tmp_path, caplog):
    plain = write(tmp_path / "plain.csv", reviews(30))
    disguised = tmp_path / "reviews.csv"
    disguised.write_bytes(gzip.compress(plain.read_bytes()))
    with caplog.at_level(logging.INFO, logger="bertsent"):  # bertsent.tabular reads the bytes
        splits = load_data(DataConfig(str(disguised), validation_size=3))
    assert splits.train.equals(load_data(DataConfig(str(plain), validation_size=3)).train)
    assert f"{disguised} is gzip-compressed" in caplog.text
    broken = tmp_path / "broken.csv"
    broken.write_bytes(gzip.compress(plain.read_bytes())[:-12])
    assert load_error(broken).startswith(f"{broken}: not a readable gzip file (")
    packed = tmp_path / "packed.parquet"
    packed.write_bytes(gzip.compress(write(tmp_path / "x.parquet", reviews(4)).read_bytes()))
    assert load_error(packed) == f"{packed}: is gzip-compressed; Parquet compresses inside itself: gunzip it first"
    unknown = tmp_path / "reviews.txt.gz"
    unknown.write_bytes(gzip.compress(b"x"))
    assert load_error(unknown).startswith(f"{unknown}: unknown data format '.txt.gz'")


def test_a_split_given_plain_and_gzipped_is_ambiguous(tmp_path):
    root = folder(tmp_path, ".csv")
    (root / "train.csv.gz").write_bytes(gzip.compress((root / "train.csv").read_bytes()))
    assert load_error(root) == f"{root}: several files for the train split (train.csv, train.csv.gz): keep one"


def test_whole_file_reads_a_single_file_as_test_as_it_is(tmp_path):
    frame = pd.concat([reviews(30), reviews(30).head(2), pd.DataFrame({"text": ["<br />"], "label": [1]})])
    path = write(tmp_path / "reviews.csv", frame)
    splits = load_data(DataConfig(str(path)), ("test",), whole_file=True)
    assert splits.test["text"].tolist() == frame["text"].tolist()[:32]  # duplicates kept, the empty text dropped
    assert splits.test["label"].tolist() == frame["label"].tolist()[:32]
    assert splits.train.empty and splits.validation.empty
    report = splits.report
    assert report["splits_from"] == {"test": WHOLE_FILE} and report["files"] == {"test": [str(path)]}
    assert report["dropped"] == {"test": {**dict.fromkeys(DROP_REASONS, 0), "empty_text": 1}}
    assert report["duplicates_kept"] == {"test": 2} and report["sizes"] == {"test": 32}
    sampled = load_data(DataConfig(str(path), eval_samples=10), ("test",), whole_file=True)
    assert len(sampled.test) == 10 and sampled.report["label_counts"]["test"] == {"negative": 5, "positive": 5}
    # a source with splits is read as ever
    root = folder(tmp_path)
    assert load_data(DataConfig(str(root)), ("test",), whole_file=True).test.equals(
        load_data(DataConfig(str(root)), ("test",)).test
    )
    with pytest.raises(ValueError, match="whole_file"):
        load_data(DataConfig(str(path)), ("validation",), whole_file=True)
