"""Training throughput: bertsent's loop against the original system's way, measured in one run.

Both fine-tune the same model on the same IMDB training reviews for one epoch at the same max length,
learning rate and schedule, and are scored on the same validation reviews. The baseline pads every
batch to max length, shuffles without length grouping, keeps the model's attention dropout and uses
torch's default AdamW, as a plain Hugging Face fine-tuning script does.

Optionally (--memory) also measures the peak RSS of ``bertsent train`` on the full training split:
data loading, encoding all reviews and the first --memory-steps optimizer steps (memory is flat
after that: batches are built per step from unpadded ids).

    python benchmarks/train_throughput.py --data ../shared/data/imdb --train 1000 --validation 500
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bertsent.config import DataConfig, TrainingArguments
from bertsent.data.loading import load_data
from bertsent.encoding import encode
from bertsent.inference import predict_probs
from bertsent.metrics import classification_metrics
from bertsent.modeling.loading import load_classifier, load_tokenizer
from bertsent.training.loop import train


def baseline_train(model_name, texts, labels, args: TrainingArguments) -> tuple[torch.nn.Module, float]:
    """The original system's loop: fixed-length padding, plain shuffling, default AdamW; returns seconds."""
    from transformers import get_linear_schedule_with_warmup

    torch.manual_seed(args.seed)
    tokenizer = load_tokenizer(model_name)
    model = load_classifier(model_name, {0: "negative", 1: "positive"})
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=args.max_length, return_tensors="pt")
    data = torch.utils.data.TensorDataset(enc["input_ids"], enc["attention_mask"], torch.tensor(labels))
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size, shuffle=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps = len(loader)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(args.warmup_ratio * steps), steps)
    model.train()
    start = time.perf_counter()
    for input_ids, mask, y in loader:
        loss = model(input_ids=input_ids, attention_mask=mask, labels=y).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return model, time.perf_counter() - start


def peak_rss_of_full_training(data: str, steps: int, max_length: int, batch_size: int) -> dict:
    """Run ``bertsent train`` on the whole training split for ``steps`` steps; report its peak RSS."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [
            sys.executable,
            "-m",
            "bertsent",
            "train",
            "--data",
            data,
            "--output-dir",
            out,
            "--max-length",
            str(max_length),
            "--batch-size",
            str(batch_size),
            "--max-steps",
            str(steps),
            "--save-steps",
            str(10**9),
            "--validation-size",
            "0.1",
            "--validation-samples",
            "64",
            "--skip-test",
        ]
        wrapper = (
            "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
        )
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, check=True)
        metrics = json.loads((Path(out) / "metrics.json").read_text())
    return {
        "peak_rss_gb": round(int(done.stdout.strip().splitlines()[-1]) / 1024**2, 3),
        "train_reviews": metrics["train_reviews"],
        "steps": metrics["steps"],
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/imdb")
    parser.add_argument("--model", default=None, help="default: the embedded all-MiniLM-L6-v2")
    parser.add_argument("--train", type=int, default=1000, help="training reviews")
    parser.add_argument("--validation", type=int, default=500, help="validation reviews")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--memory", action="store_true", help="also measure peak RSS on the full split")
    parser.add_argument("--memory-steps", type=int, default=30)
    parser.add_argument("--json", help="also write the results here")
    ns = parser.parse_args()

    splits = load_data(DataConfig(ns.data, train_samples=ns.train, validation_size=ns.validation, seed=0))
    texts, labels = splits.train["text"].tolist(), splits.train["label"].to_numpy()
    val_texts, val_labels = splits.validation["text"].tolist(), splits.validation["label"].to_numpy()
    print(
        f"{len(texts)} training and {len(val_texts)} validation reviews, {ns.max_length} tokens, "
        f"batch {ns.batch_size}, 1 epoch, {torch.get_num_threads()} torch threads"
    )

    results: dict = {}
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            model=ns.model,
            max_length=ns.max_length,
            batch_size=ns.batch_size,
            lr=ns.lr,
            epochs=1,
            save_steps=None,
            evaluate_test=False,
            progress=False,
            seed=0,
        )
        data = DataConfig(ns.data, train_samples=ns.train, validation_size=ns.validation, seed=0)
        metrics = train(args, data).metrics
        results["bertsent"] = {
            "reviews_per_second": round(len(texts) / metrics["train_seconds"], 2),
            "train_seconds": metrics["train_seconds"],
            "validation_accuracy": round(metrics["validation_accuracy"], 4),
        }
    print(f"bertsent : {results['bertsent']}", flush=True)

    model, seconds = baseline_train(ns.model, texts, labels, args)
    tokenizer = load_tokenizer(ns.model)
    probs = predict_probs(
        model, encode(tokenizer, val_texts, ns.max_length), 64, tokenizer.pad_token_id, torch.device("cpu")
    )
    results["baseline"] = {
        "reviews_per_second": round(len(texts) / seconds, 2),
        "train_seconds": round(seconds, 1),
        "validation_accuracy": round(classification_metrics(val_labels, probs, {0: "n", 1: "p"})["accuracy"], 4),
    }
    print(f"baseline : {results['baseline']}", flush=True)
    ratio = results["bertsent"]["reviews_per_second"] / results["baseline"]["reviews_per_second"]
    diff = 100 * (results["bertsent"]["validation_accuracy"] - results["baseline"]["validation_accuracy"])
    results["speedup"] = round(ratio, 2)
    results["accuracy_difference_points"] = round(diff, 2)
    print(f"speed-up : {ratio:.2f}x (goal >= 1.5x); validation accuracy difference {diff:+.2f} points (goal +-1)")

    if ns.memory:
        results["full_split_memory"] = peak_rss_of_full_training(ns.data, ns.memory_steps, ns.max_length, ns.batch_size)
        print(f"memory   : {results['full_split_memory']} (goal <= 4 GB)")
    results["machine"] = {
        "platform": platform.platform(),
        "cpus": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if ns.json:
        Path(ns.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
