"""What a server's micro-batches cost before any HTTP: one folder's Predictor on the same test reviews, all
at once (sorted by length into batches of 32, the offline baseline), in arrival-order chunks of a few
reviews (what ``bertsent serve`` held per batch under concurrent clients before it batched by tokens),
and in the same chunks cut as the server now cuts a round (by length, at most ``--max-batch-tokens``
padded tokens a batch), in one run.

    python benchmarks/serve_batches.py --model ~/.cache/bertsent/amx-compress/student-openvino --n 1000 \\
        --chunks 32 14 9 4
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _machine import machine_info, set_threads

from bertsent.config import DataConfig
from bertsent.data.loading import load_data
from bertsent.encoding import Encoded
from bertsent.predict import Predictor
from bertsent.runtime import resolve_threads
from bertsent.serve.batcher import plan_batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", default="../shared/data/imdb")
    parser.add_argument("--n", type=int, default=1000, help="test reviews (stratified, seeded subset)")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--chunks", type=int, nargs="+", default=[32, 14, 9, 4], help="reviews per call")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--max-batch-tokens", type=int, default=16_384, help="the server's cap, for the token rows")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    set_threads(args.threads or resolve_threads(None))
    machine = machine_info()
    print(f"machine : {machine['cpu']}, {machine['cpu_count']} CPUs, features {machine['cpu_features']['features']}")
    texts = load_data(DataConfig(args.data, eval_samples=args.n, seed=args.seed), splits=("test",)).test
    texts = texts["text"].tolist()
    predictor = Predictor(args.model, batch_size=32, max_length=args.max_length)
    encoded = predictor.encode(texts)
    lengths = np.asarray(encoded.lengths)
    model = predictor.describe()
    print(
        f"data    : {len(texts)} reviews, {model.backend} {model.precision}, "
        f"mean length {lengths.mean():.1f} tokens, {np.mean(lengths >= args.max_length):.1%} at {args.max_length}"
    )
    predictor.predict_proba(texts[:32])  # warm-up
    baseline = None
    for size in [len(texts), *args.chunks]:
        started = time.perf_counter()
        for i in range(0, len(texts), size):
            predictor.predict_proba(texts[i : i + size])
        rate = len(texts) / (time.perf_counter() - started)
        baseline = baseline or rate
        label = "all at once (sorted, batches of 32)" if size == len(texts) else f"chunks of {size}, arrival order"
        print(f"{label:<38} {rate:8.1f} reviews/s  {rate / baseline:5.2f}x the baseline")
        if size == len(texts):
            continue
        started = time.perf_counter()
        for i in range(0, len(texts), size):
            chunk = range(i, min(i + size, len(texts)))
            for batch in plan_batches(chunk, 32, args.max_batch_tokens, length=lambda j: int(lengths[j])):
                predictor.predict_proba(Encoded([encoded.ids[j] for j in batch], encoded.full_lengths[batch]))
        rate = len(texts) / (time.perf_counter() - started)
        label = f"chunks of {size}, by tokens"
        print(f"{label:<38} {rate:8.1f} reviews/s  {rate / baseline:5.2f}x the baseline")


if __name__ == "__main__":
    main()
