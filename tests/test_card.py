"""Model cards as the Hub reads them: front matter parsed by ``huggingface_hub.ModelCard`` (offline)."""

import json

import pytest
from huggingface_hub import ModelCard

from bertsent.folder import METRIC_ROWS, set_card_section, write_card


def model_index(card: ModelCard) -> dict[tuple[str, str], float]:
    """``{(split, metric type): value}`` from a loaded card's ``model-index``."""
    return {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results or []}


def test_training_card_model_index_holds_metrics_json_values(trained_tiny_dir, toy_data_dir):
    card = ModelCard.load(trained_tiny_dir / "README.md")
    metrics = json.loads((trained_tiny_dir / "metrics.json").read_text())
    data = card.data
    assert data.library_name == "transformers" and data.pipeline_tag == "text-classification"
    assert {"bertsent", "sentiment-analysis"} <= set(data.tags)
    assert data.base_model == json.loads((trained_tiny_dir / "training_args.json").read_text())["training"]["model"]
    expected = {
        (split, key): metrics[f"{split}_{key}"]
        for split in ("validation", "test")
        for key, _ in METRIC_ROWS
        if f"{split}_{key}" in metrics
    }
    assert ("test", "accuracy") in expected and ("validation", "f1") in expected
    assert model_index(card) == expected
    for result in data.eval_results:
        assert result.task_type == "text-classification" and result.dataset_name == str(toy_data_dir)
    assert f"{metrics['test_accuracy']:.4f}" in card.text and "## Settings" in card.text


def test_card_sections_are_replaced_not_repeated(tmp_path):
    write_card(
        tmp_path,
        title="A card",
        summary="What it is.",
        sections={"Measured": "numbers", "Empty": "  "},
        results={"validation": {"accuracy": 0.75, "backend": "pytorch", "roc_auc": float("nan")}},
        dataset="imdb",
        base_model="sentence-transformers/all-MiniLM-L6-v2",
        tags=["pruned"],
    )
    set_card_section(tmp_path, "Extra", "first")
    set_card_section(tmp_path, "Measured", "new numbers")
    set_card_section(tmp_path, "Extra", "second")
    card = ModelCard.load(tmp_path / "README.md")
    assert card.text.count("## Extra") == 1 and "second" in card.text and "first" not in card.text
    assert "new numbers" in card.text and "\nnumbers" not in card.text and "## Empty" not in card.text
    assert model_index(card) == {("validation", "accuracy"): pytest.approx(0.75)}
    assert card.data.eval_results[0].dataset_type == "imdb" and "pruned" in card.data.tags


def test_a_section_on_a_folder_without_a_card_makes_a_valid_one(tmp_path):
    set_card_section(tmp_path, "Distillation", "Distilled.")
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.pipeline_tag == "text-classification" and "## Distillation\n\nDistilled." in card.text


def test_quantized_card_inherits_the_base_model_and_reports_int8_accuracy(trained_tiny_dir, tmp_path):
    from bertsent.compression.quantize import quantize
    from bertsent.config import QuantizeConfig

    out = tmp_path / "int8"
    quantize(QuantizeConfig(model=str(trained_tiny_dir), output_dir=str(out), method="torch-dynamic"))
    card = ModelCard.load(out / "README.md")
    metrics = json.loads((out / "metrics.json").read_text())
    assert card.data.base_model == ModelCard.load(trained_tiny_dir / "README.md").data.base_model
    assert {"int8", "torch-dynamic"} <= set(card.data.tags) and card.data.library_name == "transformers"
    assert model_index(card) == {("validation", "accuracy"): metrics["validation_int8_accuracy"]}
    assert card.data.to_dict()["model-index"][0]["name"] == "int8"  # the final folder, not the staging one


def test_limitations_come_from_what_was_measured(trained_tiny_dir, toy_data_dir, tmp_path):
    """The card's Uses / Bias, Risks, and Limitations sections quote the folder's own measurements, and an
    evaluation on other data (its report in the folder) adds its row without overwriting eval-test."""
    import shutil

    import pandas as pd

    from bertsent.config import DataConfig
    from bertsent.evaluate import evaluate

    model = tmp_path / "model"
    shutil.copytree(trained_tiny_dir, model)
    card = (model / "README.md").read_text()
    assert "## Uses" in card and "## Bias, Risks, and Limitations" in card
    assert "Out-of-domain accuracy: not measured" in card
    metrics = json.loads((model / "metrics.json").read_text())
    assert f"| 0-127 | {metrics['test_length/0-127/n']} | {metrics['test_length/0-127/accuracy']:.2%} |" in card
    assert f"Scores are not calibrated: test ECE {metrics['test_ece']:.4f}" in card

    # Other data: the toy test reviews with their labels flipped, so the model is wrong on most of them.
    flipped = pd.read_parquet(toy_data_dir / "test.parquet").assign(label=lambda f: 1 - f.label)
    flipped.to_csv(tmp_path / "flipped.csv", index=False)
    other = evaluate(model, DataConfig(str(tmp_path / "flipped.csv")))
    assert (model / "eval-flipped-all" / "metrics.json").is_file() and (model / "eval-test").is_dir()
    assert other["source"] == str(tmp_path / "flipped.csv")
    card = (model / "README.md").read_text()
    gap = (other["accuracy"] - metrics["test_accuracy"]) * 100
    assert f"| `{tmp_path / 'flipped.csv'}` (all) | {other['n']} | {other['accuracy']:.2%} | {gap:+.1f} |" in card
    assert card.count("## Bias, Risks, and Limitations") == 1

    # Mistakes are quoted from eval-test/errors.csv, most confident first.
    evaluate(model, DataConfig(str(tmp_path / "flipped.csv")), output_dir=model / "eval-test")
    errors = pd.read_csv(model / "eval-test" / "errors.csv")
    card = (model / "README.md").read_text()
    assert "The most confident test mistakes" in card
    assert f'with confidence {errors.confidence[0]:.3f}: "{errors.text[0]}"' in card
