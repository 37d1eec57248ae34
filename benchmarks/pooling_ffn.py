"""What a mean-pooling layer's feed-forward does in a trained model: the same reviews scored with it (the
baseline, in the same run) and with it cut to one neuron (neuron 0 here; ``bertsent prune --ffn-fraction``
keeps the most important one instead).

Prints the weight std of that feed-forward beside the layer below's, the largest and mean change of any
class probability, how many labels changed, and both accuracies on ``--reviews`` test reviews (seeded).

    python benchmarks/pooling_ffn.py --model ~/.cache/bertsent/reproduce/teacher --reviews 300
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from _machine import machine_info, set_threads

from bertsent.modeling.loading import load_classifier, load_tokenizer
from bertsent.modeling.pooling import pooling_layer
from bertsent.modeling.pruned import prune_ffn


def probabilities(model, tokenizer, texts: list[str], max_length: int) -> np.ndarray:
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), 16):
            batch = tokenizer(texts[start : start + 16], truncation=True, max_length=max_length, padding=True,
                              return_tensors="pt")  # fmt: skip
            out.append(model(**batch).logits.softmax(-1).numpy())
    return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a mean-pooled classifier folder (train --pooling mean)")
    parser.add_argument("--data", default="../shared/data/imdb", help="folder holding test.parquet")
    parser.add_argument("--reviews", type=int, default=300)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    machine = machine_info()
    set_threads(args.threads)
    model, tokenizer = load_classifier(args.model).eval(), load_tokenizer(args.model)
    layer = pooling_layer(model.config)
    if layer is None:
        raise SystemExit(f"{args.model}: not a mean-pooled model (no bertsent_mean_pooling in config.json)")
    reviews = pd.read_parquet(Path(args.data) / "test.parquet").sample(args.reviews, random_state=0)
    texts, labels = reviews["text"].tolist(), reviews["label"].to_numpy()
    layers = model.base_model.encoder.layer
    std = {
        name: float(layers[i].intermediate.dense.weight.std()) for name, i in (("pooling", layer), ("below", layer - 1))
    }
    before = probabilities(model, tokenizer, texts, args.max_length)
    prune_ffn(model, {layer: [0]})
    after = probabilities(model, tokenizer, texts, args.max_length)
    result = {
        "machine": machine,
        "reviews": args.reviews,
        "ffn_weight_std": std,
        "max_probability_change": float(np.abs(after - before).max()),
        "mean_probability_change": float(np.abs(after - before).mean()),
        "labels_changed": int((after.argmax(1) != before.argmax(1)).sum()),
        "accuracy_with_ffn": float((before.argmax(1) == labels).mean()),
        "accuracy_cut": float((after.argmax(1) == labels).mean()),
    }
    print(f"machine : {machine['cpu']}, {machine['cpu_count']} CPUs")
    print(f"FFN weight std: pooling layer {std['pooling']:.5f}, layer below {std['below']:.5f}")
    print(f"{args.reviews} test reviews: largest probability change {result['max_probability_change']:.5f}, "
          f"mean {result['mean_probability_change']:.5f}, labels changed {result['labels_changed']}")  # fmt: skip
    print(
        f"accuracy with the feed-forward (baseline) {result['accuracy_with_ffn']:.4f}, cut {result['accuracy_cut']:.4f}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
