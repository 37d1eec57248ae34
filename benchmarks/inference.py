"""Inference throughput: bertsent's Predictor against the transformers pipeline, measured in one run.

The same model folder classifies the same N IMDB test reviews (a stratified, seeded subset) at the
same max length, one contender at a time in this process (never two frameworks busy at once):

1. baseline: ``transformers.pipeline("text-classification", batch_size=32, truncation=True)`` over the
   texts in their original order;
2. ``bertsent predict``'s path: ``Predictor(model, batch_size=32)`` with head truncation and the same
   max length (what the pipeline does), and the count of labels that differ from the pipeline's;
   first with the plain forward (``cls_only=False``), then as ``bertsent predict`` runs it (the last
   layer for [CLS] only), so the gain of each step shows in one run;
3. every ``--compressed`` folder (e.g. an INT8 ONNX export) through the same Predictor.

Each is timed end to end (texts in, labels out) after a warm-up on a few texts; the table gives
reviews/s, the ratio to the pipeline and accuracy. Goals, by the CPU (:data:`GOALS`): where it has AMX,
``predict``'s defaults (bf16 there) >= 3x the pipeline with labels >= 99.5% the same and accuracy within
0.3 points, and the fastest compressed folder within 1.5 points of the teacher >= 12x; elsewhere (fp32)
>= 1.5x with identical labels, and >= 5x.

Optionally (--memory-rows) measures ``bertsent predict --input FILE --output OUT.jsonl`` in a
subprocess on a CSV of that many reviews (IMDB test reviews repeated, each prefixed with its row
number so duplicates and gaps in the output can be detected): its RSS sampled every second from
/proc, against the rows done (read from the ``OUT.jsonl.progress.json`` sidecar). With
--memory-seconds the run is stopped (SIGINT) after that long, continued with ``--resume``, and the
output is checked: rows committed = the sidecar's rows, every row number once, in order.

    python benchmarks/inference.py --model runs/demo --compressed runs/demo-int8 \\
        --data ../shared/data/imdb --n 2000 --max-length 256 --json inference.json
    python benchmarks/inference.py --model runs/demo-int8 --n 256 --memory-rows 1000000 --memory-seconds 120
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _machine import machine_info, proc_status, restore_sigint, set_threads

from bertsent.config import DataConfig
from bertsent.data.loading import load_data
from bertsent.errors import BertsentError
from bertsent.predict import Predictor
from bertsent.runtime import THREADS_ENV, resolve_threads

ROW_PREFIX = re.compile(r"#(\d+) ")
"""Each generated input row starts with ``#<row number> ``: the output check reads it back."""
PROGRESS_SUFFIX = ".progress.json"


# --------------------------------------------------------------------------------------------------
# Settings and the machine


def load_reviews(data: str, n: int, seed: int) -> tuple[list[str], np.ndarray, dict[int, str]]:
    splits = load_data(DataConfig(data, eval_samples=n, seed=seed), splits=("test",))
    return splits.test["text"].tolist(), splits.test["label"].to_numpy(), splits.id2label


def label_ids(predicted: list[str], model_id2label: dict[int, str], data_id2label: dict[int, str]) -> np.ndarray:
    """Predicted label names as the data's label ids (so accuracy is right even if the ids differ)."""
    to_id = {name: i for i, name in data_id2label.items()}
    if set(to_id) != set(model_id2label.values()):
        # Unnamed labels (LABEL_0, ...): the model's ids are the data's ids.
        to_id = {name: i for i, name in model_id2label.items()}
    return np.asarray([to_id[name] for name in predicted], dtype=np.int64)


# --------------------------------------------------------------------------------------------------
# The contenders


def run_pipeline(model_dir: str, texts: list[str], max_length: int, batch_size: int, warmup: int, repeats: int):
    """transformers' pipeline over the texts in their order; returns (label names, best seconds, load seconds)."""
    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the weight-loading bar would interleave with the report
    started = time.perf_counter()
    pipe = pipeline(
        "text-classification",
        model=model_dir,
        batch_size=batch_size,
        truncation=True,
        max_length=max_length,
        device="cpu",
    )
    loaded = time.perf_counter() - started
    pipe(texts[:warmup])
    times, labels = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        labels = [r["label"] for r in pipe(texts)]
        times.append(time.perf_counter() - started)
    id2label = {int(k): v for k, v in pipe.model.config.id2label.items()}
    del pipe
    gc.collect()
    return labels, times, loaded, id2label


