"""Fine-tune, evaluate, compress and serve BERT sentiment classifiers: `bertsent COMMAND --help` for each command.

The ``bertsent`` command is one table of commands, each a plain function over its settings dataclasses.

:data:`COMMANDS` is the only list of commands. Each entry names the function that runs it and the
dataclasses of :mod:`bertsent.config` whose fields are its flags (built by :mod:`bertsent.argparsing`),
so a command's flags and defaults are its dataclasses' fields. Only a :class:`BertsentError` is the
user's to fix (one line, exit 2); anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bertsent.argparsing import settings, settings_parser
from bertsent.config import (
    CalibrateConfig,
    CompareConfig,
    CompressConfig,
    DataConfig,
    DistillationArguments,
    EarlyExitConfig,
    EvaluateArguments,
    ExplainSettings,
    ExportConfig,
    FactorizeConfig,
    InferenceSettings,
    ModelArguments,
    OodArguments,
    PredictArguments,
    PruneConfig,
    QuantizeConfig,
    ReproduceConfig,
    ServeSettings,
    TrainingArguments,
    TrimVocabConfig,
    passed_on,
)
from bertsent.errors import BertsentError
from bertsent.serve import cmd_serve  # the server's own loop; light to import (no torch)

log = logging.getLogger(__name__)

DEFAULT_DATA = str(Path("..") / "shared" / "data" / "imdb")


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def print_metrics(metrics: dict) -> None:
    keys = [k for k in metrics if k.split("_", 1)[-1] in ("accuracy", "f1", "roc_auc") or k in ("accuracy", "f1")]
    for key in keys:
        if isinstance(metrics[key], float):
            print(f"{key:>24}: {metrics[key]:.4f}")


# --- the commands: each reads its settings from the namespace, runs the stage, prints what it did -------


def cmd_train(ns: argparse.Namespace) -> int:
    from bertsent.training.loop import train

    result = train(settings(ns, TrainingArguments), settings(ns, DataConfig))
    print_metrics(result.metrics)
    print(f"model saved to {result.output_dir}")
    return 0


def cmd_distill(ns: argparse.Namespace) -> int:
    from bertsent.training.distill import distill

    result = distill(settings(ns, DistillationArguments), settings(ns, DataConfig))
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

    args = settings(ns, EvaluateArguments)
    model = settings(ns, ModelArguments).model
    data, inference = settings(ns, DataConfig), settings(ns, InferenceSettings)
    metrics = evaluate(model, data, split=args.split, output_dir=args.output_dir, settings=inference)
    print_metrics(metrics)
    if "mean_layers" in metrics:
        print(f"{'mean layers':>24}: {metrics['mean_layers']:.2f} (early exit)")
    print(f"{metrics['n']} reviews scored ({metrics['split']}); report written to {metrics['report_dir']}")
    return 0


def cmd_predict(ns: argparse.Namespace) -> int:
    from bertsent.predict import Predictor, predict_file

    args = settings(ns, PredictArguments)
    if bool(ns.texts) == bool(args.input):
        raise BertsentError("give either texts to classify or --input FILE (with --output FILE)")
    explain = settings(ns, ExplainSettings)  # --explain: each prediction also holds its "explanation"
    if args.engine == "ray":
        return predict_on_ray(ns, args, explain)
    predictor = Predictor(settings(ns, ModelArguments).model, settings(ns, InferenceSettings), explain=explain)
    if args.input:
        n = predict_file(
            predictor,
            Path(args.input),
            Path(args.output),
            args.text_column,
            keep_columns=args.keep_columns,
            resume=args.resume,
            encoding=args.encoding,
        )
        print(f"{n} predictions written to {args.output}")
        return 0
    for text, prediction in zip(ns.texts, predictor(ns.texts, top_k=args.top_k or None), strict=True):
        print(json.dumps({"text": text, "prediction": prediction}, ensure_ascii=False))
    return 0


def predict_on_ray(ns: argparse.Namespace, args: PredictArguments, explain: ExplainSettings) -> int:
    """``predict --engine ray``: the corpus through an actor pool on Ray Data (:mod:`bertsent.corpus`)."""
    from bertsent.corpus import score_corpus

    if explain.explain:
        raise BertsentError("--explain runs with --engine local (explanations are not written to Parquet)")
    result = score_corpus(
        settings(ns, ModelArguments).model,
        args.input,
        args.output,
        settings(ns, InferenceSettings),
        **passed_on(args, "text_column", "keep_columns", "top_k", "encoding", "address", "workers"),
    )
    print(
        f"{result.rows} predictions written to {result.output} ({result.output_files} Parquet files, from "
        f"{result.input_files} input files; {result.workers} actors x {result.threads} threads, {result.seconds:.1f} s)"
    )
    return 0


def cmd_compare(ns: argparse.Namespace) -> int:
    from bertsent.recipes.compare import compare, markdown_table

    config = settings(ns, CompareConfig)
    print(markdown_table(compare(config)), end="")
    if config.output_dir:
        print(f"table, JSON and Pareto plot written to {config.output_dir}")
    return 0


def prune_config(ns: argparse.Namespace) -> PruneConfig:
    return settings(ns, PruneConfig)


def cmd_prune(ns: argparse.Namespace) -> int:
    from bertsent.compression.prune import prune

    result = prune(prune_config(ns))
    c = result.record
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


def cmd_quantize(ns: argparse.Namespace) -> int:
    from bertsent.compression.quantize import quantize

    result = quantize(settings(ns, QuantizeConfig))
    record, validation = result.record, result.record["validation"]
    print(f"{'size':>24}: {_mb(record['fp32_bytes'])} -> {_mb(record['int8_bytes'])}")
    if "skipped" in validation:
        print(f"{'accuracy check':>24}: skipped ({validation['skipped']})")
    else:
        print(f"{'fp32 accuracy':>24}: {validation['fp32_accuracy']:.4f}")
        print(f"{'int8 accuracy':>24}: {validation['int8_accuracy']:.4f}")
        print(f"{'agreement':>24}: {validation['agreement']:.4f}")
    for warning in record["warnings"]:
        print(f"WARNING: {warning}")
    print(f"quantized model written to {result.output_dir}")
    return 0


def cmd_calibrate(ns: argparse.Namespace) -> int:
    from bertsent.calibration import calibrate

    result = calibrate(settings(ns, CalibrateConfig))
    record = result.record
    print(f"{'temperature':>24}: {record['temperature']:.4f} (fitted on {record['fitted_on']})")
    for split in ("validation", "test"):
        if r := record.get(split):
            print(f"{split + ' ECE':>24}: {r['ece_before']:.4f} -> {r['ece_after']:.4f}")
            print(f"{split + ' log-loss':>24}: {r['log_loss_before']:.4f} -> {r['log_loss_after']:.4f}")
    print(f"calibrated model written to {result.output_dir}")
    return 0


def _print_recovered(validation: dict, changed: str) -> None:
    """Validation accuracy before a stage, of its ``changed`` model before recovery (when it recovered),
    and after."""
    for stage in (changed, "after") if "after" in validation else ():
        if validation.get(stage):
            label = "before recovery" if stage == changed else "after"
            before, now = validation["before"]["accuracy"], validation[stage]["accuracy"]
            print(f"{'validation accuracy':>24}: {before:.4f} -> {now:.4f} {label} ({validation['reviews']} reviews)")


def cmd_trim_vocab(ns: argparse.Namespace) -> int:
    from bertsent.compression.trim_vocab import trim_vocab

    result = trim_vocab(settings(ns, TrimVocabConfig))
    record = result.record
    _print_before_after(record, (("vocabulary", "vocab_size"), ("parameters", "parameters")))
    for split, tokens in record["tokens"].items():
        print(
            f"{split + ' tokens':>24}: {100 * tokens['unk_token_share']:.4f}% became [UNK], "
            f"{100 * tokens['resplit_token_share']:.4f}% re-split ({tokens['tokens']:,} tokens)"
        )
    validation = record["validation"]
    _print_recovered(validation, "trimmed")
    print(f"trimmed model saved to {result.output_dir}")
    return 0


def _print_before_after(record: dict, counts: tuple[tuple[str, str], ...]) -> None:
    """A stage record's counts, then its weights' bytes, each as before -> after."""
    for name, key in counts:
        print(f"{name:>24}: {record[key]['before']:,} -> {record[key]['after']:,}")
    print(f"{'weights':>24}: {_mb(record['weights_bytes']['before'])} -> {_mb(record['weights_bytes']['after'])}")


def cmd_factorize(ns: argparse.Namespace) -> int:
    from bertsent.compression.factorize import factorize

    result = factorize(settings(ns, FactorizeConfig))
    record = result.record
    if not record:  # a launcher's other rank: the main process reports
        return 0
    layers, ranks = record["layers"], record["ranks"]
    print(f"{'factorized layers':>24}: {len(ranks)} of {len(layers)} (ranks {sorted(set(ranks.values()))})")
    _print_before_after(record, (("parameters", "parameters"), ("factorized weights", "factorized_weights")))
    validation = record["validation"]
    _print_recovered(validation, "factorized")
    print(f"factorized model saved to {result.output_dir}")
    return 0


def cmd_early_exit(ns: argparse.Namespace) -> int:
    from bertsent.compression.early_exit import early_exit

    result = early_exit(settings(ns, EarlyExitConfig))
    record, validation = result.record, result.record["validation"]
    full, chosen, rule = validation["full_depth"], validation["chosen"], record["rule"]
    header = f"{rule['criterion'] + ' threshold':>24}  accuracy  mean layers  reviews/s"
    print(f"{header} ({validation['reviews']} validation reviews)")
    print(f"{'full depth':>24}  {full['accuracy']:.4f}  {record['layers']:11.2f}  {full['reviews_per_second']:9.1f}")
    for point in validation["curve"]:
        mark = "  <- chosen" if point is chosen else ""
        line = f"{point['accuracy']:.4f}  {point['mean_layers']:11.2f}  {point['reviews_per_second']:9.1f}{mark}"
        print(f"{point['threshold']:>24g}  {line}")
    print(f"{'chosen':>24}: {rule['threshold']:g} ({validation['chosen_by']})")
    print(f"early-exit model written to {result.output_dir}")
    return 0


def cmd_export(ns: argparse.Namespace) -> int:
    from bertsent.compression.export import export

    config = settings(ns, ExportConfig)
    result = export(config)
    out, record = result.output_dir, result.record
    print(f"{'parity max |diff|':>24}: {record['parity']['max_abs_diff']:.3g}")
    if config.format == "onnx":
        print(f"{'onnx size':>24}: {_mb(record['onnx_bytes'])}")
    if config.format == "openvino":
        print(f"{'openvino size':>24}: {_mb(record['openvino_bytes'])}")
    names = {"onnx": "ONNX", "openvino": "OpenVINO"}
    print(f"{names.get(config.format, config.format)} model written to {out}")
    return 0


def cmd_compress(ns: argparse.Namespace) -> int:
    from bertsent.recipes.compare import markdown_table
    from bertsent.recipes.compress import compress

    config = settings(ns, CompressConfig)
    print(markdown_table(compress(config)), end="")
    print(f"every variant and the table (compare/compare.md, pareto.png) are in {config.output_dir}")
    return 0


def cmd_reproduce(ns: argparse.Namespace) -> int:
    from bertsent.recipes.compare import markdown_table
    from bertsent.recipes.reproduce import reproduce

    config = settings(ns, ReproduceConfig)
    result = reproduce(config)
    print(markdown_table(result["rows"]), end="")
    print(f"results page: {Path(config.output_dir) / 'results.md'}" + (f" and {config.doc}" if config.doc else ""))
    return 0


def cmd_ood(ns: argparse.Namespace) -> int:
    from bertsent.data.ood import SETS, fetch

    args = settings(ns, OodArguments)
    names = ns.sets or list(SETS)
    if args.archive and len(names) != 1:
        raise BertsentError("--archive is the archive of one set: name that set")
    for name in names:
        folder = fetch(name, args.output_dir, args.archive)
        source = json.loads((folder / "source.json").read_text())
        print(f"{name}: {source['rows']} reviews {source['labels']} in {folder} (from {source['package']})")
    return 0


# --- the table ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """One ``bertsent`` command: its function, its settings dataclasses (their fields are its flags) and
    the few flags that are not fields (positional arguments, old aliases)."""

    run: Callable[[argparse.Namespace], int]
    help: str
    settings: tuple[type, ...]
    defaults: dict = field(default_factory=dict)
    """Field defaults of this command (e.g. the shared IMDB copy as ``--data``)."""
    skip: frozenset[str] = frozenset()
    """Fields that are not flags of this command: ``name`` in every class, ``Class.name`` in one (positional
    ones are added by ``extra``)."""
    extra: Callable[[argparse.ArgumentParser], None] | None = None


def _skip_test(p: argparse.ArgumentParser) -> None:
    p.add_argument("--skip-test", dest="evaluate_test", action="store_false", help="same as --no-evaluate-test")


def _texts(p: argparse.ArgumentParser) -> None:
    p.add_argument("texts", nargs="*", help="texts to classify (or --input FILE)")
    # A plain switch, not the generated optional-value bool: `--explain "a review"` must not read the
    # review as the flag's value. Same field, same default (the conflict handler replaces the first).
    help_text = next(a.help for a in p._actions if a.dest == "explain")
    p.add_argument("--explain", action="store_true", default=False, help=help_text)


def _models(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="+", help="model folders; the first is the reference for ratios")


def _fp32_embeddings(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--keep-fp32-embeddings",
        dest="quantize_embeddings",
        action="store_false",
        help="same as --no-quantize-embeddings",
    )


def _ood_sets(p: argparse.ArgumentParser) -> None:
    p.add_argument("sets", nargs="*", help="amazon-snippets, rotten-tomatoes (default: both)")


IMDB = {"source": DEFAULT_DATA}
STAGE_DATA = frozenset({"DataConfig.eval_samples"})
"""A compression stage names its own review counts (``validation_samples`` shared with its data, ``unk_samples``,
...); the data's test subset is none of its business, and its old ``--eval-samples`` is the validation count."""
OWN_TRAINING = STAGE_DATA | {"DataConfig.train_samples"}
"""Factorize and early exit train on their own count of training reviews (``--recovery-samples``,
``--head-train-samples``; ``--train-samples`` is the old name)."""

