"""``--backend auto`` on a PyTorch folder (issue 35): the routes are built and checked for real on the tiny
models, the winner is cached outside the folder and loaded at once later, a changed folder measures
again, and the route is recorded where the brief says. Which route wins is injected (``route_choice.pick``),
so no test depends on timings."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest

from bertsent import route_choice
from bertsent.config import DataConfig, InferenceSettings
from bertsent.errors import SettingsError
from bertsent.predict import Predictor
from bertsent.tokenizer_json import JsonTokenizer, same_encoding


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh route cache, and PyTorch plus ONNX Runtime as the routes ``auto`` may try."""
    root = tmp_path / "cache"
    monkeypatch.setenv(route_choice.CACHE_ENV, str(root))
    monkeypatch.setenv(route_choice.ROUTES_ENV, "torch,onnx")
    return root


def choose(monkeypatch, route: str) -> list[list[dict]]:
    """Make ``route`` win whenever it passed the check; returns the list each measurement's results go to."""
    seen: list[list[dict]] = []

    def pick(results: list[dict], light: bool = False) -> dict:
        seen.append(results)
        return next(r for r in results if r["route"] == route and r["passed"])

    monkeypatch.setattr(route_choice, "pick", pick)
    return seen


def no_measuring(monkeypatch) -> None:
    def measure(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(route_choice, "measure", measure)


def verdicts(cache) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(cache.glob(f"routes/*/{route_choice.VERDICT_FILE}"))]


def predict_in_a_new_process(folder, texts: list[str]) -> dict:
    """``Predictor(folder)``'s probabilities of ``texts`` in a fresh interpreter, and which of torch and
    transformers that process imported."""
    code = (
        "import json, sys\n"
        "from bertsent.predict import Predictor\n"
        "p = Predictor(sys.argv[1], threads=1)\n"
        "probs = p.predict_proba(json.loads(sys.argv[2])).tolist()\n"
        "print(json.dumps({'probs': probs, 'imported': [m for m in ('torch', 'transformers') if m in sys.modules]}))"
    )
    argv = [sys.executable, "-c", code, str(folder), json.dumps(texts)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_first_use_measures_and_a_second_predictor_loads_the_cached_winner(
    trained_tiny_dir, toy_texts, cache, monkeypatch
):
    seen = choose(monkeypatch, "onnx")
    first = Predictor(trained_tiny_dir, threads=1)
    assert [r["route"] for r in seen[0]] == ["torch", "onnx"]
    assert all(r["passed"] for r in seen[0]) and seen[0][1]["agreement"] >= 0.995
    assert first.backend.name == "onnxruntime" and first.route.name == "onnx" and first.route.auto
    assert first.route.measured_seconds is not None
    [verdict] = verdicts(cache)
    assert verdict["route"] == "onnx" and verdict["reviews"] > 0 and len(verdict["candidates"]) == 2
    assert verdict["tokenizer"] == "tokenizers" and first.route.light_tokenizer

    no_measuring(monkeypatch)
    import bertsent.modeling.loading as loading
    import bertsent.predict as predict

    def no_torch_model(*args, **kwargs):
        raise AssertionError("built the PyTorch model for a cached ONNX winner")

    def no_transformers_tokenizer(*args, **kwargs):
        raise AssertionError("loaded transformers' tokenizer where tokenizer.json was checked to match it")

    monkeypatch.setattr(loading, "load_classifier", no_torch_model)
    monkeypatch.setattr(predict, "load_tokenizer", no_transformers_tokenizer)
    second = Predictor(trained_tiny_dir, threads=1)
    assert second.route.name == "onnx" and second.route.measured_seconds is None
    assert isinstance(second.tokenizer, JsonTokenizer)
    assert second.describe().route == "onnx" and second.describe().backend == "onnxruntime"
    monkeypatch.undo()
    reference = Predictor(trained_tiny_dir, backend="torch", precision="fp32", threads=1).predict_proba(toy_texts)
    np.testing.assert_allclose(second.predict_proba(toy_texts), reference, atol=1e-5)


def test_a_cached_onnx_winner_predicts_in_a_process_without_torch_or_transformers(
    trained_tiny_dir, toy_texts, cache, monkeypatch
):
    choose(monkeypatch, "onnx")
    expected = Predictor(trained_tiny_dir, threads=1).predict_proba(toy_texts)  # measures, caches the winner
    got = predict_in_a_new_process(trained_tiny_dir, toy_texts)
    assert got["imported"] == []
    np.testing.assert_allclose(np.asarray(got["probs"]), expected, atol=1e-6)


def test_a_server_on_a_cached_onnx_winner_tokenizes_with_tokenizer_json_under_concurrent_requests(
    trained_tiny_dir, toy_texts, cache, monkeypatch
):
    from concurrent.futures import ThreadPoolExecutor

    from fastapi.testclient import TestClient

    from bertsent.config import ServeSettings
    from bertsent.serve.app import create_app

    choose(monkeypatch, "onnx")
    Predictor(trained_tiny_dir, threads=1)  # measures and caches the winner
    reference = Predictor(trained_tiny_dir, backend="torch", precision="fp32", threads=1).predict_proba(toy_texts)
    settings = ServeSettings(max_batch_size=4, max_wait_ms=2, max_inputs=4)
    with TestClient(create_app(trained_tiny_dir, settings)) as client:
        info = client.get("/info").json()
        assert info["route"] == "onnx" and info["tokenizer"] == "tokenizers"

        def ask(i: int) -> list[dict]:
            return client.post("/predict", json={"inputs": toy_texts[i : i + 4]}).json()

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, range(0, len(toy_texts), 4)))
    got = [row for answer in answers for row in answer]
    assert [row["label"] for row in got] == ["negative" if p[0] > p[1] else "positive" for p in reference]
    np.testing.assert_allclose([row["score"] for row in got], reference.max(axis=1), atol=1e-5)