def run_predictor(
    model_dir: str, texts: list[str], ns: argparse.Namespace, compile: bool = False, cls_only: bool = True
):
    """bertsent's Predictor; returns (label names, seconds per repeat, load seconds, backend description).

    With ``compile`` the load time includes torch.compile's one-off compilation; ``cls_only=False`` runs
    the plain forward (the last layer for every position), to show what the [CLS]-only layer gives.
    """
    started = time.perf_counter()
    predictor = Predictor(
        model_dir,
        batch_size=ns.batch_size,
        max_length=ns.max_length,
        truncation=ns.truncation,
        compile=compile,
        cls_only=cls_only,
    )
    loaded = time.perf_counter() - started
    predictor.predict_proba(texts[: ns.warmup])
    times, labels = [], []
    for _ in range(ns.repeats):
        started = time.perf_counter()
        probs = predictor.predict_proba(texts)
        labels = [predictor.id2label[int(i)] for i in probs.argmax(axis=1)]
        times.append(time.perf_counter() - started)
    backend = predictor.backend
    info = {
        "backend": backend.name,
        "precision": str(getattr(backend, "precision", "fp32")),  # what --precision auto chose here
        "threads": getattr(backend, "threads", torch.get_num_threads()),
        "max_length": predictor.max_length,
        "truncation": predictor.truncation,
        "compiled": compile,
        "cls_only_last_layer": getattr(backend, "cls_only", False),
    }
    id2label = dict(predictor.id2label)
    del predictor, backend
    gc.collect()
    return labels, times, loaded, info, id2label


def row(name: str, folder: str, n: int, times: list[float], loaded: float, accuracy: float, diffs: int, **extra):
    best = min(times)
    return {
        "name": name,
        "folder": folder,
        "seconds": round(best, 3),
        "seconds_per_repeat": [round(t, 3) for t in times],
        "reviews": n,
        "reviews_per_second": round(n / best, 2),
        "load_seconds": round(loaded, 2),
        "accuracy": round(accuracy, 4),
        "labels_differing_from_pipeline": diffs,
        **extra,
    }


def print_table(rows: list[dict]) -> None:
    header = f"{'contender':<28} {'backend':<12} {'precision':<9} {'threads':>7} {'seconds':>9} {'reviews/s':>10}"
    header += f" {'x pipeline':>10}"
    header += f" {'accuracy':>9} {'labels != pipeline':>19}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['name'][:28]:<28} {r['backend']:<12} {r.get('precision', '-'):<9} {r['threads']!s:>7} "
            f"{r['seconds']:>9.2f} "
            f"{r['reviews_per_second']:>10.1f} {r['ratio_to_pipeline']:>9.2f}x {r['accuracy']:>9.4f} "
            f"{r['labels_differing_from_pipeline']:>19}"
        )


GOALS = {
    # CPU with AMX (issue 15): `predict`'s defaults take bf16 there; labels may then differ a little.
    True: {"default_ratio": 3.0, "min_agreement": 0.995, "max_drop": 0.003, "compressed_ratio": 12.0},
    # Elsewhere the defaults run fp32: the same labels as the pipeline, faster.
    False: {"default_ratio": 1.5, "min_agreement": 1.0, "max_drop": 0.0, "compressed_ratio": 5.0},
}
DEFAULT_ROW = "bertsent predict"
"""The row of the model folder through `bertsent predict` as it runs by default."""
COMPRESSED_BUDGET = 0.015
"""A compressed folder counts for the goal within this many points of the teacher's accuracy."""


