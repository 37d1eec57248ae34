"""Token attributions: words and offsets of the original text, Captum's Integrated Gradients (completeness,
method choice), refusals, ``Predictor(explain=True)``, ``bertsent predict --explain`` and the server parameter."""

from __future__ import annotations

import csv
import json
import math
import re
import threading

import numpy as np
import pytest
import torch
from conftest import NEGATIVE_WORDS, POSITIVE_WORDS

from bertsent.cli import main
from bertsent.config import ExplainSettings
from bertsent.encoding import encode
from bertsent.errors import ModelError, SettingsError
from bertsent.explain import Explainer, encode_words, log_odds, word_scores
from bertsent.modeling.cls_only import ClsOnlyLastLayer
from bertsent.predict import Predictor

pytest.importorskip("captum", reason="explanations need captum: pip install 'captum>=0.8'")

TRICKY = [
    "A wonderful, moving film: don't miss it!",
    "été génial 😀 — wonderful!",
    "   spaces   around  words ",
    "",
    "brilliant " * 50,  # longer than the 32 tokens the tiny model was trained with: truncated
]
CUES = {*POSITIVE_WORDS, *NEGATIVE_WORDS}


@pytest.fixture(scope="module")
def predictor(trained_tiny_dir) -> Predictor:
    return Predictor(trained_tiny_dir, explain=True)


@pytest.fixture(scope="module")
def plain(trained_tiny_dir) -> Predictor:
    return Predictor(trained_tiny_dir)


def check_words(text: str, words: list[dict]) -> None:
    """Each entry is a whitespace-free run of the text at its own offsets, in order, scored in [-1, 1]."""
    ends = -1
    for w in words:
        assert set(w) == {"word", "start", "end", "score"}
        assert text[w["start"] : w["end"]] == w["word"] and w["word"] and not re.search(r"\s", w["word"])
        assert w["start"] > ends  # in text order, never overlapping
        ends = w["end"]
        assert isinstance(w["score"], float) and math.isfinite(w["score"]) and -1 <= w["score"] <= 1
    if words:
        assert max(abs(w["score"]) for w in words) == pytest.approx(1.0)  # normalised by the largest


# ---------------------------------------------------------------------------------------------- words


def test_words_and_offsets_are_the_original_texts(predictor):
    explanations = predictor.explain(TRICKY)
    assert len(explanations) == len(TRICKY)
    for text, words in zip(TRICKY, explanations, strict=True):
        check_words(text, words)
    first = explanations[0]
    # WordPieces merged back into whitespace-separated words, punctuation attached, offsets of the original.
    assert [w["word"] for w in first] == ["A", "wonderful,", "moving", "film:", "don't", "miss", "it!"]
    assert [w["word"] for w in explanations[1]] == ["été", "génial", "😀", "—", "wonderful!"]  # accents kept
    assert [(w["start"], w["end"]) for w in explanations[2]] == [(3, 9), (12, 18), (20, 25)]
    assert explanations[3] == [] and predictor.explain([]) == []  # nothing to explain


def test_the_explainer_sees_what_the_model_sees(predictor):
    long = " ".join(f"w{i}" for i in range(60))
    texts = [*TRICKY, long]
    for truncation in ("head", "tail", "head+tail"):
        rows = encode_words(predictor.tokenizer, texts, 16, truncation)
        expected = encode(predictor.tokenizer, texts, 16, truncation)
        for row, ids in zip(rows, expected.ids, strict=True):
            np.testing.assert_array_equal(row.input_ids, ids)
            assert row.word_of[0] == row.word_of[-1] == -1  # [CLS] and [SEP] are no word

    tokenizer = predictor.tokenizer
    explainer = Explainer(predictor.backend.model, tokenizer, 16, "head+tail", ExplainSettings())
    words = [w["word"] for w in explainer.explain([long])[0]]
    kept = tokenizer.convert_ids_to_tokens(encode(tokenizer, [long], 16, "head+tail").ids[0][1:-1])
    # Words truncated away get no entry; a word cut in part keeps its whole span (here: none is).
    assert words[0] == "w0" and words[-1] == "w59" and "w30" not in words
    assert len(words) < 60 and len(kept) >= len(words)


