"""The CLI table against its dataclasses: every field is a flag with the field's default, every flag the
CLI had before the restructure still parses, and only a BertsentError is a one-line exit 2."""

import argparse
import dataclasses
import re

import pytest

from bertsent.argparsing import SETTINGS_KEY, SettingsClash, field_docs, flag_fields, settings, settings_parser
from bertsent.cli import COMMANDS, build_parser, main
from bertsent.config import DataConfig, EarlyExitConfig, FactorizeConfig, PruneConfig, QuantizeConfig

# Every flag and positional each command had before the restructure (bertsent at 20a18ff).
OLD_FLAGS = {
    "train": "--attention-dropout --backend --batch-size --data --device --early-stopping-patience --encoding --epochs "
    "--eval-batch-size --eval-samples --eval-steps --gradient-accumulation-steps --keep-checkpoints --label-column "
    "--labels --logging-steps --lr --max-grad-norm --max-length --max-steps --metric-for-best-model --model "
    "--optimizer --output-dir --precision --resume --save-steps --save-total-limit --seed --skip-test --text-column "
    "--threads --train-samples --truncation --validation-samples --validation-size --warmup-ratio --weight-decay",
    "distill": "--alpha --hidden-weight --student --student-layers --teacher --temperature --skip-test --data --lr",
    "prune": "--batch-size --data --device --drop-layers --encoding --eval-batch-size --eval-samples --ffn-fraction "
    "--heads-fraction --importance-samples --importance-split --keep-layers --label-column --labels --model "
    "--output-dir --recover-epochs --recover-lr --seed --sparsity --text-column --threads --train-samples "
    "--validation-size",
    "serve": "--host --max-batch-size --max-body-bytes --max-chars --max-inputs --max-wait-ms --model --port --threads",
    "export": "--atol --exporter --format --model --opset --output-dir --strings",
    "quantize": "--allow-collapse --batch-size --calibration-samples --data --encoding --eval-samples --label-column "
    "--labels --max-drop --method --model --no-per-channel --opset --output-dir --per-channel "
    "--quantize-embeddings --seed --text-column",
    "evaluate": "--batch-size --data --encoding --eval-samples --label-column --labels --model --output-dir --seed "
    "--split --text-column --threads --train-samples --validation-samples --validation-size",
    "compare": "--batch-size --data --encoding --eval-samples --label-column --labels --latency-samples --names "
    "--output-dir --seed --split --text-column --threads --train-samples --validation-samples --validation-size",
    "compress": "--batch-size --data --distill-epochs --distill-lr --encoding --eval-samples --ffn-fraction "
    "--heads-fraction --keep-fp32-embeddings --label-column --labels --latency-samples --output-dir "
    "--recover-epochs --remeasure --seed --student-layers --teacher --text-column --threads --train-samples "
    "--validation-samples --validation-size",
    "reproduce": "--accuracy-budget --batch-size --data --doc --epochs --eval-samples --fast --lr --max-length "
    "--model --ood --ood-dir --output-dir --train-samples --truncation",
    "ood": "--archive --output-dir",
    "predict": "--batch-size --compile --encoding --input --long-text --max-length --model --output --precision "
    "--resume --stride --text-column --threads --top-k --truncation",
}
OLD_POSITIONALS = {"compare": ["models"], "ood": ["sets"], "predict": ["texts"]}
# Flags that are not a dataclass field: old spellings kept for compatibility.
EXTRA_FLAGS = {"--skip-test", "--keep-fp32-embeddings"}


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_the_table_is_the_list_of_commands():
    assert list(subparsers()) == list(COMMANDS)
    assert set(OLD_FLAGS) <= set(COMMANDS)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_flags_and_defaults_are_the_dataclass_fields(name):
    command, parser = COMMANDS[name], subparsers()[name]
    actions, options = {}, {}
    for a in parser._actions:  # a True-by-default bool has --flag and --no-flag: the first is the field's own
        if a.option_strings and a.dest not in ("help", "evaluate_test"):
            actions.setdefault(a.dest, a)
            options.setdefault(a.dest, []).extend(a.option_strings)
    fields = {f.name: f for cls in command.settings for f in flag_fields(cls, command.skip)}
    if any(f.name == "evaluate_test" for cls in command.settings for f in dataclasses.fields(cls)):
        fields.pop("evaluate_test")
    assert set(actions) == set(fields), "every flag is a field and every field a flag"
    for dest, f in fields.items():
        assert f"--{dest.replace('_', '-')}" in options[dest]
        expected = command.defaults.get(dest, f.default_factory() if callable(f.default_factory) else f.default)
        if expected is dataclasses.MISSING:
            assert actions[dest].required, f"--{dest} has no default: required"
        else:
            assert actions[dest].default == expected, f"--{dest} defaults to the field's default"


@pytest.mark.parametrize("name", list(OLD_FLAGS))
def test_every_flag_the_cli_had_still_exists(name):
    parser = subparsers()[name]
    flags = {s for a in parser._actions for s in a.option_strings}
    missing = set(OLD_FLAGS[name].split()) - flags
    assert not missing, f"{name} lost {sorted(missing)}"
    positionals = [a.dest for a in parser._actions if not a.option_strings]
    assert positionals == OLD_POSITIONALS.get(name, [])
    kept = ("evaluate_test", "quantize_embeddings")
    extras = {s for a in parser._actions for s in a.option_strings if a.dest in kept}
    assert extras & EXTRA_FLAGS == extras & set(OLD_FLAGS[name].split()) & EXTRA_FLAGS


