"""What a frozen encoder's features already know: a logistic-regression probe on the pooler output (what
the softmax head of ``BertForSequenceClassification`` reads), on the raw [CLS] vector, and on the mean
of the token vectors (what sentence-transformers trained all-MiniLM-L6-v2 for).

The probe is fitted on ``--train`` reviews and scored on ``--test`` others, at ``--max-length`` tokens.
It tells how far a short fine-tune starts from: a run of a few dozen steps ends near its head's probe.
The pooler probe is the baseline, measured in the same run.

    python benchmarks/linear_probe.py --data "~/.cache/bertsent/data/IMDB Dataset.csv" --train 400 --test 1000
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from _machine import machine_info, set_threads


def features(model, tokenizer, texts: list[str], max_length: int) -> dict[str, np.ndarray]:
    out: dict[str, list[np.ndarray]] = {"pooler": [], "cls": [], "mean": []}
    with torch.no_grad():
        for start in range(0, len(texts), 32):
            batch = tokenizer(texts[start : start + 32], truncation=True, max_length=max_length, padding=True,
                              return_tensors="pt")  # fmt: skip
            hidden = model(**batch)
            mask = batch["attention_mask"].unsqueeze(-1).float()
            out["pooler"].append(hidden.pooler_output.numpy())
            out["cls"].append(hidden.last_hidden_state[:, 0].numpy())
            out["mean"].append(((hidden.last_hidden_state * mask).sum(1) / mask.sum(1)).numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def main() -> None:
    from sklearn.linear_model import LogisticRegression
    from transformers import AutoModel, AutoTokenizer

    from bertsent.config import DataConfig
    from bertsent.data.loading import load_data
    from bertsent.modeling.loading import resolve_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/imdb")
    parser.add_argument("--model", default=None, help="encoder folder or hub name (default: the embedded MiniLM)")
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    machine = machine_info()
    set_threads(args.threads)
    print(f"machine : {machine['cpu']}, {machine['cpu_count']} CPUs, load {machine['load_average']}")
    splits = load_data(DataConfig(source=str(Path(args.data).expanduser()), train_samples=args.train,
                                  eval_samples=args.test))  # fmt: skip
    path = resolve_model(args.model)
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    train = features(model, tokenizer, splits.train["text"].tolist(), args.max_length)
    test = features(model, tokenizer, splits.test["text"].tolist(), args.max_length)
    y_train, y_test = splits.train["label"].to_numpy(), splits.test["label"].to_numpy()
    print(f"probe fitted on {len(y_train)} reviews, scored on {len(y_test)}, {args.max_length} tokens")
    scores = {}
    for name in ("pooler", "cls", "mean"):
        probe = LogisticRegression(max_iter=2000).fit(train[name], y_train)
        scores[name] = float(probe.score(test[name], y_test))
    for name, score in scores.items():
        print(f"{name:>7}: probe accuracy {score:.4f} ({100 * (score - scores['pooler']):+.2f} points vs pooler)")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "scores": scores}, indent=2))


if __name__ == "__main__":
    main()
