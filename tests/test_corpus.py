"""``bertsent predict --engine ray`` (bertsent.corpus) on a local Ray cluster started here, offline.

The Ray runs compare against local ``predict`` on the same files: every row once, ids as written, the
same labels and scores to 1e-5. One cluster serves the module (starting one takes seconds); each run
starts its own actors.
"""

from __future__ import annotations

import logging
import os
import sys
import time

import pandas as pd
import pytest

from bertsent import corpus
from bertsent.cli import main
from bertsent.compression.quantize import quantize
from bertsent.config import InferenceSettings, PredictArguments, QuantizeConfig
from bertsent.errors import DataError, SettingsError
from bertsent.predict import Predictor, predict_file

SETTINGS = InferenceSettings(batch_size=8, precision="fp32")  # fp32: the same arithmetic on any CPU


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster for the module: 3 logical CPUs, so 2 one-thread actors leave one for reading and
    writing (what ``bertsent`` itself starts on a 2-core machine)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


def reviews(toy_texts: list[str]) -> pd.DataFrame:
    """The toy reviews with a string id that a type-guessing reader would turn into a number ("007")."""
    return pd.DataFrame({"id": [f"{i:03d}" for i in range(len(toy_texts))], "text": toy_texts, "label": 0})


@pytest.fixture
def shards(tmp_path, toy_texts):
    """A folder of the toy reviews in three shards, one per format (one in a subfolder), and files a
    folder input skips."""
    frame = reviews(toy_texts)
    root = tmp_path / "shards"
    (root / "more").mkdir(parents=True)
    parts = [frame.iloc[:30], frame.iloc[30:55], frame.iloc[55:]]
    parts[0].to_csv(root / "a.csv", index=False)
    parts[1].to_json(root / "b.jsonl", orient="records", lines=True)
    parts[2].to_parquet(root / "more" / "c.parquet", index=False)
    (root / "_SUCCESS").write_text("")
    (root / ".a.csv.crc").write_text("")
    return root, {"a.csv": parts[0], "b.jsonl": parts[1], "more/c.parquet": parts[2]}


def read_output(folder) -> pd.DataFrame:
    frame = pd.read_parquet(folder)
    frame[["file", "row"]] = frame["row_id"].str.rsplit(":", n=1, expand=True)
    return frame.astype({"row": int}).sort_values(["file", "row"]).reset_index(drop=True)


def local_predictions(model_dir, path, tmp_path, keep_columns) -> pd.DataFrame:
    out = tmp_path / f"local-{path.name}.jsonl"
    predict_file(Predictor(model_dir, SETTINGS), path, out, keep_columns=keep_columns)
    return pd.read_json(out, lines=True, dtype=False)


def assert_same_as_local(ray_rows: pd.DataFrame, local: pd.DataFrame, columns: list[str], atol: float = 1e-5) -> None:
    assert ray_rows["row"].tolist() == list(range(len(local))), "every row once, numbered as in its file"
    for column in columns:
        assert ray_rows[column].astype(str).tolist() == local[column].astype(str).tolist(), column
    assert ray_rows["label"].tolist() == local["label"].tolist()
    assert (ray_rows["score"] - local["score"]).abs().max() < atol


def test_a_folder_of_csv_jsonl_and_parquet_shards_scores_as_local_predict(cluster, trained_tiny_dir, shards, tmp_path):
    root, parts = shards
    out = tmp_path / "out"
    result = corpus.score_corpus(trained_tiny_dir, root, out, SETTINGS, keep_columns=["id"], workers=2)
    assert (result.rows, result.input_files, result.workers, result.threads) == (80, 3, 2, 1)
    frame = read_output(out)
    assert list(frame.columns) == ["row_id", "id", "text", "label", "score", "file", "row"]  # no scores: top-k 1
    assert frame["row_id"].is_unique and sorted(set(frame["file"])) == sorted(parts)
    for name in parts:
        local = local_predictions(trained_tiny_dir, root / name, tmp_path, ["id"])
        rows = frame[frame["file"] == name].reset_index(drop=True)
        assert_same_as_local(rows, local, ["id", "text"])
    assert not list(tmp_path.glob(".out.partial-*")), "the staging folder became the output"


