"""The compression recipe end to end on the tiny BERT: every variant folder, the table, and skipping."""

import json
import shutil

from bertsent.cli import main


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
    ]
    assert main(argv) == 0
    folders = ("teacher-onnx", "teacher-int8", "teacher-int8-emb", "student", "student-unpruned-int8", "student-pruned")
    for folder in (*folders, "student-int8"):
        assert (out / folder / "config.json").is_file(), folder
    assert (out / "teacher-onnx" / "model.onnx").is_file() and (out / "student-int8" / "model.onnx").is_file()
    rows = json.loads((out / "compare" / "compare.json").read_text())["rows"]
    names = [r["name"] for r in rows]
    assert names == [
        "teacher (fp32)",
        "teacher ONNX fp32",
        "teacher INT8",
        "teacher INT8 + embeddings",
        "student",
        "student INT8 (unpruned)",
        "student pruned",
        "student INT8",
    ]
    by_name = {r["name"]: r for r in rows}
    assert by_name["student"]["parameters"] < by_name["teacher (fp32)"]["parameters"]
    assert by_name["student pruned"]["parameters"] < by_name["student"]["parameters"]
    assert by_name["student INT8"]["size_mb"] < by_name["student pruned"]["size_mb"]
    sizes = [by_name[name]["size_mb"] for name in ("student INT8", "student INT8 (unpruned)", "student")]
    assert sizes == sorted(sizes), sizes
    unpruned = json.loads((out / "student-unpruned-int8" / "compression.json").read_text())
    assert unpruned["source"] == str(out / "student") and unpruned["settings"]["quantize_embeddings"] is True
    assert by_name["teacher INT8"]["backend"] == "onnxruntime"
    assert "| student INT8 | onnxruntime |" in capsys.readouterr().out
    timings = json.loads((out / "recipe.json").read_text())["stage_seconds"]
    assert all(isinstance(v, float) for v in timings.values())

    # A second run finds every stage complete and the table measured: nothing to do.
    assert main(argv) == 0
    timings = json.loads((out / "recipe.json").read_text())["stage_seconds"]
    assert all(v == "skipped (already complete)" for v in timings.values()), timings
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
