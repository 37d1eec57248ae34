"""The whole recipe at full scale: fine-tune, evaluate, compress, compare — and write the results page.

Stages skip themselves when their folder is complete and resume from their last checkpoint when it is
not, so the hours-long full run can be done in pieces (run it in the background; rerun the same
command to continue). ``fast`` runs the same recipe on small slices in minutes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from bertsent.data import DataConfig

log = logging.getLogger("bertsent.reproduce")

# Published results, quoted for context only: not measured by bertsent.
ANCHORS = (
    ("BERT-base (Sanh et al., 2019, DistilBERT paper, Table 2)", "93.46%"),
    ("DistilBERT (Sanh et al., 2019, Table 2)", "92.82%"),
    ("NBSVM (Wang & Manning, 2012)", "91.22%"),
)
FAST = {"train_samples": 400, "validation_samples": 200, "eval_samples": 400, "epochs": 1, "latency_samples": 20}


@dataclass
class ReproduceConfig:
    """The recipe's settings; ``fast`` swaps in small slices (see ``FAST``)."""

    data: str
    output_dir: str
    model: str | None = None
    """Teacher's starting weights (None: the embedded all-MiniLM-L6-v2)."""
    fast: bool = False
    epochs: int = 2
    lr: float = 1e-4
    batch_size: int = 16
    max_length: int = 256
    truncation: str = "head+tail"
    validation_size: float | int = 0.1
    train_samples: int | None = None
    validation_samples: int | None = 2000
    """Cap on validation reviews: enough to pick checkpoints, cheap to score every epoch."""
    eval_samples: int | None = None
    """Test reviews (None: all 25,000)."""
    latency_samples: int = 100
    doc: str | None = None
    """Also write the results page here (e.g. docs/results.md)."""

    def __post_init__(self) -> None:
        if self.fast:
            for key, value in FAST.items():
                setattr(self, key, min(getattr(self, key) or value, value))
        if self.epochs < 1 or self.batch_size < 1 or self.max_length < 8:
            raise ValueError("epochs and batch_size must be >= 1 and max_length >= 8")


def _data(config: ReproduceConfig, **changes) -> DataConfig:
    settings = {
        "source": config.data,
        "validation_size": config.validation_size,
        "train_samples": config.train_samples,
        "validation_samples": config.validation_samples,
        "eval_samples": config.eval_samples,
    }
    return DataConfig(**(settings | changes))


def reproduce(config: ReproduceConfig) -> dict:
    """Run (or continue) the recipe; returns what the results page shows."""
    from bertsent.arguments import TrainingArguments
    from bertsent.compress import CompressConfig, compress
    from bertsent.train import train

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    teacher = out / "teacher"
    timings: dict[str, float | str] = {}
    if (teacher / "metrics.json").is_file():
        timings["fine-tune + test evaluation"] = "skipped (already complete)"
    else:
        started = time.perf_counter()
        args = TrainingArguments(
            output_dir=str(teacher),
            model=config.model,
            epochs=config.epochs,
            lr=config.lr,
            batch_size=config.batch_size,
            max_length=config.max_length,
            truncation=config.truncation,
            resume=True,
            keep_checkpoints=False,
            save_steps=200,
        )
        train(args, _data(config))
        timings["fine-tune + test evaluation"] = round(time.perf_counter() - started, 1)
    rows = compress(
        CompressConfig(
            teacher=str(teacher),
            output_dir=str(out / "compress"),
            data=_data(config),
            latency_samples=config.latency_samples,
            batch_size=config.batch_size,
        )
    )
    recipe = json.loads((out / "compress" / "recipe.json").read_text())
    timings |= recipe["stage_seconds"]
    result = {
        "settings": dataclasses.asdict(config),
        "teacher_metrics": json.loads((teacher / "metrics.json").read_text()),
        "rows": rows,
        "stage_seconds": timings,
    }
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    page = results_page(result, out)
    (out / "results.md").write_text(page)
    if config.doc:
        Path(config.doc).write_text(page)
    return result


def _versions() -> str:
    import onnxruntime
    import torch
    import transformers

    import bertsent

    return (
        f"bertsent {bertsent.__version__}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, Python {platform.python_version()}"
    )


def results_page(result: dict, out: Path) -> str:
    """The Markdown results page: the table, the teacher's metrics, timings, machine and commands."""
    from bertsent.card import _git_revision
    from bertsent.compare import markdown_table

    s, m = result["settings"], result["teacher_metrics"]
    test_n = m.get("test_n", "?")
    timing_rows = "\n".join(
        f"| {k} | {v if isinstance(v, str) else f'{v / 60:.1f} min'} |" for k, v in result["stage_seconds"].items()
    )
    command = f"bertsent reproduce --data {s['data']} --output-dir {s['output_dir']}" + (" --fast" if s["fast"] else "")
    anchors = "\n".join(f"| {name} | {acc} |" for name, acc in ANCHORS)

    return f"""# Results{" (fast mode: small slices, not the full-scale numbers)" if s["fast"] else ""}

Measured by `{command}` on {datetime.now(timezone.utc).strftime("%Y-%m-%d")}, git `{_git_revision()}`,
on {platform.platform()} ({os.cpu_count()} CPUs); {_versions()}.

Teacher: {s["model"] or "the embedded all-MiniLM-L6-v2"} fine-tuned on {m.get("train_reviews")} IMDB training
reviews ({s["epochs"]} epochs, lr {s["lr"]}, batch {s["batch_size"]}, {s["max_length"]} tokens,
`{s["truncation"]}` truncation), best of {m.get("validation_reviews")} validation reviews carved from
train. Every row below is scored on the same {test_n} test reviews in one run; speed is end to end
(tokenization included) on this CPU; ratios are against the fp32 teacher.

{markdown_table(result["rows"])}
Teacher on the test set: accuracy {m.get("test_accuracy", float("nan")):.4f}, F1 {m.get("test_f1", float("nan")):.4f},
ROC-AUC {m.get("test_roc_auc", float("nan")):.4f}. Training curves: `{out}/teacher/training_curves.png`;
Pareto plot: `{out}/compress/compare/pareto.png`.

## Published anchors (quoted, not measured here)

| Model | IMDB test accuracy |
|---|---|
{anchors}

## Wall-clock time of each stage

| Stage | Time |
|---|---|
{timing_rows}

## Rebuild

The model folders are not in the repository. `{command}` rebuilds them under `{s["output_dir"]}`
(rerun it to continue after an interruption: complete stages are skipped, training resumes from its
last checkpoint).
"""
