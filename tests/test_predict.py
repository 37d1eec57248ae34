"""Prediction: streaming files in chunks, resuming, long texts scored by windows."""

import csv
import gzip
import json

import numpy as np
import pandas as pd
import pytest

from bertsent.encoding import encode_windows
from bertsent.errors import DataError
from bertsent.inference import FullDepth
from bertsent.modeling.loading import load_tokenizer
from bertsent.predict import Predictor, predict_file


@pytest.fixture(scope="module")
def predictor(trained_tiny_dir):
    return Predictor(trained_tiny_dir)


def reviews(n: int) -> list[str]:
    words = ["great film", "awful plot", "superb cast", "boring and dull", "moving story", "the worst"]
    return [f"{words[i % len(words)]} number {i}" for i in range(n)]


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_predict_file_streams_in_chunks_in_order(predictor, tmp_path, suffix):
    texts = reviews(23)
    source = tmp_path / f"in{suffix}"
    frame = pd.DataFrame({"id": range(23), "review": texts})
    {
        ".parquet": lambda: frame.to_parquet(source),
        ".csv": lambda: frame.to_csv(source, index=False),
        ".jsonl": lambda: frame.to_json(source, orient="records", lines=True),
    }[suffix]()
    out = tmp_path / "out.jsonl"
    assert predict_file(predictor, source, out, text_column="review", chunk_size=5) == 23
    rows = read_jsonl(out)
    assert [r["text"] for r in rows] == texts
    expected = predictor(texts)
    assert [r["label"] for r in rows] == [e["label"] for e in expected]
    assert [r["score"] for r in rows] == pytest.approx([e["score"] for e in expected], abs=1e-6)
    assert not (tmp_path / "out.jsonl.progress.json").exists()


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_resume_after_an_interrupt_neither_duplicates_nor_loses_rows(predictor, tmp_path, monkeypatch, suffix):
    texts = reviews(20)
    source = tmp_path / "in.txt"
    source.write_text("\n".join(texts) + "\n")
    complete = tmp_path / f"complete{suffix}"
    predict_file(predictor, source, complete, chunk_size=4)

    out = tmp_path / f"out{suffix}"
    real = Predictor.predict_proba
    calls = {"n": 0}

    def flaky(self, chunk, progress=False):
        calls["n"] += 1
        if calls["n"] == 3:
            with out.open("a") as f:  # a half-written chunk, as a kill mid-write would leave
                f.write('{"text": "partial')
            raise KeyboardInterrupt
        return real(self, chunk, progress)

    monkeypatch.setattr(Predictor, "predict_proba", flaky)
    with pytest.raises(KeyboardInterrupt):
        predict_file(predictor, source, out, chunk_size=4)
    assert json.loads((tmp_path / f"out{suffix}.progress.json").read_text())["rows"] == 8
    monkeypatch.setattr(Predictor, "predict_proba", real)
    assert predict_file(predictor, source, out, chunk_size=4, resume=True) == 20
    assert out.read_text() == complete.read_text()


def test_windows_cover_long_texts_and_scores_are_averaged(predictor):
    tokenizer = load_tokenizer(None)
    long_text = " ".join(f"word{i}" for i in range(300))
    n_tokens = len(tokenizer(long_text, add_special_tokens=False)["input_ids"])
    encoded, owner = encode_windows(tokenizer, ["short one", long_text], max_length=64, stride=16)
    assert owner[0] == 0 and (owner[1:] == 1).all()
    windows = [w[1:-1].tolist() for w in encoded.ids[1:]]
    assert all(len(w) <= 62 for w in windows)
    # Consecutive windows overlap by the stride and together cover every token.
    assert windows[0][-16:] == windows[1][:16]
    covered = windows[0] + [t for w in windows[1:] for t in w[16:]]
    assert covered == tokenizer(long_text, add_special_tokens=False)["input_ids"] and len(covered) == n_tokens

    chunked = Predictor(predictor.model_dir, max_length=16, long_text="chunk", stride=4)
    text = "awful plot " * 20 + "great film " * 20
    windows_enc, _ = encode_windows(chunked.tokenizer, [text], max_length=16, stride=4)
    per_window = chunked.predict_proba(windows_enc)
    np.testing.assert_allclose(chunked.predict_proba([text])[0], per_window.mean(axis=0), atol=1e-6)