def test_scores_follow_the_learned_sentiment_words(predictor, toy_texts):
    """The tiny model learned its labels from the cue words alone: Integrated Gradients should credit them."""
    explanations = predictor.explain(toy_texts[:40])
    top_is_cue = [max(words, key=lambda w: w["score"])["word"] in CUES for words in explanations]
    chance = np.mean([np.mean([w["word"] in CUES for w in words]) for words in explanations])
    assert chance < 0.2 and np.mean(top_is_cue) >= max(0.5, 3 * chance)  # measured: 0.62 against 0.15
    cues = [w["score"] for words in explanations for w in words if w["word"] in CUES]
    fillers = [w["score"] for words in explanations for w in words if w["word"] not in CUES]
    assert np.mean(cues) > np.mean(fillers) + 0.2  # measured: 0.45 against 0.07


# ---------------------------------------------------------------------------------------------- the method


def test_integrated_gradients_completeness(predictor):
    """The token scores add up to the change of the target's log-odds from the [PAD] baseline to the text."""
    explainer = Explainer(predictor.backend.model, predictor.tokenizer, 32, "head", ExplainSettings(explain_steps=48))
    rows = explainer.attribute(TRICKY[:3])
    model = explainer.model
    for row in rows:
        ids = torch.from_numpy(row.input_ids)[None]
        baseline = ids.clone()
        baseline[0, torch.from_numpy(row.word_of >= 0)] = predictor.tokenizer.pad_token_id
        with torch.no_grad():
            change = (log_odds(model(input_ids=ids).logits) - log_odds(model(input_ids=baseline).logits))[0, row.target]
        assert abs(float(change)) > 1e-3  # something to explain
        assert row.scores.sum() == pytest.approx(float(change), rel=0.02, abs=1e-4)
        assert abs(row.delta) <= 0.02 * abs(float(change)) + 1e-4  # Captum's own convergence delta agrees
        assert np.all(row.scores[row.word_of < 0] == 0)


def test_completeness_converges_with_the_steps(predictor, toy_texts):
    """Captum's delta (how far the scores' sum is from the log-odds change) shrinks as the steps grow.

    This toy model is sharp (trained at lr 5e-3): its median delta is 91% of the change at 16 steps, 2.0% at
    128 and 0.02% at 256; a fine-tuned MiniLM is at 0.0002 log-odds with the default 32 (benchmarks/explain.py)."""
    texts = toy_texts[:20:2]  # negative reviews: the all-[PAD] baseline reads as positive, so the log-odds move
    model, tokenizer = predictor.backend.model, predictor.tokenizer
    relative = {}
    for steps in (16, 256):
        rows = Explainer(model, tokenizer, 32, "head", ExplainSettings(explain_steps=steps)).attribute(texts)
        change = np.abs([r.scores.sum() - r.delta for r in rows])  # delta = sum(scores) - (F(x) - F(baseline))
        assert np.all(change > 1)
        relative[steps] = float(np.median(np.abs([r.delta for r in rows]) / change))
    assert relative[256] < 0.02 and relative[256] < relative[16] / 4


def test_method_choice(predictor, plain):
    text = [TRICKY[0]]
    ig = predictor.explainer.attribute(text)[0]
    ixg = predictor.explainer.attribute(text, method="input-x-gradient")[0]
    assert ig.delta is not None and ixg.delta is None  # only Integrated Gradients has a convergence delta
    assert np.all(np.isfinite(ixg.scores)) and not np.allclose(ig.scores, ixg.scores)
    by_name = Predictor(plain.model_dir, explain="input-x-gradient")
    assert by_name.explain_settings.explain_method == "input-x-gradient"
    assert by_name.explain(text) == predictor.explain(text, method="input-x-gradient")
    with pytest.raises(SettingsError, match="explain method must be one of"):
        predictor.explain(text, method="lime")
    with pytest.raises(SettingsError, match="explain_method must be one of"):
        ExplainSettings(explain_method="lime")
    with pytest.raises(SettingsError, match="explain_steps"):
        ExplainSettings(explain_steps=0)
    with pytest.raises(TypeError, match="list of texts"):
        predictor.explain("one string")


