"""``bertsent reproduce --fast`` end to end (tiny BERT in place of the embedded model, toy data)."""

import json

from bertsent.cli import main


def test_reproduce_fast_runs_every_stage_and_writes_the_results_page(tiny_model_dir, toy_data_dir, tmp_path, capsys):
    out, doc = tmp_path / "repro", tmp_path / "results.md"
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
    ]
    assert main(argv) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["settings"]["fast"] is True and result["settings"]["epochs"] == 1
    assert result["teacher_metrics"]["train_reviews"] == 216  # 240 toy reviews minus the 10% validation carve
    assert result["rows"][0]["name"] == "teacher (fp32)" and len(result["rows"]) == 7
    assert all(r["reviews"] == 80 for r in result["rows"])
    page = doc.read_text()
    assert page == (out / "results.md").read_text()
    assert "fast mode" in page and "93.46%" in page and "quoted, not measured here" in page
    assert "| teacher INT8 | onnxruntime |" in page
    assert "fine-tune + test evaluation" in result["stage_seconds"]
    assert "results page:" in capsys.readouterr().out