def test_bad_files_are_clear_errors(predictor, tmp_path):
    with pytest.raises(DataError, match="no such file"):
        predict_file(predictor, tmp_path / "none.csv", tmp_path / "o.jsonl")
    (tmp_path / "in.xml").write_text("<r/>")
    with pytest.raises(DataError, match="unknown input format"):
        predict_file(predictor, tmp_path / "in.xml", tmp_path / "o.jsonl")
    (tmp_path / "in.csv").write_text("body\nhello\n")
    with pytest.raises(DataError, match="no column 'text'.*found: body"):
        predict_file(predictor, tmp_path / "in.csv", tmp_path / "o.jsonl")
    with pytest.raises(DataError, match="unknown output format"):
        predict_file(predictor, tmp_path / "in.csv", tmp_path / "o.xlsx")
    (tmp_path / "latin.txt").write_bytes("caf\xe9 ok\n".encode("latin-1"))
    with pytest.raises(DataError, match="not valid utf-8.*--encoding"):
        predict_file(predictor, tmp_path / "latin.txt", tmp_path / "o.jsonl")
    assert predict_file(predictor, tmp_path / "latin.txt", tmp_path / "o.jsonl", encoding="latin-1") == 1


def test_unreadable_progress_file_is_a_clear_error(predictor, tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("great film\n")
    (tmp_path / "out.jsonl.progress.json").write_text('{"rows": 4')
    with pytest.raises(DataError, match="unreadable progress file"):
        predict_file(predictor, source, tmp_path / "out.jsonl", resume=True)


def test_bf16_autocast_backend_agrees_with_fp32(trained_tiny_dir):
    texts = reviews(12)
    fp32 = Predictor(trained_tiny_dir).predict_proba(texts)
    bf16 = Predictor(trained_tiny_dir, precision="bf16", device="cpu").predict_proba(texts)
    assert (bf16.argmax(1) == fp32.argmax(1)).mean() >= 0.9
    np.testing.assert_allclose(bf16, fp32, atol=0.05)
    with pytest.raises(ValueError, match="precision"):
        Predictor(trained_tiny_dir, precision="fp8")


def test_compiled_predictor_gives_the_eager_probabilities(trained_tiny_dir):
    texts = ["a great and moving film", "boring awful plot, the worst", "it was fine " * 20]
    eager = Predictor(trained_tiny_dir).predict_proba(texts)
    compiled = Predictor(trained_tiny_dir, compile=True)
    assert type(compiled.backend.model).__name__ == "OptimizedModule"
    np.testing.assert_allclose(compiled.predict_proba(texts), eager, atol=1e-5)


def test_compile_failure_falls_back_to_eager_with_a_warning(trained_tiny_dir, monkeypatch, caplog):
    import torch

    def broken(model, **kwargs):
        def fail(**batch):
            raise RuntimeError("no C++ compiler found\nlong traceback")

        return fail

    monkeypatch.setattr(torch, "compile", broken)
    predictor = Predictor(trained_tiny_dir, compile=True)
    assert type(predictor.backend.model).__name__ == "BertForSequenceClassification"
    assert "torch.compile failed (no C++ compiler found): predicting eagerly" in caplog.text
    assert predictor("a great film")[0]["label"] in ("negative", "positive")


def test_cls_only_last_layer_gives_the_plain_forwards_logits(trained_tiny_dir, toy_texts):
    import copy

    import torch

    from bertsent.encoding import encode, iter_batches
    from bertsent.modeling.cls_only import ClsOnlyLastLayer, cls_only_last_layer
    from bertsent.modeling.loading import load_classifier, load_tokenizer

    plain = load_classifier(trained_tiny_dir).eval()
    fast = copy.deepcopy(plain)
    assert cls_only_last_layer(fast) and isinstance(fast.bert.encoder.layer[-1], ClsOnlyLastLayer)
    encoded = encode(load_tokenizer(trained_tiny_dir), toy_texts, 32, "head")
    with torch.inference_mode():
        for implementation in ("sdpa", "eager"):  # the mask differs: None/bool for SDPA, additive for eager
            plain.set_attn_implementation(implementation)
            fast.set_attn_implementation(implementation)
            for _, arrays in iter_batches(encoded, 7, 0):  # padded batches of mixed lengths
                batch = {k: torch.from_numpy(v) for k, v in arrays.items()}
                torch.testing.assert_close(fast(**batch).logits, plain(**batch).logits, atol=1e-5, rtol=0)
    # The Predictor uses it unless told not to, with the same probabilities either way.
    on, off = Predictor(trained_tiny_dir), Predictor(trained_tiny_dir, cls_only=False)
    assert on.backend.cls_only and not off.backend.cls_only
    np.testing.assert_allclose(on.predict_proba(toy_texts), off.predict_proba(toy_texts), atol=1e-6, rtol=0)


def test_cls_only_last_layer_leaves_other_models_alone(tmp_path):
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    from bertsent.modeling.cls_only import cls_only_last_layer

    model = DistilBertForSequenceClassification(
        DistilBertConfig(vocab_size=100, dim=16, n_layers=1, n_heads=2, hidden_dim=32, max_position_embeddings=64)
    )
    assert not cls_only_last_layer(model)


# ---------------------------------------------------------------------------------------------- one inference path


def test_settings_and_keywords_give_the_same_predictor(trained_tiny_dir, toy_texts):
    import dataclasses

    from bertsent.config import InferenceSettings

    texts = [*toy_texts[:20], "awful plot " * 20 + "great film " * 20]
    settings = InferenceSettings(max_length=16, long_text="chunk", stride=4, batch_size=5, cls_only=False)
    by_settings = Predictor(trained_tiny_dir, settings=settings)
    by_keywords = Predictor(trained_tiny_dir, max_length=16, long_text="chunk", stride=4, batch_size=5, cls_only=False)
    assert by_settings.settings == by_keywords.settings == dataclasses.replace(settings, truncation="head+tail")
    assert not by_settings.backend.cls_only
    np.testing.assert_array_equal(by_settings.predict_proba(texts), by_keywords.predict_proba(texts))
    # Keywords override the settings; None means "not given"; unset length/truncation come from the folder.
    assert Predictor(trained_tiny_dir, settings, batch_size=7, max_length=None).settings == dataclasses.replace(
        settings, batch_size=7, truncation="head+tail"
    )
    plain = Predictor(trained_tiny_dir)
    assert (plain.settings.max_length, plain.settings.truncation, plain.batch_size) == (32, "head+tail", 32)
    with pytest.raises(TypeError, match="unknown inference settings"):
        Predictor(trained_tiny_dir, max_len=16)
    with pytest.raises(ValueError, match="stride"):  # checked against the length the folder records (32)
        Predictor(trained_tiny_dir, long_text="chunk", stride=30)
    chunked = Predictor(trained_tiny_dir, long_text="chunk")  # the default stride fits the folder's length
    assert chunked.stride < chunked.max_length - 2 == 30


def test_forcing_a_backend_the_folder_lacks_is_a_clean_error(trained_tiny_dir, tmp_path):
    import shutil

    from bertsent.errors import BertsentError, ModelError, SettingsError

    with pytest.raises(ModelError, match="backend 'onnx' needs model.onnx"):
        Predictor(trained_tiny_dir, backend="onnx")
    onnx_only = tmp_path / "onnx-only"
    onnx_only.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "training_args.json"):
        shutil.copy2(trained_tiny_dir / name, onnx_only / name)
    (onnx_only / "model.onnx").write_bytes(b"not read: the check comes first")
    with pytest.raises(BertsentError, match="backend 'torch' needs PyTorch weights.*holds model.onnx"):
        Predictor(onnx_only, backend="torch")
    with pytest.raises(SettingsError, match="backend must be one of auto, torch, onnx"):
        Predictor(trained_tiny_dir, backend="tensorflow")
    assert Predictor(trained_tiny_dir, backend="torch").backend.name == "pytorch"