def test_tokenizer_json_is_used_only_where_it_encodes_as_transformers(trained_tiny_dir, tmp_path, toy_texts):
    from bertsent.modeling.loading import load_tokenizer

    reference = load_tokenizer(trained_tiny_dir)
    assert same_encoding(trained_tiny_dir, reference, toy_texts, 32, "head+tail") is None
    light = JsonTokenizer(trained_tiny_dir)
    assert light.pad_token_id == reference.pad_token_id and light.model_max_length == reference.model_max_length
    # A folder without tokenizer.json (transformers builds one from vocab.txt), or one whose pad token
    # disagrees, keeps transformers' tokenizer, and the verdict says why.
    bare = shutil.copytree(trained_tiny_dir, tmp_path / "bare")
    (bare / "tokenizer.json").unlink()
    assert "cannot load" in same_encoding(bare, reference, toy_texts, 32, "head")
    other_pad = shutil.copytree(trained_tiny_dir, tmp_path / "pad")
    config = json.loads((other_pad / "tokenizer_config.json").read_text())
    (other_pad / "tokenizer_config.json").write_text(json.dumps(config | {"pad_token": "[UNK]"}))
    assert same_encoding(other_pad, reference, toy_texts, 32, "head").startswith("pad token id")


def test_a_changed_file_of_the_folder_measures_again(trained_tiny_dir, tmp_path, cache, monkeypatch):
    folder = shutil.copytree(trained_tiny_dir, tmp_path / "model")
    seen = choose(monkeypatch, "torch")
    assert Predictor(folder).route.name == "torch" and len(seen) == 1
    assert Predictor(folder).route.measured_seconds is None and len(seen) == 1  # a hit
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"note": "edited"}))
    assert Predictor(folder).route.measured_seconds is not None and len(seen) == 2
    assert len(verdicts(cache)) == 2  # the old key's verdict stays; the new content got its own