def test_targets_choose_the_label_explained(predictor):
    """Two labels: the log-odds of one are minus the other's, so its attributions are too."""
    texts = TRICKY[:2]
    zero = predictor.explainer.attribute(texts, targets=[0, 0])
    one = predictor.explainer.attribute(texts, targets=[1, 1])
    for a, b in zip(zero, one, strict=True):
        assert (a.target, b.target) == (0, 1)
        np.testing.assert_allclose(a.scores, -b.scores, rtol=1e-3, atol=1e-6)
    predicted = predictor.predict_proba(texts).argmax(-1)
    assert [r.target for r in predictor.explainer.attribute(texts)] == predicted.tolist()


def test_explanations_leave_the_served_model_alone(predictor, plain, toy_texts):
    """Attribution runs on its own module tree over the same weights: the Predictor's model keeps its
    [CLS]-only layer, gets no hooks, and predicts exactly as before while explanations run beside it."""
    model = predictor.backend.model
    assert isinstance(model.bert.encoder.layer[-1], ClsOnlyLastLayer)
    copy = predictor.explainer.model
    assert copy is not model and not isinstance(copy.bert.encoder.layer[-1], ClsOnlyLastLayer)
    assert copy.get_input_embeddings().weight is model.get_input_embeddings().weight  # shared, not copied
    texts = toy_texts[:16]
    reference = predictor.predict_proba(texts)
    stop, failures = threading.Event(), []

    def explain_meanwhile():
        while not stop.is_set():
            try:
                predictor.explain(texts[:4])
            except Exception as e:  # reported below
                failures.append(e)
                return

    thread = threading.Thread(target=explain_meanwhile)
    thread.start()
    try:
        for _ in range(15):
            np.testing.assert_array_equal(predictor.predict_proba(texts), reference)
    finally:
        stop.set()
        thread.join()
    assert not failures
    assert not model.get_input_embeddings()._forward_hooks and not copy.get_input_embeddings()._forward_hooks


# ---------------------------------------------------------------------------------------------- refusals


def test_onnx_and_int8_folders_are_refused(trained_tiny_dir, tmp_path):
    from bertsent.compression.export import export_onnx
    from bertsent.modeling.loading import load_classifier, load_tokenizer
    from bertsent.modeling.quantized import quantize_torch_dynamic

    onnx_dir = export_onnx(trained_tiny_dir, tmp_path / "onnx")
    with pytest.raises(ModelError, match=r"explanations need the PyTorch backend .* runs with onnxruntime"):
        Predictor(onnx_dir, explain=True)
    unexplained = Predictor(onnx_dir)  # predicting still works; explaining is refused on use
    assert len(unexplained(["fine"])) == 1
    with pytest.raises(ModelError, match="explanations need the PyTorch backend"):
        unexplained.explain(["fine"])
    assert main(["predict", "--model", str(onnx_dir), "--explain", "a film"]) == 2

    int8 = quantize_torch_dynamic(load_classifier(trained_tiny_dir))
    with pytest.raises(ModelError, match="dynamically quantized INT8"):
        Explainer(int8, load_tokenizer(trained_tiny_dir), 32, "head", None)


# ---------------------------------------------------------------------------------------------- consumers


def test_predictor_explain_true_adds_the_explanation(predictor, plain):
    texts = TRICKY[:3]
    explained, unexplained = predictor(texts), plain(texts)
    for with_words, without in zip(explained, unexplained, strict=True):
        assert set(with_words) == {"label", "score", "explanation"} and set(without) == {"label", "score"}
        assert (with_words["label"], with_words["score"]) == (without["label"], without["score"])
    assert [e["explanation"] for e in explained] == predictor.explain(texts)
    (ranked,) = predictor(texts[0], top_k=None)
    assert "explanation" in ranked[0] and "explanation" not in ranked[1]  # the best label's explanation


