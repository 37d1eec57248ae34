"""Corpus scoring: ``bertsent predict --engine ray`` with 1 and 2 actors against local ``predict``, in one run.

N rows (IMDB test reviews repeated, with an ``id`` column) are written to one Parquet file; each
contender scores the whole file as a user would run it, one at a time, in its own process:

1. local: ``bertsent predict --input corpus.parquet --output local.jsonl --threads <cores>``;
2. ray, for each ``--workers`` W: ``bertsent predict --engine ray --workers W --threads 1 --output ray-W/``
   on a local cluster that the command starts (one logical CPU more than the cores, for reading and
   writing, as ``bertsent`` does).

Each is timed end to end (process start to exit: Ray's cluster and actor start-up included, which is
what a user waits for), and the driver process's RSS is sampled every half second from /proc (for
local predict the driver is the whole job; for Ray the model lives in the actors, outside it). The
table gives rows/s, rows/s per actor, the ratio to local predict (Ray's overhead as a ratio) and the
driver's peak RSS; every Ray output is checked against the local one: each row once, the same labels,
scores within 1e-5. Goal (issue 17): 2 actors >= 0.9x local predict on a 2-core machine.

    python benchmarks/corpus.py --model runs/demo --rows 100000 --json corpus.json
    python benchmarks/corpus.py --model runs/tiny --rows 300 --workers 1,2        # a smoke run
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

import numpy as np
import pandas as pd
from _machine import machine_info, proc_status, restore_sigint

from bertsent.runtime import physical_cores

DEFAULT_DATA = str(Path("..") / "shared" / "data" / "imdb")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="model folder to score with")
    p.add_argument("--data", default=DEFAULT_DATA, help="folder holding test.parquet (IMDB)")
    p.add_argument("--rows", type=int, default=100_000, help="rows of the corpus (test reviews repeated)")
    p.add_argument("--workers", default="1,2", help="actor counts of the Ray runs, comma-separated")
    p.add_argument("--threads", type=int, default=None, help="threads of local predict (default: the cores)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=None, help="default: as the model was trained")
    p.add_argument("--work-dir", default=None, help="where the corpus and outputs go (default: a temp folder)")
    p.add_argument("--json", default=None, help="write the results here")
    return p.parse_args(argv)


def write_corpus(data: str, rows: int, path: Path) -> int:
    """``rows`` IMDB test reviews (repeated in order) with their row number as ``id``; returns the bytes."""
    texts = pd.read_parquet(Path(data) / "test.parquet", columns=["text"])["text"].tolist()
    frame = pd.DataFrame({"id": np.arange(rows), "text": [texts[i % len(texts)] for i in range(rows)]})
    frame.to_parquet(path, index=False, row_group_size=10_000)
    return path.stat().st_size


def run_sampled(cmd: list[str], log: Path) -> dict:
    """Run ``cmd``; its wall time, exit code and driver RSS (sampled every 0.5 s, VmHWM at the end)."""
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    samples, started = [], time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=restore_sigint)
        while proc.poll() is None:
            if status := proc_status(proc.pid):
                samples.append((time.monotonic() - started, status["VmRSS"], status["VmHWM"]))
            time.sleep(0.5)
    wall = time.monotonic() - started

    def rss_at(fraction: float) -> float | None:  # the first sample from that share of the wall time on
        return next((round(rss / 1024, 1) for t, rss, _ in samples if t >= fraction * wall), None)

    return {
        "returncode": proc.returncode,
        "wall_seconds": round(wall, 2),
        "driver_peak_rss_mb": round(max((hwm for *_, hwm in samples), default=0) / 1024, 1),
        "driver_rss_mb_at_25_50_75pct": [rss_at(0.25), rss_at(0.5), rss_at(0.75)],
    }


def compare(ray_dir: Path, local: pd.DataFrame, rows: int) -> dict:
    """A Ray output against the local one: rows once each, labels equal, largest score difference."""
    got = pd.read_parquet(ray_dir, columns=["row_id", "id", "label", "score"])
    got["row"] = got["row_id"].str.rsplit(":", n=1).str[1].astype(int)
    got = got.sort_values("row").reset_index(drop=True)
    complete = got["row"].tolist() == list(range(rows)) and (got["id"].to_numpy() == got["row"].to_numpy()).all()
    return {
        "every_row_once": bool(complete),
        "labels_differing": int((got["label"].to_numpy() != local["label"].to_numpy()).sum()) if complete else None,
        "max_score_difference": float((got["score"] - local["score"]).abs().max()) if complete else None,
    }


def contender(name: str, rows: int, run: dict, workers: int | None = None) -> dict:
    if run["returncode"] != 0:
        raise SystemExit(f"{name} failed (exit {run['returncode']}): see its log")
    result = {"name": name, "rows": rows, "rows_per_second": round(rows / run["wall_seconds"], 2)} | run
    if workers:
        result |= {"workers": workers, "rows_per_second_per_actor": round(result["rows_per_second"] / workers, 2)}
    return result


def print_table(results: list[dict]) -> None:
    print(f"\n| {'contender':<22} | rows/s | per actor | x local | wall s | driver peak RSS MB | RSS at 25/50/75% |")
    print(f"|{'-' * 24}|-------:|----------:|--------:|-------:|-------------------:|------------------|")
    for r in results:
        per_actor = f"{r['rows_per_second_per_actor']:.1f}" if "workers" in r else ""
        print(
            f"| {r['name']:<22} | {r['rows_per_second']:6.1f} | {per_actor:>9} | {r['ratio_to_local']:7.2f} | "
            f"{r['wall_seconds']:6.1f} | {r['driver_peak_rss_mb']:18.1f} | {r['driver_rss_mb_at_25_50_75pct']} |"
        )


def main(argv: list[str] | None = None) -> int:
    import ray

    ns = parse_args(argv)
    threads = ns.threads or physical_cores()
    work = Path(ns.work_dir or tempfile.mkdtemp(prefix="bertsent-corpus-"))
    work.mkdir(parents=True, exist_ok=True)
    machine = machine_info(ray=ray.__version__)
    print(f"machine : {machine['cpu']}, {machine['physical_cores']} cores, load {machine['load_average']}")
    corpus = work / "corpus.parquet"
    size = write_corpus(ns.data, ns.rows, corpus)
    print(f"corpus  : {ns.rows} rows of {ns.data}/test.parquet repeated, {size / 1e6:.1f} MB, in {work}")
    bertsent = [sys.executable, "-m", "bertsent", "predict", "--model", ns.model, "--input", str(corpus)]
    bertsent += ["--batch-size", str(ns.batch_size), "--keep-columns", "id"]
    bertsent += ["--max-length", str(ns.max_length)] if ns.max_length else []

    print(f"running : local predict, {threads} threads ...", flush=True)
    run = run_sampled([*bertsent, "--output", str(work / "local.jsonl"), "--threads", str(threads)], work / "local.log")
    results = [contender("local predict", ns.rows, run) | {"threads": threads}]
    local = pd.read_json(work / "local.jsonl", lines=True, dtype=False)
    for workers in (int(w) for w in ns.workers.split(",")):
        print(f"running : ray, {workers} actors x 1 thread ...", flush=True)
        out = work / f"ray-{workers}"
        cmd = [*bertsent, "--engine", "ray", "--workers", str(workers), "--threads", "1", "--output", str(out)]
        run = run_sampled(cmd, work / f"ray-{workers}.log")
        results.append(contender(f"ray, {workers} actors", ns.rows, run, workers) | compare(out, local, ns.rows))
    for r in results:
        r["ratio_to_local"] = round(r["rows_per_second"] / results[0]["rows_per_second"], 3)
    print_table(results)
    for r in results[1:]:
        print(
            f"{r['name']}: every row once: {r['every_row_once']}, labels differing from local: "
            f"{r['labels_differing']}, largest score difference {r['max_score_difference']:.2e}"
        )
    two = next((r for r in results if r.get("workers") == 2), None)
    if two:
        verdict = "met" if two["ratio_to_local"] >= 0.9 else "NOT met"
        print(f"goal: ray with 2 actors >= 0.9x local predict: {two['ratio_to_local']:.2f}x, {verdict}")
    if ns.json:
        report = {"settings": vars(ns), "machine": machine, "corpus_bytes": size, "results": results}
        Path(ns.json).write_text(json.dumps(report, indent=2))
        print(f"results written to {ns.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