def test_threads_apply_to_the_torch_backend_as_to_onnx_runtime(trained_tiny_dir, monkeypatch):
    import torch

    before = torch.get_num_threads()
    try:
        assert Predictor(trained_tiny_dir, threads=1).backend.threads == torch.get_num_threads() == 1
        monkeypatch.setenv("BERTSENT_THREADS", "2")
        assert Predictor(trained_tiny_dir).backend.threads == torch.get_num_threads() == 2
        assert Predictor(trained_tiny_dir, threads=1).backend.threads == 1  # the argument beats the variable
    finally:
        torch.set_num_threads(before)


class LengthBackend(FullDepth):
    """A backend whose logits are each row's [its length, batch number]; records the batch widths."""

    name, id2label = "lengths", {0: "a", 1: "b"}

    def __init__(self) -> None:
        self.widths: list[int] = []

    def logits(self, batch):
        self.widths.append(batch["input_ids"].shape[1])
        mask = batch["attention_mask"]
        return np.stack([mask.sum(1), np.full(len(mask), len(self.widths))], axis=1).astype(np.float32)


def test_run_is_the_one_loop_in_input_order_longest_batches_first(trained_tiny_dir, toy_texts):
    import torch

    from bertsent.inference import TorchBackend, predict_probs, run, softmax
    from bertsent.modeling.loading import load_classifier

    predictor = Predictor(trained_tiny_dir, batch_size=6, cls_only=False)
    encoded = predictor.encode(toy_texts)
    fake = LengthBackend()
    logits = run(fake, encoded, 6, predictor.pad_id)
    np.testing.assert_array_equal(logits[:, 0], encoded.lengths)  # rows back in input order
    assert fake.widths == sorted(fake.widths, reverse=True) and len(fake.widths) == -(-len(toy_texts) // 6)
    # An in-memory model goes through the same loop, in eval mode, and gets its own mode back.
    model = load_classifier(trained_tiny_dir).train()
    in_memory = run(TorchBackend.from_model(model, torch.device("cpu")), encoded, 6, predictor.pad_id)
    assert model.training
    np.testing.assert_array_equal(softmax(in_memory), predictor.predict_proba(encoded))
    probs = predict_probs(model, encoded, 6, predictor.pad_id, torch.device("cpu"))
    np.testing.assert_array_equal(probs, torch.softmax(torch.from_numpy(in_memory), -1).numpy())
    assert model.training


def test_evaluate_runs_with_inference_settings(trained_tiny_dir, toy_data_dir, tmp_path):
    from bertsent.config import DataConfig, InferenceSettings
    from bertsent.evaluate import evaluate
    from bertsent.metrics import classification_metrics

    data = DataConfig(str(toy_data_dir))
    plain = evaluate(trained_tiny_dir, data, output_dir=tmp_path / "plain")
    settings = InferenceSettings(max_length=16, long_text="chunk", stride=4)
    chunked = evaluate(trained_tiny_dir, data, output_dir=tmp_path / "chunked", settings=settings, batch_size=8)
    assert (plain["max_length"], plain["long_text"]) == (32, "truncate")
    assert (chunked["max_length"], chunked["long_text"]) == (16, "chunk")
    frame = pd.read_parquet(toy_data_dir / "test.parquet")
    probs = Predictor(trained_tiny_dir, settings).predict_proba(frame["text"].tolist())
    expected = classification_metrics(frame["label"].to_numpy(), probs, {0: "negative", 1: "positive"})
    assert chunked["log_loss"] == pytest.approx(expected["log_loss"], abs=1e-6)
    assert chunked["log_loss"] != pytest.approx(plain["log_loss"], abs=1e-6)


# --- the input's other columns pass through; gzip input ----------------------------------------------------


def write_table(path, frame):
    """``frame`` in the format named by ``path`` (.csv, .jsonl, .parquet)."""
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    elif path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_json(path, orient="records", lines=True)
    return path


def read_output(path):
    """Header and rows of a CSV or JSONL output (JSONL: the first record's keys, every record's values)."""
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
        return rows[0], rows[1:]
    records = read_jsonl(path)
    assert all(list(r) == list(records[0]) for r in records)  # one schema for every line
    return list(records[0]), [list(r.values()) for r in records]


@pytest.mark.parametrize("out_suffix", [".csv", ".jsonl"])
@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_every_input_column_is_kept_by_default_in_input_order(predictor, tmp_path, suffix, out_suffix):
    texts = reviews(11)
    frame = pd.DataFrame({"id": range(100, 111), "review": texts, "stars": [i % 5 + 1 for i in range(11)]})
    source = write_table(tmp_path / f"in{suffix}", frame)
    out = tmp_path / f"out{out_suffix}"
    assert predict_file(predictor, source, out, text_column="review", chunk_size=4) == 11
    header, rows = read_output(out)
    assert header == ["id", "text", "stars", "label", "score"]
    expected = predictor(texts)
    assert [r[3] for r in rows] == [e["label"] for e in expected]
    assert [float(r[4]) for r in rows] == pytest.approx([e["score"] for e in expected], abs=1e-6)
    assert [r[1] for r in rows] == texts
    # CSV output holds text; JSONL keeps the input's types (a CSV input's values are text)
    as_read = str if out_suffix == ".csv" or suffix == ".csv" else int
    assert [r[0] for r in rows] == [as_read(i) for i in range(100, 111)]
    assert [r[2] for r in rows] == [as_read(i % 5 + 1) for i in range(11)]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_keep_columns_restricts_and_an_empty_list_keeps_only_the_text(predictor, tmp_path, suffix):
    frame = pd.DataFrame({"id": range(6), "text": reviews(6), "date": ["2024-01-0" + str(i + 1) for i in range(6)]})
    source = write_table(tmp_path / f"in{suffix}", frame)
    out = tmp_path / "out.jsonl"
    predict_file(predictor, source, out, keep_columns=["date"])
    assert read_output(out)[0] == ["text", "date", "label", "score"]
    assert [r["date"] for r in read_jsonl(out)] == frame["date"].tolist()
    predict_file(predictor, source, out, keep_columns=[])
    assert read_output(out)[0] == ["text", "label", "score"]
    with pytest.raises(DataError, match=rf"{source.name}: no column 'nope' to keep \(found: id, text, date\).*--keep"):
        predict_file(predictor, source, out, keep_columns=["date", "nope"])


def test_txt_input_has_only_the_text(predictor, tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("great film\nawful plot\n")
    predict_file(predictor, source, tmp_path / "out.csv")
    assert read_output(tmp_path / "out.csv")[0] == ["text", "label", "score"]
    with pytest.raises(DataError, match="TXT file .* no columns to keep"):
        predict_file(predictor, source, tmp_path / "out.csv", keep_columns=["id"])


def test_kept_columns_named_like_the_outputs_are_renamed_not_overwritten(predictor, tmp_path, caplog):
    frame = pd.DataFrame(
        {"label": ["positive", "negative"], "review": ["great film", "awful plot"], "text": ["a", "b"], "score": [9, 2]}
    )
    source = write_table(tmp_path / "in.parquet", frame)
    out = tmp_path / "out.jsonl"
    with caplog.at_level("WARNING", logger="bertsent.predict"):
        predict_file(predictor, source, out, text_column="review")
    rows = read_jsonl(out)
    assert list(rows[0]) == ["input_label", "text", "input_text", "input_score", "label", "score"]
    assert [(r["input_label"], r["text"], r["input_text"], r["input_score"]) for r in rows] == [
        ("positive", "great film", "a", 9),
        ("negative", "awful plot", "b", 2),
    ]
    assert [r["label"] for r in rows] == [p["label"] for p in predictor(["great film", "awful plot"])]
    assert "'label' as 'input_label'" in caplog.text and "'score' as 'input_score'" in caplog.text
    # a CSV header repeating a name keeps both values too
    (tmp_path / "dup.csv").write_text("id,text,id\n1,great film,x\n")
    predict_file(predictor, tmp_path / "dup.csv", tmp_path / "dup.csv.out.csv")
    assert read_output(tmp_path / "dup.csv.out.csv")[0] == ["id", "text", "input_id", "label", "score"]
    assert read_output(tmp_path / "dup.csv.out.csv")[1][0][:3] == ["1", "great film", "x"]


def test_jsonl_records_with_different_keys_share_one_schema(predictor, tmp_path):
    source = tmp_path / "in.jsonl"
    lines = ['{"id": 1, "text": "great film"}', '"awful plot"', "", '{"text": "moving story", "meta": {"a": [1]}}']
    source.write_text("\n".join(lines) + "\n")
    predict_file(predictor, source, tmp_path / "out.jsonl")
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert [(r["id"], r["text"], r["meta"]) for r in rows] == [
        (1, "great film", None),
        (None, "awful plot", None),
        (None, "moving story", {"a": [1]}),
    ]
    predict_file(predictor, source, tmp_path / "out.csv")
    header, csv_rows = read_output(tmp_path / "out.csv")
    assert header == ["id", "text", "meta", "label", "score"]
    assert [r[:3] for r in csv_rows] == [
        ["1", "great film", ""],
        ["", "awful plot", ""],
        ["", "moving story", '{"a": [1]}'],
    ]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_resumed_run_with_columns_equals_an_uninterrupted_one(predictor, tmp_path, monkeypatch, suffix):
    frame = pd.DataFrame({"id": range(18), "text": reviews(18), "note": [f"n{i}" for i in range(18)]})
    source = write_table(tmp_path / f"in{suffix}", frame)
    complete = tmp_path / "complete.csv"
    predict_file(predictor, source, complete, chunk_size=4)

    out = tmp_path / "out.csv"
    real = Predictor.predict_proba
    calls = {"n": 0}

    def flaky(self, chunk, progress=False):
        calls["n"] += 1
        if calls["n"] == 3:
            with out.open("a") as f:
                f.write("99,half a row")
            raise KeyboardInterrupt
        return real(self, chunk, progress)

    monkeypatch.setattr(Predictor, "predict_proba", flaky)
    with pytest.raises(KeyboardInterrupt):
        predict_file(predictor, source, out, chunk_size=4)
    monkeypatch.setattr(Predictor, "predict_proba", real)
    with pytest.raises(DataError, match="started with columns id,text,note but this run writes id,text: resume"):
        predict_file(predictor, source, out, chunk_size=4, resume=True, keep_columns=["id"])
    assert predict_file(predictor, source, out, chunk_size=4, resume=True) == 18
    assert out.read_text() == complete.read_text()
    assert read_output(out)[0] == ["id", "text", "note", "label", "score"]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".txt"])
