"""Training under a launcher (torchrun, 2 CPU processes on gloo) equals one process with the same global batch.

A tiny random BERT with dropout off, so the only differences are float summation orders. Each run is a real
``bertsent train`` command in subprocesses (about 20 s for two processes).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bertsent.training.tracking import CHECKPOINTS

# 193 training reviews in batches of 16: the last batch has one review, so one rank's share is empty.
TRAIN = ["--train-samples", "193", "--validation-size", "40", "--max-length", "32", "--epochs", "2"]
FLAGS = [*TRAIN, "--lr", "5e-3", "--batch-size", "16", "--save-steps", "5", "--device", "cpu", "--progress", "false"]


@pytest.fixture(scope="module")
def no_dropout_model(tmp_path_factory) -> Path:
    from conftest import make_tiny_bert

    dropout_off = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_no_dropout"), **dropout_off)


def bertsent_train(processes: int, model: Path, data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "bertsent", "train", "--model", str(model), "--data", str(data)]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        command = [*launcher, "-m", "bertsent", *command[3:]]
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [*command, "--output-dir", str(out), *FLAGS, *extra], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def step_lines(log: str) -> list[str]:
    return [line.split(": ", 1)[1] for line in log.splitlines() if "bertsent.training.loop: step" in line]


@pytest.fixture(scope="module")
def runs(no_dropout_model, toy_data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    tb = ["--report-to", "tensorboard"]
    one = bertsent_train(1, no_dropout_model, toy_data_dir, root / "one", *tb)
    two = bertsent_train(2, no_dropout_model, toy_data_dir, root / "two", *tb, "--keep-checkpoints")
    return root, one, two


def test_two_processes_train_what_one_does(runs):
    root, _, _ = runs
    m1, m2 = (json.loads((root / name / "metrics.json").read_text()) for name in ("one", "two"))
    assert m1["steps"] == m2["steps"] == 26 and m1["train_reviews"] == m2["train_reviews"] == 193
    for key in ("validation_accuracy", "validation_loss", "test_accuracy", "test_log_loss", "best_step"):
        assert m2[key] == pytest.approx(m1[key], abs=1e-4), key
    w1, w2 = weights(root / "one"), weights(root / "two")
    assert w1.keys() == w2.keys()
    worst = max(float((w1[k] - w2[k]).abs().max()) for k in w1)
    assert worst < 1e-4
    # The logged loss is the mean over both ranks' reviews: the same numbers as one process.
    h1, h2 = (json.loads((root / name / "history.json").read_text()) for name in ("one", "two"))
    losses = [(a["loss"], b["loss"]) for a, b in zip(h1, h2, strict=True) if "loss" in a]
    assert losses and all(b == pytest.approx(a, abs=1e-4) for a, b in losses)


def test_one_voice_and_one_folder(runs):
    root, one, two = runs
    # Exactly the single run's progress lines, once each (not once per rank).
    steps = [line.split(":")[0] for line in step_lines(two.stderr)]
    assert steps == [line.split(":")[0] for line in step_lines(one.stderr)] and len(steps) == len(set(steps)) > 2
    assert "2 processes" in two.stderr and "about 8 per device" in two.stderr
    assert two.stdout.count("model saved to") == 1
    assert sorted(p.name for p in root.iterdir()) == ["one", "two"]


def test_tensorboard_events_hold_the_logged_scalars(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, _, _ = runs
    for name in ("one", "two"):
        # One scalar log (the hparams go in a subfolder of their own): the main process alone writes.
        events = list((root / name / "logs").glob("*/events.out.tfevents.*"))
        assert len(events) == 1, events
        acc = EventAccumulator(str(events[0].parent))
        acc.Reload()
        history = json.loads((root / name / "history.json").read_text())
        losses = [e.value for e in acc.Scalars("train/loss")]
        assert losses == pytest.approx([h["loss"] for h in history if "loss" in h], rel=1e-6)
        assert {"train/learning_rate", "train/reviews_per_second", "eval/accuracy"} <= set(acc.Tags()["scalars"])


def test_resuming_two_processes_equals_the_uninterrupted_run(runs, no_dropout_model, toy_data_dir):
    root, _, _ = runs
    out = root / "resumed"
    shutil.copytree(root / "two" / CHECKPOINTS, out / CHECKPOINTS)
    for path in (out / CHECKPOINTS).glob("step-*"):
        if int(path.name.split("-")[1]) > 15:  # interrupted at step 16, in the second epoch
            shutil.rmtree(path)
    bertsent_train(2, no_dropout_model, toy_data_dir, out, "--resume")
    m2, resumed = (json.loads((root / name / "metrics.json").read_text()) for name in ("two", "resumed"))
    for key in ("steps", "validation_accuracy", "validation_loss", "test_accuracy", "test_log_loss", "best_step"):
        assert resumed[key] == pytest.approx(m2[key], abs=1e-6), key
    w2, wr = weights(root / "two"), weights(out)
    assert max(float((w2[k] - wr[k]).abs().max()) for k in w2) < 1e-6
    shutil.rmtree(out)