def test_a_read_only_folder_runs_and_nothing_is_written_into_it(trained_tiny_dir, tmp_path, cache, monkeypatch):
    folder = shutil.copytree(trained_tiny_dir, tmp_path / "model")
    before = sorted(p.name for p in folder.rglob("*"))
    for path in [*folder.rglob("*"), folder]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        choose(monkeypatch, "onnx")
        assert Predictor(folder).route.name == "onnx"
        assert Predictor(folder).route.measured_seconds is None
        assert sorted(p.name for p in folder.rglob("*")) == before
    finally:
        for path in [folder, *folder.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


def test_openvino_route_caches_its_ir_and_compiled_blobs(trained_tiny_dir, toy_texts, cache, monkeypatch):
    pytest.importorskip("openvino")
    monkeypatch.setenv(route_choice.ROUTES_ENV, "openvino")
    seen = choose(monkeypatch, "openvino")
    first = Predictor(trained_tiny_dir, threads=1)
    assert [r["route"] for r in seen[0]][:2] == ["torch", "openvino"]
    assert first.backend.name == "openvino" and first.describe().route == "openvino"
    folder = first.route.cache_dir
    assert (folder / route_choice.IR_DIR / "openvino_model.xml").is_file()
    assert not (folder / "model.onnx").exists()  # the losers' and the intermediate artifacts go
    assert any((folder / route_choice.BLOB_DIR).iterdir())  # OpenVINO's CACHE_DIR got the compiled model
    no_measuring(monkeypatch)
    second = Predictor(trained_tiny_dir, threads=1)
    assert second.backend.name == "openvino" and second.backend.precision == first.backend.precision
    reference = Predictor(trained_tiny_dir, backend="torch", precision="fp32", threads=1)
    agree = second.predict_proba(toy_texts).argmax(-1) == reference.predict_proba(toy_texts).argmax(-1)
    assert agree.mean() >= 0.99


def test_a_forced_backend_never_measures(trained_tiny_dir, cache, monkeypatch):
    no_measuring(monkeypatch)
    predictor = Predictor(trained_tiny_dir, backend="torch")
    assert predictor.backend.name == "pytorch" and predictor.route.name == "torch" and not predictor.route.auto
    assert "--backend torch" in predictor.describe().route_reason
    assert not cache.exists()


def test_a_folder_without_recorded_validation_data_stays_on_pytorch(tiny_model_dir, cache, monkeypatch, caplog):
    seen = choose(monkeypatch, "onnx")
    with caplog.at_level("INFO", logger="bertsent.route_choice"):
        predictor = Predictor(tiny_model_dir)
    assert predictor.backend.name == "pytorch" and predictor.route.name == "torch" and not seen
    assert "no guard possible" in predictor.route.reason and "no guard possible" in caplog.text
    assert verdicts(cache) == []  # nothing cached: recorded data that appears later is used then


def test_routes_env_pins_pytorch_and_refuses_unknown_routes(trained_tiny_dir, cache, monkeypatch):
    no_measuring(monkeypatch)
    monkeypatch.setenv(route_choice.ROUTES_ENV, "torch")
    predictor = Predictor(trained_tiny_dir)
    assert predictor.route.name == "torch" and route_choice.ROUTES_ENV in predictor.route.reason
    monkeypatch.setenv(route_choice.ROUTES_ENV, "torch,tensorrt")
    with pytest.raises(SettingsError, match="tensorrt"):
        Predictor(trained_tiny_dir)


def test_pick_takes_the_fastest_route_that_passed_and_beats_pytorch():
    torch_row = {"route": "torch", "passed": True, "seconds": 1.0}
    failed = {"route": "openvino", "passed": False, "seconds": 0.2}
    onnx = {"route": "onnx", "passed": True, "seconds": 0.5}
    assert route_choice.pick([torch_row, failed, onnx]) is onnx
    close = {"route": "onnx", "passed": True, "seconds": 1.0 / route_choice.MIN_SPEEDUP + 1e-3}
    assert route_choice.pick([torch_row, close]) is torch_row
    assert route_choice.pick([torch_row, close], light=True) is close, "a tie goes to the route that starts light"
    slower = {"route": "onnx", "passed": True, "seconds": 1.01}
    assert route_choice.pick([torch_row, slower], light=True) is torch_row
    bf16 = {"route": "torch", "passed": True, "seconds": 1.0 / route_choice.MIN_SPEEDUP + 1e-3}
    tie = route_choice.pick([torch_row, bf16], light=True)
    assert tie is torch_row, "bf16 PyTorch must still beat fp32 by the margin"
    broken = {"route": "onnx", "passed": False, "error": "export failed"}
    assert route_choice.pick([torch_row, broken]) is torch_row


def test_explanations_work_when_another_route_predicts(trained_tiny_dir, toy_texts, cache, monkeypatch):
    choose(monkeypatch, "onnx")
    predictor = Predictor(trained_tiny_dir, explain=True)
    assert predictor.route.name == "onnx"
    [row] = predictor([toy_texts[0]])
    assert row["explanation"] and all(toy_texts[0][w["start"] : w["end"]] == w["word"] for w in row["explanation"])


def test_evaluate_records_the_route(trained_tiny_dir, toy_data_dir, tmp_path, cache, monkeypatch):
    from bertsent.evaluate import evaluate

    choose(monkeypatch, "onnx")
    out = tmp_path / "eval"
    metrics = evaluate(trained_tiny_dir, DataConfig(str(toy_data_dir)), output_dir=out, settings=InferenceSettings())
    assert metrics["route"] == "onnx" and metrics["backend"] == "onnxruntime" and metrics["route_reason"]
    assert json.loads((out / "metrics.json").read_text())["route"] == "onnx"


def test_pytorch_bf16_is_a_route_held_to_the_guard(trained_tiny_dir, tmp_path, cache, monkeypatch):
    """On a CPU where ``--precision auto`` would take bf16 (AMX), PyTorch bf16 is one more contender, and
    one that fails the check against fp32 is not chosen; nothing is written into the folder for it."""
    import bertsent.inference as inference

    folder = shutil.copytree(trained_tiny_dir, tmp_path / "model")
    monkeypatch.setattr(route_choice, "auto_precision", lambda device: "bf16")
    monkeypatch.setattr(inference, "PRECISION_MIN_AGREEMENT", 1.01)  # a tolerance nothing meets
    seen = []

    def prefer_bf16(results: list[dict], light: bool = False) -> dict:
        seen.append(results)
        return next(r for r in reversed(results) if r["route"] == "torch" and r["passed"])

    monkeypatch.setattr(route_choice, "pick", prefer_bf16)
    predictor = Predictor(folder, device="cpu")
    torch_rows = [r for r in seen[-1] if r["route"] == "torch"]
    assert [r["precision"] for r in torch_rows] == ["fp32", "bf16"]
    assert torch_rows[1]["passed"] is False and torch_rows[1]["agreement"] < 1.01  # checked, and out
    assert predictor.backend.precision == "fp32" and not (folder / "precision_check.json").exists()


def test_the_guard_is_precision_autos_thresholds():
    from bertsent.inference import PRECISION_MIN_AGREEMENT, agreement_verdict

    labels = np.array([0, 1] * 200)
    one_off, four_off = labels.copy(), labels.copy()
    one_off[0] = 1  # 399 of 400 agree (99.75%), accuracy 0.25 points lower
    four_off[:4] = 1 - four_off[:4]  # 99% agree, 1 point lower
    assert PRECISION_MIN_AGREEMENT == 0.995
    assert agreement_verdict(labels, one_off, labels)["passed"]
    failed = agreement_verdict(labels, four_off, labels)
    assert not failed["passed"] and failed["agreement"] == 0.99 and failed["accuracy_drop_points"] == 1.0


def tokenizer_checks(cache) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(cache.glob(f"{route_choice.TOKENIZER_DIR}/*.json"))]


