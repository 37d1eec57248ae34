"""Early exit against its own full depth, on the test set, in one run: the issue's goal is mean layers per
review <= 4 of 6 (two thirds of the encoder) within 0.5 accuracy points of full-depth accuracy.

Makes the early-exit folder with ``bertsent early-exit`` (heads trained with the backbone frozen, threshold
chosen on validation; reused when ``--output-dir`` already holds one, ``--redo`` to make it again), then
scores the same N test reviews (a stratified, seeded subset; all of them without ``--eval-samples``) with
three Predictors, one at a time in this process, each timed end to end after a warm-up batch:

1. full depth: the source folder, as ``bertsent predict`` runs it (the baseline of the ratios);
2. early exit at the chosen threshold (the folder as it loads);
3. early exit at threshold 0 (every review runs every layer through the exit loop: the loop's own cost).

    python benchmarks/early_exit.py --model runs/imdb --data ../shared/data/imdb \\
        --output-dir ~/.cache/bertsent/early-exit --train-samples 2000 --validation-samples 1000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from _machine import machine_info, set_threads

GOAL = {"max_layers_share": 4 / 6, "max_drop_points": 0.5}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="fine-tuned fp32 PyTorch BERT folder (the full-depth model)")
    parser.add_argument("--data", default="../shared/data/imdb")
    parser.add_argument("--output-dir", required=True, help="the early-exit folder (made unless it holds one)")
    parser.add_argument("--redo", action="store_true", help="make the early-exit folder again")
    parser.add_argument("--criterion", default="entropy", choices=("entropy", "patience"))
    parser.add_argument("--max-drop", type=float, default=0.5, help="validation accuracy points the choice may lose")
    parser.add_argument("--train-samples", type=int, default=2000, help="training reviews the heads learn from")
    parser.add_argument("--validation-samples", type=int, default=1000, help="validation reviews of the sweep")
    parser.add_argument("--eval-samples", type=int, default=None, help="test reviews scored (default: all)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: physical cores)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", help="also write the rows, the goal check and the machine here")
    return parser.parse_args(argv)


def make_folder(ns: argparse.Namespace) -> Path:
    """The early-exit folder: reused when it is one (its stage settings are in its compression.json)."""
    from bertsent.compression.early_exit import early_exit
    from bertsent.config import DataConfig, EarlyExitConfig
    from bertsent.folder import EARLY_EXIT_FILE

    out = Path(ns.output_dir).expanduser()
    if (out / EARLY_EXIT_FILE).is_file() and not ns.redo:
        print(f"reusing : {out} (--redo to make it again)")
        return out
    config = EarlyExitConfig(
        model=ns.model,
        output_dir=str(out),
        criterion=ns.criterion,
        max_drop=ns.max_drop,
        train_samples=ns.train_samples,
        eval_samples=ns.validation_samples,
        batch_size=ns.batch_size,
        data=DataConfig(ns.data, seed=ns.seed),
        seed=ns.seed,
        threads=ns.threads,
    )
    started = time.perf_counter()
    early_exit(config)
    print(f"stage   : early-exit folder made in {time.perf_counter() - started:.0f} s: {out}")
    return out


def measure(name: str, folder: Path, texts: list[str], gold: np.ndarray, ns, **overrides) -> dict:
    """One Predictor over ``texts``: accuracy, mean layers and reviews/s (after a warm-up batch)."""
    from bertsent.predict import Predictor

    predictor = Predictor(folder, batch_size=ns.batch_size, threads=ns.threads, **overrides)
    predictor.predict_proba(texts[: ns.batch_size])
    backend = predictor.backend
    if hasattr(backend, "reset_exit_counts"):
        backend.reset_exit_counts()
    started = time.perf_counter()
    probs = predictor.predict_proba(texts)
    seconds = time.perf_counter() - started
    layers = len(backend.model.bert.encoder.layer)
    mean_layers = getattr(backend, "mean_layers", None) or float(layers)
    return {
        "name": name,
        "folder": str(folder),
        "backend": backend.name,
        "threshold": getattr(getattr(backend, "rule", None), "threshold", None),
        "accuracy": round(float(np.mean(probs.argmax(-1) == gold)), 5),
        "layers": layers,
        "mean_layers": round(mean_layers, 4),
        "reviews_per_second": round(len(texts) / seconds, 2),
        "seconds": round(seconds, 2),
    }


def goal_check(rows: list[dict]) -> dict:
    """The chosen setting against full depth, measured in this run on the same test reviews."""
    full, chosen = rows[0], rows[1]
    drop = round(100 * (full["accuracy"] - chosen["accuracy"]), 3)
    share = chosen["mean_layers"] / chosen["layers"]
    return {
        "mean_layers": chosen["mean_layers"],
        "layers": chosen["layers"],
        "layers_met": share <= GOAL["max_layers_share"] + 1e-9,
        "accuracy_drop_points": drop,
        "accuracy_met": drop <= GOAL["max_drop_points"],
        "speedup": round(chosen["reviews_per_second"] / full["reviews_per_second"], 3),
    }


def main(argv: list[str] | None = None) -> int:
    from bertsent.config import DataConfig
    from bertsent.data.loading import load_data
    from bertsent.runtime import resolve_threads

    ns = parse_args(argv)
    threads = set_threads(ns.threads or resolve_threads(None))
    machine = machine_info()
    print(f"machine : {machine['platform']}, {machine['cpu']}, load average {machine['load_average']}")
    print(f"threads : torch intra-op {threads['torch_intra_op']}; torch {machine['torch']}")
    folder = make_folder(ns)
    splits = load_data(DataConfig(ns.data, eval_samples=ns.eval_samples, seed=ns.seed), splits=("test",))
    texts, gold = splits.test["text"].tolist(), splits.test["label"].to_numpy()
    print(f"data    : {len(texts)} test reviews of {ns.data} (seed {ns.seed}), batch {ns.batch_size}")
    rows = [
        measure("full depth (source folder)", Path(ns.model), texts, gold, ns),
        measure("early exit (chosen threshold)", folder, texts, gold, ns),
        measure("early exit, threshold 0", folder, texts, gold, ns, exit_threshold=0),
    ]
    print(f"\n| variant | threshold | accuracy | mean layers | reviews/s | x full depth |\n|{'---|' * 6}")
    for r in rows:
        threshold = "—" if r["threshold"] is None else f"{r['threshold']:g}"
        ratio = r["reviews_per_second"] / rows[0]["reviews_per_second"]
        print(
            f"| {r['name']} | {threshold} | {r['accuracy']:.4f} | {r['mean_layers']:.2f} of {r['layers']} "
            f"| {r['reviews_per_second']:.1f} | {ratio:.2f}x |"
        )
    check = goal_check(rows)
    print(
        f"\ngoal    : mean layers {check['mean_layers']:.2f} of {check['layers']} (<= {GOAL['max_layers_share']:.3f} "
        f"of them: {'met' if check['layers_met'] else 'missed'}), accuracy {0.0 - check['accuracy_drop_points']:+.2f} "
        f"points vs full depth (>= -{GOAL['max_drop_points']}: {'met' if check['accuracy_met'] else 'missed'})"
    )
    if ns.json:
        record = {"settings": vars(ns), "rows": rows, "goal": GOAL, "check": check, "machine": machine}
        Path(ns.json).write_text(json.dumps(record | {"threads": threads}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
