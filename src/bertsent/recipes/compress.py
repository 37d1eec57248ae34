"""A compression recipe: distil, prune, quantize and export a fine-tuned teacher, then compare them all.

Each stage writes its own folder under ``output_dir`` and is skipped when that folder is complete, so
an interrupted recipe continues where it stopped (distillation also resumes from its checkpoint):

    teacher-onnx/    the teacher exported to ONNX (fp32), outputs checked against PyTorch
    teacher-int8/    the teacher, ONNX dynamic INT8 (per-channel MatMul weights)
    teacher-int8-emb/  the same with the embedding tables in INT8 too
    student/         distilled from the teacher's own layers (half of them by default)
    student-unpruned-int8/  the student, ONNX dynamic INT8, embeddings included (when pruning is on;
                     otherwise student-int8/ is this one)
    student-pruned/  the student with attention heads and FFN neurons pruned, then recovery fine-tuned on
                     the labels and the teacher's logits
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
backends (PyTorch, ONNX Runtime, OpenVINO) and precisions. The teacher's row, the ratios' reference, runs
in PyTorch fp32; each row's predictions are kept in ``compare/predictions`` and reused (a folder is scored
once per content, route and settings), its speed timed on the first ``speed_samples`` test reviews.

With a time budget (``time_budget``, or the plan ``bertsent reproduce`` passes in), the training stages
(distillation, each recovery) train for their share of it (:mod:`bertsent.recipes.plan`), and the table's
scoring is reserved from measured throughput. ``table="decision"`` scores only the rows a decision needs
(:data:`DECISION_SKIPS` are built, not scored).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

from bertsent.config import CompressConfig, SettingsError
from bertsent.folder import read_training_args, write_json_whole
from bertsent.recipes.plan import StagePlan

log = logging.getLogger(__name__)

TRAINING_WEIGHTS = {
    "student": 3.0,
    "student pruned": 2.0,
    "teacher factorized": 1.0,
    "student trimmed vocab 95%": 1.0,
}
"""The training stages' shares of a planned recipe's training time, relative to each other (the teacher,
in ``reproduce``, weighs more than all of them): distillation trains a new model, recoveries mend one; the
pruned student's recovery weighs most of them, as the fastest and (trimmed) the smallest rows are built on it."""
EXIT_HEAD_REVIEWS = 8000
"""Training reviews the early-exit heads learn from (cached states: one backbone pass, then cheap epochs)."""
EXIT_VALIDATION_REVIEWS = 2000
"""Validation reviews the early-exit threshold is chosen on (capped by the split): on 500 a drop's standard
error is near the 0.5-point budget itself, so the fewest-layers choice lands past it on test."""
EXIT_MAX_DROP = 0.3
"""Validation accuracy points the recipe's early-exit choice may lose: the 0.5 held on test, less about one
standard error of a drop measured on :data:`EXIT_VALIDATION_REVIEWS`, since the choice is the threshold that
loses most within it."""
EXIT_MAX_LAYERS_SHARE = 2 / 3
"""The early-exit row's mean depth, as a share of the teacher's layers, the planner prices its scoring at:
an upper estimate (the choice within :data:`EXIT_MAX_DROP` usually leaves earlier; the page reports the
measured depth)."""
DECISION_SKIPS = (
    "teacher ONNX fp32",
    "teacher INT8 + embeddings",
    "student",
    "student pruned",
    "student trimmed vocab",
    "student trimmed vocab 95%",
    "student OpenVINO fp32",
)
"""Rows ``table="decision"`` leaves unscored: fp32 PyTorch intermediates whose deployable INT8 / OpenVINO
variants are in the table (and the exports those variants supersede)."""
OTHER_STAGES = "other stages"
"""The plan's reserve for the stages that do not train (exports, quantization, trimming, early exit),
lowered by what each takes as it ends."""
FIXED_STAGE_SECONDS = 10.0
"""The least the plan reserves for each stage that does not train, before any has been timed (loading a model,
exporting and saving it take that even for a tiny one)."""
REFERENCE = {"backend": "torch", "precision": "fp32"}
"""How the teacher's row, the ratios' reference, runs: the folder as PyTorch fp32, on the same CPU."""


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

    def __init__(self, teacher: Path, out: Path, plan=None) -> None:
        self.folders: dict[str, Path] = {"teacher": teacher}
        self.timings: dict[str, float | str] = {}
        self.path = out / STAGE_SECONDS
        self.measured: dict[str, float] = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.plan = plan
        self.reserve = None  # () -> None: re-estimates the plan's reserves (set by compress)
        self.fixed: list[str] = []  # the stages that do not train, as far as known (set by compress)

    def budget(self, name: str) -> str | None:
        """The ``--time-budget`` of training stage ``name``: its share of the plan, the reserves estimated
        again first; None without a plan (the stage trains its epochs)."""
        if self.plan is None or name not in self.plan.stages:
            return None
        if self.reserve is not None:
            self.reserve()
        return f"{self.plan.seconds_for(name):.0f}s"

    def measured_now(self, name: str, seconds: float) -> None:
        """Record a stage that ran in this run, in ``timings`` and (at once) in ``STAGE_SECONDS``."""
        self.timings[name] = self.measured[name] = round(seconds, 1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_whole(self.path, self.measured)  # a kill mid-write leaves the last complete record
        if self.plan is not None:
            self.plan.finished(name, seconds)
            stage = self.plan.stages[name]
            if not stage.weight:
                self.reserve_fixed(seconds)
            elif stage.planned is not None and seconds > stage.planned:
                # what it took beyond its share (scoring before and after, distillation's teacher logits) is
                # what the reserve for the other stages priced for it: taken off, not counted twice
                self.reserve_fixed(seconds - stage.planned)

    def reserve_fixed(self, seconds: float) -> None:
        """One of the stages that do not train took ``seconds`` (or a training stage took them beyond its
        share, scoring what this reserve priced): the plan's reserve for the rest of them is the estimate less
        that, or, when more, their number times the longest a finished one took (their fixed costs, loading,
        exporting and calibrating, do not scale with the reviews the estimate counts, and they differ: an NNCF
        INT8 takes longer than an ONNX export, so the plan errs on the safe side)."""
        other = self.plan.stages.setdefault(OTHER_STAGES, StagePlan())
        if other.used is not None:
            return
        took = [self.plan.stages[n].used for n in self.fixed if self.plan.done(n)]
        left = [n for n in self.fixed if not self.plan.done(n)]
        by_longest = len(left) * max([*took, FIXED_STAGE_SECONDS])
        self.plan.estimate(OTHER_STAGES, max(other.reserve - seconds, by_longest, 0.0))

    def run(self, name: str, folder: Path, make) -> None:
        """Run ``make`` unless ``folder`` is complete; ``make`` returns a reason (a string) when the stage does
        not apply to this model, and the variant is then left out of the table."""
        if _complete(folder):
            log.info("%s: complete in %s, skipped", name, folder)
            self.timings[name] = "skipped (already complete)"
            if self.plan is not None and not self.plan.done(name):  # made before the plan: what it took then
                self.plan.finished(name, self.measured.get(name, 0.0))
        else:
            log.info("%s: writing %s", name, folder)
            started = time.perf_counter()
            if isinstance(reason := make(), str):
                log.warning("%s: left out (%s)", name, reason)
                self.timings[name] = f"left out ({reason})"
                return
            self.measured_now(name, time.perf_counter() - started)
        self.folders[name] = folder


def compress(config: CompressConfig, plan=None) -> list[dict]:
    """Run every stage that is not complete yet, then compare all variants; returns the table's rows.

    ``plan`` (a :class:`~bertsent.recipes.plan.RecipePlan`, ``reproduce``'s) gives the training stages their
    time; without one, ``config.time_budget`` makes one for this recipe (``plan.json`` in ``output_dir``)."""
    out, teacher = Path(config.output_dir), Path(config.teacher)
    plan = plan if plan is not None else own_plan(config, out)
    stages = _Stages(teacher, out, plan)
    if plan is not None:
        stages.reserve = lambda: reserve_scoring(config, plan, stages)
        every = dataclasses.replace(config, table="all")
        stages.fixed = [
            n for n, _, _ in table_rows(every, _teacher_layers(teacher)) if n not in {"teacher", *TRAINING_WEIGHTS}
        ]
        stages.reserve_fixed(0.0)  # reserved before the first stage: at least FIXED_STAGE_SECONDS each
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


def training_weights(settings) -> dict[str, float]:
    """The :data:`TRAINING_WEIGHTS` of the training stages ``settings`` (a CompressConfig, or the defaults)
    turn on: distillation always; each recovery only when it runs."""
    on = {
        "student": True,
        "student pruned": bool((settings.heads_fraction or settings.ffn_fraction) and settings.recovery_epochs),
        "teacher factorized": bool(settings.factorize_energy),
        "student trimmed vocab 95%": bool(
            settings.trim_vocab and settings.trim_coverage not in (None, 1) and settings.recovery_epochs
        ),
    }
    return {name: weight for name, weight in TRAINING_WEIGHTS.items() if on[name]}


def own_plan(config: CompressConfig, out: Path):
    """The plan of ``config.time_budget`` (None without one), kept in ``out/plan.json``."""
    if not config.time_budget:
        return None
    from bertsent.config import budget_seconds
    from bertsent.recipes.plan import PLAN_FILE, RecipePlan

    plan = RecipePlan.load(out / PLAN_FILE, budget_seconds(config.time_budget), training_weights(config), {})
    if not plan.rates:
        measure_teacher_rate(config, plan)
    return plan


def measure_teacher_rate(config: CompressConfig, plan) -> None:
    """The plan's scoring rate from the teacher itself, PyTorch fp32 on a few test reviews: what an own plan has
    before its table is scored (the slowest route, so the scoring reserve errs on the safe side)."""
    from bertsent.data.loading import load_data
    from bertsent.predict import Predictor

    texts = load_data(config.data, splits=("test",)).test["text"].tolist()[:64]
    predictor = Predictor(config.teacher, **REFERENCE)
    predictor.predict_proba(texts[: predictor.batch_size])  # warm-up
    started = time.perf_counter()
    predictor.predict_proba(texts)
    plan.measured("torch", len(texts) / (time.perf_counter() - started), _teacher_layers(Path(config.teacher)))


def table_rows(config: CompressConfig, teacher_layers: int) -> list[tuple[str, str, int]]:
    """The rows the table will score: (name, route, encoder layers), as far as known before the stages run
    (the student's layers from ``student_layers``, the routes from what each folder is; an INT8 route is its
    base route's name with ``-int8``, priced at the base route until measured; ``auto`` is priced at the
    fastest full-precision route measured)."""
    student = config.student_layers or max(1, teacher_layers // 2)
    int8 = "onnx-int8"
    names = [("teacher", "torch", teacher_layers), ("teacher ONNX fp32", "onnx", teacher_layers)]
    names += [("teacher INT8", int8, teacher_layers), ("teacher INT8 + embeddings", int8, teacher_layers)]
    names += [("student", "torch", student), ("student INT8 (unpruned)", int8, student)]
    names += [("student pruned", "torch", student), ("student INT8", int8, student)]
    names += [("student trimmed vocab", "torch", student), ("student trimmed INT8", int8, student)]
    names += [("student trimmed vocab 95%", "torch", student), ("student trimmed 95% INT8", int8, student)]
    # Both run on the route --backend auto picks for them: the factorized teacher as fast as the teacher's
    # export, early exit in PyTorch through at most about two thirds of its layers (EXIT_MAX_LAYERS_SHARE).
    exit_layers = max(1, round(teacher_layers * EXIT_MAX_LAYERS_SHARE))
    names += [("teacher factorized", "auto", teacher_layers), ("teacher early exit", "torch", exit_layers)]
    for who, layers in (("teacher", teacher_layers), ("student", student)):
        names += [(f"{who} OpenVINO fp32", "openvino", layers), (f"{who} OpenVINO INT8", "openvino-int8", layers)]
    return [row for row in names if config.table == "all" or row[0] not in DECISION_SKIPS]


def reserve_scoring(config: CompressConfig, plan, stages: _Stages) -> None:
    """The plan's ``compare`` reserve (the table's scoring): every row (the whole test split, plus the speed
    sample) at the measured rates; the teacher's row is free once its predictions are stored (``reproduce``)."""
    from bertsent.recipes.compare import STORE_DIR

    layers = _teacher_layers(Path(config.teacher))
    test = config.data.eval_samples or _test_rows(config)
    stored = {p.stem for p in (Path(config.output_dir) / "compare" / STORE_DIR).glob("*.json")}
    timed = min(config.speed_samples or test, test)
    rows = [
        (route, n, timed if name == "teacher" and stored else test + timed)
        for name, route, n in table_rows(config, layers)
    ]
    plan.estimate("compare", plan.scoring_seconds(rows))


def _teacher_layers(teacher: Path) -> int:
    from bertsent.modeling.pooling import POOLING_KEY

    saved = json.loads((teacher / "config.json").read_text())
    return saved["num_hidden_layers"] - (POOLING_KEY in saved)


def _test_rows(config: CompressConfig) -> int:
    """How many test reviews the table scores (the data's ``eval_samples``, else the whole split)."""
    from bertsent.data.loading import load_data

    return len(load_data(config.data, splits=("test",)).test)


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
    budgeted = lambda: dataclasses.replace(distill_args, time_budget=stages.budget("student"))  # noqa: E731
    stages.run("student", student_dir, lambda: distill(budgeted(), config.data))
    smallest = student_dir
    if config.heads_fraction or config.ffn_fraction:
        # Pruning buys speed but costs accuracy, so the unpruned student is quantized too: the table
        # then shows what pruning adds on top of INT8 alone.
        unpruned_int8 = out / "student-unpruned-int8"
        stages.run("student INT8 (unpruned)", unpruned_int8, _quantized(config, student_dir, unpruned_int8))
        smallest = out / "student-pruned"
        # Recovery learns the teacher's logits too: on labels alone it overfits them (log-loss rose 0.24 -> 0.32).
        prune_config = PruneConfig(
            str(student_dir),
            str(smallest),
            config.heads_fraction,
            config.ffn_fraction,
            recovery_teacher=config.teacher,
            **_recovery(config),
        )
        stages.run("student pruned", smallest, lambda: prune(_budgeted(prune_config, stages, "student pruned")))
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
                factorize(_budgeted(settings, stages, "teacher factorized"))
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
            head_train_samples=EXIT_HEAD_REVIEWS,
            validation_samples=EXIT_VALIDATION_REVIEWS,
            max_drop=EXIT_MAX_DROP,
            threads=config.threads,
            **common,
        )
        stages.run("teacher early exit", folder, lambda: early_exit(exits))


def _recovery(config: CompressConfig) -> dict:
    """What a stage with recovery fine-tuning (pruning, the covering trim) takes from the recipe: its data and
    seed, the recovery epochs and rate, the batch size and threads."""
    names = ("recovery_epochs", "recovery_lr", "batch_size", "threads")
    return {"data": config.data, "seed": config.data.seed} | {name: getattr(config, name) for name in names}


def _covering_trim(config: CompressConfig, out: Path, stages: _Stages, smallest: Path) -> None:
    """The size lever pushed further: the smallest student keeping only the pieces that cover
    ``trim_coverage`` of the training texts' tokens, recovery fine-tuned (``recovery_epochs``), and its INT8
    (embeddings included)."""
    from bertsent.compression.trim_vocab import trim_vocab
    from bertsent.config import TrimVocabConfig

    share = f"{config.trim_coverage * 100:g}"
    trimmed = out / f"student-trimmed-{share}"
    # Dropped pieces re-split their words into pieces the student never saw there: it recovers on them.
    trim = TrimVocabConfig(str(smallest), str(trimmed), coverage=config.trim_coverage, **_recovery(config))
    name = f"student trimmed vocab {share}%"
    stages.run(name, trimmed, lambda: trim_vocab(_budgeted(trim, stages, name)))
    int8 = out / f"student-trimmed-{share}-int8"
    stages.run(f"student trimmed {share}% INT8", int8, _quantized(config, trimmed, int8, True))


def _budgeted(settings, stages: _Stages, name: str):
    """A recovering stage's settings with its planned ``recovery_time_budget`` (unchanged without a plan)."""
    budget = stages.budget(name) if settings.recovery_epochs else None
    return dataclasses.replace(settings, recovery_time_budget=budget) if budget else settings


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

    scored = {name: f for name, f in stages.folders.items() if config.table == "all" or name not in DECISION_SKIPS}
    compare_config = CompareConfig(
        models=[str(f) for f in scored.values()],
        names=list(scored),
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
    rows = compare(compare_config, **table_options(config))
    stages.measured_now("compare", time.perf_counter() - started)
    return rows


def table_options(config: CompressConfig) -> dict:
    """How the recipe's table is measured (:func:`bertsent.recipes.compare.compare`'s options): the teacher
    in PyTorch fp32, the speed on the fixed sample, predictions stored and reused."""
    from bertsent.config import InferenceSettings

    inference = {"threads": config.threads} if config.threads else {}
    reference = InferenceSettings(**REFERENCE, **inference)
    return {"reference": reference, "speed_samples": config.speed_samples, "store": True}