def test_cli_predict_explain(trained_tiny_dir, tmp_path, capsys):
    text = TRICKY[0]
    assert main(["predict", "--model", str(trained_tiny_dir), "--explain", text]) == 0
    line = json.loads(capsys.readouterr().out)
    check_words(text, line["prediction"]["explanation"])
    assert [w["word"] for w in line["prediction"]["explanation"]][-2:] == ["miss", "it!"]

    source = tmp_path / "in.csv"
    with source.open("w", newline="") as f:
        csv.writer(f).writerows([["text", "explanation"], [TRICKY[0], "a note"], [TRICKY[1], ""]])
    argv = ["predict", "--model", str(trained_tiny_dir), "--input", str(source), "--explain"]
    assert main([*argv, "--output", str(tmp_path / "o.jsonl"), "--explain-method", "input-x-gradient"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [r["input_explanation"] for r in rows] == ["a note", ""]  # the input's column is kept, renamed
    for row in rows:
        check_words(row["text"], row["explanation"])
    predictor = Predictor(trained_tiny_dir, explain="input-x-gradient")
    assert [r["explanation"] for r in rows] == predictor.explain(TRICKY[:2])

    assert main([*argv, "--output", str(tmp_path / "o.csv")]) == 0
    with (tmp_path / "o.csv").open(newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["text", "input_explanation", "label", "score", "explanation"]
    for row in table:
        check_words(row["text"], json.loads(row["explanation"]))  # CSV: a JSON string


def test_server_explain_parameter(trained_tiny_dir, tmp_path, plain):
    pytest.importorskip("fastapi", reason="serving needs fastapi")
    from fastapi.testclient import TestClient

    from bertsent.compression.export import export_onnx
    from bertsent.serve import create_app

    texts = TRICKY[:2]
    with TestClient(create_app(trained_tiny_dir)) as client:
        body = client.post("/predict", json={"inputs": texts, "parameters": {"explain": True}}).json()
        for text, answer, expected in zip(texts, body, plain(texts), strict=True):
            assert (answer["label"], answer["score"]) == (expected["label"], pytest.approx(expected["score"], 1e-5))
            check_words(text, answer["explanation"])
        assert [a["explanation"] for a in body] == Predictor(trained_tiny_dir).explain(texts)
        parameters = {"explain": True, "top_k": None, "explain_method": "input-x-gradient"}
        ranked = client.post("/predict", json={"inputs": texts[0], "parameters": parameters}).json()
        assert len(ranked) == 1 and "explanation" in ranked[0][0] and "explanation" not in ranked[0][1]
        assert set(client.post("/predict", json={"inputs": texts[0]}).json()[0]) == {"label", "score"}
        spec = client.get("/openapi.json").json()
        assert "explanation" in spec["components"]["schemas"]["ExplainedPrediction"]["properties"]
        assert "explain" in spec["components"]["schemas"]["PredictParameters"]["properties"]
        bad = client.post("/predict", json={"inputs": "x", "parameters": {"explain": "yes"}})
        assert bad.status_code == 422

    onnx_dir = export_onnx(trained_tiny_dir, tmp_path / "onnx")
    with TestClient(create_app(onnx_dir)) as client:
        refused = client.post("/predict", json={"inputs": "x", "parameters": {"explain": True}})
        assert refused.status_code == 400
        assert refused.json()["error"].startswith("explain: onnx: explanations need the PyTorch backend")
        assert str(tmp_path) not in refused.text  # the folder's name, never its path on the server
        assert client.post("/predict", json={"inputs": "x"}).status_code == 200


def test_words_of_a_row_directly():
    """word_scores: pieces summed per word, normalised, words without kept pieces left out."""
    from bertsent.explain import TokenAttributions

    text = "ab cd ef"
    row = TokenAttributions(
        input_ids=np.arange(5),
        scores=np.array([0.0, 1.0, -3.0, 0.5, 0.0]),
        word_of=np.array([-1, 0, 0, 2, -1]),  # "cd" (word 1) was truncated away
        spans=[(0, 2), (3, 5), (6, 8)],
        target=1,
    )
    assert word_scores(text, row) == [
        {"word": "ab", "start": 0, "end": 2, "score": -1.0},
        {"word": "ef", "start": 6, "end": 8, "score": 0.25},
    ]