def test_old_spellings_parse_to_the_same_settings():
    ns = build_parser().parse_args(
        ["train", "--data", "d", "--labels", "bad,ok,good", "--validation-size", "40", "--skip-test", "--resume"]
    )
    data = settings(ns, DataConfig)
    assert data.labels == ["bad", "ok", "good"] and data.validation_size == 40 and isinstance(data.validation_size, int)
    ns = build_parser().parse_args(["quantize", "--model", "m", "--output-dir", "o", "--no-per-channel"])
    config = settings(ns, QuantizeConfig)
    assert config.per_channel is False and config.data is None  # no --data: the folder's recorded data
    ns = build_parser().parse_args(["reproduce", "--ood", "--fast"])
    assert ns.ood == [] and ns.fast is True


def test_every_data_option_reaches_the_stage():
    argv = ["prune", "--model", "m", "--output-dir", "o", "--heads-fraction", "0.5", "--data", "d.csv"]
    argv += ["--text-column", "body", "--label-column", "stars", "--labels", "bad,good", "--encoding", "latin-1"]
    ns = build_parser().parse_args([*argv, "--train-samples", "64", "--eval-samples", "30", "--seed", "7"])
    config = settings(ns, PruneConfig)
    assert (config.data.text_column, config.data.label_column, config.data.labels) == ("body", "stars", ["bad", "good"])
    assert (config.data.encoding, config.data.train_samples, config.data.seed) == ("latin-1", 64, 7)
    # prune's old --eval-samples is its validation count, the same field as the data's --validation-samples
    assert config.validation_samples == 30 and config.data.validation_samples == 30
    assert getattr(ns, SETTINGS_KEY)[PruneConfig]


def test_a_bug_keeps_its_traceback_and_user_errors_are_one_line(monkeypatch, capsys):
    def broken(ns):
        raise ValueError("a bug, not bad input")

    monkeypatch.setattr("bertsent.cli.COMMANDS", COMMANDS | {"ood": dataclasses.replace(COMMANDS["ood"], run=broken)})
    with pytest.raises(ValueError, match="a bug"):
        main(["ood"])
    assert main(["train", "--data", "d", "--epochs", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "epochs" in err and len(err.splitlines()) == 1
    assert main(["-v", "train", "--data", "d", "--epochs", "0"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_a_field_two_settings_share_must_mean_one_thing():
    @dataclasses.dataclass
    class Stage:
        eval_samples: int = 500
        """Validation reviews scored (a different meaning from the data's test subset)."""

    with pytest.raises(SettingsClash, match="'eval_samples' in DataConfig and Stage"):
        settings_parser((DataConfig, Stage))
    parser = settings_parser((DataConfig, Stage), frozenset({"DataConfig.eval_samples"}))
    ns = parser.parse_args(["--data", "d", "--eval-samples", "7", "--seed", "3"])
    assert settings(ns, Stage).eval_samples == 7 and settings(ns, DataConfig).eval_samples is None
    # SHARED fields (seed, threads, train and validation reviews) mean the same in both: one flag sets both.
    assert settings(ns, DataConfig).seed == 3


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_flag_has_help_that_quotes_no_measurement(name):
    figure = re.compile(r"\d(\.\d+)?\s*(x|×|%)(?![\w-])|\d+\.\d+ points")
    for cls in COMMANDS[name].settings:
        docs = field_docs(cls)
        for f in flag_fields(cls, COMMANDS[name].skip):
            text = docs.get(f.name, "")
            assert text, f"{name} --{f.name.replace('_', '-')} ({cls.__name__}) has no help text"
            assert not figure.search(text), f"{cls.__name__}.{f.name} quotes a measured figure: {text}"


def test_old_flag_names_parse_as_deprecated_aliases_and_warn_once(caplog, monkeypatch):
    monkeypatch.setattr("bertsent.argparsing._warned", set())  # once per process: this test's process view
    argv = ["prune", "--model", "m", "--output-dir", "o", "--sparsity", "0.5", "--recover-epochs", "2"]
    with caplog.at_level("WARNING", logger="bertsent.argparsing"):
        ns = build_parser().parse_args([*argv, "--recover_lr", "1e-3", "--eval-samples", "9"])
        build_parser().parse_args([*argv, "--eval-samples", "9"])
    config = settings(ns, PruneConfig)
    assert (config.recovery_epochs, config.recovery_lr, config.validation_samples) == (2, 1e-3, 9)
    warned = [r.getMessage() for r in caplog.records]
    assert warned.count("--eval-samples is deprecated: use --validation-samples") == 1
    assert "--recover-epochs is deprecated: use --recovery-epochs" in warned
    ns = build_parser().parse_args(["factorize", "--model", "m", "--output-dir", "o", "--train-samples", "64"])
    assert settings(ns, FactorizeConfig).recovery_samples == 64
    ns = build_parser().parse_args(["early-exit", "--model", "m", "--output-dir", "o", "--train-samples", "64"])
    assert settings(ns, EarlyExitConfig).head_train_samples == 64