COMMANDS: dict[str, Command] = {
    "train": Command(
        cmd_train,
        "fine-tune a BERT-family model on labelled reviews",
        (DataConfig, TrainingArguments),
        IMDB,
        extra=_skip_test,
    ),
    "distill": Command(
        cmd_distill,
        "distil a fine-tuned teacher into a smaller student",
        (DataConfig, DistillationArguments),
        IMDB,
        extra=_skip_test,
    ),
    "evaluate": Command(
        cmd_evaluate,
        "score a fine-tuned model folder on a data split",
        (ModelArguments, DataConfig, InferenceSettings, EvaluateArguments),
        IMDB,
    ),
    "predict": Command(
        cmd_predict,
        "classify texts given on the command line or in a file",
        (ModelArguments, InferenceSettings, PredictArguments, ExplainSettings),
        extra=_texts,
    ),
    "serve": Command(
        cmd_serve,
        "serve a model folder over HTTP: JSON API with micro-batching, and a web page",
        (ModelArguments, ServeSettings, InferenceSettings),
        skip=frozenset({"batch_size"}),
    ),
    "prune": Command(
        cmd_prune,
        "structured pruning: remove attention heads, FFN neurons or layers",
        (DataConfig, PruneConfig),
        IMDB,
        STAGE_DATA,
    ),
    "quantize": Command(
        cmd_quantize,
        "INT8 post-training quantization, checked against fp32",
        (DataConfig, QuantizeConfig),
        {"source": None},
        STAGE_DATA,
    ),
    "calibrate": Command(
        cmd_calibrate,
        "temperature scaling fitted on validation reviews, folded into the classifier",
        (DataConfig, CalibrateConfig),
        {"source": None},
    ),
    "trim-vocab": Command(
        cmd_trim_vocab,
        "vocabulary trimming: keep the WordPieces of the training texts, slice the embedding matrix",
        (DataConfig, TrimVocabConfig),
        {"source": None},
        STAGE_DATA,
    ),
    "factorize": Command(
        cmd_factorize,
        "low-rank factorization: FFN/attention Linears as two thinner ones from a truncated SVD, then recovery",
        (DataConfig, FactorizeConfig),
        {"source": None},
        OWN_TRAINING,
    ),
    "early-exit": Command(
        cmd_early_exit,
        "early exit: a classifier on every layer's [CLS]; reviews stop at the first confident layer",
        (DataConfig, EarlyExitConfig),
        {"source": None},
        OWN_TRAINING,
    ),
    "export": Command(
        cmd_export,
        "export a model folder to ONNX, OpenVINO IR, a TensorFlow SavedModel or .keras (checked against PyTorch)",
        (ExportConfig,),
    ),
    "compare": Command(
        cmd_compare,
        "trade-off table: size, accuracy and speed of model folders",
        (DataConfig, InferenceSettings, CompareConfig),
        IMDB,
        frozenset({"models", "CompareConfig.batch_size"}),  # --batch-size is the inference settings'
        _models,
    ),
    "compress": Command(
        cmd_compress,
        "recipe: every compression family of a teacher (ONNX/INT8, OpenVINO, distillation, pruning, vocabulary "
        "trimming, factorization, early exit), then compare all",
        (DataConfig, CompressConfig),
        IMDB,
        extra=_fp32_embeddings,
    ),
    "reproduce": Command(
        cmd_reproduce,
        "the full recipe on IMDB: fine-tune, evaluate, compress, compare",
        (DataConfig, ReproduceConfig),
        IMDB | {"validation_samples": 2000, "output_dir": str(Path("~/.cache/bertsent/reproduce").expanduser())},
    ),
    "ood": Command(
        cmd_ood, "out-of-domain review sets shipped in PyPI packages, as test splits", (OodArguments,), extra=_ood_sets
    ),
}


