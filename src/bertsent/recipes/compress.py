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
    student-trimmed/, student-trimmed-int8/
                     the smallest student with its vocabulary trimmed to the training texts' WordPieces,
                     and its INT8 (embeddings included): the size lever
    student-trimmed-95/, student-trimmed-95-int8/
                     the same keeping only the pieces that cover 95% of the training tokens
                     (``trim_coverage``), recovery fine-tuned on the re-split words, and its INT8:
                     the smallest variant
    teacher-factorized/  the teacher's FFN and attention linears as truncated SVDs (``factorize_energy``
                     of the spectrum), recovery fine-tuned
    teacher-early-exit/  the teacher with a classifier on every layer, leaving at the first confident one
    teacher-openvino/, teacher-openvino-int8/, student-openvino/, student-openvino-int8/
                     the teacher and the smallest student as OpenVINO IR, fp32 and NNCF INT8 (only when
                     openvino and nncf are installed: ``pip install "bertsent[openvino]"``)
    compare/         the trade-off table of all of the above against the teacher

"Fastest within the accuracy budget" (``compare.fastest_within``) picks among every row, so across
backends (PyTorch, ONNX Runtime, OpenVINO) and precisions.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

from bertsent.config import CompressConfig, SettingsError
from bertsent.folder import read_training_args, write_json_whole

log = logging.getLogger(__name__)


def _complete(folder: Path) -> bool:
    """A stage's folder is complete once its record (compression.json) is written: every stage writes it
    after its model; metrics.json alone is what a stage's fine-tuning leaves before the stage has ended."""
    return (folder / "config.json").is_file() and (folder / "compression.json").is_file()


def _teacher_settings(teacher: Path) -> dict:
    return read_training_args(teacher).get("training", {})


STAGE_SECONDS = "stage_seconds.json"
"""Each stage's wall-clock seconds from the run that made its folder, written as each stage ends, so a
recipe killed halfway (a session that ends, an OOM) still knows what its finished stages took. A stage
resumed from its checkpoint records the resumed run's seconds only."""


