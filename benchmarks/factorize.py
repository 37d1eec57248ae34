"""Low-rank factorization against the unfactorized teacher: reviews/s and accuracy, measured in one run.

For a fine-tuned teacher folder, ``bertsent factorize`` writes one folder per setting (each of ``--ranks``
and ``--energies``, with ``--weighting``, ``--targets`` and ``--recovery-epochs`` of recovery on
``--train-samples`` training reviews); then ``compare`` measures the teacher — the baseline, first row —
and every factorized folder in the same run, one after the other, on the same N test reviews (a
stratified, seeded subset): accuracy, reviews/s at batch 32, batch-1 latency, parameters and size.
``--onnx`` adds the ONNX export of the teacher and of every factorized folder (two thin MatMuls per layer).
A folder whose ``compression.json`` records the same arguments is reused, not factorized again.

The issue's goal: a setting faster than the teacher at equal accuracy (within ``--max-drop`` points, 0.5),
or an honest negative result with the numbers; the last lines say which.

    python benchmarks/factorize.py --teacher runs/demo --data ../shared/data/imdb --n 2000 \\
        --ranks 64,128 --energies 0.9,0.95 --output-dir ~/.cache/bertsent/factorize-bench --json factorize.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from _machine import machine_info, set_threads

from bertsent.compression.export import export_onnx
from bertsent.compression.factorize import factorize
from bertsent.config import CompareConfig, DataConfig, FactorizeConfig, InferenceSettings
from bertsent.folder import COMPRESSION_FILE, ONNX_FILE, git_revision
from bertsent.recipes.compare import compare, fastest_within, markdown_table
from bertsent.runtime import physical_cores


def settings(ns: argparse.Namespace) -> list[tuple[str, dict]]:
    """``(folder name, rank/energy)`` of every requested setting."""
    ranks = [("rank", int(r)) for r in ns.ranks.split(",") if r.strip()]
    energies = [("energy", float(e)) for e in ns.energies.split(",") if e.strip()]
    return [(f"{key}-{value:g}-{ns.weighting}", {key: value}) for key, value in ranks + energies]


def factorized_folder(ns: argparse.Namespace, name: str, choice: dict) -> tuple[Path, float | None]:
    """The folder of one setting, factorized now (with its seconds) or reused (None) when already done."""
    out = Path(ns.output_dir).expanduser() / name
    config = FactorizeConfig(
        model=ns.teacher,
        output_dir=str(out),
        targets=ns.targets,
        weighting=ns.weighting,
        train_samples=ns.train_samples,
        recovery_epochs=ns.recovery_epochs,
        eval_samples=ns.eval_samples,
        data=DataConfig(ns.data) if ns.data else None,
        threads=ns.threads,
        **choice,
    )
    record = out / COMPRESSION_FILE
    asked = json.loads(json.dumps(dataclasses.asdict(config)))
    if record.is_file() and json.loads(record.read_text()).get("arguments") == asked:
        return out, None
    started = time.perf_counter()
    factorize(config)
    return out, round(time.perf_counter() - started, 1)


def onnx_folder(folder: Path, root: Path) -> Path:
    out = root / f"{folder.name}-onnx"
    if not (out / ONNX_FILE).is_file():
        export_onnx(folder, out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="fine-tuned fp32 model folder (the baseline)")
    parser.add_argument("--data", default="../shared/data/imdb", help="test reviews (and recovery's training ones)")
    parser.add_argument("--output-dir", required=True, help="factorized folders and the comparison go here")
    parser.add_argument("--n", type=int, default=2000, help="test reviews every folder is scored and timed on")
    parser.add_argument("--ranks", default="64,128", help="comma-separated ranks (each one folder)")
    parser.add_argument("--energies", default="0.9", help="comma-separated energies (each one folder)")
    parser.add_argument("--weighting", default="activation", choices=("none", "activation", "fisher"))
    parser.add_argument("--targets", default="ffn,attention")
    parser.add_argument("--recovery-epochs", type=int, default=1)
    parser.add_argument("--train-samples", type=int, default=2000, help="reviews of each recovery fine-tuning")
    parser.add_argument("--eval-samples", type=int, default=500, help="validation reviews of each factorize run")
    parser.add_argument("--latency-samples", type=int, default=100)
    parser.add_argument("--precision", default="fp32", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--threads", type=int, default=None, help="default: the physical cores")
    parser.add_argument("--onnx", action="store_true", help="also compare the ONNX exports")
    parser.add_argument("--max-drop", type=float, default=0.5, help="accuracy points a faster setting may lose")
    parser.add_argument("--json", help="also write the rows, timings and machine here")
    ns = parser.parse_args()

    threads = set_threads(ns.threads or physical_cores())
    root = Path(ns.output_dir).expanduser()
    models, names, seconds = [Path(ns.teacher)], ["teacher"], {}
    for name, choice in settings(ns):
        folder, took = factorized_folder(ns, name, choice)
        models.append(folder)
        names.append(name)
        seconds[name] = took
        print(f"{name}: {'reused' if took is None else f'factorized in {took} s'} -> {folder}")
    if ns.onnx:
        exported = [onnx_folder(folder, root) for folder in models]
        models, names = models + exported, names + [f"{n}-onnx" for n in names]
    config = CompareConfig(
        models=[str(m) for m in models],
        data=DataConfig(ns.data, eval_samples=ns.n),
        names=names,
        latency_samples=ns.latency_samples,
        output_dir=str(root / "compare"),
        inference=InferenceSettings(precision=ns.precision, threads=ns.threads or physical_cores()),
    )
    rows = compare(config)  # the teacher first: every ratio is against the baseline measured in this run
    print(markdown_table(rows))
    best = fastest_within(rows, ns.max_drop)
    if best is None or best["speedup"] <= 1:
        print(f"negative result: no setting is faster than the teacher within {ns.max_drop:g} accuracy points")
    else:
        print(f"fastest within {ns.max_drop:g} points: {best['name']}, {best['speedup']:.2f}x the teacher's reviews/s, "
              f"{best['accuracy_delta_points']:+.2f} points")  # fmt: skip
    machine = machine_info()
    load = machine["load_average"]
    print(f"git {git_revision()}; {machine['cpu']}; {threads['torch_intra_op']} threads; load {load}")
    if ns.json:
        record = {"rows": rows, "factorize_seconds": seconds, "threads": threads, "machine": machine}
        Path(ns.json).write_text(json.dumps(record | {"git": git_revision(), "arguments": vars(ns)}, indent=2))


if __name__ == "__main__":
    main()
