"""Whole-command time of ``bertsent predict`` against a ``transformers.pipeline`` script (issue 35's acceptance).

Every contender is its own process, start-up included (imports, loading, compiling), run once, one at a
time, on the same CSV of N IMDB test reviews (a stratified, seeded subset) at the same max length:

1. baseline: a script that builds ``transformers.pipeline("text-classification", batch_size=32)`` and
   classifies the file (truncation to the max length);
2. ``bertsent predict --input reviews.csv --output ...`` with its defaults (``--backend auto``) on an
   empty route cache: the first run, which tries the routes, and prints what that cost;
3. the same command again: the second run, which loads the cached winner;
4. ``bertsent predict --backend torch``;
5. with ``--exported FOLDER`` (e.g. the folder ``bertsent export --format openvino`` wrote from the model),
   ``bertsent predict`` on that folder, twice: the first run checks its tokenizer once, the second does not;
6. the reference: ``--backend torch --precision fp32``, whose labels every contender is compared with.

The table gives seconds, the ratio to the pipeline, the route each run took (from its log) and the share
of labels equal to fp32 PyTorch's; ``--json`` writes it all, with the CPU (lscpu's model name, the AMX
flag), the library versions and the git revision.

A fine-tuned folder is needed, e.g. all-MiniLM-L6-v2 on 1,500 IMDB reviews::

    bertsent train --model sentence-transformers/all-MiniLM-L6-v2 --data ../shared/data/imdb \\
        --train-samples 1500 --epochs 1 --output-dir runs/minilm
    python benchmarks/predict_command.py --model runs/minilm --data ../shared/data/imdb \\
        --n 1000 --max-length 256 --json predict_command.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from _machine import restore_sigint

from bertsent.config import DataConfig
from bertsent.data.loading import load_data
from bertsent.folder import git_revision
from bertsent.route_choice import CACHE_ENV, library_versions
from bertsent.runtime import cpu_summary

PIPELINE_SCRIPT = """
import json, sys
import pandas as pd
from transformers import pipeline
model, reviews, max_length, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
texts = pd.read_csv(reviews)["text"].tolist()
classify = pipeline("text-classification", model=model, device=-1)
labels = [r["label"] for r in classify(texts, batch_size=32, truncation=True, max_length=max_length)]
open(out, "w").write(json.dumps(labels))
"""
CHOICE_COST = re.compile(r"choosing took ([0-9.]+) s")
ROUTE = re.compile(r"backend auto: .* runs with (\w+)")


def write_reviews(data: str, n: int, seed: int, path: Path) -> int:
    """N test reviews of ``data`` as a CSV with a ``text`` column; returns how many."""
    frame = load_data(DataConfig(data, eval_samples=n, seed=seed), splits=("test",)).test
    frame[["text"]].to_csv(path, index=False)
    return len(frame)


def timed(command: list[str], env: dict) -> tuple[float, str]:
    """Seconds the whole command took, and its stderr (where bertsent logs the route)."""
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, preexec_fn=restore_sigint)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, done.stderr


def predict_command(model: str, reviews: Path, output: Path, max_length: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bertsent", "predict", "--model", model, "--input", str(reviews),
            "--output", str(output), "--max-length", str(max_length), *extra]  # fmt: skip


def contenders(args, reviews: Path, work: Path) -> list[tuple[str, list[str], dict, Path]]:
    """(name, command, environment, labels file) for every contender, in the order they run."""
    cold_cache = work / "route-cache"  # empty: the first run measures; the second finds its verdict
    env = os.environ | {CACHE_ENV: str(cold_cache)}
    pipeline_out = work / "pipeline.json"
    pipeline = [
        sys.executable,
        "-c",
        PIPELINE_SCRIPT,
        args.model,
        str(reviews),
        str(args.max_length),
        str(pipeline_out),
    ]
    out = {name: work / f"{name}.csv" for name in ("cold", "warm", "torch", "fp32", "exported1", "exported2")}
    exported = [
        (f"exported folder ({which} run)", predict_command(args.exported, reviews, out[key], args.max_length), env,
         out[key])
        for which, key in (("first", "exported1"), ("second", "exported2"))
    ] if args.exported else []  # fmt: skip
    return [
        ("pipeline(batch_size=32)", pipeline, env, pipeline_out),
        ("predict (first run)", predict_command(args.model, reviews, out["cold"], args.max_length), env, out["cold"]),
        ("predict (second run)", predict_command(args.model, reviews, out["warm"], args.max_length), env, out["warm"]),
        ("predict --backend torch", predict_command(args.model, reviews, out["torch"], args.max_length,
                                                    "--backend", "torch"), env, out["torch"]),
        *exported,
        ("reference: torch fp32", predict_command(args.model, reviews, out["fp32"], args.max_length,
                                                  "--backend", "torch", "--precision", "fp32"), env, out["fp32"]),
    ]  # fmt: skip


def read_labels(path: Path) -> list[str]:
    if path.suffix == ".json":
        return json.loads(path.read_text())
    return pd.read_csv(path)["label"].astype(str).tolist()


def measure(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="bertsent-predict-command-") as tmp:
        work = Path(tmp)
        reviews = work / "reviews.csv"
        n = write_reviews(args.data, args.n, args.seed, reviews)
        rows = []
        for name, command, env, labels_file in contenders(args, reviews, work):
            print(f"running {name} ...", file=sys.stderr, flush=True)
            seconds, log = timed(command, env)
            cost, route = CHOICE_COST.search(log), ROUTE.search(log)
            rows.append({"contender": name, "seconds": round(seconds, 2), "labels": read_labels(labels_file)}
                        | ({"route": route.group(1)} if route else {})
                        | ({"route_choice_seconds": float(cost.group(1))} if cost else {}))  # fmt: skip
    reference = rows[-1]["labels"]
    pipeline_seconds = rows[0]["seconds"]
    for row in rows:
        labels = row.pop("labels")
        row["x_pipeline"] = round(pipeline_seconds / row["seconds"], 3)
        row["labels_as_fp32"] = round(sum(a == b for a, b in zip(labels, reference, strict=True)) / n, 4)
    return {"reviews": n, "max_length": args.max_length, "model": args.model, "rows": rows}


def machine() -> dict:
    """The CPU as lscpu names it, its AMX flag, the versions and the git revision."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        lscpu = ""
    model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), "")
    cpu = cpu_summary()
    return {
        "cpu": model or cpu["model_name"],
        "amx": cpu["amx_bf16"],
        "features": cpu["features"],
        "logical_cpus": cpu["logical_cpus"],
        "physical_cores": cpu["physical_cores"],
        "versions": library_versions(),
        "git_revision": git_revision(),
    }