def test_gzip_input_is_read_by_name_or_by_its_bytes(predictor, tmp_path, suffix):
    texts = reviews(7)
    plain = tmp_path / f"in{suffix}"
    if suffix == ".txt":
        plain.write_text("\n".join(texts) + "\n")
    else:
        write_table(plain, pd.DataFrame({"id": range(7), "text": texts}))
    expected = tmp_path / "expected.jsonl"
    predict_file(predictor, plain, expected, chunk_size=3)
    named = tmp_path / f"named{suffix}.gz"
    named.write_bytes(gzip.compress(plain.read_bytes()))
    predict_file(predictor, named, tmp_path / "named.jsonl", chunk_size=3)
    assert (tmp_path / "named.jsonl").read_text() == expected.read_text()
    disguised = tmp_path / f"disguised{suffix}"  # gzip bytes under a plain name: read, not an encoding error
    disguised.write_bytes(gzip.compress(plain.read_bytes()))
    predict_file(predictor, disguised, tmp_path / "from-disguised.jsonl", chunk_size=3)
    assert (tmp_path / "from-disguised.jsonl").read_text() == expected.read_text()


def test_broken_gzip_and_gzipped_parquet_names_are_clear_errors(predictor, tmp_path):
    broken = tmp_path / "in.csv.gz"
    packed = gzip.compress(("text\n" + "".join(f"review number {i}\n" for i in range(5000))).encode())
    broken.write_bytes(packed[: len(packed) // 2])  # cut short, as an interrupted download
    with pytest.raises(DataError, match=r"in.csv.gz after line \d+: not a readable gzip file"):
        predict_file(predictor, broken, tmp_path / "o.jsonl")
    (tmp_path / "in.parquet.gz").write_bytes(gzip.compress(b"PAR1"))
    with pytest.raises(DataError, match=r"unknown input format '.parquet.gz'"):
        predict_file(predictor, tmp_path / "in.parquet.gz", tmp_path / "o.jsonl")
    (tmp_path / "same.csv").write_text("text\ngreat film\n")
    with pytest.raises(DataError, match="is the input file too"):
        predict_file(predictor, tmp_path / "same.csv", tmp_path / "same.csv")
    assert (tmp_path / "same.csv").read_text() == "text\ngreat film\n"


# ---------------------------------------------------------------------------------------------- ties


TIED_LOGITS = [1.0, 3.0, 3.0, 1.0, 2.0] * 4
"""Twenty labels in three tied groups: enough that numpy's default (unstable) sort reorders ties."""


def make_tied_bert(root):
    """A tiny BERT whose classifier ignores the text (zero weights): every text gets softmax(TIED_LOGITS),
    exact ties included; labels ``L0`` .. ``L19``."""
    import torch
    from conftest import make_tiny_bert
    from transformers import BertForSequenceClassification

    labels = {i: f"L{i}" for i in range(len(TIED_LOGITS))}
    make_tiny_bert(root, num_labels=len(labels), id2label=labels, label2id={v: k for k, v in labels.items()})
    model = BertForSequenceClassification.from_pretrained(root)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor(TIED_LOGITS))
    model.save_pretrained(root)
    return root


def tied_order() -> list[str]:
    """The one tie rule, stated on the logits: the higher score first, then the lower label id."""
    return [f"L{i}" for i in sorted(range(len(TIED_LOGITS)), key=lambda i: (-TIED_LOGITS[i], i))]


@pytest.fixture(scope="module")
def tied_dir(tmp_path_factory):
    return make_tied_bert(tmp_path_factory.mktemp("tied_bert"))


def test_ties_go_to_the_lower_label_id_in_calls_and_files(tied_dir, tmp_path):
    predictor = Predictor(tied_dir)
    texts = ["a tie", "another text entirely"]
    ranked = predictor(texts, top_k=None)
    assert ranked[0][0]["score"] == ranked[0][1]["score"], "the fixture's ties are exact"
    assert [[s["label"] for s in row] for row in ranked] == [tied_order()] * 2
    assert [s["label"] for s in predictor(texts, top_k=0)[1]] == tied_order()
    assert [s["label"] for s in predictor(texts, top_k=6)[0]] == tied_order()[:6]
    assert [s["label"] for s in predictor(texts, top_k=50)[0]] == tied_order()  # more than there are: all
    assert [p["label"] for p in predictor(texts)] == [tied_order()[0]] * 2
    source = tmp_path / "in.txt"
    source.write_text("\n".join(texts) + "\n")
    for out in (tmp_path / "out.jsonl", tmp_path / "out.csv"):
        assert predict_file(predictor, source, out) == 2
        header, rows = read_output(out)
        assert header == ["text", "label", "score"]
        assert [row[1] for row in rows] == [tied_order()[0]] * 2
