"""Faithfulness of ``--explain``: ERASER's comprehensiveness (DeYoung et al., 2020), and the cost per review.

On N IMDB test reviews (a stratified, seeded subset of ``DATA/test.parquet``), each review's attributions
for its predicted label come from ``Predictor(..., explain=...)`` (Captum, as ``bertsent predict --explain``
runs it). Then, on the tokens the model saw (WordPieces, special tokens kept):

- **top**: the ``--fraction`` (10%) of the text's tokens with the highest scores are deleted (not masked:
  removed from the sequence, as ERASER does), and the drop of the predicted label's probability,
  ``p(x) - p(x without them)``, is recorded;
- **random**: the same number of tokens, drawn at random (``--draws`` times, averaged), deleted instead.

Faithful attributions remove what the model relied on, so the top drop must be clearly larger than the
random one. Printed: both mean drops with their standard errors, the share of reviews where top beats
random, Integrated Gradients' mean |convergence delta|, and the attribution seconds per review (the
probabilities are computed with the folder's normal predict path).

    python benchmarks/explain.py --model runs/imdb --data ../shared/data/imdb --n 200 --json explain.json
    python benchmarks/explain.py --model runs/imdb --n 200 --method input-x-gradient
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from _machine import machine_info, set_threads

from bertsent.config import EXPLAIN_METHODS, DataConfig, ExplainSettings
from bertsent.data.loading import load_data
from bertsent.encoding import Encoded
from bertsent.predict import Predictor
from bertsent.runtime import resolve_threads


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="PyTorch model folder")
    parser.add_argument("--data", default="../shared/data/imdb", help="folder with test.parquet")
    parser.add_argument("--n", type=int, default=200, help="test reviews (stratified, seeded)")
    parser.add_argument("--method", default="integrated-gradients", choices=EXPLAIN_METHODS)
    parser.add_argument("--steps", type=int, default=ExplainSettings.explain_steps, help="Integrated Gradients' steps")
    parser.add_argument("--batch-tokens", type=int, default=ExplainSettings.explain_batch_tokens)
    parser.add_argument("--fraction", type=float, default=0.1, help="share of each review's tokens deleted")
    parser.add_argument("--draws", type=int, default=5, help="random deletions per review (averaged)")
    parser.add_argument("--max-length", type=int, default=None, help="default: as the folder was trained")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results here")
    ns = parser.parse_args(argv)
    if ns.n < 1 or not 0 < ns.fraction < 1 or ns.draws < 1:
        parser.error("--n and --draws must be >= 1 and --fraction in (0, 1)")
    return ns


def deletions(row, fraction: float, draws: int, rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
    """The ids with the top ``fraction`` of the text's tokens deleted, and ``draws`` times as many at random."""
    positions = row.text_positions
    k = max(1, round(fraction * len(positions)))
    top = positions[np.argsort(-row.scores[positions], kind="stable")[:k]]
    randoms = [rng.choice(positions, size=k, replace=False) for _ in range(draws)]
    return np.delete(row.input_ids, top), [np.delete(row.input_ids, r) for r in randoms]


def comprehensiveness(predictor: Predictor, rows: list, ns: argparse.Namespace) -> dict:
    """Per review: the target probability's drop when its top tokens go, and the mean drop for random ones."""
    rng = np.random.default_rng(ns.seed)
    kept = [r for r in rows if len(r.text_positions) >= 2]  # a review needs tokens to delete and keep
    variants, owners = [], []
    for i, row in enumerate(kept):
        top, randoms = deletions(row, ns.fraction, ns.draws, rng)
        for ids in (row.input_ids, top, *randoms):
            variants.append(ids.astype(np.int32))
            owners.append(i)
    lengths = np.asarray([len(v) for v in variants], dtype=np.int64)
    probs = predictor.predict_proba(Encoded(ids=variants, full_lengths=lengths))
    per = 2 + ns.draws
    target = np.repeat([r.target for r in kept], per)
    p = probs[np.arange(len(variants)), target].reshape(len(kept), per)
    top_drop = p[:, 0] - p[:, 1]
    random_drop = (p[:, :1] - p[:, 2:]).mean(axis=1)
    return {
        "reviews": len(kept),
        "top_drop": _mean(top_drop),
        "random_drop": _mean(random_drop),
        "top_beats_random": round(float(np.mean(top_drop > random_drop)), 4),
    }


def _mean(values: np.ndarray) -> dict:
    error = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")
    return {"mean": round(float(values.mean()), 5), "stderr": round(error, 5)}


def main(argv: list[str] | None = None) -> int:
    ns = parse_args(argv)
    threads = set_threads(ns.threads or resolve_threads(None))
    splits = load_data(DataConfig(ns.data, eval_samples=ns.n, seed=ns.seed), splits=("test",))
    texts = splits.test["text"].tolist()
    settings = ExplainSettings(
        explain=True, explain_method=ns.method, explain_steps=ns.steps, explain_batch_tokens=ns.batch_tokens
    )
    overrides = {"max_length": ns.max_length} if ns.max_length else {}
    predictor = Predictor(ns.model, explain=settings, **overrides)
    machine = machine_info(captum=__import__("captum").__version__)
    print(f"machine : {machine['cpu']}, {machine['cpu_count']} CPUs, load average {machine['load_average']}")
    print(f"threads : torch intra-op {threads['torch_intra_op']}; backend {predictor.backend.name}")
    print(f"data    : {len(texts)} test reviews of {ns.data} (seed {ns.seed}), {predictor.max_length} tokens")
    predictor.explainer.attribute(texts[:1])  # warm-up: captum's import, the first passes
    started = time.perf_counter()
    rows = predictor.explainer.attribute(texts)
    seconds = time.perf_counter() - started
    tokens = float(np.mean([len(r.input_ids) for r in rows]))
    result = comprehensiveness(predictor, rows, ns)
    deltas = [abs(r.delta) for r in rows if r.delta is not None]
    result |= {
        "method": ns.method,
        "steps": ns.steps if ns.method == "integrated-gradients" else None,
        "fraction": ns.fraction,
        "seconds_per_review": round(seconds / len(rows), 4),
        "mean_tokens": round(tokens, 1),
        "mean_abs_delta": round(float(np.mean(deltas)), 5) if deltas else None,
    }
    steps = f", {ns.steps} steps" if ns.method == "integrated-gradients" else ""
    print(f"method  : {ns.method}{steps}, deleting {ns.fraction:.0%} of each review's tokens ({tokens:.0f} on average)")
    top, rand = result["top_drop"], result["random_drop"]
    print(f"top {ns.fraction:.0%} deleted   : probability drop {top['mean']:+.4f} ± {top['stderr']:.4f}")
    print(f"random {ns.fraction:.0%} deleted: probability drop {rand['mean']:+.4f} ± {rand['stderr']:.4f}")
    print(f"top beats random on {result['top_beats_random']:.0%} of {result['reviews']} reviews")
    if deltas:
        print(f"mean |convergence delta|: {result['mean_abs_delta']:.4f} (log-odds)")
    print(f"attribution: {result['seconds_per_review']:.3f} s per review ({torch.get_num_threads()} threads)")
    if ns.json:
        record = {"settings": vars(ns), "machine": machine, "threads": threads, "result": result}
        with open(ns.json, "w") as f:
            json.dump(record, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
