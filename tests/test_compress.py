"""The compression recipe end to end on the tiny BERT: every variant folder, the table, and skipping."""

import importlib.util
import json
import shutil

from bertsent.cli import main

HAS_OPENVINO = all(importlib.util.find_spec(name) for name in ("openvino", "nncf"))
OPENVINO_ROWS = (
    ["teacher OpenVINO fp32", "teacher OpenVINO INT8", "student OpenVINO fp32", "student OpenVINO INT8"]
    if HAS_OPENVINO
    else []
)


def test_compress_recipe_writes_every_variant_then_compares_and_resumes(
    trained_tiny_dir, toy_data_dir, tmp_path, capsys
):
    out = tmp_path / "recipe"
    argv = [
        "compress",
        "--teacher",
        str(trained_tiny_dir),
        "--output-dir",
        str(out),
        "--data",
        str(toy_data_dir),
        "--validation-size",
        "40",
        "--distill-epochs",
        "2",
        "--recover-epochs",
        "1",
        "--latency-samples",
        "3",
        "--heads-fraction",
        "0.25",
        "--ffn-fraction",
        "0.25",
        "--factorize-energy",
        "0.5",  # the tiny random teacher's spectrum is flat: at 0.9 no layer would get smaller
    ]
    assert main(argv) == 0
    folders = ("teacher-onnx", "teacher-int8", "teacher-int8-emb", "student", "student-unpruned-int8", "student-pruned")
    for folder in (*folders, "student-int8"):
        assert (out / folder / "config.json").is_file(), folder
    assert (out / "teacher-onnx" / "model.onnx").is_file() and (out / "student-int8" / "model.onnx").is_file()
    rows = json.loads((out / "compare" / "compare.json").read_text())["rows"]
    names = [r["name"] for r in rows]
    assert names == [
        "teacher",
        "teacher ONNX fp32",
        "teacher INT8",
        "teacher INT8 + embeddings",
        "student",
        "student INT8 (unpruned)",
        "student pruned",
        "student INT8",
        "student trimmed vocab",
        "student trimmed INT8",
        "student trimmed vocab 95%",
        "student trimmed 95% INT8",
        "teacher factorized",
        "teacher early exit",
        *OPENVINO_ROWS,
    ]
    by_name = {r["name"]: r for r in rows}
    assert by_name["student"]["parameters"] < by_name["teacher"]["parameters"]
    assert by_name["student pruned"]["parameters"] < by_name["student"]["parameters"]
    assert by_name["student INT8"]["size_mb"] < by_name["student pruned"]["size_mb"]
    sizes = [by_name[name]["size_mb"] for name in ("student INT8", "student INT8 (unpruned)", "student")]
    assert sizes == sorted(sizes), sizes
    unpruned = json.loads((out / "student-unpruned-int8" / "compression.json").read_text())
    assert unpruned["source"] == str(out / "student") and unpruned["settings"]["quantize_embeddings"] is True
    assert by_name["teacher INT8"]["backend"] == "onnxruntime"
    # The survey's other families: the trimmed student is the smallest, the factorized teacher smaller.
    assert by_name["student trimmed INT8"]["size_mb"] < by_name["student INT8"]["size_mb"]
    assert by_name["student trimmed vocab"]["parameters"] < by_name["student pruned"]["parameters"]
    assert by_name["student trimmed vocab 95%"]["parameters"] < by_name["student trimmed vocab"]["parameters"]
    # (the toy model's tables are a few KB: the sizes agree to the table's 0.01 MB)
    assert by_name["student trimmed 95% INT8"]["size_mb"] <= by_name["student trimmed INT8"]["size_mb"]
    coverage = json.loads((out / "student-trimmed-95" / "compression.json").read_text())["selection"]["coverage"]
    assert coverage == 0.95
    assert by_name["teacher factorized"]["parameters"] < by_name["teacher"]["parameters"]
    assert json.loads((out / "teacher-early-exit" / "config.json").read_text())["num_hidden_layers"] == 2
    assert "| student INT8 | onnxruntime |" in capsys.readouterr().out
    if HAS_OPENVINO:  # the smallest student's IR, and "fastest within the budget" chooses across backends
        assert json.loads((out / "student-openvino" / "compression.json").read_text())["source"] == str(
            out / "student-pruned"
        )
        assert by_name["student OpenVINO INT8"]["backend"] == "openvino"
    timings = json.loads((out / "recipe.json").read_text())["stage_seconds"]
    assert all(isinstance(v, float) for v in timings.values())

    # Each stage's time is on disk as soon as it ends (a killed recipe keeps what its finished stages took).
    measured = json.loads((out / "stage_seconds.json").read_text())
    assert measured == timings

    # A second run finds every stage complete and the table measured: nothing to do.
    assert main(argv) == 0
    recipe = json.loads((out / "recipe.json").read_text())
    timings = recipe["stage_seconds"]
    assert all(v == "skipped (already complete)" for v in timings.values()), timings
    assert recipe["measured_seconds"] == measured
    assert json.loads((out / "compare" / "compare.json").read_text())["rows"] == rows

    # --remeasure only re-measures.
    assert main([*argv, "--remeasure"]) == 0
    timings = json.loads((out / "recipe.json").read_text())["stage_seconds"]
    assert [k for k, v in timings.items() if isinstance(v, float)] == ["compare"]

    # An output folder from before a stage existed: only that stage runs, and the table is re-measured.
    shutil.rmtree(out / "student-unpruned-int8")
    assert main(argv) == 0
    timings = json.loads((out / "recipe.json").read_text())["stage_seconds"]
    assert [k for k, v in timings.items() if isinstance(v, float)] == ["student INT8 (unpruned)", "compare"]