def judge(rows: list[dict], amx: bool) -> dict:
    """The goals for this CPU, judged on the rows: ``predict``'s defaults (:data:`DEFAULT_ROW`)
    against the pipeline, and the fastest compressed folder within 1.5 points of the teacher."""
    goal = GOALS[amx]
    pipeline, n = rows[0], rows[0]["reviews"]
    default = next(r for r in rows if r["name"] == DEFAULT_ROW)
    agreement = 1 - default["labels_differing_from_pipeline"] / n
    drop = pipeline["accuracy"] - default["accuracy"]
    met = default["ratio_to_pipeline"] >= goal["default_ratio"] and agreement >= goal["min_agreement"]
    met = met and drop <= goal["max_drop"] + 1e-9
    goals = {
        "cpu_has_amx": amx,
        "targets": goal,
        "default": default["name"],
        "default_precision": default.get("precision"),
        "default_ratio": default["ratio_to_pipeline"],
        "default_label_agreement": round(agreement, 4),
        "default_accuracy_drop": round(drop, 4),
        "default_met": met,
    }
    lines = [
        f"{default['name']} (precision {default.get('precision')}, what --precision auto took on this CPU): "
        f"{default['ratio_to_pipeline']:.2f}x the pipeline (goal >= {goal['default_ratio']:g}x), labels "
        f"{agreement:.2%} as the pipeline's (goal >= {goal['min_agreement']:.1%}), accuracy "
        f"{100 * (default['accuracy'] - pipeline['accuracy']):+.2f} points (goal >= {-100 * goal['max_drop']:+.1f}): "
        f"{'met' if met else 'NOT met'}"
    ]
    compressed = [r for r in rows if r.get("kind") == "compressed"]
    within = [r for r in compressed if pipeline["accuracy"] - r["accuracy"] <= COMPRESSED_BUDGET + 1e-9]
    if compressed:
        best = max(within or compressed, key=lambda r: r["reviews_per_second"])
        met = bool(within) and best["ratio_to_pipeline"] >= goal["compressed_ratio"]
        goals |= {
            "best_compressed": best["name"],
            "best_compressed_ratio": best["ratio_to_pipeline"],
            "best_compressed_accuracy": best["accuracy"],
            "best_compressed_met": met,
        }
        lines.append(
            f"best compressed within {100 * COMPRESSED_BUDGET:g} points of the teacher: {best['name']} at "
            f"{best['ratio_to_pipeline']:.2f}x the pipeline (goal >= {goal['compressed_ratio']:g}x), accuracy "
            f"{best['accuracy']:.4f} vs {pipeline['accuracy']:.4f}"
            + ("" if within else " (none is within the budget: the fastest shown)")
            + f": {'met' if met else 'NOT met'}"
        )
    goals["lines"] = lines
    return goals


# --------------------------------------------------------------------------------------------------
# Memory of `bertsent predict` on a large file


def write_input(path: Path, texts: list[str], rows: int, fmt: str) -> int:
    """Stream ``rows`` reviews (``texts`` repeated, each prefixed ``#<row> ``) into ``path``; returns its bytes.

    CSV is written and read one row at a time. Parquet is written in row groups of 4,096 rows: pyarrow
    reads a Parquet file a row group at a time, so one huge row group would not stream.
    """
    chunk = 4096
    if fmt == "csv":
        with path.open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text"])
            for start in range(0, rows, chunk):
                writer.writerows([f"#{i} {texts[i % len(texts)]}"] for i in range(start, min(start + chunk, rows)))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([("text", pa.string())])
        with pq.ParquetWriter(path, schema) as writer:
            for start in range(0, rows, chunk):
                batch = [f"#{i} {texts[i % len(texts)]}" for i in range(start, min(start + chunk, rows))]
                writer.write_table(pa.table({"text": batch}, schema=schema))
    return path.stat().st_size


def read_progress(marker: Path) -> dict | None:
    try:
        return json.loads(marker.read_text())
    except (OSError, ValueError):  # not there yet, or caught mid-write
        return None


