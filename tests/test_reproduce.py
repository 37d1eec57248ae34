"""``bertsent reproduce --fast`` end to end (tiny BERT in place of the embedded model, toy data)."""

import importlib.util
import json
import shutil
from pathlib import Path

from bertsent.cli import main
from bertsent.data.ood import fetch
from bertsent.recipes.compare import trade_off_line

# The decision table: the teacher, its INT8, the student's INT8 unpruned and pruned, both trimmed INT8s, the factorized
# and early-exit teacher, and three OpenVINO rows (the student's fp32 IR is built, not scored) when openvino and nncf
# are installed.
ROWS = 8 + (3 if all(importlib.util.find_spec(name) for name in ("openvino", "nncf")) else 0)


def test_reproduce_fast_runs_every_stage_and_writes_the_results_page(
    tiny_model_dir, toy_data_dir, ood_archives, tmp_path, capsys
):
    out, doc, ood_dir = tmp_path / "repro", tmp_path / "results.md", tmp_path / "ood"
    for name, archive in ood_archives.items():  # what `bertsent ood` fetches with pip, from fixtures here
        fetch(name, ood_dir, archive)
    argv = [
        "reproduce",
        "--fast",
        "--data",
        str(toy_data_dir),
        "--output-dir",
        str(out),
        "--model",
        str(tiny_model_dir),
        "--max-length",
        "32",
        "--lr",
        "5e-3",
        "--doc",
        str(doc),
        "--ood-dir",
        str(ood_dir),
    ]
    assert main(argv) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["settings"]["fast"] is True and result["settings"]["epochs"] == 1
    assert result["teacher_metrics"]["train_reviews"] == 216  # 240 toy reviews minus the 10% validation carve
    assert result["rows"][0]["name"] == "teacher" and len(result["rows"]) == ROWS
    assert all(r["reviews"] == 80 for r in result["rows"])
    page = doc.read_text()
    assert page == (out / "results.md").read_text()
    assert "fast mode" in page and "93.46%" in page and "quoted, not measured here" in page
    assert "| teacher INT8 | onnxruntime |" in page
    assert "| Dynamic inference | early exit" in page and "teacher early exit: " in page  # the survey's families
    assert trade_off_line(result["rows"], 1.5) in page
    assert "Measured on " in page and "physical cores" in page  # the CPU (compare.json's "cpu")
    assert f"The table was measured on {result['table_measured']['date']} at git" in page
    assert "teacher: fine-tune" in result["stage_seconds"]
    # Scored once: the teacher's test evaluation is its table row (PyTorch fp32), its predictions stored.
    assert result["rows"][0]["accuracy"] == round(result["teacher_metrics"]["test_accuracy"], 4)
    assert (result["rows"][0]["backend"], result["rows"][0]["precision"]) == ("pytorch", "fp32")
    assert "## Which model to ship on this CPU" in page and json.loads((tmp_path / "results.json").read_text())["rows"]
    # The teacher was calibrated (the recipe's default) and the page shows its test ECE before and after.
    record = result["teacher_metrics"]["calibration"]
    assert record["test"]["n"] == 80 and f"T = {record['temperature']:.4f}" in page
    assert f"| test (80 reviews) | {record['test']['ece_before']:.4f} | {record['test']['ece_after']:.4f} |" in page
    assert "results page:" in capsys.readouterr().out

    # Out of domain: every variant scored on both sets, shown on the page and in the teacher's card.
    for name in ("amazon-snippets", "rotten-tomatoes"):
        scores = result["out_of_domain"][name]["scores"]
        assert list(scores) == [r["name"] for r in result["rows"]] and all(s["reviews"] == 6 for s in scores.values())
    assert "| Model | IMDB test accuracy | amazon-snippets: accuracy / F1 / ROC-AUC |" in page
    assert "Dropped: 1 neutral (|mean score| < 1), 1 duplicate text." in page
    assert (tmp_path / "results-training-curves.svg").read_text().lstrip().startswith("<?xml")
    assert (
        tmp_path / "results-pareto.svg"
    ).is_file() and "![Teacher training curves](results-training-curves.svg)" in page
    card = (out / "teacher" / "README.md").read_text()
    assert card.count("## Full-scale results (bertsent reproduce)") == 1 and "rotten-tomatoes" in card
    assert trade_off_line(result["rows"], 1.5) in card

    # A rerun finds everything complete: nothing is trained or measured again, and the times stay.
    timings = result["stage_seconds"]
    plots = {name: (tmp_path / name).read_bytes() for name in ("results-training-curves.svg", "results-pareto.svg")}
    assert main(argv) == 0
    assert all((tmp_path / name).read_bytes() == svg for name, svg in plots.items())  # no date, fixed ids
    again = json.loads((out / "results.json").read_text())
    assert again["rows"] == result["rows"] and again["out_of_domain"] == result["out_of_domain"]
    assert list(again["stage_seconds"].items()) == list(timings.items())  # same times, same order
    assert all(isinstance(v, float) for v in timings.values()), timings
    assert (out / "teacher" / "README.md").read_text().count("## Full-scale results") == 1

    # A stage the recipe gained after a run is made alone, and the page lists it in the recipe's order.
    shutil.rmtree(out / "compress" / "student-unpruned-int8")
    assert main(argv) == 0
    latest = json.loads((out / "results.json").read_text())["stage_seconds"]
    assert isinstance(latest["student INT8 (unpruned)"], float) and latest["student"] == timings["student"]
    stages = list(latest)
    assert stages.index("student") < stages.index("student INT8 (unpruned)") < stages.index("student pruned")
    assert stages[-1] == "out-of-domain: rotten-tomatoes"

    # Killed before the compression recipe returned: timings.json never got its stages, which each stage
    # wrote down as it ended (compress/stage_seconds.json). The rerun reports them all the same.
    kept = {k: v for k, v in latest.items() if k.startswith(("teacher:", "out-of-domain:"))}
    assert len(kept) < len(latest) - 10  # every compression stage is gone from it
    (out / "timings.json").write_text(json.dumps(kept))
    assert main(argv) == 0
    assert json.loads((out / "results.json").read_text())["stage_seconds"] == latest