def add_command(subparsers, name: str) -> argparse.ArgumentParser:
    """Add the command ``name`` of :data:`COMMANDS` to ``subparsers``: its settings' flags, then its extras."""
    command = COMMANDS[name]
    parent = settings_parser(command.settings, command.skip, command.defaults)
    p = subparsers.add_parser(
        name,
        help=command.help,
        description=command.help,
        parents=[parent],
        conflict_handler="resolve",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    if command.extra:
        command.extra(p)
    p.set_defaults(func=command.run)
    return p


def build_parser() -> argparse.ArgumentParser:
    from bertsent import __version__

    parser = argparse.ArgumentParser(prog="bertsent", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"bertsent {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, and tracebacks with errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        add_command(sub, name)
    return parser


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    main_process = int(os.environ.get("RANK", "0")) == 0  # torchrun / accelerate launch: one voice per run
    logging.basicConfig(
        level=logging.DEBUG if ns.verbose else logging.INFO if main_process else logging.ERROR,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        if main_process:
            return ns.func(ns)
        with contextlib.redirect_stdout(io.StringIO()):  # the other ranks' summaries repeat the main one's
            return ns.func(ns)
    except BertsentError as e:
        # Input the user can fix: one line, exit 2. A bug is any other exception: it keeps its traceback.
        if ns.verbose:
            traceback.print_exc()
        print(f"bertsent {ns.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
