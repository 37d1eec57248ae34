"""The compression recipe end to end on the tiny BERT: every variant folder, the table, and skipping."""

import json

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
    for folder in ("teacher-onnx", "teacher-int8", "teacher-int8-emb", "student", "student-pruned", "student-int8"):
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
        "student pruned",
        "student INT8",
    ]
    by_name = {r["name"]: r for r in rows}
    assert by_name["student"]["parameters"] < by_name["teacher (fp32)"]["parameters"]
    assert by_name["student pruned"]["parameters"] < by_name["student"]["parameters"]
    assert by_name["student INT8"]["size_mb"] < by_name["student pruned"]["size_mb"]
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
