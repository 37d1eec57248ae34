"""Accuracy against training time: ``bertsent train --time-budget`` at several budgets, plain and with the
sequence-length warm-up (``--short-length``) and/or the mean-pooling head (``--pooling mean``), scored on
the test reviews.

Each run is a real ``bertsent train`` command in its own process, on the full training split of the
data given. The plain budgeted run (only the learning rate decays to the deadline) is the baseline,
measured at the same budget in the same sweep. Runs write under ``--out-dir`` and a folder whose
``metrics.json`` exists is read back instead of trained again, so a sweep of hours can be continued;
``--include NAME=DIR`` adds a folder trained elsewhere (e.g. the reproduce teacher) as a labelled point,
and ``--rows-from FILE`` the rows of an earlier sweep's ``--json`` whose folders live on another machine.
Budgets are the machine's own minutes, so every row names its CPU and the plot draws one line per variant
and CPU: points from different CPUs are not one curve.

    python benchmarks/time_budget.py --data ../shared/data/imdb --budgets 10m 20m --variants plain short128 \
        --out-dir ~/.cache/bertsent/budget --plot docs/time-budget.svg --json docs/time-budget.json
    python benchmarks/time_budget.py --budgets 40m --variants mean+short128 --out-dir ~/.cache/bertsent/budget-amd \
        --rows-from docs/time-budget.json --plot docs/time-budget.svg --json docs/time-budget.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _machine import machine_info, restore_sigint

from bertsent.config import budget_seconds

KEYS = ("test_accuracy", "test_f1", "test_n", "test_ece", "steps", "short_length_steps", "time_used_seconds")


def variant_flags(variant: str) -> list[str]:
    """``plain`` (the [CLS] head, only the learning rate follows the budget), ``shortN`` (the first half of
    the time at N tokens) or ``shortN@S`` (share S), ``mean`` (the mean-pooling head, ``--pooling mean``),
    or ``mean+shortN[@S]``; ``+fp32`` or ``+bf16`` forces the training precision (else ``auto``: bf16 autocast
    where the CPU has AMX). Without ``mean`` the head reads [CLS], as every run did before ``--pooling``."""
    parts = variant.split("+")
    flags = ["--pooling", "mean" if "mean" in parts else "cls"]
    for part in parts:
        if part in ("plain", "mean"):
            continue
        if part in ("fp32", "bf16"):
            flags += ["--precision", part]  # else auto: bf16 autocast where the CPU has AMX
            continue
        if not part.startswith("short"):
            raise SystemExit(f"unknown variant {variant!r}: plain, mean, short128, short128@0.7, mean+short128+fp32")
        length, _, share = part.removeprefix("short").partition("@")
        flags += ["--short-length", length] + (["--short-share", share] if share else [])
    return flags


def cpu_label(machine: dict) -> str:
    """The CPU a row's minutes were spent on: its model and whether it has AMX (bf16 training pays there)."""
    features = machine.get("cpu_features", {})
    return f"{machine['cpu']}, {'AMX' if features.get('amx_bf16') else 'no AMX'}"


def earlier_sweep(path: Path) -> tuple[list[dict], dict[str, dict]]:
    """The rows of an earlier sweep's ``--json`` (its folders may be on another machine's cache), and the
    machines they were measured on by CPU label; a row without a CPU of its own ran on the machine that
    file records."""
    try:
        sweep = json.loads(path.read_text())
        rows, cpu = sweep["rows"], cpu_label(sweep["machine"])
        machines = dict(sweep.get("earlier_machines", {})) | {cpu: sweep["machine"]}
    except (OSError, ValueError, KeyError, TypeError) as error:
        print(f"{path}: not a time_budget.py --json file ({error})", file=sys.stderr)
        raise SystemExit(2) from None
    return [{"cpu": cpu} | r for r in rows], machines


def train(budget: str, variant: str, args, out: Path) -> dict:
    """One budgeted run (or the folder a previous sweep left); its test metrics and wall time."""
    wall = None
    if not (out / "metrics.json").is_file():
        command = [sys.executable, "-m", "bertsent", "train", "--data", args.data, "--output-dir", str(out)]
        command += ["--time-budget", budget, "--max-length", str(args.max_length), "--truncation", "head+tail"]
        command += ["--threads", str(args.threads), "--progress", "false", *variant_flags(variant)]
        command += ["--eval-samples", str(args.test_samples)] if args.test_samples else []
        out.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with open(out.parent / f"{out.name}.log", "w") as log:
            subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, preexec_fn=restore_sigint)
        wall = round(time.perf_counter() - started, 1)
    return row(budget, variant, out, wall)