def test_a_glob_through_the_cli_keeps_all_columns_and_top_k_0_writes_every_score(
    cluster, trained_tiny_dir, toy_texts, tmp_path, capsys
):
    frame = reviews(toy_texts).rename(columns={"id": "row_id"})  # a column named like the output's own
    (tmp_path / "in").mkdir()
    frame.iloc[:40].to_csv(tmp_path / "in" / "part-0.csv", index=False)
    frame.iloc[40:].to_csv(tmp_path / "in" / "part-1.csv", index=False)
    frame.to_csv(tmp_path / "in" / "other.tsv", index=False)  # not matched by the glob
    argv = ["predict", "--engine", "ray", "--model", str(trained_tiny_dir), "--input", str(tmp_path / "in" / "*.csv")]
    argv += ["--output", str(tmp_path / "out"), "--top-k", "0", "--batch-size", "8", "--precision", "fp32"]
    argv += ["--workers", "1"]  # one actor to start: this test is about the columns
    assert main(argv) == 0
    assert "80 predictions written to" in capsys.readouterr().out
    out = read_output(tmp_path / "out")
    assert list(out.columns[:7]) == ["row_id", "input_row_id", "text", "input_label", "label", "score", "scores"]
    assert out["input_row_id"].tolist() == frame["row_id"].tolist()
    expected = Predictor(trained_tiny_dir, SETTINGS)(frame["text"].tolist(), top_k=None)
    for got, want in zip(out["scores"], expected, strict=True):
        assert [s["label"] for s in got] == [s["label"] for s in want]
        assert max(abs(s["score"] - w["score"]) for s, w in zip(got, want, strict=True)) < 1e-5
    assert (out["label"] == [w[0]["label"] for w in expected]).all()


def test_a_killed_actor_is_restarted_and_no_row_is_lost_or_repeated(
    cluster, trained_tiny_dir, toy_texts, tmp_path, monkeypatch
):
    path = tmp_path / "reviews.parquet"
    reviews(toy_texts).to_parquet(path, index=False)
    flag, calls = tmp_path / "crashed", tmp_path / "calls"
    calls.mkdir()

    class CrashOnce(corpus.Scorer):
        """Ends its process (as an OOM kill or a lost node would) on the batch holding row 40, once; notes
        the process of each batch it scores."""

        def __call__(self, batch):
            row_ids = batch.column("row_id").to_pylist()
            if "reviews.parquet:40" in row_ids and not flag.exists():
                flag.write_text(str(os.getpid()))
                os._exit(1)
            (calls / row_ids[0].replace(":", "-")).write_text(str(os.getpid()))
            return super().__call__(batch)

    monkeypatch.setattr(corpus, "Scorer", CrashOnce)  # a local class: Ray ships it by value
    out = tmp_path / "out"
    result = corpus.score_corpus(trained_tiny_dir, path, out, SETTINGS, keep_columns=[], workers=2, chunk_size=8)
    assert flag.exists(), "the actor died mid-run"
    scored_by = {path.read_text() for path in calls.iterdir()} - {flag.read_text()}
    assert len(scored_by) == 2, "the other actor and the restarted one both scored chunks of the one file"
    frame = read_output(out)
    assert result.rows == len(frame) == 80
    assert frame["row"].tolist() == list(range(80)), "every row once after the retry"
    local = local_predictions(trained_tiny_dir, path, tmp_path, [])
    assert_same_as_local(frame, local, ["text"])