def test_the_teacher_warms_up_at_half_length_only_with_a_time_budget():
    import pytest

    from bertsent.config import ReproduceConfig
    from bertsent.errors import SettingsError

    assert ReproduceConfig(data="d", output_dir="o").short_length == 128  # 60 minutes, 256 tokens
    assert ReproduceConfig(data="d", output_dir="o", max_length=128).short_length == 64
    assert ReproduceConfig(data="d", output_dir="o", time_budget="none").short_length is None  # epochs
    assert ReproduceConfig(data="d", output_dir="o", fast=True).short_length is None
    assert ReproduceConfig(data="d", output_dir="o", short_length=0).short_length is None
    with pytest.raises(SettingsError, match="short_length must be in"):
        ReproduceConfig(data="d", output_dir="o", short_length=256)


def test_reproduce_adopts_a_fine_tuned_teacher_calibrating_a_copy(trained_tiny_dir, toy_data_dir, tmp_path, capsys):
    out = tmp_path / "repro"
    weights = (trained_tiny_dir / "model.safetensors").read_bytes()
    argv = ["reproduce", "--fast", "--data", str(toy_data_dir), "--output-dir", str(out), "--ood"]
    assert main([*argv, "--teacher", str(trained_tiny_dir)]) == 0
    result = json.loads((out / "results.json").read_text())
    given = json.loads((trained_tiny_dir / "metrics.json").read_text())
    # The copy is calibrated (its labels, so its accuracy, unchanged); the given folder is left as it was.
    assert "calibration" in result["teacher_metrics"] and "calibration" not in given
    assert result["rows"][0]["accuracy"] == result["teacher_metrics"]["test_accuracy"] == given["test_accuracy"]
    assert (trained_tiny_dir / "model.safetensors").read_bytes() == weights
    assert not (out / "teacher.partial").exists()
    assert isinstance(result["stage_seconds"]["teacher: calibrate the --teacher folder"], float)
    # The page names the folder and describes the teacher by its own run (6 epochs at lr 5e-3), not by the
    # recipe's settings (a 60-minute budget at lr 1e-4), and its command rebuilds from the same folder.
    page = (out / "results.md").read_text()
    assert f"--output-dir {out} --teacher {trained_tiny_dir} --fast`" in page
    assert f"the folder `{trained_tiny_dir}` (`--teacher`, calibrated here)" in page
    assert "(6 epochs, lr 0.005, batch 16, 32 tokens" in page

    # Another teacher into the same output folder is refused in one line (exit 2), not mixed in.
    other = tmp_path / "other"
    shutil.copytree(trained_tiny_dir, other)
    recorded = json.loads((other / "training_args.json").read_text())
    recorded["training"]["seed"] += 1
    (other / "training_args.json").write_text(json.dumps(recorded))
    capsys.readouterr()
    assert main([*argv, "--teacher", str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds another teacher than --teacher" in err and len(err.splitlines()) == 1
    assert main([*argv, "--teacher", str(tmp_path)]) == 2  # not a model folder
    assert "not a fine-tuned model folder (no config.json)" in capsys.readouterr().err
    (other / "metrics.json").write_text("{")
    assert main([*argv, "--teacher", str(other)]) == 2
    assert "metrics.json: not JSON" in capsys.readouterr().err


def test_a_budget_the_scoring_would_fill_stops_before_training_in_one_line(
    tiny_model_dir, toy_data_dir, tmp_path, capsys, monkeypatch
):
    """The real probe and first estimates on the tiny model; a share no plan can leave (all but a millionth
    of the budget, so even a fast CPU's reserves exceed what is left) stands in for a slow CPU: exit 2, one
    line naming a budget that fits, and no teacher trained."""
    monkeypatch.setattr("bertsent.recipes.reproduce.MIN_TRAINING_SHARE", 1 - 1e-6)
    out = tmp_path / "repro"
    argv = ["reproduce", "--data", str(toy_data_dir), "--output-dir", str(out), "--model", str(tiny_model_dir)]
    argv += ["--max-length", "32", "--time-budget", "10m", "--ood"]  # no out-of-domain set to fetch
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bertsent reproduce: error: a time budget of 10m cannot hold this recipe on this CPU")
    assert "give --time-budget" in err and "\n" not in err and "Traceback" not in err
    plan = json.loads((out / "plan.json").read_text())
    assert {"torch", "onnx", "onnx-int8"} <= set(plan["rates"]) and plan["stages"]["compare"]["reserve"] > 0
    assert plan["stages"]["teacher"]["planned"] is None and not (out / "teacher" / "metrics.json").exists()


def test_out_of_domain_sets_are_priced_by_their_tokens_not_as_whole_reviews(
    tiny_model_dir, toy_data_dir, ood_archives, tmp_path, monkeypatch
):
    """The plan prices the out-of-domain sets at the probe reviews' length: short snippets beside reviews that
    fill ``max_length`` cost their tokens' share of a review, not a review each; a set not fetched yet is
    fetched first (from the fixture archives here), and no set costs nothing."""
    import dataclasses

    import pandas as pd
    import pytest

    from bertsent.config import ReproduceConfig
    from bertsent.data import ood
    from bertsent.encoding import encode
    from bertsent.modeling.loading import load_tokenizer
    from bertsent.recipes.reproduce import _ood_reviews

    ood_dir = tmp_path / "ood"
    fetch("amazon-snippets", ood_dir, ood_archives["amazon-snippets"])
    monkeypatch.setattr(ood, "download", lambda spec, _: ood_archives[spec.name])  # pip's, offline
    config = ReproduceConfig(
        data=str(toy_data_dir),
        output_dir=str(tmp_path / "o"),
        model=str(tiny_model_dir),
        max_length=32,
        ood_dir=str(ood_dir),
        ood=["amazon-snippets", "rotten-tomatoes"],
    )
    priced = _ood_reviews(config, probed := ["a long and wonderful film, " * 40] * 4)  # each cut at 32 tokens
    assert (ood_dir / "rotten-tomatoes" / "test.parquet").is_file()  # fetched to be priced
    snippets = [t for name in config.ood for t in pd.read_parquet(ood_dir / name / "test.parquet")["text"]]
    tokens = encode(load_tokenizer(tiny_model_dir), snippets, 32, config.truncation).lengths.sum()
    assert priced == pytest.approx(tokens / 32) and 0 < priced < len(snippets)
    assert _ood_reviews(dataclasses.replace(config, ood=[]), probed) == 0


def test_the_survey_table_places_each_row_by_the_methods_that_made_it(tmp_path):
    from bertsent.folder import lineage
    from bertsent.recipes.reproduce import survey_table

    def folder(name: str, **record) -> Path:
        (tmp_path / name).mkdir()
        (tmp_path / name / "compression.json").write_text(json.dumps(record))
        return tmp_path / name

    teacher = tmp_path / "teacher"
    teacher.mkdir()  # fine-tuned, not compressed: no compression.json
    student = folder("student", method="distill", teacher=str(teacher))
    pruned = folder("student-pruned", method="prune", source=str(student))
    int8 = folder("student-int8", method="onnx-dynamic", source=str(pruned), settings={"quantize_embeddings": True})
    ir = folder("teacher-openvino", method="openvino-export", source=str(teacher))
    assert lineage(int8) == ["onnx-dynamic", "embeddings-int8", "prune", "distill"]
    assert lineage(ir) == ["openvino-export"] and lineage(teacher) == []

    def row(name: str, path: Path) -> dict:
        scores = {"accuracy": 0.9, "size_mb": 10.0, "throughput": 100.0, "accuracy_delta_points": -1.0}
        return {"name": name, "lineage": lineage(path)} | scores

    rows = [row("teacher", teacher), row("student INT8", int8), row("teacher OpenVINO fp32", ir)]
    families = {line.split(" | ")[0][2:]: line.split(" | ")[-1] for line in survey_table(rows).splitlines()[4:]}
    for family in ("Quantization", "Pruning", "Knowledge distillation", "Embedding-matrix compression"):
        assert families[family].startswith("student INT8: 0.9000, 10.0 MB, 100.0/s, -1.00"), family
    assert families["Matrix decomposition"] == families["Dynamic inference"] == "not in this run |"
    assert "OpenVINO fp32" not in survey_table(rows)  # an export compresses nothing