def row(budget: str, variant: str, folder: Path, wall: float | None) -> dict:
    metrics = json.loads((folder / "metrics.json").read_text())
    training = json.loads((folder / "training_args.json").read_text())["training"]
    lr = training["lr"]
    return (
        {"budget": budget, "minutes": budget_seconds(budget) / 60, "variant": variant, "folder": str(folder)}
        | {
            "lr": lr,
            "precision": training.get("resolved_precision", "fp32"),  # runs before it was recorded: fp32
            "reviews_seen": round(metrics["train_reviews_per_second"] * metrics["train_seconds"]),
            "wall_seconds_with_test": wall,  # None: read back from an earlier sweep
        }
        | {k: metrics.get(k) for k in KEYS}
    )


def included(spec: str) -> dict:
    """``NAME=DIR``: a folder trained by another command, shown as its own labelled point."""
    name, _, folder = spec.partition("=")
    metrics = json.loads((Path(folder).expanduser() / "metrics.json").read_text())
    budget = metrics.get("time_budget_seconds")
    if budget is None:
        raise SystemExit(f"{folder}: not a --time-budget run (no time_budget_seconds in metrics.json)")
    return row(f"{budget / 60:g}m", name, Path(folder).expanduser(), None)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for variant, cpu in dict.fromkeys((r["variant"], r["cpu"]) for r in rows):
        series = [r for r in rows if (r["variant"], r["cpu"]) == (variant, cpu)]
        points = sorted((r["minutes"], 100 * r["test_accuracy"]) for r in series)
        ax.plot(*zip(*points, strict=True), marker="o", label=f"{variant} ({cpu})")
    ax.set(xlabel="training budget (minutes, --time-budget)", ylabel="test accuracy (%)")
    ax.set_title("Accuracy against training time, 2-core CPU", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    plt.rcParams["svg.hashsalt"] = "bertsent"  # stable ids: a rerun with the same numbers is the same file
    fig.savefig(path, metadata={"Date": None})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/imdb")
    parser.add_argument("--budgets", nargs="+", default=["10m", "20m"])
    parser.add_argument("--variants", nargs="+", default=["plain", "short128"])
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--test-samples", type=int, help="score this many test reviews (default: all)")
    parser.add_argument("--out-dir", type=Path, default=Path("~/.cache/bertsent/budget").expanduser())
    parser.add_argument("--include", nargs="*", default=[], help="NAME=DIR: a budgeted folder trained elsewhere")
    parser.add_argument("--rows-from", nargs="*", type=Path, default=[], help="an earlier sweep's --json file")
    parser.add_argument("--json", type=Path, help="also write the rows and the machine here")
    parser.add_argument("--plot", type=Path, help="accuracy against budget, one line per variant and CPU (SVG/PNG)")
    args = parser.parse_args()
    machine = machine_info()
    print(f"machine : {machine['cpu']}, {machine['cpu_count']} CPUs, load {machine['load_average']}")
    print(f"features: {machine['cpu_features']}")
    rows = [
        train(budget, variant, args, args.out_dir.expanduser() / f"{budget}-{variant}")
        for budget in args.budgets
        for variant in args.variants
    ] + [included(spec) for spec in args.include]
    rows = [{"cpu": cpu_label(machine)} | r for r in rows]
    # Earlier rows first, each kept unless this sweep measured the same point on the same CPU again.
    measured = {(r["budget"], r["variant"], r["cpu"]) for r in rows}
    sweeps = [earlier_sweep(path) for path in args.rows_from]
    earlier = [r for sweep_rows, _ in sweeps for r in sweep_rows]
    rows = [r for r in earlier if (r["budget"], r["variant"], r["cpu"]) not in measured] + rows
    # One record per CPU the read-back rows ran on (a rerun into the same file does not repeat them).
    machines = {k: m for _, sweep_machines in sweeps for k, m in sweep_machines.items() if k != cpu_label(machine)}
    print(f"{'budget':>7} {'variant':>20} {'cpu':>34} {'precision':>9} {'test acc':>9} {'vs plain':>9} {'n':>6} "
          f"{'steps':>6} {'short':>6} {'reviews':>8} {'used s':>7}")  # fmt: skip
    for r in rows:
        same = (r["budget"], r["cpu"])
        plain = next((p for p in rows if (p["budget"], p["cpu"]) == same and p["variant"] == "plain"), None)
        delta = f"{100 * (r['test_accuracy'] - plain['test_accuracy']):+.2f}" if plain else "-"
        print(
            f"{r['budget']:>7} {r['variant']:>20} {r['cpu']:>34} {r.get('precision', 'fp32'):>9} "
            f"{100 * r['test_accuracy']:>8.2f}% {delta:>9} "
            f"{r['test_n']:>6} "
            f"{r['steps']:>6} {r['short_length_steps'] or 0:>6} {r['reviews_seen']:>8} {r['time_used_seconds']:>7}"
        )
    if args.plot:
        plot(rows, args.plot)
        print(f"plot: {args.plot}")
    if args.json:
        record = {"machine": machine, "rows": rows}
        record |= {"earlier_machines": machines} if machines else {}  # where the rows read back were measured
        args.json.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