def print_table(result: dict) -> None:
    m = result["machine"]
    print(f"CPU: {m['cpu']} (AMX: {'yes' if m['amx'] else 'no'}; {m['features']}), git {m['git_revision']}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v))
    print(f"{result['reviews']} reviews at {result['max_length']} tokens, {result['model']}, whole commands:\n")
    print("| contender | seconds | x pipeline | route | labels as fp32 PyTorch |\n|---|---|---|---|---|")
    for row in result["rows"]:
        print(f"| {row['contender']} | {row['seconds']:.2f} | {row['x_pipeline']:.2f} | {row.get('route', '-')} "
              f"| {100 * row['labels_as_fp32']:.2f}% |")  # fmt: skip
    cold = next(r for r in result["rows"] if r["contender"] == "predict (first run)")
    warm = next(r for r in result["rows"] if r["contender"] == "predict (second run)")
    logged = cold.get("route_choice_seconds")
    print(f"\nfirst run's extra cost: {cold['seconds'] - warm['seconds']:.1f} s over the second run"
          + (f" (route choice logged {logged:.1f} s)" if logged is not None else ""))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a fine-tuned PyTorch folder (see the module docstring)")
    parser.add_argument("--data", default="../shared/data/imdb", help="where the test reviews come from")
    parser.add_argument("--n", type=int, default=1000, help="test reviews")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--exported", help="also time predict on this export of the model (ONNX or OpenVINO folder)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    result = measure(args) | {"machine": machine()}
    print_table(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