@pytest.fixture(scope="module")
def exported_dir(trained_tiny_dir, tmp_path_factory):
    from bertsent.compression.export import export_onnx

    return export_onnx(trained_tiny_dir, tmp_path_factory.mktemp("exported") / "onnx")


def test_an_exported_folder_tokenizes_with_tokenizer_json_once_checked(
    exported_dir, trained_tiny_dir, toy_texts, cache, monkeypatch
):
    first = Predictor(exported_dir, threads=1)
    assert first.route.name == "onnx" and first.route.light_tokenizer and isinstance(first.tokenizer, JsonTokenizer)
    assert first.describe().tokenizer == "tokenizers"
    [check] = tokenizer_checks(cache)
    assert check["tokenizer"] == "tokenizers" and check["reviews"] > 0
    reference = Predictor(trained_tiny_dir, backend="torch", precision="fp32", threads=1).predict_proba(toy_texts)
    np.testing.assert_allclose(first.predict_proba(toy_texts), reference, atol=1e-4)

    got = predict_in_a_new_process(exported_dir, toy_texts)  # the cached check: neither library imported
    assert got["imported"] == []
    np.testing.assert_allclose(np.asarray(got["probs"]), reference, atol=1e-4)


def test_a_forced_onnx_backend_takes_the_same_check(exported_dir, cache, monkeypatch):
    assert Predictor(exported_dir, threads=1).route.light_tokenizer  # checked here, cached
    import bertsent.route_choice as rc

    def no_check(*args, **kwargs):
        raise AssertionError("checked the tokenizer again")

    monkeypatch.setattr(rc, "validation_sample", no_check)
    forced = Predictor(exported_dir, backend="onnx", threads=1)
    assert forced.route.light_tokenizer and "--backend onnx" in forced.route.reason
    assert len(tokenizer_checks(cache)) == 1


def test_a_changed_tokenizer_file_is_checked_again_and_a_mismatch_keeps_transformers(
    exported_dir, tmp_path, cache, monkeypatch
):
    import bertsent.tokenizer_json as tokenizer_json

    folder = shutil.copytree(exported_dir, tmp_path / "onnx")
    assert Predictor(folder, threads=1).route.light_tokenizer
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps(config | {"note": "edited"}))
    monkeypatch.setattr(tokenizer_json, "same_encoding", lambda *args: "token ids differ on text 3")
    again = Predictor(folder, threads=1)
    assert not again.route.light_tokenizer and again.describe().tokenizer == "transformers"
    checks = tokenizer_checks(cache)
    assert len(checks) == 2 and {c.get("tokenizer_reason") for c in checks} == {None, "token ids differ on text 3"}
    assert not Predictor(folder, threads=1).route.light_tokenizer  # the mismatch is cached too