def sample_run(
    cmd: list[str], env: dict, marker: Path, log: Path, total_rows: int, stop_after: float | None, stop_when=None
) -> dict:
    """Run ``cmd``; sample its RSS and the sidecar's rows every second; SIGINT it after ``stop_after`` s
    (or once ``stop_when(rows)`` holds). Returns the samples and how it ended."""
    samples: list[dict] = []
    started = time.monotonic()
    interrupted = False
    rows = 0
    with log.open("ab") as log_file:
        proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, preexec_fn=restore_sigint)
        try:
            while proc.poll() is None:
                time.sleep(max(0.0, 1.0 - (time.monotonic() - started) % 1.0))
                status = proc_status(proc.pid)
                progress = read_progress(marker)
                if progress:
                    rows = int(progress["rows"])
                elif rows and not marker.exists():
                    rows = total_rows  # predict_file removes the sidecar only once every row is written
                if status:
                    t = round(time.monotonic() - started, 1)
                    samples.append({"t": t, "rows": rows, "rss_kb": status["VmRSS"], "hwm_kb": status["VmHWM"]})
                elapsed = time.monotonic() - started
                if proc.poll() is None and (
                    (stop_after is not None and elapsed >= stop_after) or (stop_when is not None and stop_when(rows))
                ):
                    proc.send_signal(signal.SIGINT)  # what Ctrl-C does: the CLI exits with 130
                    interrupted = True
                    try:
                        proc.wait(60)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                    break
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    # Not getrusage(RUSAGE_CHILDREN).ru_maxrss: the kernel folds the spawning process's own peak into it
    # (exec keeps the high-water mark of the mm it replaces), so it reports this benchmark, not the child.
    return {
        "samples": samples,
        "returncode": proc.returncode,
        "interrupted": interrupted,
        "wall_seconds": round(time.monotonic() - started, 1),
    }


def rss_summary(run: dict, rows_done: int, start_rows: int = 0) -> dict:
    """Peak RSS, RSS at 10/50/90% of the rows this run did (after ``start_rows``), and its throughput."""
    samples = run["samples"]
    mb = lambda kb: round(kb / 1024, 1)  # noqa: E731
    peak_kb = max([s["hwm_kb"] for s in samples], default=0)
    out: dict = {
        "rows_done": rows_done,
        "peak_rss_mb": mb(peak_kb),
        "rss_first_sample_mb": mb(samples[0]["rss_kb"]) if samples else None,
    }
    for fraction in (0.1, 0.5, 0.9):
        target = start_rows + fraction * (rows_done - start_rows)
        at = next((s for s in samples if rows_done > start_rows and s["rows"] >= target), None)
        out[f"rss_at_{int(fraction * 100)}pct_mb"] = mb(at["rss_kb"]) if at else None
        out[f"rows_at_{int(fraction * 100)}pct_sample"] = at["rows"] if at else None
    progressed = [s for s in samples if s["rows"] > start_rows]
    if len(progressed) >= 2 and progressed[-1]["rows"] > progressed[0]["rows"]:
        first, last = progressed[0], progressed[-1]
        out["rows_per_second_steady"] = round((last["rows"] - first["rows"]) / (last["t"] - first["t"]), 2)
    done = rows_done - start_rows
    out["rows_per_second_overall"] = round(done / run["wall_seconds"], 2) if run["wall_seconds"] else None
    out["wall_seconds"] = run["wall_seconds"]
    return out


def check_output(out_path: Path, marker: Path, total_rows: int) -> dict:
    """Rows committed (up to the sidecar's byte offset, or the whole file once finished), and whether each
    row number appears exactly once and in order; rows after the offset are a chunk ``--resume`` drops."""
    progress = read_progress(marker)
    limit = int(progress["bytes"]) if progress else out_path.stat().st_size
    seen = bytearray(total_rows)
    committed = duplicates = out_of_order = unparsable = tail = 0
    expected = 0
    with out_path.open("rb") as f:
        position = 0
        for line in f:
            position += len(line)
            if position > limit:
                tail += 1
                continue
            match = ROW_PREFIX.match(json.loads(line).get("text", ""))
            if match is None:
                unparsable += 1
                continue
            number = int(match.group(1))
            committed += 1
            if number < total_rows and seen[number]:
                duplicates += 1
            elif number < total_rows:
                seen[number] = 1
            out_of_order += number != expected
            expected = number + 1
    return {
        "progress_rows": int(progress["rows"]) if progress else None,
        "rows_in_output": committed,
        "distinct_rows": committed - duplicates,
        "duplicates": duplicates,
        "out_of_order": out_of_order,
        "unparsable": unparsable,
        "uncommitted_tail_rows": tail,
        # Caught between the sidecar's truncation and its write (it is not replaced atomically).
        "sidecar_unreadable": progress is None and marker.exists(),
    }


