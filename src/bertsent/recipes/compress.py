"""A compression recipe: distil, prune, quantize and export a fine-tuned teacher, then compare them all.

Each stage writes its own folder under ``output_dir`` and is skipped when that folder is complete, so
an interrupted recipe continues where it stopped (distillation also resumes from its checkpoint):

    teacher-onnx/    the teacher exported to ONNX (fp32), outputs checked against PyTorch
    teacher-int8/    the teacher, ONNX dynamic INT8 (per-channel MatMul weights)
    teacher-int8-emb/  the same with the embedding tables in INT8 too
    student/         distilled from the teacher's own layers (half of them by default)
    student-unpruned-int8/  the student, ONNX dynamic INT8, embeddings included (when pruning is on;
                     otherwise student-int8/ is this one)
    student-pruned/  the student with attention heads and FFN neurons pruned, then recovery fine-tuned
    student-int8/    the smallest student, ONNX dynamic INT8, embeddings included
    compare/         the trade-off table of all of the above against the fp32 teacher
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

from bertsent.config import CompressConfig

log = logging.getLogger("bertsent.compress")


def _complete(folder: Path) -> bool:
    """A stage's folder is complete once its final record is written (it is written last)."""
    return (folder / "config.json").is_file() and any(
        (folder / name).is_file() for name in ("compression.json", "metrics.json")
    )


def _teacher_settings(teacher: Path) -> dict:
    args = teacher / "training_args.json"
    return json.loads(args.read_text()).get("training", {}) if args.is_file() else {}


def compress(config: CompressConfig) -> list[dict]:
    """Run every stage that is not complete yet, then compare all variants; returns the table's rows."""
    from bertsent.compression.export import export_onnx
    from bertsent.compression.prune import prune
    from bertsent.compression.quantize import quantize
    from bertsent.config import CompareConfig, DistillationArguments, PruneConfig, QuantizeConfig
    from bertsent.recipes.compare import compare, previous_rows
    from bertsent.training.distill import distill

    out = Path(config.output_dir)
    teacher = Path(config.teacher)
    trained = _teacher_settings(teacher)
    n_teacher = json.loads((teacher / "config.json").read_text())["num_hidden_layers"]
    folders = {"teacher (fp32)": teacher}

    timings: dict[str, float | str] = {}

    def stage(name: str, folder: Path, run) -> None:
        if _complete(folder):
            log.info("%s: complete in %s, skipped", name, folder)
            timings[name] = "skipped (already complete)"
        else:
            log.info("%s: writing %s", name, folder)
            started = time.perf_counter()
            run()
            timings[name] = round(time.perf_counter() - started, 1)
        folders[name] = folder

    def quantized(source: Path, folder: Path, embeddings: bool = config.quantize_embeddings):
        return lambda: quantize(
            QuantizeConfig(
                model=str(source), output_dir=str(folder), data=config.data.source, quantize_embeddings=embeddings
            )
        )

    stage("teacher ONNX fp32", out / "teacher-onnx", lambda: export_onnx(teacher, out / "teacher-onnx"))
    stage("teacher INT8", out / "teacher-int8", quantized(teacher, out / "teacher-int8", embeddings=False))
    if config.quantize_embeddings:
        stage("teacher INT8 + embeddings", out / "teacher-int8-emb", quantized(teacher, out / "teacher-int8-emb"))

    student_dir = out / "student"
    distill_args = DistillationArguments(
        teacher=str(teacher),
        student_layers=config.student_layers or max(1, n_teacher // 2),
        output_dir=str(student_dir),
        epochs=config.distill_epochs,
        lr=config.distill_lr,
        batch_size=config.batch_size,
        max_length=trained.get("max_length", 256),
        truncation=trained.get("truncation", "head"),
        resume=True,
        evaluate_test=False,
        threads=config.threads,
    )
    stage("student", student_dir, lambda: distill(distill_args, config.data))

    smallest = student_dir
    if config.heads_fraction or config.ffn_fraction:
        # Pruning buys speed but costs accuracy, so the unpruned student is quantized too: the table
        # then shows what pruning adds on top of INT8 alone.
        unpruned_int8 = out / "student-unpruned-int8"
        stage("student INT8 (unpruned)", unpruned_int8, quantized(student_dir, unpruned_int8))
        pruned_dir = out / "student-pruned"
        prune_config = PruneConfig(
            model=str(student_dir),
            output_dir=str(pruned_dir),
            heads_fraction=config.heads_fraction,
            ffn_fraction=config.ffn_fraction,
            recover_epochs=config.recover_epochs,
            recover_lr=config.recover_lr,
            data=config.data.source,
            validation_size=config.data.validation_size,
            train_samples=config.data.train_samples,
            seed=config.data.seed,
            batch_size=config.batch_size,
        )
        stage("student pruned", pruned_dir, lambda: prune(prune_config))
        smallest = pruned_dir
    stage("student INT8", out / "student-int8", quantized(smallest, out / "student-int8"))

    compare_config = CompareConfig(
        models=[str(f) for f in folders.values()],
        names=list(folders),
        data=config.data,
        latency_samples=config.latency_samples,
        threads=config.threads,
        output_dir=str(out / "compare"),
    )
    rows = previous_rows(compare_config)
    if rows is not None and not config.remeasure and all(isinstance(t, str) for t in timings.values()):
        log.info("compare: every stage was complete and compare/ holds their table: skipped")
        timings["compare"] = "skipped (already complete)"
    else:
        started = time.perf_counter()
        rows = compare(compare_config)
        timings["compare"] = round(time.perf_counter() - started, 1)
    record = {
        "settings": dataclasses.asdict(config),
        "stage_seconds": timings,
        "folders": {k: str(v) for k, v in folders.items()},
    }
    (out / "recipe.json").write_text(json.dumps(record, indent=2))
    return rows