class _Stages:
    """The recipe's variant folders in table order, each run only when its folder is not complete.

    ``timings`` is what this run did (seconds, or why not); ``measured`` every stage's seconds from the run
    that made it, kept in ``STAGE_SECONDS`` across runs."""

    def __init__(self, teacher: Path, out: Path) -> None:
        self.folders: dict[str, Path] = {"teacher": teacher}
        self.timings: dict[str, float | str] = {}
        self.path = out / STAGE_SECONDS
        self.measured: dict[str, float] = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def measured_now(self, name: str, seconds: float) -> None:
        """Record a stage that ran in this run, in ``timings`` and (at once) in ``STAGE_SECONDS``."""
        self.timings[name] = self.measured[name] = round(seconds, 1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_whole(self.path, self.measured)  # a kill mid-write leaves the last complete record

    def run(self, name: str, folder: Path, make) -> None:
        """Run ``make`` unless ``folder`` is complete; ``make`` returns a reason (a string) when the stage does
        not apply to this model, and the variant is then left out of the table."""
        if _complete(folder):
            log.info("%s: complete in %s, skipped", name, folder)
            self.timings[name] = "skipped (already complete)"
        else:
            log.info("%s: writing %s", name, folder)
            started = time.perf_counter()
            if isinstance(reason := make(), str):
                log.warning("%s: left out (%s)", name, reason)
                self.timings[name] = f"left out ({reason})"
                return
            self.measured_now(name, time.perf_counter() - started)
        self.folders[name] = folder


def compress(config: CompressConfig) -> list[dict]:
    """Run every stage that is not complete yet, then compare all variants; returns the table's rows."""
    out, teacher = Path(config.output_dir), Path(config.teacher)
    stages = _Stages(teacher, out)
    _teacher_variants(config, out, stages)
    smallest = _student_variants(config, out, stages)
    _survey_variants(config, out, stages, smallest)
    _openvino_variants(config, out, stages, smallest)
    rows = _compare(config, out, stages)
    record = {
        "settings": dataclasses.asdict(config),
        "stage_seconds": stages.timings,
        "measured_seconds": stages.measured,
        "folders": {k: str(v) for k, v in stages.folders.items()},
    }
    (out / "recipe.json").write_text(json.dumps(record, indent=2))
    return rows


def _quantized(
    config: CompressConfig, source: Path, folder: Path, embeddings: bool | None = None, method: str = "onnx-dynamic"
):
    from bertsent.compression.quantize import quantize
    from bertsent.config import QuantizeConfig

    embeddings = config.quantize_embeddings if embeddings is None else embeddings
    settings = QuantizeConfig(
        model=str(source), output_dir=str(folder), data=config.data, quantize_embeddings=embeddings, method=method
    )
    return lambda: quantize(settings)


def _teacher_variants(config: CompressConfig, out: Path, stages: _Stages) -> None:
    """ONNX fp32 and INT8 (with INT8 embeddings too) of the teacher itself."""
    from bertsent.compression.export import export_onnx

    teacher = Path(config.teacher)
    stages.run("teacher ONNX fp32", out / "teacher-onnx", lambda: export_onnx(teacher, out / "teacher-onnx"))
    stages.run("teacher INT8", out / "teacher-int8", _quantized(config, teacher, out / "teacher-int8", False))
    if config.quantize_embeddings:
        stages.run(
            "teacher INT8 + embeddings", out / "teacher-int8-emb", _quantized(config, teacher, out / "teacher-int8-emb")
        )


def _student_variants(config: CompressConfig, out: Path, stages: _Stages) -> Path:
    """The distilled student, its INT8, and (when pruning is on) the pruned student and its INT8; returns
    the smallest student's fp32 folder."""
    from bertsent.compression.prune import prune
    from bertsent.config import DistillationArguments, PruneConfig
    from bertsent.modeling.pooling import POOLING_KEY
    from bertsent.training.distill import distill

    teacher = Path(config.teacher)
    trained = _teacher_settings(teacher)
    saved = json.loads((teacher / "config.json").read_text())
    # A mean-pooling layer comes along with the student's layers (modeling.pooling), not among them.
    n_teacher = saved["num_hidden_layers"] - (POOLING_KEY in saved)
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
    stages.run("student", student_dir, lambda: distill(distill_args, config.data))
    smallest = student_dir
    if config.heads_fraction or config.ffn_fraction:
        # Pruning buys speed but costs accuracy, so the unpruned student is quantized too: the table
        # then shows what pruning adds on top of INT8 alone.
        unpruned_int8 = out / "student-unpruned-int8"
        stages.run("student INT8 (unpruned)", unpruned_int8, _quantized(config, student_dir, unpruned_int8))
        smallest = out / "student-pruned"
        prune_config = PruneConfig(
            model=str(student_dir),
            output_dir=str(smallest),
            heads_fraction=config.heads_fraction,
            ffn_fraction=config.ffn_fraction,
            recovery_epochs=config.recovery_epochs,
            recovery_lr=config.recovery_lr,
            data=config.data,
            seed=config.data.seed,
            batch_size=config.batch_size,
        )
        stages.run("student pruned", smallest, lambda: prune(prune_config))
    stages.run("student INT8", out / "student-int8", _quantized(config, smallest, out / "student-int8"))
    return smallest


def _survey_variants(config: CompressConfig, out: Path, stages: _Stages, smallest: Path) -> None:
    """The survey's other families (Ganesh et al., 2021), each off when its setting is: embedding-matrix
    compression (vocabulary trimming of the smallest student, then its INT8), matrix decomposition
    (the teacher factorized) and dynamic inference (the teacher with early exit)."""
    from bertsent.config import EarlyExitConfig, FactorizeConfig, TrimVocabConfig

    teacher, common = str(config.teacher), {"data": config.data}
    if config.trim_vocab:
        from bertsent.compression.trim_vocab import trim_vocab

        trimmed = out / "student-trimmed"
        trim = TrimVocabConfig(model=str(smallest), output_dir=str(trimmed), **common)
        stages.run("student trimmed vocab", trimmed, lambda: trim_vocab(trim))
        int8 = out / "student-trimmed-int8"
        stages.run("student trimmed INT8", int8, _quantized(config, trimmed, int8, True))
        if config.trim_coverage not in (None, 1):
            _covering_trim(config, out, stages, smallest)
    if config.factorize_energy:
        from bertsent.compression.factorize import factorize

        folder = out / "teacher-factorized"
        settings = FactorizeConfig(
            model=teacher,
            output_dir=str(folder),
            energy=config.factorize_energy,
            threads=config.threads,
            **common,
        )

        def factorized() -> str | None:
            try:
                factorize(settings)
            except SettingsError as e:  # a spectrum too flat at this energy: no layer would get smaller
                return str(e)
            return None

        stages.run("teacher factorized", folder, factorized)
    if config.early_exit:
        from bertsent.compression.early_exit import early_exit

        folder = out / "teacher-early-exit"
        exits = EarlyExitConfig(
            model=teacher,
            output_dir=str(folder),
            threads=config.threads,
            **common,
        )
        stages.run("teacher early exit", folder, lambda: early_exit(exits))


def _covering_trim(config: CompressConfig, out: Path, stages: _Stages, smallest: Path) -> None:
    """The size lever pushed further: the smallest student keeping only the pieces that cover
    ``trim_coverage`` of the training texts' tokens, recovery fine-tuned (``recovery_epochs``), and its INT8
    (embeddings included)."""
    from bertsent.compression.trim_vocab import trim_vocab
    from bertsent.config import TrimVocabConfig

    share = f"{config.trim_coverage * 100:g}"
    trimmed = out / f"student-trimmed-{share}"
    # Dropped pieces re-split their words into pieces the student never saw there: it recovers on them.
    trim = TrimVocabConfig(
        model=str(smallest),
        output_dir=str(trimmed),
        coverage=config.trim_coverage,
        data=config.data,
        recovery_epochs=config.recovery_epochs,
        recovery_lr=config.recovery_lr,
        batch_size=config.batch_size,
        threads=config.threads,
    )
    stages.run(f"student trimmed vocab {share}%", trimmed, lambda: trim_vocab(trim))
    int8 = out / f"student-trimmed-{share}-int8"
    stages.run(f"student trimmed {share}% INT8", int8, _quantized(config, trimmed, int8, True))


def _openvino_variants(config: CompressConfig, out: Path, stages: _Stages, smallest: Path) -> None:
    """The teacher and the smallest student as OpenVINO IR, fp32 and NNCF INT8; skipped (with a log line)
    when openvino or nncf is not installed."""
    import importlib.util

    missing = [name for name in ("openvino", "nncf") if importlib.util.find_spec(name) is None]
    if missing:
        log.info(
            'OpenVINO variants skipped: %s not installed (pip install "bertsent[openvino]")', " and ".join(missing)
        )
        return
    from bertsent.compression.export import export_openvino

    for name, source, folder in (
        ("teacher", Path(config.teacher), out / "teacher-openvino"),
        ("student", smallest, out / "student-openvino"),
    ):
        stages.run(f"{name} OpenVINO fp32", folder, lambda s=source, f=folder: export_openvino(s, f))
        int8 = folder.with_name(f"{folder.name}-int8")
        stages.run(f"{name} OpenVINO INT8", int8, _quantized(config, source, int8, False, "openvino-int8"))


def _compare(config: CompressConfig, out: Path, stages: _Stages) -> list[dict]:
    """The table of every variant; reused when every stage was complete and it is already measured."""
    from bertsent.config import CompareConfig
    from bertsent.recipes.compare import compare, previous_rows

    compare_config = CompareConfig(
        models=[str(f) for f in stages.folders.values()],
        names=list(stages.folders),
        data=config.data,
        latency_samples=config.latency_samples,
        threads=config.threads,
        output_dir=str(out / "compare"),
    )
    rows = previous_rows(compare_config)
    if rows is not None and not config.remeasure and all(isinstance(t, str) for t in stages.timings.values()):
        log.info("compare: every stage was complete and compare/ holds their table: skipped")
        stages.timings["compare"] = "skipped (already complete)"
        return rows
    started = time.perf_counter()
    rows = compare(compare_config)
    stages.measured_now("compare", time.perf_counter() - started)
    return rows