def memory_benchmark(model_dir: str, texts: list[str], ns: argparse.Namespace, threads: int) -> dict:
    """``bertsent predict --input`` on a large file in a subprocess: RSS against rows, then ``--resume``."""
    folder = Path(tempfile.mkdtemp(prefix="bertsent-memory-", dir=ns.memory_dir))
    source = folder / f"reviews.{ns.memory_format}"
    out_path = folder / "predictions.jsonl"
    marker = out_path.with_name(out_path.name + PROGRESS_SUFFIX)
    log = folder / "predict.log"
    print(f"\nwriting {ns.memory_rows:,} rows ({ns.memory_format}, streamed) to {source} ...", flush=True)
    started = time.perf_counter()
    size = write_input(source, texts, ns.memory_rows, ns.memory_format)
    print(f"  {size / 1024**2:,.0f} MB in {time.perf_counter() - started:.0f} s", flush=True)
    cmd = [sys.executable, "-m", "bertsent", "predict", "--model", model_dir, "--input", str(source)]
    cmd += ["--output", str(out_path), "--batch-size", str(ns.batch_size), "--threads", str(threads)]
    cmd += ["--max-length", str(ns.max_length)]
    env = dict(os.environ, **{THREADS_ENV: str(threads)})
    result: dict = {
        "model": model_dir,
        "input_format": ns.memory_format,
        "input_rows": ns.memory_rows,
        "input_mb": round(size / 1024**2, 1),
        "command": " ".join(cmd),
        "stop_after_seconds": ns.memory_seconds,
        "folder": str(folder) if ns.keep_memory_files else None,
    }
    try:
        limit = f"stopped after {ns.memory_seconds:g} s" if ns.memory_seconds else "to the end"
        print(f"running (RSS sampled every second; {limit}): {' '.join(cmd)}", flush=True)
        first = sample_run(cmd, env, marker, log, ns.memory_rows, ns.memory_seconds)
        # 130: the CLI's exit after Ctrl-C; -2: SIGINT arrived before the CLI's handler was in place.
        if first["returncode"] not in ((0, 130, -signal.SIGINT) if first["interrupted"] else (0,)):
            tail = log.read_text(errors="replace").strip().splitlines()[-5:]
            raise BertsentError(f"bertsent predict failed (exit {first['returncode']}): {' | '.join(tail)}")
        check = check_output(out_path, marker, ns.memory_rows) if out_path.is_file() else None
        rows_done = 0
        if check:
            # Finished: the sidecar is gone and the whole file counts; stopped: the sidecar's rows do.
            rows_done = check["rows_in_output"] if first["returncode"] == 0 else (check["progress_rows"] or 0)
        result["run"] = rss_summary(first, rows_done) | {
            "returncode": first["returncode"],
            "interrupted": first["interrupted"],
            "samples": first["samples"],
        }
        result["run"]["output_check"] = check
        if first["interrupted"] and check and check["progress_rows"]:
            before = check["progress_rows"]
            limit_s = ns.memory_resume_seconds or 2 * ns.memory_seconds
            print(
                f"continuing with --resume from row {before:,} until one more chunk is written (at most {limit_s:g} s)",
                flush=True,
            )
            second = sample_run(
                [*cmd, "--resume"], env, marker, log, ns.memory_rows, limit_s, stop_when=lambda rows: rows > before
            )
            check2 = check_output(out_path, marker, ns.memory_rows)
            after = check2["rows_in_output"] if second["returncode"] == 0 else (check2["progress_rows"] or 0)
            result["resume"] = rss_summary(second, after, start_rows=before) | {
                "returncode": second["returncode"],
                "log_tail": log.read_text(errors="replace").strip().splitlines()[-3:],
                "rows_before": before,
                "rows_after": after,
                "continued": after > before,
                "output_check": check2,
                "ok": after > before
                and check2["rows_in_output"] == after
                and check2["distinct_rows"] == after
                and check2["out_of_order"] == 0
                and check2["unparsable"] == 0,
            }
        elif first["interrupted"]:
            result["resume"] = {"skipped": "no chunk was committed before the stop: raise --memory-seconds"}
    finally:
        if not ns.keep_memory_files:
            for path in (source, out_path, marker, log):
                path.unlink(missing_ok=True)
            folder.rmdir()
    return result


