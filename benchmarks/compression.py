"""Compression trade-offs: run the ``bertsent compress`` recipe on a fine-tuned teacher and check the goals.

Every variant (ONNX fp32, INT8, distilled student, pruned student, INT8 student) is measured in one
``compare`` run on the same IMDB test reviews against the fp32 PyTorch teacher, which is the baseline
row of the table. Stages already complete in ``--output-dir`` are reused (delete it to redo them).

    python benchmarks/compression.py --teacher runs/demo --data ../shared/data/imdb \
        --output-dir ~/.cache/bertsent/compress-demo --train-samples 2000 --eval-samples 2000
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

GOALS = {
    "int8": {"max_drop": 0.5, "min_speedup": 2.0, "max_size_ratio": 0.30},
    "small": {"max_drop": 1.5, "min_speedup": 4.0, "max_size_mb": 20.0},
}


def _checks(row: dict, goal: dict) -> dict[str, tuple[float, bool]]:
    checks = {
        "accuracy_drop_points": (
            round(-row["accuracy_delta_points"], 2),
            -row["accuracy_delta_points"] <= goal["max_drop"],
        ),
        "speedup": (row["speedup"], row["speedup"] >= goal["min_speedup"]),
    }
    if "max_size_ratio" in goal:
        checks["size_ratio"] = (row["size_ratio"], row["size_ratio"] <= goal["max_size_ratio"])
    else:
        checks["size_mb"] = (row["size_mb"], row["size_mb"] <= goal["max_size_mb"])
    return checks


def verdicts(rows: list[dict]) -> dict:
    """The best variant of each kind against the issue's goals: the one meeting the most goals, then the fastest."""
    teacher = rows[0]
    kinds = {
        "int8": [r for r in rows if "INT8" in r["name"] and r["name"].startswith("teacher")],
        "small": [r for r in rows if r["name"].startswith("student")],
    }
    out = {}
    for kind, candidates in kinds.items():
        goal = GOALS[kind]
        best = max(candidates, key=lambda r: (sum(ok for _, ok in _checks(r, goal).values()), r["throughput"]))
        out[kind] = {"variant": best["name"], "goal": goal, "checks": _checks(best, goal), "reference": teacher["name"]}
    return out


def main() -> None:
    from bertsent.config import CompressConfig, DataConfig
    from bertsent.recipes.compare import markdown_table
    from bertsent.recipes.compress import compress

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="fine-tuned fp32 model folder")
    parser.add_argument("--data", default="../shared/data/imdb")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--train-samples", type=int, default=2000, help="reviews for distillation and recovery")
    parser.add_argument("--eval-samples", type=int, default=2000, help="test reviews every variant is scored on")
    parser.add_argument("--validation-size", type=float, default=500)
    parser.add_argument("--distill-epochs", type=int, default=2)
    parser.add_argument("--heads-fraction", type=float, default=0.25)
    parser.add_argument("--ffn-fraction", type=float, default=0.25)
    parser.add_argument("--latency-samples", type=int, default=100)
    parser.add_argument("--json", help="also write the rows and verdicts here")
    ns = parser.parse_args()

    size = int(ns.validation_size) if ns.validation_size >= 1 else ns.validation_size
    data = DataConfig(ns.data, train_samples=ns.train_samples, eval_samples=ns.eval_samples, validation_size=size)
    config = CompressConfig(
        teacher=ns.teacher,
        output_dir=ns.output_dir,
        data=data,
        distill_epochs=ns.distill_epochs,
        heads_fraction=ns.heads_fraction,
        ffn_fraction=ns.ffn_fraction,
        latency_samples=ns.latency_samples,
    )
    started = time.perf_counter()
    rows = compress(config)
    print(markdown_table(rows))
    result = verdicts(rows)
    for kind, verdict in result.items():
        checks = ", ".join(f"{k} {v[0]} ({'met' if v[1] else 'missed'})" for k, v in verdict["checks"].items())
        print(f"{kind:>5}: best variant '{verdict['variant']}' vs '{verdict['reference']}': {checks}")
    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    stages = json.loads((Path(ns.output_dir) / "recipe.json").read_text())["stage_seconds"]
    print(f"stage seconds: {stages}")
    print(f"total {time.perf_counter() - started:.0f} s; git {revision}; {platform.platform()}")
    if ns.json:
        Path(ns.json).write_text(
            json.dumps(
                {"rows": rows, "verdicts": result, "stages": stages, "git": revision, "platform": platform.platform()},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