def test_every_stage_reads_the_data_options(tiny_model_dir, toy_data_dir, tmp_path):
    """A CSV whose columns are neither text nor label, with its own label names: each stage must read it."""
    import pandas as pd

    from bertsent.config import DataConfig, TrainingArguments
    from bertsent.training.loop import train

    data = tmp_path / "csv"
    data.mkdir()
    for split in ("train", "test"):
        frame = pd.read_parquet(toy_data_dir / f"{split}.parquet")
        stars = frame["label"].map({0: "bad", 1: "good"})
        pd.DataFrame({"body": frame["text"], "stars": stars}).to_csv(data / f"{split}.csv", index=False)
    options = {"text_column": "body", "label_column": "stars", "labels": ["bad", "good"], "validation_size": 40}
    teacher = train(
        TrainingArguments(model=str(tiny_model_dir), output_dir=str(tmp_path / "teacher"), max_length=32, epochs=3),
        DataConfig(str(data), **options),
    ).output_dir
    out = tmp_path / "recipe"
    argv = ["compress", "--teacher", str(teacher), "--output-dir", str(out), "--data", str(data)]
    argv += ["--text-column", "body", "--label-column", "stars", "--labels", "bad,good", "--validation-size", "40"]
    argv += ["--distill-epochs", "1", "--recover-epochs", "0", "--latency-samples", "2"]
    argv += ["--train-samples", "150", "--eval-samples", "60"]
    assert main(argv) == 0
    # The recipe's slices reach the stages that count or train on their own: no stage reads past them.
    trimmed = json.loads((out / "student-trimmed" / "compression.json").read_text())
    assert trimmed["train_reviews"] == 150 and trimmed["tokens"]["test"]["reviews"] == 60
    exits = json.loads((out / "teacher-early-exit" / "compression.json").read_text())
    # The recipe's early-exit settings (8,000 head reviews, 2,000 validation reviews): the data's slices cap them.
    from bertsent.recipes.compress import EXIT_MAX_DROP

    assert exits["training"]["train_reviews"] == 150 and exits["validation"]["reviews"] == 40
    assert exits["arguments"]["max_drop"] == EXIT_MAX_DROP
    recorded = {
        "student": json.loads((out / "student" / "training_args.json").read_text())["data"],
        "student-pruned": json.loads((out / "student-pruned" / "compression.json").read_text())["arguments"]["data"],
    }
    for folder in ("teacher-int8", "student-int8"):
        record = json.loads((out / folder / "compression.json").read_text())
        assert record["validation"]["origin"] == "--data" and record["validation"]["reviews"] > 0, folder
        recorded[folder] = record["settings"]["data"]
    for folder, settings in recorded.items():
        assert (settings["text_column"], settings["label_column"]) == ("body", "stars"), folder
        assert settings["labels"] == ["bad", "good"], folder
    rows = json.loads((out / "compare" / "compare.json").read_text())["rows"]
    assert all(r["reviews"] == 60 for r in rows)


def test_trim_coverage_is_a_share_or_none(trained_tiny_dir, toy_data_dir):
    import pytest

    from bertsent.config import CompressConfig, DataConfig
    from bertsent.errors import SettingsError

    common = {"teacher": str(trained_tiny_dir), "output_dir": "out", "data": DataConfig(str(toy_data_dir))}
    for ok in (None, 1, 0.95):
        assert CompressConfig(**common, trim_coverage=ok).trim_coverage == ok
    for bad in (True, "0.9", 0, 1.5):
        with pytest.raises(SettingsError, match="trim_coverage must be a share"):
            CompressConfig(**common, trim_coverage=bad)