def _sidecar_note(check: dict) -> str:
    if check["progress_rows"] is not None:
        return f"sidecar says {check['progress_rows']:,}"
    return "sidecar unreadable" if check["sidecar_unreadable"] else "no sidecar (finished)"


def print_memory(m: dict) -> None:
    r = m["run"]
    how = "stopped with SIGINT" if r["interrupted"] else "ran to the end"
    print(
        f"memory  : {m['input_rows']:,}-row {m['input_format']} ({m['input_mb']:,.0f} MB) through `bertsent predict`; "
        f"{how} after {r['wall_seconds']:g} s with {r['rows_done']:,} rows done"
    )
    print(
        f"  RSS   : peak {r['peak_rss_mb']:,.0f} MB (VmHWM); at 10% / 50% / 90% of the rows done: "
        f"{r['rss_at_10pct_mb']} / {r['rss_at_50pct_mb']} / {r['rss_at_90pct_mb']} MB "
        f"(first sample {r['rss_first_sample_mb']} MB)"
    )
    print(
        f"  speed : {r.get('rows_per_second_steady', 'n/a')} rows/s once writing "
        f"({r['rows_per_second_overall']} rows/s including start-up)"
    )
    check = r.get("output_check")
    if check:
        print(
            f"  output: {check['rows_in_output']:,} rows committed, {check['distinct_rows']:,} distinct, "
            f"{check['out_of_order']} out of order; {_sidecar_note(check)}"
        )
    if m["folder"]:
        print(f"  files : kept in {m['folder']}")
    resume = m.get("resume")
    if resume and "skipped" in resume:
        print(f"  resume: skipped ({resume['skipped']})")
    elif resume:
        c = resume["output_check"]
        print(
            f"  resume: rows {resume['rows_before']:,} -> {resume['rows_after']:,}; output {c['rows_in_output']:,} "
            f"rows, {c['distinct_rows']:,} distinct, {c['out_of_order']} out of order, {c['duplicates']} duplicates "
            f"({c['uncommitted_tail_rows']} uncommitted rows after the sidecar's offset); peak RSS "
            f"{resume['peak_rss_mb']:,.0f} MB -> {'OK' if resume['ok'] else 'FAILED'}"
        )
        if not resume["ok"]:
            print(f"  resume log (exit {resume['returncode']}): {' | '.join(resume['log_tail'])}")


