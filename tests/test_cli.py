"""The CLI end to end on the tiny model: train, evaluate, predict, and one-line errors with exit 2."""

import csv
import json
import logging

import pandas as pd
import pytest

from bertsent.cli import main


@pytest.fixture(scope="module")
def cli_model(tiny_model_dir, toy_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "model"
    code = main(
        [
            "train",
            "--model",
            str(tiny_model_dir),
            "--data",
            str(toy_data_dir),
            "--output-dir",
            str(out),
            "--max-length",
            "32",
            "--epochs",
            "6",
            "--lr",
            "5e-3",
            "--validation-size",
            "40",
            "--eval-samples",
            "60",
            "--save-steps",
            "5",
        ]
    )
    assert code == 0
    return out


def test_train_command_prints_metrics_and_location(cli_model, capsys):
    metrics = json.loads((cli_model / "metrics.json").read_text())
    assert metrics["data"]["sizes"]["test"] == 60
    assert metrics["test_accuracy"] > 0.8


def test_evaluate_command_writes_report(cli_model, toy_data_dir, tmp_path, capsys):
    out = tmp_path / "report"
    code = main(["evaluate", "--model", str(cli_model), "--data", str(toy_data_dir), "--output-dir", str(out)])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 80 and metrics["split"] == "test"
    assert {"accuracy", "f1", "roc_auc", "log_loss", "ece", "confusion/positive/positive"} <= metrics.keys()
    assert (out / "errors.csv").is_file() and (out / "reliability.png").is_file()
    assert f"{metrics['accuracy']:.4f}" in capsys.readouterr().out


def test_evaluate_validation_split_is_the_one_used_in_training(cli_model, toy_data_dir, tmp_path):
    out = tmp_path / "val"
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(cli_model),
                "--data",
                str(toy_data_dir),
                "--split",
                "validation",
                "--output-dir",
                str(out),
            ]
        )
        == 0
    )
    trained = json.loads((cli_model / "metrics.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 40
    assert metrics["accuracy"] == pytest.approx(trained["validation_accuracy"])


def test_predict_texts_and_files(cli_model, tmp_path, capsys):
    assert main(["predict", "--model", str(cli_model), "a wonderful film", "awful and boring"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["prediction"]["label"] for line in lines] == ["positive", "negative"]
    assert 0.5 < lines[0]["prediction"]["score"] <= 1.0

    source = tmp_path / "in.csv"
    source.write_text('text,id\n"great, superb acting",1\nworst film ever,2\n', encoding="utf-8")
    assert (
        main(
            [
                "predict",
                "--model",
                str(cli_model),
                "--input",
                str(source),
                "--output",
                str(tmp_path / "o.jsonl"),
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == ["great, superb acting", "worst film ever"]
    assert [r["label"] for r in rows] == ["positive", "negative"]

    txt = tmp_path / "in.txt"
    txt.write_text("loved it, brilliant\n\nhated it, dull\n")
    assert main(["predict", "--model", str(cli_model), "--input", str(txt), "--output", str(tmp_path / "o.csv")]) == 0
    with (tmp_path / "o.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["text"], r["label"]) for r in rows] == [
        ("loved it, brilliant", "positive"),
        ("hated it, dull", "negative"),
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["predict", "--model", "{tmp}/missing", "text"], "no config.json"),
        (["predict", "--model", "{model}"], "give either texts"),
        (
            ["predict", "--model", "{model}", "--input", "{tmp}/none.csv", "--output", "{tmp}/o.csv"],
            "no such file",
        ),
        (
            ["predict", "--model", "{model}", "--input", "{tmp}/bad.jsonl", "--output", "{tmp}/o.jsonl"],
            "line 2",
        ),
        (["train", "--data", "{tmp}/nowhere/", "--output-dir", "{tmp}/o"], "nowhere"),
        (["train", "--data", "{data}", "--epochs", "0", "--output-dir", "{tmp}/o"], "epochs"),
        (
            ["evaluate", "--model", "{model}", "--data", "{data}", "--split", "train", "--labels", "a,b,c"],
            "labels",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, cli_model, toy_data_dir, tmp_path, capsys):
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": "trunc\n')
    argv = [a.format(tmp=tmp_path, model=cli_model, data=toy_data_dir) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def toy_file(toy_data_dir, path, split="test"):
    """The toy ``split`` as one CSV file (no train/test structure), plus one repeated review."""
    frame = pd.read_parquet(toy_data_dir / f"{split}.parquet")
    pd.concat([frame, frame.head(1)]).to_csv(path, index=False)
    return path


def test_evaluate_scores_a_single_file_whole_and_says_so(cli_model, toy_data_dir, tmp_path, capsys, caplog):
    source = toy_file(toy_data_dir, tmp_path / "reviews.csv")
    out = tmp_path / "report"
    with caplog.at_level(logging.INFO, logger="bertsent.evaluate"):
        assert main(["evaluate", "--model", str(cli_model), "--data", str(source), "--output-dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "all" and metrics["n"] == 81  # every row, the repeated one too
    assert metrics["data"]["splits_from"] == {"test": "whole file"}
    assert f"{source} has no train/test split: scoring all its 81 usable reviews" in caplog.text
    assert "--split test" in caplog.text
    assert "81 reviews scored (all)" in capsys.readouterr().out
    # --split test still scores the share carved off as test, and says where it came from
    carved = tmp_path / "carved"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bertsent.evaluate"):
        argv = ["evaluate", "--model", str(cli_model), "--data", str(source), "--split", "test"]
        assert main([*argv, "--output-dir", str(carved)]) == 0
    metrics = json.loads((carved / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["n"] == 16  # ceil(0.2 * 80): the pool is de-duplicated first
    assert "scoring 16 test reviews (carved from train (test_size=0.2)" in caplog.text


def test_evaluate_on_the_models_own_training_file_scores_its_held_out_rows(cli_model, toy_data_dir, tmp_path):
    from bertsent.config import DataConfig
    from bertsent.data.loading import load_data
    from bertsent.folder import copy_model_files, data_config_for

    source = toy_file(toy_data_dir, tmp_path / "train.csv", "train")
    model = tmp_path / "model"
    copy_model_files(cli_model, model, weights=True)
    recorded = json.loads((model / "training_args.json").read_text())
    recorded["data"]["source"] = str(source)  # as if trained on that one file
    (model / "training_args.json").write_text(json.dumps(recorded))
    data = data_config_for(model, DataConfig(str(source)))
    for split, argv in (("test", []), ("validation", ["--split", "validation"])):
        out = tmp_path / split
        assert main(["evaluate", "--model", str(model), "--data", str(source), *argv, "--output-dir", str(out)]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        expected = getattr(load_data(data), split)
        assert metrics["split"] == split and metrics["n"] == len(expected)
    assert len(load_data(data).validation) == 40  # the model's recorded --validation-size applies


def test_predict_keeps_the_input_columns_unless_told(cli_model, tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("id,text,label\n7,a wonderful film,positive\n8,awful and boring,negative\n")
    base = ["predict", "--model", str(cli_model), "--input", str(source), "--output"]
    for extra, header in (
        ([], "id,text,input_label,label,score"),
        (["--keep-columns", "id"], "id,text,label,score"),
        (["--keep-columns", "id,label"], "id,text,input_label,label,score"),
        (["--keep-columns", ""], "text,label,score"),
        (["--keep-columns"], "text,label,score"),
    ):
        out = tmp_path / "o.csv"
        assert main([*base, str(out), *extra]) == 0
        with out.open(newline="") as f:
            rows = list(csv.reader(f))
        assert ",".join(rows[0]) == header, extra
        assert (
            rows[1][: header.count(",") - 1]
            == {
                "id,text,input_label": ["7", "a wonderful film", "positive"],
                "id,text": ["7", "a wonderful film"],
                "text": ["a wonderful film"],
            }[header.rsplit(",", 2)[0]]
        )
    assert main([*base, str(tmp_path / "o.csv"), "--keep-columns", "nope"]) == 2
    assert main(["predict", "--model", str(cli_model), "--keep-columns", "id", "a text"]) == 2
