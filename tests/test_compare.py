"""The trade-off table on tiny models: measured rows, ratios, Pareto front, files."""

import dataclasses
import json
from datetime import datetime, timezone

import pytest

from bertsent.cli import main
from bertsent.config import CompareConfig, DataConfig
from bertsent.errors import ModelError
from bertsent.folder import git_revision
from bertsent.modeling.loading import load_classifier
from bertsent.recipes.compare import (
    compare,
    count_parameters,
    fastest_within,
    pareto_front,
    previous_rows,
    smallest_within,
    trade_off_line,
)


def test_compare_measures_every_folder_and_writes_table_and_plot(
    trained_tiny_dir, tiny_model_dir, toy_data_dir, tmp_path
):
    untrained = tmp_path / "untrained"
    load_classifier(tiny_model_dir).save_pretrained(untrained)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (untrained / name).write_bytes((tiny_model_dir / name).read_bytes())
    config = CompareConfig(
        models=[str(trained_tiny_dir), str(untrained)],
        names=["trained", "random"],
        data=DataConfig(str(toy_data_dir)),
        latency_samples=5,
        output_dir=str(tmp_path / "cmp"),
    )
    rows = compare(config)
    assert [r["name"] for r in rows] == ["trained", "random"]
    assert rows[0]["speedup"] == 1.0 and rows[0]["accuracy_delta_points"] == 0.0 and rows[0]["size_ratio"] == 1.0
    assert rows[0]["accuracy"] > 0.9 and rows[0]["reviews"] == 80
    assert rows[0]["parameters"] == sum(p.numel() for p in load_classifier(trained_tiny_dir).parameters())
    assert rows[1]["accuracy_delta_points"] == pytest.approx(100 * (rows[1]["accuracy"] - rows[0]["accuracy"]))
    for row in rows:
        assert row["throughput"] > 0 and 0 < row["latency_p50_ms"] <= row["latency_p95_ms"]
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert saved["rows"] == rows
    assert saved["measured"] == {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "git": git_revision()}
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert table.count("\n") == 4 and "| trained | pytorch |" in table
    assert (tmp_path / "cmp" / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # What a recipe rerun may reuse: the same settings only.
    assert previous_rows(config) == rows
    assert previous_rows(dataclasses.replace(config, latency_samples=6)) is None
    assert previous_rows(dataclasses.replace(config, models=config.models[:1], names=["trained"])) is None
    assert previous_rows(dataclasses.replace(config, output_dir=str(tmp_path / "elsewhere"))) is None


def test_pareto_front_keeps_only_undominated_rows():
    rows = [
        {"name": "a", "accuracy": 0.9, "throughput": 10},
        {"name": "b", "accuracy": 0.85, "throughput": 40},
        {"name": "c", "accuracy": 0.84, "throughput": 30},
        {"name": "d", "accuracy": 0.91, "throughput": 5},
    ]
    assert [r["name"] for r in pareto_front(rows)] == ["d", "a", "b"]


def test_fastest_within_an_accuracy_budget_skips_the_reference_and_too_lossy_rows():
    def row(name, delta, throughput):
        return {"name": name, "accuracy_delta_points": delta, "throughput": throughput, "speedup": throughput / 10}

    rows = [row("teacher", 0, 10), row("int8", -0.1, 20), row("pruned int8", -1.66, 55), row("student int8", -1.2, 45)]
    rows.append(row("trimmed int8", -1.4, 40))
    for r, size in zip(rows, (90.9, 57.0, 13.2, 17.59, 7.61), strict=True):
        r |= {"size_mb": size, "size_ratio": round(size / 90.9, 3)}
    assert fastest_within(rows, 1.5)["name"] == "student int8"
    assert fastest_within(rows, 2.0)["name"] == "pruned int8"
    assert fastest_within(rows[:1], 1.5) is None
    assert smallest_within(rows, 1.5)["name"] == "trimmed int8"
    assert smallest_within(rows, 1.3)["name"] == "student int8"
    assert smallest_within(rows[:1], 1.5) is None
    assert trade_off_line(rows, 1.5) == (
        "Fastest variant within 1.5 accuracy points of teacher: **student int8**, -1.20 points, 4.50× the "
        "throughput, 17.6 MB (0.194 of the size). Smallest within that budget: **trimmed int8**, 7.6 MB, "
        "-1.40 points, 4.00× the throughput.\n"
    )
    assert trade_off_line(rows[:4], 1.5).endswith(
        "17.6 MB (0.194 of the size), also the smallest within that budget.\n"
    )
    assert trade_off_line(rows[:1], 0.5) == "No variant stays within 0.5 accuracy points of teacher.\n"


def test_count_parameters_reads_the_weight_files(trained_tiny_dir):
    assert count_parameters(trained_tiny_dir) == sum(p.numel() for p in load_classifier(trained_tiny_dir).parameters())


def test_compare_command_and_bad_folder(trained_tiny_dir, toy_data_dir, tmp_path, capsys):
    argv = ["compare", str(trained_tiny_dir), "--data", str(toy_data_dir), "--latency-samples", "3"]
    assert main(argv) == 0
    assert "| pytorch |" in capsys.readouterr().out
    assert main(["compare", str(tmp_path), "--data", str(toy_data_dir)]) == 2
    assert "no config.json" in capsys.readouterr().err
    with pytest.raises(ModelError):
        CompareConfig(models=[str(tmp_path)], data=DataConfig(str(toy_data_dir)))


def test_compare_runs_every_folder_with_the_inference_settings(trained_tiny_dir, toy_data_dir):
    import pandas as pd

    from bertsent.config import InferenceSettings
    from bertsent.recipes.compare import measure

    data = DataConfig(str(toy_data_dir))
    inference = InferenceSettings(max_length=16, batch_size=4, threads=2)
    assert CompareConfig(models=[str(trained_tiny_dir)], data=data).resolved_inference() == InferenceSettings()
    config = CompareConfig(models=[str(trained_tiny_dir)], data=data, inference=inference, latency_samples=2)
    assert config.resolved_inference() == inference
    # batch_size and threads, when given, override the inference settings' own.
    overridden = dataclasses.replace(config, batch_size=8, threads=1).resolved_inference()
    assert overridden == dataclasses.replace(inference, batch_size=8, threads=1)
    with pytest.raises(ValueError, match="batch_size"):
        dataclasses.replace(config, batch_size=0)
    frame = pd.read_parquet(toy_data_dir / "test.parquet").head(12)
    row = measure(trained_tiny_dir, frame["text"].tolist(), frame["label"].to_numpy(), config)
    assert row["max_length"] == 16 and row["reviews"] == 12


def test_an_interrupted_comparison_keeps_its_rows_for_the_next_run(trained_tiny_dir, toy_data_dir, tmp_path):
    import shutil

    from bertsent.recipes import compare as module

    copy = tmp_path / "copy"
    shutil.copytree(trained_tiny_dir, copy)
    config = CompareConfig(
        models=[str(copy), str(trained_tiny_dir)],
        names=["first", "second"],
        data=DataConfig(str(toy_data_dir)),
        latency_samples=3,
        output_dir=str(tmp_path / "cmp"),
    )
    measure, calls, kill = module.measure, [], [False]

    def killed_on_the_second(folder, *args, **kwargs):
        calls.append(folder)
        if kill[0] and len(calls) == 2:
            raise RuntimeError("killed")
        return measure(folder, *args, **kwargs)

    def interrupted() -> dict:
        calls.clear()
        kill[0] = True
        with pytest.raises(RuntimeError, match="killed"):
            compare(config)
        calls.clear()
        kill[0] = False
        return json.loads((tmp_path / "cmp" / module.PARTIAL_FILE).read_text())

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, "measure", killed_on_the_second)
        partial = interrupted()
        assert [e["row"]["name"] for e in partial["entries"]] == ["first"]
        rows = compare(config)
        assert calls == [trained_tiny_dir]  # the second row only
    kept = partial["entries"][0]["row"]
    assert {k: rows[0][k] for k in kept} == kept
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert saved["rows"] == rows and saved["measured"]["earlier_rows"] == {"first": partial["entries"][0]["date"]}
    assert not (tmp_path / "cmp" / module.PARTIAL_FILE).exists()  # done: the next run measures afresh

    # A row is kept only for the same files and settings: a rebuilt folder, or other settings, is measured again.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, "measure", killed_on_the_second)
        interrupted()
        (copy / "config.json").write_text((copy / "config.json").read_text() + "\n")
        compare(config)
        assert calls == [copy, trained_tiny_dir]
        interrupted()
        config = dataclasses.replace(config, latency_samples=4)
        compare(config)
        assert calls == [copy, trained_tiny_dir]
    assert "earlier_rows" not in json.loads((tmp_path / "cmp" / "compare.json").read_text())["measured"]