# --------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="fine-tuned PyTorch model folder (the pipeline's model)")
    parser.add_argument("--compressed", nargs="*", default=[], help="compressed folders run through Predictor")
    parser.add_argument("--data", default="../shared/data/imdb")
    parser.add_argument("--n", type=int, default=2000, help="test reviews (stratified, seeded subset)")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--truncation", default="head", help="bertsent's truncation (head: as the pipeline does)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, help=f"intra-op threads for all (default: ${THREADS_ENV} or cores)")
    parser.add_argument("--warmup", type=int, default=32, help="texts each contender classifies before timing")
    parser.add_argument("--repeats", type=int, default=1, help="timed passes per contender (the best is reported)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--skip-throughput", action="store_true", help="only the memory part")
    parser.add_argument("--compile", action="store_true", help="also run the fp32 Predictor with torch.compile")
    g = parser.add_argument_group("memory of `bertsent predict` on a large file")
    g.add_argument("--memory-rows", type=int, default=0, help="rows of the generated input file (0: skip)")
    g.add_argument("--memory-model", help="folder to run (default: --model)")
    g.add_argument("--memory-format", choices=("csv", "parquet"), default="csv")
    g.add_argument("--memory-seconds", type=float, help="stop the run (SIGINT) after this long, then --resume")
    g.add_argument("--memory-resume-seconds", type=float, help="limit of the --resume run (default: 2x)")
    g.add_argument("--memory-dir", help="where the input file goes (default: the temp folder)")
    g.add_argument("--keep-memory-files", action="store_true")
    parser.add_argument("--json", help="also write every figure and setting here")
    ns = parser.parse_args(argv)
    for name in ("n", "max_length", "batch_size", "warmup", "repeats"):
        if getattr(ns, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if ns.memory_rows < 0 or (ns.memory_seconds is not None and ns.memory_seconds <= 0):
        parser.error("--memory-rows must be >= 0 and --memory-seconds > 0")
    if ns.skip_throughput and not ns.memory_rows:
        parser.error("--skip-throughput leaves nothing to do without --memory-rows")
    return ns


def check_folders(ns: argparse.Namespace) -> None:
    """Every model folder named exists: a clear error now, not a transformers traceback minutes later."""
    for folder in [ns.model, *ns.compressed, *([ns.memory_model] if ns.memory_model else [])]:
        if not (Path(folder) / "config.json").is_file():
            raise BertsentError(f"{folder}: not a model folder (no config.json)")


def main(argv: list[str] | None = None) -> int:
    ns = parse_args(argv)
    check_folders(ns)
    threads = ns.threads or resolve_threads(None)
    results: dict = {"settings": vars(ns).copy(), "machine": machine_info(), "threads": set_threads(threads)}
    m, t = results["machine"], results["threads"]
    print(
        f"machine : {m['platform']}, {m['cpu']}, {m['cpu_count']} CPUs ({m['physical_cores']} physical cores), "
        f"load average {m['load_average']}"
    )
    print(f"cpu     : {m['cpu_features']['features']} (AMX: {m['cpu_features']['amx_bf16']})")
    print(
        f"versions: torch {m['torch']}, transformers {m['transformers']}, onnxruntime {m['onnxruntime']}, "
        f"python {m['python']}"
    )
    print(
        f"threads : torch intra-op {t['torch_intra_op']}, inter-op {t['torch_inter_op']}; ONNX Runtime intra-op "
        f"{threads} (via {THREADS_ENV}); TOKENIZERS_PARALLELISM={t['TOKENIZERS_PARALLELISM']}"
    )
    texts, gold, data_id2label = load_reviews(ns.data, ns.n, ns.seed)
    print(
        f"data    : {len(texts)} test reviews of {ns.data} (seed {ns.seed}), {ns.max_length} tokens, "
        f"batch {ns.batch_size}, warm-up {ns.warmup} texts, best of {ns.repeats}"
    )

    if not ns.skip_throughput:
        rows = []
        print("running: transformers pipeline ...", flush=True)
        names, times, loaded, model_labels = run_pipeline(
            ns.model, texts, ns.max_length, ns.batch_size, ns.warmup, ns.repeats
        )
        reference = label_ids(names, model_labels, data_id2label)
        rows.append(
            row(
                "transformers pipeline",
                ns.model,
                len(texts),
                times,
                loaded,
                float((reference == gold).mean()),
                0,
                backend="pytorch",
                threads=torch.get_num_threads(),
                max_length=ns.max_length,
                truncation="head",
            )
        )
        contenders = [("bertsent, plain forward", ns.model, False, "fp32", False)]
        contenders.append((DEFAULT_ROW, ns.model, False, "fp32", True))
        if ns.compile:
            contenders.append(("bertsent, torch.compile", ns.model, True, "fp32", True))
        contenders += [(Path(c).name, c, False, "compressed", True) for c in ns.compressed]
        for name, folder, compile_model, kind, cls_only in contenders:
            print(f"running: {name} ({folder}) ...", flush=True)
            names, times, loaded, info, model_labels = run_predictor(folder, texts, ns, compile_model, cls_only)
            predicted = label_ids(names, model_labels, data_id2label)
            accuracy = float((predicted == gold).mean())
            diffs = int((predicted != reference).sum())
            rows.append(row(name, folder, len(texts), times, loaded, accuracy, diffs, kind=kind, **info))
        for r in rows:
            r["ratio_to_pipeline"] = round(r["reviews_per_second"] / rows[0]["reviews_per_second"], 2)
        results["throughput"] = rows
        print()
        print_table(rows)
        results["goals"] = goals = judge(rows, amx=bool(results["machine"]["cpu_features"]["amx_bf16"]))
        print()
        for line in goals["lines"]:
            print(line)

    if ns.memory_rows:
        results["memory"] = memory_benchmark(ns.memory_model or ns.model, texts, ns, threads)
        print()
        print_memory(results["memory"])
    results["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    if ns.json:
        Path(ns.json).write_text(json.dumps(results, indent=2))
        print(f"\nresults written to {ns.json}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (BertsentError, ValueError) as e:
        print(f"inference benchmark: error: {e}", file=sys.stderr)
        sys.exit(2)