def test_an_onnx_int8_folder_scores_as_local_and_one_file_spreads_over_both_actors(
    cluster, trained_tiny_dir, toy_texts, tmp_path, monkeypatch
):
    """Actors serve any backend a folder holds (here ONNX Runtime INT8), and a single file's blocks go to
    every actor: 80 rows in blocks of 16 (BLOCK_ROWS scaled down from 512) must not all land on one."""
    int8 = quantize(
        QuantizeConfig(model=str(trained_tiny_dir), output_dir=str(tmp_path / "int8"), method="onnx-dynamic")
    )
    assert Predictor(int8.output_dir, SETTINGS).backend.name == "onnxruntime"
    path = tmp_path / "reviews.parquet"
    reviews(toy_texts).to_parquet(path, index=False)
    calls = tmp_path / "calls"
    calls.mkdir()

    class NotePid(corpus.Scorer):
        def __call__(self, batch):
            time.sleep(1)  # a real block takes seconds; the tiny model's milliseconds end before a second actor is up
            (calls / batch.column("row_id")[0].as_py().replace(":", "-")).write_text(str(os.getpid()))
            return super().__call__(batch)

    monkeypatch.setattr(corpus, "Scorer", NotePid)
    monkeypatch.setattr(corpus, "BLOCK_ROWS", 16)
    # Both actors up before the first block, one block in flight each: the spread cannot depend on which
    # actor started first on a loaded machine (Ray's defaults: no wait, 2 blocks queued per actor).
    from ray.data import DataContext

    context = DataContext.get_current()
    monkeypatch.setattr(context, "wait_for_min_actors_s", 120)
    monkeypatch.setattr(context, "max_tasks_in_flight_per_actor", 1)
    out = tmp_path / "out"
    corpus.score_corpus(int8.output_dir, path, out, SETTINGS, keep_columns=["id"], workers=2)
    assert len(list(calls.iterdir())) == 5, "80 rows in blocks of 16"
    assert len({f.read_text() for f in calls.iterdir()}) == 2, "both actors scored blocks of the one file"
    # Dynamic INT8 sets each batch's activation scale from the batch itself, so a row's score moves with
    # the rows it is batched with (Ray's blocks are not local predict's batches): labels equal, scores to 1e-3.
    local = local_predictions(int8.output_dir, path, tmp_path, ["id"])
    assert_same_as_local(read_output(out), local, ["id", "text"], atol=1e-3)


