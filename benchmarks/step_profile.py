"""Where training and prediction time goes: one training step under each setting, and tokenize vs forward.

Training: a 16 x 256 batch of the embedded MiniLM, median of a few steps after a warm-up, for the
baseline (attention dropout 0.1, default AdamW) and each change bertsent makes or considered.
Prediction: ``Predictor`` on N IMDB test reviews, tokenization timed apart from the forward passes.

    python benchmarks/step_profile.py --data ../shared/data/imdb
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bertsent.config import DataConfig
from bertsent.data.loading import load_data
from bertsent.modeling.loading import load_classifier
from bertsent.predict import Predictor

SETTINGS = {
    "baseline (attention dropout 0.1, AdamW default)": {},
    "foreach AdamW": {"foreach": True},
    "attention dropout 0": {"attention_dropout": 0.0},
    "frozen word embeddings": {"freeze_embeddings": True},
    "bertsent (attention dropout 0, foreach AdamW)": {"attention_dropout": 0.0, "foreach": True},
}


def step_seconds(steps: int, length: int, batch: int, attention_dropout=None, foreach=None, freeze_embeddings=False):
    overrides = {} if attention_dropout is None else {"attention_probs_dropout_prob": attention_dropout}
    torch.manual_seed(0)
    model = load_classifier(None, {0: "negative", 1: "positive"}, **overrides).train()
    if freeze_embeddings:
        model.base_model.embeddings.word_embeddings.weight.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5, foreach=foreach)
    ids = torch.randint(1000, 20000, (batch, length))
    labels = torch.randint(0, 2, (batch,))
    times = []
    for _ in range(steps + 1):  # the first step warms up allocators and kernels
        start = time.perf_counter()
        model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/imdb")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--n", type=int, default=512, help="test reviews for the prediction split")
    parser.add_argument("--model", default="runs/demo", help="fine-tuned folder for the prediction part")
    ns = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; training step: batch 16 x 256 tokens")
    baseline = None
    for name, settings in SETTINGS.items():
        seconds = step_seconds(ns.steps, 256, 16, **settings)
        baseline = baseline or seconds
        print(f"{name:<48} {seconds:6.2f} s/step  {16 / seconds:5.1f} reviews/s  {baseline / seconds:4.2f}x")
    texts = load_data(DataConfig(ns.data, eval_samples=ns.n), splits=("test",)).test["text"].tolist()
    predictor = Predictor(ns.model, batch_size=32, truncation="head")
    predictor.predict_proba(texts[:32])
    start = time.perf_counter()
    encoded = predictor.encode(texts)
    tokenize = time.perf_counter() - start
    start = time.perf_counter()
    predictor.predict_proba(encoded)
    forward = time.perf_counter() - start
    share = 100 * tokenize / (tokenize + forward)
    print(f"prediction of {len(texts)} reviews: tokenize {tokenize:.2f} s, forward {forward:.2f} s ({share:.1f}%)")


if __name__ == "__main__":
    main()