def test_an_exported_folder_without_recorded_reviews_keeps_transformers_and_caches_nothing(
    exported_dir, tmp_path, cache
):
    folder = shutil.copytree(exported_dir, tmp_path / "onnx")
    args = json.loads((folder / "training_args.json").read_text())
    (folder / "training_args.json").write_text(json.dumps({k: v for k, v in args.items() if k != "data"}))
    predictor = Predictor(folder, threads=1)
    assert not predictor.route.light_tokenizer and predictor.describe().tokenizer == "transformers"
    assert tokenizer_checks(cache) == []


def test_routes_are_timed_on_a_few_reviews_and_only_the_pick_is_checked_on_all(
    trained_tiny_dir, tmp_path, cache, monkeypatch
):
    """Every route is timed on the first TIMING_REVIEWS; the one the pick chooses runs the rest for the
    guard (fp32 PyTorch too), and a route the pick never reached is recorded as not checked."""
    pytest.importorskip("openvino")
    monkeypatch.setenv(route_choice.ROUTES_ENV, "onnx,openvino")
    monkeypatch.setattr(route_choice, "TIMING_REVIEWS", 4)
    choose(monkeypatch, "onnx")
    predictor = Predictor(trained_tiny_dir, threads=1)
    [verdict] = verdicts(cache)
    rows = {r["route"]: r for r in verdict["candidates"]}
    assert predictor.route.name == "onnx" and verdict["timed_reviews"] == 4 < verdict["reviews"]
    assert rows["onnx"]["passed"] and rows["onnx"]["reviews"] == verdict["reviews"]  # the guard saw them all
    assert rows["openvino"]["passed"] is None and "not run" in rows["openvino"]["check"]


def test_a_picked_route_that_fails_the_guard_is_out_and_the_pick_is_made_again(
    trained_tiny_dir, tmp_path, cache, monkeypatch
):
    import bertsent.inference as inference

    folder = shutil.copytree(trained_tiny_dir, tmp_path / "model")
    monkeypatch.setattr(inference, "PRECISION_MIN_AGREEMENT", 1.01)  # a tolerance nothing meets
    picks = []

    def onnx_else_torch(results: list[dict], light: bool = False) -> dict:
        picks.append(next((r["route"] for r in results if r["route"] == "onnx" and r["passed"]), "torch"))
        return next(r for r in results if r["route"] == picks[-1] and r["passed"])

    monkeypatch.setattr(route_choice, "pick", onnx_else_torch)
    predictor = Predictor(folder, threads=1)
    assert picks == ["onnx", "torch"] and predictor.route.name == "torch"
    [verdict] = verdicts(cache)
    onnx = next(r for r in verdict["candidates"] if r["route"] == "onnx")
    assert onnx["passed"] is False and "agreement" in onnx and verdict["tokenizer"] == "transformers"


def test_openvinos_own_precision_failing_the_guard_brings_in_openvino_fp32(trained_tiny_dir, cache, monkeypatch):
    pytest.importorskip("openvino")
    monkeypatch.setenv(route_choice.ROUTES_ENV, "openvino")
    real_route, real_guard = route_choice._openvino_route, route_choice.agreement_verdict

    def own_choice_bf16(reference, settings, folder, hint):
        backend = real_route(reference, settings, folder, hint)
        if hint is None:
            backend.precision = "bf16"  # as OpenVINO picks on a CPU with AVX512-BF16 or AMX
        return backend

    calls = []

    def first_fails(*args):
        calls.append(real_guard(*args))
        return calls[-1] | ({"passed": False} if len(calls) == 1 else {})

    def newest_openvino(results: list[dict], light: bool = False) -> dict:
        ok = [r for r in results if r["passed"]]
        return next((r for r in reversed(ok) if r["route"] == "openvino"), ok[0])

    monkeypatch.setattr(route_choice, "_openvino_route", own_choice_bf16)
    monkeypatch.setattr(route_choice, "agreement_verdict", first_fails)
    monkeypatch.setattr(route_choice, "pick", newest_openvino)
    predictor = Predictor(trained_tiny_dir, threads=1)
    [verdict] = verdicts(cache)
    tried = [(r["precision"], r.get("hint"), r["passed"]) for r in verdict["candidates"] if r["route"] == "openvino"]
    assert tried == [("bf16", None, False), ("fp32", "fp32", True)]
    assert predictor.route.name == "openvino" and verdict["hint"] == "fp32" and len(calls) == 2