def test_bad_input_in_a_ray_task_is_one_line_and_leaves_no_output(cluster, trained_tiny_dir, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    pd.DataFrame({"id": ["1"], "text": ["fine"]}).to_csv(tmp_path / "in" / "a.csv", index=False)
    pd.DataFrame({"text": ["no id here"]}).to_csv(tmp_path / "in" / "b.csv", index=False)
    argv = ["predict", "--engine", "ray", "--model", str(trained_tiny_dir), "--input", str(tmp_path / "in")]
    assert main([*argv, "--output", str(tmp_path / "out"), "--keep-columns", "id", "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip()  # Ray's progress lines, then the error on one line
    assert err.splitlines()[-1].endswith("b.csv: no column 'id' to keep (found: text); fix --keep-columns")
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"], "no output, no staging folder"


# --- no cluster needed ----------------------------------------------------------------------------------


def test_without_ray_the_engine_names_the_install_command(monkeypatch, capsys, trained_tiny_dir, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where Ray is not installed
    (tmp_path / "a.csv").write_text("text\ngood\n")
    argv = ["predict", "--engine", "ray", "--model", str(trained_tiny_dir), "--input", str(tmp_path / "a.csv")]
    assert main([*argv, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'pip install "bertsent[ray]"' in err


def test_inputs_a_file_a_folder_or_a_glob(tmp_path, caplog):
    for name in ("a.csv", "sub/b.jsonl", "_SUCCESS", ".hidden/c.csv", "notes.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("text\nx\n")
    with caplog.at_level(logging.WARNING, "bertsent.corpus"):
        root, files = corpus.list_inputs(tmp_path)
    assert root == tmp_path and [f.relative_to(root).as_posix() for f in files] == ["a.csv", "sub/b.jsonl"]
    assert "notes.md" in caplog.text
    root, files = corpus.list_inputs(str(tmp_path / "**" / "*.jsonl"))
    assert root == tmp_path and files == [tmp_path / "sub" / "b.jsonl"]
    assert corpus.list_inputs(tmp_path / "a.csv") == (tmp_path, [tmp_path / "a.csv"])
    for bad, message in [(tmp_path / "none", "no such file"), (str(tmp_path / "*.txt"), "no input files")]:
        with pytest.raises(DataError, match=message):
            corpus.list_inputs(bad)
    with pytest.raises(DataError, match="unknown input format"):
        corpus.list_inputs(str(tmp_path / "*.md"))
    with pytest.raises(DataError, match="not URIs"):
        corpus.list_inputs("s3://bucket/reviews/")


def test_actors_leave_a_cpu_for_reading_and_writing(caplog):
    assert corpus.plan_workers(3, threads=1) == 2
    assert corpus.plan_workers(16, threads=4) == 3
    assert corpus.plan_workers(16, threads=2, workers=3) == 3
    with caplog.at_level(logging.WARNING, "bertsent.corpus"):
        assert corpus.plan_workers(3, threads=1, workers=4) == 2
    assert "running 2 actors" in caplog.text
    with pytest.raises(SettingsError, match="do not fit"):
        corpus.plan_workers(2, threads=2)


def test_engine_settings_are_checked(tmp_path, trained_tiny_dir):
    for bad in (
        {"engine": "spark"},
        {"workers": 2},
        {"engine": "ray", "input": "a.csv"},
        {"engine": "ray", "input": "a.csv", "output": "out", "resume": True},
        {"engine": "ray", "input": "a.csv", "output": "out", "workers": 0},
    ):
        with pytest.raises(SettingsError):
            PredictArguments(**bad)
    pytest.importorskip("ray")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.parquet").write_text("")
    with pytest.raises(DataError, match="not an empty folder"):
        corpus.score_corpus(trained_tiny_dir, tmp_path / "in.csv", tmp_path / "out")
    assert corpus.output_names(["row_id", "input_row_id", "text"]) == ["input_row_id_2", "input_row_id", "text"]


def test_explain_is_refused_on_ray(trained_tiny_dir, tmp_path, capsys):
    argv = ["predict", "--engine", "ray", "--model", str(trained_tiny_dir), "--input", "a.csv"]
    assert main([*argv, "--output", str(tmp_path / "out"), "--explain"]) == 2
    assert "--explain runs with --engine local" in capsys.readouterr().err


def test_the_scorer_breaks_ties_as_local_predict(tmp_path):
    import pyarrow as pa
    from test_predict import make_tied_bert, tied_order

    tied = make_tied_bert(tmp_path / "tied")
    texts = ["a tie", "another text entirely"]
    everything = corpus.Scorer(str(tied), SETTINGS, top_k=0)(pa.table({"text": texts}))
    assert everything.column_names == ["text", "label", "score", "scores"]
    assert everything.column("label").to_pylist() == [tied_order()[0]] * 2
    assert [[s["label"] for s in row] for row in everything.column("scores").to_pylist()] == [tied_order()] * 2
    local = Predictor(tied, SETTINGS)(texts, top_k=None)
    for got, want in zip(everything.column("scores").to_pylist(), local, strict=True):
        assert [s["score"] for s in got] == pytest.approx([w["score"] for w in want])
    best_three = corpus.Scorer(str(tied), SETTINGS, top_k=3)(pa.table({"text": texts}))
    assert [[s["label"] for s in row] for row in best_three.column("scores").to_pylist()] == [tied_order()[:3]] * 2
    only_best = corpus.Scorer(str(tied), SETTINGS)(pa.table({"text": texts}))
    assert only_best.column_names == ["text", "label", "score"]
    assert only_best.column("score").to_pylist() == pytest.approx([local[0][0]["score"]] * 2)
