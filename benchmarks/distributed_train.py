"""Training on 1 and on N CPU processes (torchrun, gloo) on the same reviews: reviews/s and the metrics.

Each contender is a real ``bertsent train`` command; the processes share the machine's cores (one thread
each under torchrun, all of them for the single process), so on a 2-core machine no gain is expected: the
point is that N processes run and match one. The 1-process run is the baseline, measured in the same run.

    python benchmarks/distributed_train.py --data ../shared/data/imdb --train 1000 --processes 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import machine_info

KEYS = ("train_reviews_per_second", "train_seconds", "steps", "validation_accuracy", "validation_loss")


def run(processes: int, args, out: Path) -> dict:
    """One ``bertsent train`` with ``processes`` processes; its metrics and wall time."""
    command = [sys.executable, "-m", "bertsent", "train"]
    threads = max(1, (os.cpu_count() or 1) // processes)
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        command += ["-m", "bertsent", "train"]
    flags = ["--data", args.data, "--output-dir", str(out), "--train-samples", str(args.train)]
    flags += ["--validation-samples", str(args.validation), "--max-length", str(args.max_length), "--epochs", "1"]
    flags += ["--batch-size", "16", "--lr", "1e-4", "--save-steps", "1000000", "--no-evaluate-test", "--device", "cpu"]
    flags += ["--threads", str(threads), "--progress", "false"]
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    subprocess.run([*command, *flags], check=True, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    metrics = json.loads((out / "metrics.json").read_text())
    return {"processes": processes, "threads_each": threads, "wall_seconds": round(wall, 1)} | {
        k: metrics.get(k) for k in KEYS
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/imdb")
    parser.add_argument("--train", type=int, default=1000, help="training reviews")
    parser.add_argument("--validation", type=int, default=200, help="validation reviews")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the rows and the machine here")
    args = parser.parse_args()
    machine = machine_info()
    print(f"machine : {machine['cpu']}, {machine['cpu_count']} CPUs, load {machine['load_average']}")
    print(f"features: {machine['cpu_features']}")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(n, args, Path(tmp) / f"p{n}") for n in (1, args.processes)]
    base = rows[0]
    print(
        f"{'processes':>9} {'threads':>7} {'reviews/s':>9} {'× 1 proc':>8} {'val acc':>8} {'val loss':>8} {'wall s':>7}"
    )
    for r in rows:
        ratio = r["train_reviews_per_second"] / base["train_reviews_per_second"]
        print(
            f"{r['processes']:>9} {r['threads_each']:>9} {r['train_reviews_per_second']:>9.2f} {ratio:>9.2f} "
            f"{r['validation_accuracy']:>9.4f} {r['validation_loss']:>9.4f} {r['wall_seconds']:>9.1f}"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"rows": rows, "machine": machine, "settings": vars(args)}, default=str, indent=2)
        )


if __name__ == "__main__":
    main()
