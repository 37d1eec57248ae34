"""Every settings dataclass of bertsent, validated on creation and free of heavy imports.

One place for the options of every stage (training, distillation, data, pruning, quantization,
export, comparison, the recipes, serving and inference), so the CLI builds its flags from them and a
stage never re-declares another's options. Nothing here imports torch.
"""

from __future__ import annotations

import codecs
import dataclasses
import json
import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path

from bertsent.errors import DataError, ModelError, QuantizeSettingsError, SettingsError

TRUNCATION_STRATEGIES = ("head", "tail", "head+tail")
POOLINGS = ("auto", "cls", "mean")
BACKENDS = ("torch", "keras")
BEST_METRICS = ("accuracy", "f1", "f1_macro", "loss")
TRACKERS = ("tensorboard", "wandb", "comet_ml", "aim", "mlflow", "clearml", "dvclive", "swanlab", "trackio")
"""Experiment trackers Hugging Face Accelerate logs to (``--report-to``, as the Trainer names them)."""
IMPORTANCE_SPLITS = ("train", "validation")
LONG_TEXT = ("truncate", "chunk")
PRECISIONS = ("auto", "fp32", "bf16")
"""Inference precisions: ``auto`` (bf16 where the hardware runs it fast and it passes a check against fp32,
else fp32), ``fp32``, or ``bf16`` (autocast for PyTorch, the bf16 inference hint for OpenVINO)."""
INFERENCE_BACKENDS = ("auto", "torch", "onnx", "openvino")
METHODS = ("onnx-dynamic", "onnx-static", "torch-dynamic", "openvino-int8")
FACTORIZE_TARGETS = ("ffn", "attention")
"""Linear layers ``bertsent factorize`` may replace: the FFN's intermediate and output dense layers, and the
attention's query, key, value and output projections."""
FACTORIZE_WEIGHTINGS = ("none", "activation", "fisher")
DEFAULT_ENERGY = 0.9
"""Share of each spectrum ``bertsent factorize`` keeps when neither a rank nor an energy is given, as the recipe."""
TABLES = ("all", "decision")
"""The recipes' tables: every variant, or the rows a decision needs (``CompressConfig.table``)."""
FAST = {"train_samples": 400, "validation_samples": 200, "eval_samples": 400, "epochs": 1, "latency_samples": 20}
DEFAULT_STRIDE = 128
"""Longest default overlap of ``long_text="chunk"``'s windows (:func:`default_stride`)."""
DEFAULT_HOST = "127.0.0.1"
"""Loopback only by default: exposing the API is an explicit choice (``--host``, best with ``--api-key``)."""
DEFAULT_OPSET = 17
MIN_OPSET = 13
"""Per-channel INT8 needs the ``axis`` attribute of (De)QuantizeLinear, added in opset 13."""
MAX_OPSET = 23
"""Highest opset torch 2.13's exporters write (checked: 24 fails after dumping the whole graph to stdout)."""
DEFAULT_ATOL = 1e-4
EXPORTERS = ("torchscript", "dynamo")
PREDICT_ENGINES = ("local", "ray")
"""Where ``bertsent predict --input`` runs: this process, or a Ray cluster (:mod:`bertsent.corpus`)."""
EXPLAIN_METHODS = ("integrated-gradients", "input-x-gradient")
"""Attribution methods of ``--explain-method``, both Captum's on the word embeddings: Integrated Gradients
(``explain_steps`` forward and backward passes per review), or embedding x gradient (one pass, cheaper)."""
DEFAULT_ID2LABEL = {0: "negative", 1: "positive"}
EXIT_CRITERIA = ("entropy", "patience")
"""Early exit's rules: ``entropy`` (DeeBERT: leave once the normalised entropy is below the threshold) or
``patience`` (PABEE: leave once ``threshold`` layers in a row repeat the label)."""
ENTROPY_THRESHOLDS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
"""The entropy thresholds ``bertsent early-exit`` sweeps by default (a two-label softmax at 0.99 has 0.08)."""


@dataclass
class InferenceSettings:
    """How a model folder is run, the same for ``predict``, ``evaluate``, ``compare``, ``serve`` and the
    Python API (:class:`bertsent.predict.Predictor`). ``None`` means what the folder records (the max
    length and truncation it was trained with)."""

    max_length: int | None = None
    """Tokens per review, special tokens included (default: as trained)."""
    truncation: str | None = field(default=None, metadata={"choices": TRUNCATION_STRATEGIES})
    """``head``, ``tail`` or ``head+tail`` (default: as trained)."""
    long_text: str = field(default="truncate", metadata={"choices": LONG_TEXT})
    """``chunk``: average the scores of overlapping ``max_length`` windows covering the whole text."""
    stride: int | None = None
    """Tokens shared by consecutive windows (``long_text="chunk"``); default: half of the folder's max length,
    at most 128."""
    precision: str = field(default="auto", metadata={"choices": PRECISIONS})
    """``auto``: PyTorch runs bf16 autocast where the CPU has AMX (or on a CUDA GPU with bf16), once the
    folder's validation reviews show it agrees with fp32 (checked once per machine, cached in
    ``precision_check.json``; fp32 otherwise, and where the folder records no data); OpenVINO uses its own
    choice for the CPU. ``fp32`` or ``bf16`` force one, unchecked."""
    backend: str = field(default="auto", metadata={"choices": INFERENCE_BACKENDS})
    """``auto`` runs an exported folder as it is (``openvino_model.xml``: OpenVINO, ``model.onnx``: ONNX
    Runtime) and a PyTorch folder by the route measured fastest on this CPU among those that agree with
    fp32 PyTorch on its validation reviews, measured on first use and cached outside the folder
    (:mod:`bertsent.route_choice`); ``torch``, ``onnx`` or ``openvino`` insist on one."""
    batch_size: int = 32
    """Reviews per forward pass."""
    threads: int | None = None
    """CPU threads (PyTorch intra-op; ONNX Runtime's session; OpenVINO's ``INFERENCE_NUM_THREADS``); None:
    ``BERTSENT_THREADS``, else the default."""
    device: str = "auto"
    """PyTorch folders: ``auto`` (a GPU when there is one, else the CPU), ``cpu``, ``cuda``, ``cuda:1``, ``mps``."""
    compile: bool = False
    """``torch.compile`` a PyTorch folder first (~30 s once; same fp32 results, faster on large inputs)."""
    cls_only: bool = True
    """Run a PyTorch BERT's last layer for [CLS] only (same logits to float rounding, fewer FLOPs); False:
    the plain forward."""
    exit_threshold: float | None = None
    """An early-exit folder (``bertsent early-exit``): this exit threshold instead of the one it records
    (entropy: normalised entropy in [0, 1] below which a layer's label is taken; patience: layers in a row
    that must agree; 0: full depth). Other folders ignore it."""

    def __post_init__(self) -> None:
        threshold = self.exit_threshold
        if threshold is not None and (
            isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 <= threshold < math.inf
        ):
            raise SettingsError(f"exit_threshold must be a number >= 0 (0: full depth), got {threshold!r}")
        choices = {"long_text": LONG_TEXT, "precision": PRECISIONS, "backend": INFERENCE_BACKENDS}
        if self.truncation is not None:
            choices["truncation"] = TRUNCATION_STRATEGIES
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise SettingsError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        minimum = {"max_length": 8, "stride": 0, "batch_size": 1, "threads": 1}
        _check_counts(self, minimum, unset=("max_length", "threads", "stride"))
        if self.max_length is not None and self.stride is not None and self.stride >= self.max_length - 2:
            raise SettingsError(f"stride ({self.stride}) must be smaller than max_length - 2 ({self.max_length - 2})")


def default_stride(max_length: int) -> int:
    """Windows of ``max_length`` tokens overlap by half a window, at most :data:`DEFAULT_STRIDE`: valid for any
    max length (it must stay below ``max_length - 2``), the usual overlap for long ones."""
    return min(DEFAULT_STRIDE, max_length // 2)


@dataclass
class TrainingArguments:
    """Settings of one fine-tuning run. Validated on creation; saved as ``training_args.json``."""

    output_dir: str = "runs/bertsent"
    """Folder for the final model, metrics, plots, model card and checkpoints."""
    model: str | None = None
    """Starting weights: a local ``save_pretrained`` folder, a hub name, or None for the embedded MiniLM."""
    max_length: int = 256
    """Tokens per review, special tokens included."""
    truncation: str = field(default="head+tail", metadata={"choices": TRUNCATION_STRATEGIES})
    """Which part of a long review to keep: ``head``, ``tail`` or ``head+tail`` (Sun et al., 2019)."""
    epochs: int = 1
    """Passes over the training reviews (ignored with ``time_budget``)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (overrides ``epochs``; the schedule spans these steps)."""
    batch_size: int = 16
    """Reviews per training step (per process)."""
    eval_batch_size: int = 64
    """Reviews per forward pass when validating and testing."""
    gradient_accumulation_steps: int = 1
    """Steps whose gradients are summed before each optimizer update (effective batch: batch_size x this)."""
    lr: float | str | None = None
    """Peak learning rate. Unset: chosen from the encoder's width and the number of optimizer steps
    (5e-5 for BERT-base, 1e-4 for MiniLM, higher for runs of a few dozen steps); ``auto``: a short
    learning-rate range test picks it (plot in the output folder). Both are recorded in training_args.json
    (``bertsent.training.lr_choice`` documents the rule)."""
    weight_decay: float = 0.01
    """AdamW's decoupled weight decay (L2 for ``adam``); biases and LayerNorm weights are exempt."""
    warmup_ratio: float = 0.1
    """Share of the optimizer steps spent warming the learning rate up linearly (then linear decay)."""
    optimizer: str = field(default="adamw", metadata={"choices": ("adam", "adamw")})
    """``adamw`` (decoupled weight decay) or ``adam`` (plain Adam, L2 weight decay)."""
    max_grad_norm: float = 1.0
    """Gradients are clipped to this global norm before each update."""
    attention_dropout: float | None = 0.0
    """Attention-probability dropout during training. 0 lets PyTorch run its fused attention kernel
    (faster steps: ``benchmarks/step_profile.py`` measures it); None keeps the model's own setting (0.1 for
    BERT)."""
    seed: int = 42
    """Drives initialisation, shuffling and dropout: a rerun with the same seed gives the same metrics."""
    precision: str = field(default="auto", metadata={"choices": ("auto", "fp32", "bf16", "fp16")})
    """``auto``: bf16 autocast on a GPU that supports it and on a CPU with AMX, else fp32; ``fp32``, ``bf16``
    (any device) or ``fp16`` (GPU only)."""
    device: str = "auto"
    """``auto`` (a GPU when there is one, else the CPU), ``cpu``, ``cuda``, ``cuda:1``, ``mps``."""
    threads: int | None = None
    """CPU threads for PyTorch; None leaves PyTorch's default (one per core)."""
    logging_steps: int = 10
    """Log the running loss every N optimizer steps."""
    eval_steps: int | None = None
    """Also validate every N optimizer steps (validation always runs at the end of each epoch)."""
    save_steps: int | None = 200
    """Write a resumable checkpoint every N optimizer steps (and at the end of each epoch)."""
    save_total_limit: int | None = 1
    """How many step checkpoints to keep (None keeps all)."""
    keep_checkpoints: bool = False
    """Keep the checkpoints folder after a successful run (it holds optimizer state: large)."""
    metric_for_best_model: str = field(default="accuracy", metadata={"choices": BEST_METRICS})
    """Validation metric that picks the best checkpoint and drives early stopping."""
    early_stopping_patience: int | None = None
    """Stop after this many validations without improvement of ``metric_for_best_model``."""
    time_budget: str | None = None
    """Train for this long (``45m``, ``1h30m``, ``90s``): the step count is set from the measured step time
    so training, validations and checkpoints end on time, and the learning rate decays to zero at the
    budget (Li et al., 2020). ``epochs`` is then ignored; ``max_steps`` still caps. Test scoring is extra."""
    short_length: int | None = None
    """Sequence-length warm-up: train the first ``short_share`` of the run on the reviews cut to this many
    tokens (same truncation), the rest at ``max_length``. A short step costs less than a full one, so a short
    first phase sees more reviews in the same time (BERT's pre-training ran most of its steps at 128 tokens).
    Validation and test always use ``max_length``."""
    short_share: float = 0.5
    """Share of the run at ``short_length``: of its optimizer steps, or of its time with ``time_budget``."""
    pooling: str = field(default="auto", metadata={"choices": POOLINGS})
    """What a new head reads: ``cls`` (the pooler on [CLS], as ``BertForSequenceClassification``), ``mean``
    (the mean of the token vectors, computed by one added stock BERT layer: ``modeling.pooling``), or
    ``auto``: mean for encoders that declare sentence-transformers mean pooling, the embedded MiniLM
    among them, [CLS] otherwise. A model that already has a trained head keeps what it reads."""
    resume: bool = False
    """Continue from the latest checkpoint in ``output_dir`` (same result as an uninterrupted run)."""
    evaluate_test: bool = True
    """Evaluate the final model on the test split when the data has one."""
    report_to: str = "none"
    """Experiment trackers for loss, learning rate, validation metrics and throughput, through Accelerate:
    ``tensorboard``, ``mlflow``, ``wandb``, ... (comma-separated; ``all`` for every installed one; ``none``).
    Logs go under ``output_dir/logs``; the tracker's package must be installed."""
    calibrate: bool = False
    """Fit a temperature on the validation split and fold it into the classifier (``bertsent calibrate``):
    calibrated scores everywhere the folder goes, the same labels; the test split is scored calibrated."""
    progress: bool | None = None
    """Progress bar: None shows it only on a terminal."""
    backend: str = field(default="torch", metadata={"choices": BACKENDS})
    """``torch`` (the plain PyTorch loop) or ``keras`` (Keras 3 + KerasHub on TensorFlow, ``model.fit``;
    needs ``pip install "bertsent[keras]"``). Both write the same Hugging Face folder."""

    def __post_init__(self) -> None:
        positive = {
            "max_length": self.max_length,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "eval_batch_size": self.eval_batch_size,
            "logging_steps": self.logging_steps,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
        }
        for name, value in positive.items():
            if value < 1:
                raise SettingsError(f"{name} must be >= 1, got {value}")
        for name in (
            "max_steps",
            "eval_steps",
            "save_steps",
            "save_total_limit",
            "early_stopping_patience",
            "threads",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise SettingsError(f"{name} must be >= 1 or unset, got {value}")
        self.lr = _learning_rate(self.lr)
        if self.time_budget is not None:
            budget_seconds(self.time_budget)  # validates now, not after the data is loaded
        if self.weight_decay < 0 or not 0 <= self.warmup_ratio < 1 or self.max_grad_norm <= 0:
            raise SettingsError("weight_decay must be >= 0, warmup_ratio in [0, 1) and max_grad_norm > 0")
        if self.short_length is not None and not 8 <= self.short_length < self.max_length:
            raise SettingsError(f"short_length must be in [8, max_length={self.max_length}), got {self.short_length}")
        if not 0 < self.short_share <= 1:
            raise SettingsError(f"short_share must be in (0, 1], got {self.short_share}")
        if self.attention_dropout is not None and not 0 <= self.attention_dropout < 1:
            raise SettingsError(f"attention_dropout must be in [0, 1), got {self.attention_dropout}")
        choices = {
            "truncation": TRUNCATION_STRATEGIES,
            "optimizer": ("adam", "adamw"),
            "precision": ("auto", "fp32", "bf16", "fp16"),
            "metric_for_best_model": BEST_METRICS,
            "backend": BACKENDS,
            "pooling": POOLINGS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise SettingsError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.backend == "keras":
            # model.fit validates per epoch and keeps the best weights in memory: no mid-epoch state.
            unsupported = {
                "resume": self.resume,
                "max_steps": self.max_steps is not None,
                "eval_steps": self.eval_steps is not None,
                "gradient_accumulation_steps": self.gradient_accumulation_steps != 1,
                "short_length": self.short_length is not None,
                "precision": self.precision not in ("auto", "fp32"),
                "device": self.device not in ("auto", "cpu"),
            }
            if names := [name for name, used in unsupported.items() if used]:
                raise SettingsError(f"--backend keras does not support {', '.join(names)} (use --backend torch)")
        self.report_to_list()  # validates now

    def report_to_list(self) -> list[str]:
        """``report_to`` as Accelerate's ``log_with``: tracker names, ``["all"]``, or ``[]`` for none."""
        names = [n.strip() for n in str(self.report_to).split(",") if n.strip()]
        if names in ([], ["none"]):
            return []
        if names == ["all"]:
            return names
        if unknown := [n for n in names if n not in TRACKERS]:
            raise SettingsError(f"report_to: unknown tracker {unknown[0]!r}; use none, all or {', '.join(TRACKERS)}")
        if self.backend == "keras":
            raise SettingsError("--report-to is for --backend torch (the Accelerate loop)")
        return names


def budget_seconds(budget: str) -> float:
    """``"1h30m"`` / ``"45m"`` / ``"90s"`` / ``"600"`` (seconds) -> seconds."""
    import re

    text = str(budget).strip().lower()
    match = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?", text)
    if not text or not match or not any(match.groups()):
        raise SettingsError(f"time_budget: expected a duration such as 45m, 1h30m or 90s, got {budget!r}")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    total = 3600 * hours + 60 * minutes + seconds
    if total < 10:
        raise SettingsError(f"time_budget must be at least 10 seconds, got {budget!r}")
    return total


def _learning_rate(lr: float | str | None) -> float | str | None:
    """A number, ``auto`` (the range test) or None (the rule); the CLI gives strings."""
    if lr is None or lr == "auto":
        return lr
    try:
        value = float(lr)
    except (TypeError, ValueError):
        raise SettingsError(f"lr must be a number > 0 or auto, got {lr!r}") from None
    if not value > 0:
        raise SettingsError(f"lr must be > 0, got {lr}")
    return value


@dataclass
class DistillationArguments(TrainingArguments):
    """``TrainingArguments`` plus the teacher, the student and the loss mix."""

    teacher: str = ""
    """Fine-tuned teacher folder (its tokenizer and labels are used)."""
    student_layers: int | None = None
    """Student = this many of the teacher's layers, evenly spaced (6 -> 3 keeps layers 0, 2, 4); a teacher's
    mean-pooling layer (``modeling.pooling``) comes along as the student's last layer."""
    student: str | None = None
    """Or start the student from this model (folder or hub name); it must share the teacher's tokenizer."""
    alpha: float = 0.5
    """Weight of the cross-entropy on the true labels; 1 - alpha goes to the teacher's soft labels."""
    temperature: float = 2.0
    """Softmax temperature of the teacher's and student's logits in the soft-label loss (Hinton et al., 2015)."""
    hidden_weight: float = 0.0
    """Weight of the hidden-state MSE (needs equal hidden sizes; runs the teacher at every step)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.teacher:
            raise SettingsError("teacher is required: the fine-tuned model folder to distil from")
        if (self.student_layers is None) == (self.student is None):
            raise SettingsError("give exactly one of student_layers (a share of the teacher's layers) or student")
        if self.student_layers is not None and self.student_layers < 1:
            raise SettingsError(f"student_layers must be >= 1, got {self.student_layers}")
        if not 0 <= self.alpha <= 1:
            raise SettingsError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.temperature <= 0:
            raise SettingsError(f"temperature must be > 0, got {self.temperature}")
        if self.hidden_weight < 0:
            raise SettingsError(f"hidden_weight must be >= 0, got {self.hidden_weight}")
        # The tokenizer (and max length) come from the teacher unless a student model is given.
        if self.model is None:
            self.model = self.student or self.teacher


@dataclass
class DataConfig:
    """Where the reviews come from and how they are split; every stage that reads reviews takes one."""

    source: str = field(metadata={"aliases": ["--data"]})
    """A folder with train/test Parquet/CSV/JSONL files, a single such file, an ``aclImdb`` folder or
    ``.tar.gz`` archive, or a Hugging Face dataset name (online)."""
    text_column: str | None = None
    """Name of the text column (default: auto-detect: text, review, sentence, content)."""
    label_column: str | None = None
    """Name of the label column (default: auto-detect: label, sentiment, labels, polarity)."""
    labels: list[str] | None = None
    """Label names, id = position, e.g. ``bad,ok,good`` (default: negative,positive, or a hub dataset's own)."""
    encoding: str = "utf-8"
    """Text encoding of CSV/TSV/JSON files and aclImdb reviews."""
    validation_size: float = 0.1
    """Validation carved from train: a fraction (<1) or a count; ignored when the source has a validation split."""
    train_samples: int | None = None
    """Stratified, seeded subset of the training reviews (after the validation carve)."""
    eval_samples: int | None = None
    """Stratified, seeded subset of the test reviews."""
    validation_samples: int | None = None
    """Validation reviews used (stratified, seeded); None: all. Compression stages score this many before
    and after (0: they skip the measurement); training needs at least one."""
    test_size: float = 0.2
    """Share carved off as test when the source has no test split."""
    seed: int = 42
    """Drives every split and subset."""

    def __post_init__(self) -> None:
        if isinstance(self.source, os.PathLike):
            self.source = os.fspath(self.source)
        if not isinstance(self.source, str) or not self.source.strip():
            raise DataError("data source is empty: pass a folder, a file or a dataset name")
        for name in ("text_column", "label_column"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise DataError(f"{name} must be a non-empty column name, got {value!r}")
        if self.text_column is not None and self.text_column == self.label_column:
            raise DataError(f"text and label column are both {self.text_column!r}")
        if self.labels is not None:
            self.labels = _check_label_names(split_names(self.labels, parse_label_names))
        try:
            codecs.lookup(self.encoding)
        except (LookupError, TypeError):
            raise DataError(f"unknown encoding {self.encoding!r} (try utf-8 or latin-1)") from None
        size = self.validation_size
        if isinstance(size, float) and size >= 1 and size.is_integer():
            self.validation_size = size = int(size)  # a count that came through a float option
        count = isinstance(size, numbers.Integral) and not isinstance(size, bool) and size >= 1
        fraction = isinstance(size, float) and 0 < size < 1
        if not (count or fraction):
            raise DataError(f"validation_size must be a fraction in (0, 1) or a count >= 1, got {size!r}")
        caps = ("train_samples", "eval_samples", "validation_samples")
        _check_counts(
            self, {"train_samples": 1, "eval_samples": 1}, unset=caps, error=DataError, what="a count >= 1 (or unset)"
        )
        _check_counts(self, {"validation_samples": 0}, unset=caps, error=DataError, what="a count >= 0 (or unset)")
        if not (isinstance(self.test_size, float) and 0 < self.test_size < 1):
            raise DataError(f"test_size must be a fraction between 0 and 1, got {self.test_size!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise DataError(f"seed must be an integer in [0, 2**32), got {self.seed!r}")


def as_data_config(data: DataConfig | str | os.PathLike | None) -> DataConfig | None:
    """A stage's ``data`` setting as a ``DataConfig``: a source path or name is read with the defaults."""
    if data is None or isinstance(data, DataConfig):
        return data
    return DataConfig(source=os.fspath(data))


def passed_on(settings: object, *names: str) -> dict:
    """``names`` of ``settings`` as keywords: what a stage hands, unchanged and under the same names, to
    the settings of a run it starts (prune's batch sizes and device to its recovery training)."""
    return {name: getattr(settings, name) for name in names}


def split_names(value: str | list, parse=None) -> list:
    """A list of names from ``"a,b"``, ``["a,b"]`` or ``["a", "b"]`` (the CLI gives either form)."""
    items = [value] if isinstance(value, str) else list(value)
    parse = parse or (lambda spec: [name.strip() for name in spec.split(",") if name.strip()])
    return [name for item in items for name in (parse(item) if isinstance(item, str) and "," in item else [item])]


def parse_label_names(spec: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]``; empty or duplicate names are errors."""
    if not spec or not spec.strip():
        raise DataError("--labels is empty: give comma-separated names, e.g. negative,positive")
    return _check_label_names([name.strip() for name in spec.split(",")])


def _check_label_names(names: list) -> list[str]:
    if any(not isinstance(n, str) or not n.strip() for n in names):
        raise DataError(f"label names must be non-empty strings, got {names!r}")
    names = [n.strip() for n in names]
    if len(names) < 2:
        raise DataError(f"need at least two label names, got {names!r}")
    seen: set[str] = set()
    for name in names:
        if name.lower() in seen:  # matching is case-insensitive, so "Pos" and "pos" would collide
            raise DataError(f"duplicate label name {name!r} in {', '.join(names)}")
        seen.add(name.lower())
    return names


@dataclass
class PruneConfig:
    """Settings of one pruning run. Validated on creation; saved in ``compression.json``."""

    model: str
    """Fine-tuned model folder (as written by ``bertsent train``, or an earlier ``bertsent prune``)."""
    output_dir: str
    """Folder for the pruned model, ``compression.json``, ``metrics.json`` and model card."""
    heads_fraction: float = 0.0
    """Share of the model's attention heads to remove, in [0, 1); every layer keeps at least one."""
    ffn_fraction: float = 0.0
    """Share of every layer's intermediate (FFN) neurons to remove, in [0, 1)."""
    drop_layers: list[int] | str | None = None
    """Layer indices to remove (``"1,3"`` or ``[1, 3]``); exclusive with ``keep_layers``."""
    keep_layers: int | None = None
    """Keep this many evenly spaced layers, always including the last one."""
    sparsity: float = 0.0
    """Share of each encoder Linear's weights zeroed by magnitude, in [0, 1). Dense storage: no speed-up."""
    importance_samples: int = 256
    """Reviews whose gradients rank heads and neurons."""
    importance_split: str = field(default="train", metadata={"choices": IMPORTANCE_SPLITS})
    """Where those reviews come from: ``train`` (default: keeps validation unseen) or ``validation``."""
    validation_samples: int = field(default=500, metadata={"deprecated": ["--eval-samples"]})
    """Validation reviews scored before and after pruning (0 skips the measurement)."""
    batch_size: int = 16
    """Batch size of the importance pass and of recovery fine-tuning."""
    eval_batch_size: int = 64
    """Batch size of the validation scoring."""
    recovery_epochs: int = field(default=0, metadata={"deprecated": ["--recover-epochs"]})
    """Epochs of recovery fine-tuning of the pruned model (0: none)."""
    recovery_lr: float = field(default=2e-5, metadata={"deprecated": ["--recover-lr"]})
    """Peak learning rate of recovery: low, as the model is already fine-tuned."""
    recovery_time_budget: str | None = None
    """With recovery on (``recovery_epochs`` >= 1), fine-tune for this long instead (``train --time-budget``:
    steps planned from measured step times, the learning rate at zero at the deadline); None: the epochs."""
    recovery_teacher: str | None = None
    """With recovery on, a fine-tuned folder with the same vocabulary (the teacher the model was distilled
    from) whose logits recovery learns from as well as the labels (``distill``'s loss, alpha and
    temperature); None: the labels only."""
    data: DataConfig | str | None = None
    """Labelled reviews, needed for importance, evaluation and recovery (a source string is read with
    the default settings). Its ``train_samples`` caps the recovery reviews; with the training source and
    seed, validation is the split held out in training."""
    seed: int = 42
    """Drives the review subsets and recovery's shuffling."""
    device: str = "auto"
    """``auto`` (a GPU when there is one, else the CPU), ``cpu``, ``cuda``, ``cuda:1``, ``mps``."""
    threads: int | None = None
    """CPU threads for PyTorch; None: ``BERTSENT_THREADS``, else the default."""

    def __post_init__(self) -> None:
        _check_folder_paths(self, SettingsError)
        for name in ("heads_fraction", "ffn_fraction", "sparsity"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise SettingsError(f"{name} must be a fraction in [0, 1), got {value!r}")
        self.drop_layers = _parse_layers(self.drop_layers)
        if self.drop_layers is not None and self.keep_layers is not None:
            raise SettingsError("drop_layers and keep_layers exclude each other: give one")
        minimum = {
            "keep_layers": 1,
            "importance_samples": 1,
            "validation_samples": 0,
            "batch_size": 1,
            "eval_batch_size": 1,
            "recovery_epochs": 0,
            "threads": 1,
        }
        _check_counts(self, minimum, unset=("keep_layers", "threads"))
        if not self.recovery_lr > 0:
            raise SettingsError(f"recovery_lr must be > 0, got {self.recovery_lr!r}")
        if self.recovery_time_budget is not None:
            budget_seconds(self.recovery_time_budget)
        if self.importance_split not in IMPORTANCE_SPLITS:
            raise SettingsError(f"importance_split must be one of {', '.join(IMPORTANCE_SPLITS)}")
        self.data = as_data_config(self.data)
        if self.data is None and (self.heads_fraction or self.ffn_fraction or self.recovery_epochs):
            raise SettingsError("data: ranking heads/FFN neurons and recovery fine-tuning need labelled reviews")
        if not any((self.heads_fraction, self.ffn_fraction, self.sparsity, self.drop_layers, self.keep_layers)):
            raise SettingsError(
                "nothing to prune: set heads_fraction, ffn_fraction, drop_layers, keep_layers or sparsity"
            )


def _parse_layers(value) -> list[int] | None:
    """``"1,3"`` / ``[1, 3]`` -> ``[1, 3]`` (sorted); duplicates and negatives are errors."""
    if value is None:
        return None
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        if not parts or not all(p.isdigit() for p in parts):
            raise SettingsError(f"drop_layers: expected comma-separated layer indices such as 1,3, got {value!r}")
        value = [int(p) for p in parts]
    layers = list(value)
    if not layers or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in layers):
        raise SettingsError(f"drop_layers: expected non-negative layer indices, got {value!r}")
    if len(set(layers)) != len(layers):
        raise SettingsError(f"drop_layers: a layer is given twice in {value!r}")
    return sorted(layers)


@dataclass
class QuantizeConfig:
    """Settings of one quantization run; saved in ``compression.json``."""

    model: str
    """Source folder: a fp32 PyTorch classifier (fine-tuned or pruned)."""
    output_dir: str
    """Folder for the quantized model, ``compression.json`` and model card."""
    method: str = field(default="onnx-dynamic", metadata={"choices": METHODS})
    """``onnx-dynamic`` (weights INT8, activations quantized on the fly), ``onnx-static`` (activation ranges
    calibrated on training reviews), ``torch-dynamic`` (PyTorch's dynamic INT8 Linear) or ``openvino-int8``
    (NNCF post-training quantization to an OpenVINO IR; needs ``bertsent[openvino]``)."""
    per_channel: bool = True
    """One INT8 scale per output channel instead of one per tensor (per-tensor loses accuracy on BERT's
    outlier channels: ``benchmarks/compression.py`` measures both)."""
    quantize_embeddings: bool = False
    """ONNX methods: also store the embedding tables in 8 bits (most of a small model's bytes). ONNX Runtime
    quantizes Gather data like an activation: uint8, one scale per table."""
    calibration_samples: int = 200
    """onnx-static, openvino-int8: training reviews whose activations set the INT8 ranges."""
    validation_samples: int = field(default=500, metadata={"deprecated": ["--eval-samples"]})
    """Validation reviews on which the quantized model is checked against fp32."""
    max_drop: float = 1.0
    """Accuracy points the quantized model may lose before a loud warning."""
    allow_collapse: bool = False
    """Write the folder even when the quantized model collapses onto one class."""
    data: DataConfig | str | None = None
    """Reviews for the check and the calibration; None: the data recorded in the source's training_args.json."""
    opset: int = DEFAULT_OPSET
    """ONNX opset of the exported graph (ONNX methods)."""
    batch_size: int = 32
    """Batch size of the calibration and of the check."""
    seed: int = 42
    """Drives the review subsets."""

    def __post_init__(self) -> None:
        _check_folder_paths(self, QuantizeSettingsError)
        self.data = as_data_config(self.data)
        if self.method not in METHODS:
            raise QuantizeSettingsError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        counts = ("calibration_samples", "validation_samples", "batch_size")
        _check_counts(self, dict.fromkeys(counts, 1), error=QuantizeSettingsError)
        if isinstance(self.max_drop, bool) or not isinstance(self.max_drop, int | float) or not self.max_drop >= 0:
            raise QuantizeSettingsError(f"max_drop must be a number of accuracy points >= 0, got {self.max_drop!r}")
        check_opset(self.opset, QuantizeSettingsError)
        if self.method in ("torch-dynamic", "openvino-int8") and self.quantize_embeddings:
            raise QuantizeSettingsError("quantize_embeddings applies to onnx-dynamic and onnx-static only")


def _check_recovery(epochs: int, lr: float, validation_samples: int) -> None:
    """A stage's recovery fine-tuning settings (factorize, trim-vocab): a positive rate, and validation
    reviews to keep its best epoch by."""
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not lr > 0:
        raise SettingsError(f"recovery_lr must be > 0, got {lr!r}")
    if epochs and not validation_samples:
        raise SettingsError(
            "recovery keeps its best epoch by validation: validation_samples must be >= 1 with recovery"
        )


@dataclass
class TrimVocabConfig:
    """Settings of one vocabulary-trimming run (``bertsent trim-vocab``); saved in ``compression.json``."""

    model: str
    """Source folder: a fp32 PyTorch classifier with a WordPiece tokenizer (fine-tuned, distilled or pruned)."""
    output_dir: str
    """Folder for the trimmed model, its tokenizer, ``compression.json``, ``metrics.json`` and model card."""
    coverage: float = 1.0
    """Keep the most frequent WordPieces of the training texts until they cover this share of their
    occurrences, in (0, 1]; 1 keeps every piece that occurs. Special tokens are always kept."""
    min_count: int = 1
    """Keep only WordPieces that occur at least this many times in the training texts."""
    train_samples: int | None = None
    """Training reviews whose WordPieces are counted (stratified, seeded); None: every training review."""
    validation_samples: int = field(default=500, metadata={"deprecated": ["--eval-samples"]})
    """Validation reviews classified by the source and the trimmed model (0 skips the measurement)."""
    unk_samples: int | None = None
    """Test reviews on which the share of tokens that became [UNK] is measured (tokenization only);
    None: the whole test split."""
    recovery_epochs: int = 0
    """Epochs of recovery fine-tuning of the trimmed model (0: none). A trim that drops pieces still in
    use re-splits their words into kept pieces the model never saw in those places (``coverage`` below
    1): recovery lets it learn them. With every used piece kept nothing is re-split, so none is needed."""
    recovery_lr: float = 5e-5
    """Peak learning rate of recovery: low, as the model is already fine-tuned."""
    recovery_samples: int | None = 4000
    """Training reviews of the recovery (stratified, seeded); None: every training review."""
    recovery_time_budget: str | None = None
    """With recovery on (``recovery_epochs`` >= 1), fine-tune for this long instead (``train --time-budget``);
    None: the epochs."""
    data: DataConfig | str | None = None
    """Reviews whose training split is counted; None: the data recorded in the source's training_args.json."""
    batch_size: int = 16
    """Batch size of recovery fine-tuning."""
    eval_batch_size: int = 32
    """Batch size of the validation measurement (and of recovery's validation)."""
    seed: int = 42
    """Drives the review subsets and the stage's shuffling."""
    device: str = "auto"
    """``auto`` (a GPU when there is one, else the CPU), ``cpu``, ``cuda``, ``cuda:1``, ``mps``."""
    threads: int | None = None
    """CPU threads for PyTorch; None: ``BERTSENT_THREADS``, else the default."""

    def __post_init__(self) -> None:
        _check_folder_paths(self, SettingsError)
        coverage = self.coverage
        if isinstance(coverage, bool) or not isinstance(coverage, int | float) or not 0 < coverage <= 1:
            raise SettingsError(f"coverage must be a share in (0, 1], got {coverage!r}")
        minimum = {
            "min_count": 1,
            "train_samples": 1,
            "validation_samples": 0,
            "unk_samples": 1,
            "recovery_epochs": 0,
            "recovery_samples": 1,
            "batch_size": 1,
            "eval_batch_size": 1,
            "threads": 1,
        }
        _check_counts(self, minimum, unset=("train_samples", "unk_samples", "recovery_samples", "threads"))
        _check_recovery(self.recovery_epochs, self.recovery_lr, self.validation_samples)
        if self.recovery_time_budget is not None:
            budget_seconds(self.recovery_time_budget)
        self.data = as_data_config(self.data)


@dataclass
class FactorizeConfig:
    """Settings of one low-rank factorization run (``bertsent factorize``); saved in ``compression.json``."""

    model: str
    """Source folder: a fp32 PyTorch BERT classifier (fine-tuned, distilled, pruned or vocabulary-trimmed)."""
    output_dir: str
    """Folder for the factorized model, ``compression.json``, ``metrics.json`` and model card."""
    rank: int | None = None
    """Rank of every factorized layer (capped at min(in, out)); exclusive with ``energy``."""
    energy: float | None = None
    """Per layer, the smallest rank keeping this share of the squared singular values, in (0, 1]; exclusive
    with ``rank``. Neither given: 0.9, the recipe's choice."""
    targets: str = "ffn,attention"
    """Comma-separated layers to factorize: ``ffn`` (intermediate and output dense), ``attention`` (query,
    key, value and output projections)."""
    weighting: str = field(default="none", metadata={"choices": FACTORIZE_WEIGHTINGS})
    """``none`` (plain SVD), ``activation`` (columns scaled by the RMS of each input feature on training
    reviews, as ASVD), or ``fisher`` (rows scaled by the root of their summed squared gradients, as FWSVD)."""
    calibration_samples: int = 128
    """Training reviews whose activations (``activation``) or gradients (``fisher``) weight the SVD."""
    recovery_samples: int | None = field(default=2000, metadata={"deprecated": ["--train-samples"]})
    """Training reviews of the recovery fine-tuning (stratified, seeded); None: every training review."""
    validation_samples: int = field(default=500, metadata={"deprecated": ["--eval-samples"]})
    """Validation reviews scored before and after (and by recovery, to keep its best epoch); 0 skips them."""
    recovery_epochs: int = 1
    """Epochs of recovery fine-tuning of the factorized model (0: none)."""
    recovery_lr: float = 5e-5
    """Peak learning rate of recovery: low, as the model is already fine-tuned."""
    recovery_time_budget: str | None = None
    """With recovery on (``recovery_epochs`` >= 1), fine-tune for this long instead (``train --time-budget``);
    None: the epochs."""
    data: DataConfig | str | None = None
    """Labelled reviews; None: the data recorded in the source's training_args.json."""
    batch_size: int = 16
    """Batch size of the weighting pass and of recovery fine-tuning."""
    eval_batch_size: int = 64
    """Batch size of the validation scoring."""
    seed: int = 42
    """Drives the review subsets and the stage's shuffling."""
    device: str = "auto"
    """``auto`` (a GPU when there is one, else the CPU), ``cpu``, ``cuda``, ``cuda:1``, ``mps``."""
    threads: int | None = None
    """CPU threads for PyTorch; None: ``BERTSENT_THREADS``, else the default."""

    def __post_init__(self) -> None:
        _check_folder_paths(self, SettingsError)
        if self.rank is not None and self.energy is not None:
            raise SettingsError("give one of rank (--rank R) and energy (--energy 0.9), not both")
        if self.rank is None and self.energy is None:
            self.energy = DEFAULT_ENERGY
        if self.rank is not None and (_not_int(self.rank) or self.rank < 1):
            raise SettingsError(f"rank must be an integer >= 1, got {self.rank!r}")
        energy = self.energy
        if energy is not None and (
            isinstance(energy, bool) or not isinstance(energy, int | float) or not 0 < energy <= 1
        ):
            raise SettingsError(f"energy must be a share in (0, 1], got {energy!r}")
        self.targets = ",".join(self.target_list)
        if self.weighting not in FACTORIZE_WEIGHTINGS:
            raise SettingsError(f"weighting must be one of {', '.join(FACTORIZE_WEIGHTINGS)}, got {self.weighting!r}")
        minimum = {
            "calibration_samples": 1,
            "recovery_samples": 1,
            "validation_samples": 0,
            "recovery_epochs": 0,
            "batch_size": 1,
            "eval_batch_size": 1,
            "threads": 1,
        }
        _check_counts(self, minimum, unset=("recovery_samples", "threads"))
        _check_recovery(self.recovery_epochs, self.recovery_lr, self.validation_samples)
        if self.recovery_time_budget is not None:
            budget_seconds(self.recovery_time_budget)
        self.data = as_data_config(self.data)

    @property
    def target_list(self) -> list[str]:
        """The targets, known and in :data:`FACTORIZE_TARGETS` order."""
        given = self.targets if isinstance(self.targets, str | list | tuple) else [self.targets]
        names = [str(name).strip().lower() for name in split_names(given) if str(name).strip()]
        unknown = [name for name in names if name not in FACTORIZE_TARGETS]
        if unknown or not names:
            found = f"unknown target {unknown[0]!r}" if unknown else "no target given"
            raise SettingsError(f"targets: {found}: choose from {', '.join(FACTORIZE_TARGETS)} (comma-separated)")
        return [name for name in FACTORIZE_TARGETS if name in names]


@dataclass
class EarlyExitConfig:
    """Settings of ``bertsent early-exit``: a classifier on every encoder layer's [CLS], trained with the
    backbone frozen, and the exit threshold chosen on validation reviews; saved in ``compression.json``."""

    model: str
    """Source folder: a fp32 PyTorch BERT classifier (fine-tuned, distilled or pruned; not quantized)."""
    output_dir: str
    """Folder for the model, its exit heads (``early_exit.safetensors``), ``compression.json``, the curve and card."""
    criterion: str = field(default="entropy", metadata={"choices": EXIT_CRITERIA})
    """``entropy``: a review leaves at the first layer whose softmax entropy, divided by ln(labels) so it lies
    in [0, 1], is below the threshold (DeeBERT); ``patience``: at the first layer whose label the
    ``threshold`` layers before it also gave (PABEE)."""
    exit_threshold: float | None = None
    """Record this threshold instead of the one chosen on validation (0: full depth; patience: an integer)."""
    thresholds: list[float] | None = None
    """Thresholds swept on validation (default: entropy 0, 0.02, 0.05, 0.1 .. 0.6; patience 0, 1 .. layers - 2)."""
    max_drop: float = 0.5
    """Accuracy points below its own full-depth accuracy (on validation) the chosen threshold may lose: the
    threshold with the fewest mean layers within it is chosen."""
    head_train_samples: int | None = field(default=2000, metadata={"deprecated": ["--train-samples"]})
    """Training reviews the exit heads learn from (stratified, seeded); None: every training review."""
    validation_samples: int = field(default=500, metadata={"deprecated": ["--eval-samples"]})
    """Validation reviews of the sweep: accuracy, mean layers and reviews/s for every threshold."""
    head_epochs: int = 10
    """Epochs of head training over the training reviews' cached [CLS] vectors (the backbone runs once)."""
    head_lr: float = 1e-3
    """Peak learning rate of the heads (AdamW, linear decay)."""
    batch_size: int = 32
    """Batch size of the backbone passes, the timed runs and head training."""
    data: DataConfig | str | None = None
    """Labelled reviews (heads learn from train, the threshold is chosen on validation); None: the data
    recorded in the source's training_args.json, split as in training."""
    seed: int = 42
    """Drives the review subsets and the stage's shuffling."""
    device: str = "auto"
    """``auto`` (a GPU when there is one, else the CPU), ``cpu``, ``cuda``, ``cuda:1``, ``mps``."""
    threads: int | None = None
    """CPU threads for PyTorch; None: ``BERTSENT_THREADS``, else the default."""

    def __post_init__(self) -> None:
        _check_folder_paths(self, SettingsError)
        check_exit_rule(self.criterion, 0)
        minimum = {"head_train_samples": 1, "validation_samples": 1, "head_epochs": 1, "batch_size": 1, "threads": 1}
        _check_counts(self, minimum, unset=("head_train_samples", "threads"))
        drop, lr = self.max_drop, self.head_lr
        if isinstance(drop, bool) or not isinstance(drop, int | float) or not 0 <= drop < math.inf:
            raise SettingsError(f"max_drop must be a number of accuracy points >= 0, got {drop!r}")
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not 0 < lr < math.inf:
            raise SettingsError(f"head_lr must be a number > 0, got {lr!r}")
        if self.thresholds is not None:
            try:
                self.thresholds = [float(t) for t in split_names(self.thresholds)]
            except (TypeError, ValueError):
                raise SettingsError(f"thresholds must be numbers, got {self.thresholds!r}") from None
            if not self.thresholds:
                raise SettingsError("thresholds: give at least one threshold (or leave it out for the default sweep)")
        for threshold in [*(self.thresholds or ()), *([] if self.exit_threshold is None else [self.exit_threshold])]:
            check_exit_rule(self.criterion, threshold)
        self.data = as_data_config(self.data)


def check_exit_rule(criterion: str, threshold: object) -> None:
    """A SettingsError unless ``criterion`` is an early-exit rule and ``threshold`` fits it: a number >= 0,
    a whole number of layers for ``patience``."""
    if criterion not in EXIT_CRITERIA:
        raise SettingsError(f"criterion must be one of {', '.join(EXIT_CRITERIA)}, got {criterion!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 <= threshold < math.inf:
        raise SettingsError(f"exit thresholds must be numbers >= 0 (0: full depth), got {threshold!r}")
    if criterion == "patience" and not float(threshold).is_integer():
        raise SettingsError(f"a patience threshold is a number of layers (an integer), got {threshold!r}")


@dataclass
class CalibrateConfig:
    """Settings of ``bertsent calibrate``: one temperature fitted on validation reviews, folded into the weights."""

    model: str
    """PyTorch model folder (fine-tuned, distilled or pruned; quantize and export after calibrating)."""
    output_dir: str | None = None
    """Where the calibrated folder goes; None: the model folder itself (its exports are then stale and removed)."""
    data: DataConfig | str | None = None
    """Labelled reviews (T is fitted on their validation split, ``validation_samples`` of them when set);
    None: the data recorded in the folder's training_args.json, split as in training."""
    evaluate_test: bool = True
    """Also score the test split (the recorded ``eval_samples``) to report ECE and log-loss before and after."""
    batch_size: int = 64
    """Batch size of the scoring passes."""
    threads: int | None = None
    """CPU threads for PyTorch; None: ``BERTSENT_THREADS``, else the default."""

    def __post_init__(self) -> None:
        if isinstance(self.model, os.PathLike):
            self.model = os.fspath(self.model)
        if not isinstance(self.model, str) or not self.model.strip():
            raise SettingsError(f"model must be a folder path, got {self.model!r}")
        if self.output_dir is not None:
            self.output_dir = os.fspath(self.output_dir)
        self.data = as_data_config(self.data)
        _check_counts(self, {"batch_size": 1, "threads": 1}, unset=("threads",))


@dataclass
class CompareConfig:
    """What to compare and how to measure it."""

    models: list[str]
    """Model folders to compare (PyTorch, ONNX, OpenVINO: any folder bertsent wrote)."""
    data: DataConfig
    split: str = field(default="test", metadata={"choices": ("test", "validation")})
    """Split whose reviews give the accuracy column."""
    batch_size: int | None = None
    """Batch size of the accuracy and throughput runs; None: ``inference.batch_size`` (32 by default)."""
    latency_samples: int = 100
    """Reviews timed one at a time for the batch-1 latency percentiles."""
    threads: int | None = None
    """CPU threads for every folder (both backends); None: ``inference.threads``."""
    output_dir: str | None = None
    """Where ``compare.json``, ``compare.md`` and the plot go (default: no files, the table is printed)."""
    names: list[str] = field(default_factory=list)
    """Display names (default: folder names)."""
    inference: InferenceSettings = field(default_factory=InferenceSettings)
    """How every folder is run; ``batch_size`` and ``threads`` above, when set, override its own."""

    def __post_init__(self) -> None:
        if not self.models:
            raise SettingsError("models: give at least one model folder")
        for folder in self.models:
            if not (Path(folder) / "config.json").is_file():
                raise ModelError(f"{folder}: not a model folder (no config.json)")
        self.resolved_inference()  # batch_size/threads validated with the inference settings
        if self.latency_samples < 1:
            raise SettingsError(f"latency_samples must be an integer >= 1, got {self.latency_samples!r}")
        self.names = split_names(self.names)
        if self.names and len(self.names) != len(self.models):
            raise SettingsError(f"names: {len(self.names)} names for {len(self.models)} models")

    def resolved_inference(self) -> InferenceSettings:
        """The settings every folder runs with: ``inference``, with ``batch_size``/``threads`` when set."""
        given = {"batch_size": self.batch_size, "threads": self.threads}
        return dataclasses.replace(self.inference, **{k: v for k, v in given.items() if v is not None})


@dataclass
class CompressConfig:
    """Settings of the recipe; the data's ``train_samples`` feed distillation, recovery and trimming's
    piece counts and cap the stages' own short trainings (factorize, early exit), its ``eval_samples``
    the comparison on test and trimming's [UNK] share."""

    teacher: str
    """Fine-tuned PyTorch teacher folder every variant is made from."""
    output_dir: str
    """Folder for every variant (one sub-folder each) and ``compare/``; rerun to continue."""
    data: DataConfig
    student_layers: int | None = None
    """Layers of the student; None: half of the teacher's."""
    distill_epochs: int = 2
    """Epochs of distillation."""
    distill_lr: float = 1e-4
    """Peak learning rate of distillation."""
    batch_size: int = 16
    """Batch size of every training stage (distillation, recoveries)."""
    heads_fraction: float = 0.25
    """Share of the student's attention heads pruned (0 with ffn_fraction 0 skips pruning)."""
    ffn_fraction: float = 0.25
    """Share of the student's FFN neurons pruned."""
    recovery_epochs: int = field(default=1, metadata={"deprecated": ["--recover-epochs"]})
    """Epochs of recovery fine-tuning after pruning and the covering vocabulary trim."""
    recovery_lr: float = field(default=5e-5, metadata={"deprecated": ["--recover-lr"]})
    """Peak learning rate of those recoveries."""
    quantize_embeddings: bool = True
    """Also store embedding tables as INT8 (most of a small model's bytes): the student's, and a
    teacher variant."""
    trim_vocab: bool = True
    """Trim the smallest student's vocabulary to the training texts' WordPieces, then INT8 it (embedding
    tables are most of a small model's bytes)."""
    trim_coverage: float | None = 0.95
    """With ``trim_vocab``, also a smaller trim: only the most frequent pieces, covering this share of the
    training texts' token occurrences (``trim-vocab --coverage``), recovery fine-tuned for ``recovery_epochs``
    (the words of the dropped pieces are re-split into kept ones), then INT8. 0.95 keeps about 7,000 of
    MiniLM's 30,522 on IMDB, which with the pruned 3-layer student is what fits in 8 MB; None or 1 skips it."""
    factorize_energy: float | None = DEFAULT_ENERGY
    """Factorize the teacher's linears keeping this share of each spectrum (``bertsent factorize --energy``),
    with a recovery epoch; 0 or None skips it."""
    early_exit: bool = True
    """Add the teacher with a classifier on every layer, exiting early (``bertsent early-exit``)."""
    latency_samples: int = 100
    """Reviews timed one at a time for the batch-1 latency percentiles of the table."""
    threads: int | None = None
    """CPU threads for every stage and measurement; None: ``BERTSENT_THREADS``, else the default."""
    remeasure: bool = False
    """Measure the table again even when every stage was complete and ``compare/`` already holds it
    (e.g. on a quieter machine); otherwise a complete recipe is skipped whole. Stored predictions are
    reused (the same folder, route and settings give the same scores): speed and latency are timed again."""
    time_budget: str | None = None
    """The recipe's wall-clock time (``2h``, ``90m``), shared by one planner (``recipes.plan``): each training
    stage (distillation, each recovery) trains for its share (``train --time-budget``) of what is left after
    the finished stages and the time reserved for scoring, estimated from measured throughput. None: the
    epochs above."""
    speed_samples: int | None = 1000
    """Test reviews (the first ones of the split, the same for every row) whose batch throughput the table
    times; accuracy is always on every test review. None: time the whole split."""
    table: str = field(default="all", metadata={"choices": TABLES})
    """Rows of the table: ``all`` (every variant), or ``decision``: the teacher, each family's deployable
    (INT8 / OpenVINO) variants, the factorized and early-exit teacher; the fp32 PyTorch intermediates
    (student, pruned, trimmed) and the ONNX fp32 export are built (later stages need them) but not scored."""

    def __post_init__(self) -> None:
        if not (Path(self.teacher) / "config.json").is_file():
            raise ModelError(f"{self.teacher}: not a model folder (no config.json)")
        if self.student_layers is not None and self.student_layers < 1:
            raise SettingsError(f"student_layers must be >= 1, got {self.student_layers}")
        if self.distill_epochs < 1 or self.recovery_epochs < 0:
            raise SettingsError("distill_epochs must be >= 1 and recovery_epochs >= 0")
        for name in ("heads_fraction", "ffn_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise SettingsError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.factorize_energy is not None and not 0 <= self.factorize_energy < 1:
            raise SettingsError(f"factorize_energy must be in [0, 1) (0: skip), got {self.factorize_energy}")
        coverage = self.trim_coverage
        share = isinstance(coverage, int | float) and not isinstance(coverage, bool) and 0 < coverage <= 1
        if coverage is not None and not share:
            raise SettingsError(f"trim_coverage must be a share in (0, 1] (1: skip), got {coverage!r}")
        _check_table(self)


@dataclass
class ReproduceConfig:
    """The recipe's settings; ``fast`` swaps in small slices (see ``FAST``)."""

    data: DataConfig | str
    """The reviews; a source string reads them with validation capped at 2,000 reviews (enough to pick
    checkpoints, cheap to score every epoch). ``eval_samples`` None scores all test reviews."""
    output_dir: str
    """Folder for the teacher, every variant and the comparison; rerun to continue from finished stages."""
    model: str | None = None
    """Teacher's starting weights (None: the embedded all-MiniLM-L6-v2)."""
    teacher: str | None = None
    """An already fine-tuned folder (a ``train`` run's, with its test scores) to use as the teacher instead
    of fine-tuning one: copied into ``output_dir/teacher``, calibrated there unless ``--no-calibrate`` or
    it already is, and described on the page by its own training_args.json. The teacher settings below
    (model, time budget, epochs, lr, lengths) then go unused."""
    fast: bool = False
    """Small slices and one epoch (``FAST``): the whole recipe in minutes, to check it runs."""
    time_budget: str | None = "150m"
    """The whole recipe's wall-clock time, from an empty cache to the page. One planner (``recipes.plan``)
    gives every training stage (the teacher most, then distillation and each recovery) its share of what is
    left after the finished stages and the scoring time it reserves, estimated from measured throughput;
    each trains for it (``train --time-budget``). ``none``: no plan, every stage trains its epochs. Fast
    mode trains epochs. (Until issue 36 this was the teacher's training time: that is
    ``teacher_time_budget`` now.)"""
    teacher_time_budget: str | None = None
    """The teacher's own training time (``train --time-budget``: steps planned to end on time, the learning
    rate decayed to zero at the deadline) instead of its planned share; with ``--time-budget none``, the
    teacher alone trains for it and the other stages their epochs."""
    epochs: int = 2
    """The teacher's epochs when it has no time budget."""
    lr: float = 1e-4
    """The teacher's peak learning rate."""
    batch_size: int = 16
    """Batch size of the teacher and of every later training stage."""
    max_length: int = 256
    """Tokens per review, special tokens included, for the teacher and every variant."""
    truncation: str = field(default="head+tail", metadata={"choices": TRUNCATION_STRATEGIES})
    """Which part of a long review to keep: ``head``, ``tail`` or ``head+tail``."""
    short_length: int | None = None
    """The teacher's sequence-length warm-up (``train --short-length``): the first half of its time at this
    many tokens (``benchmarks/time_budget.py`` compares it with none). Default: half of
    ``max_length`` with a time budget, none without one; 0: off."""
    calibrate: bool = True
    """Fit the teacher's temperature on validation and fold it in (``train --calibrate``); the page reports
    its test ECE and log-loss before and after. ``--no-calibrate``: keep the raw scores."""
    latency_samples: int = 100
    """Reviews timed one at a time for the batch-1 latency percentiles of the table."""
    doc: str | None = None
    """Also write the results page here (e.g. docs/results.md), its two plots beside it as SVG."""
    ood: list[str] = field(default_factory=lambda: ["amazon-snippets", "rotten-tomatoes"], metadata={"nargs": "*"})
    """Out-of-domain sets (``bertsent.ood``) every variant is also scored on; fetched with pip when
    missing from ``ood_dir``, and skipped with a warning when that fails (offline). ``--ood`` with no
    names: none."""
    ood_dir: str = "~/.cache/bertsent/ood"
    """Where the out-of-domain sets are kept."""
    accuracy_budget: float = 1.5
    """Accuracy points a compressed variant may lose: the page names the fastest variant within it."""
    speed_samples: int | None = 1000
    """Test reviews (the first ones, the same for every row) whose batch throughput the table times;
    accuracy is always on every test review. None: time the whole split."""
    table: str = field(default="decision", metadata={"choices": TABLES})
    """``decision``: the teacher, each survey family's deployable (INT8 / OpenVINO) variants, the factorized
    and early-exit teacher (``CompressConfig.table``); ``all``: every variant, intermediates included."""

    def __post_init__(self) -> None:
        if not isinstance(self.data, DataConfig):
            self.data = DataConfig(source=os.fspath(self.data), validation_samples=2000)
        self.ood = list(self.ood)
        for name in ("time_budget", "teacher_time_budget"):
            if str(getattr(self, name)).strip().lower() in ("none", "off", ""):
                setattr(self, name, None)  # --time-budget none: train epochs
            elif getattr(self, name) is not None:
                budget_seconds(getattr(self, name))  # validates now, not hours into the run
        _check_table(self)
        if self.fast:
            self.time_budget = self.teacher_time_budget = None
            self.epochs = min(self.epochs, FAST["epochs"])
            self.latency_samples = min(self.latency_samples, FAST["latency_samples"])
            caps = {k: min(getattr(self.data, k) or v, v) for k, v in FAST.items() if hasattr(self.data, k)}
            self.data = dataclasses.replace(self.data, **caps)
        if self.epochs < 1 or self.batch_size < 1 or self.max_length < 8:
            raise SettingsError("epochs and batch_size must be >= 1 and max_length >= 8")
        if self.short_length is None:
            budgeted = self.time_budget or self.teacher_time_budget
            self.short_length = self.max_length // 2 if budgeted and self.max_length >= 16 else 0
        self.short_length = self.short_length or None  # 0: no warm-up
        if self.short_length is not None and not 8 <= self.short_length < self.max_length:
            raise SettingsError(
                f"short_length must be in [8, max_length={self.max_length}) or 0 (off), got {self.short_length}"
            )
        if self.accuracy_budget < 0:
            raise SettingsError(f"accuracy_budget must be >= 0 points, got {self.accuracy_budget}")
        if self.teacher is not None:
            self.teacher = os.fspath(Path(self.teacher).expanduser())
            for name in ("config.json", "training_args.json", "metrics.json"):
                if not (Path(self.teacher) / name).is_file():
                    raise ModelError(f"{self.teacher}: not a fine-tuned model folder (no {name}), for --teacher")
            try:
                metrics = json.loads((Path(self.teacher) / "metrics.json").read_text())
            except ValueError as e:  # JSON errors are ValueErrors
                raise ModelError(f"{self.teacher}/metrics.json: not JSON ({e})") from e
            if "test_accuracy" not in metrics:
                raise ModelError(f"{self.teacher}/metrics.json: no test scores (train it with evaluate_test on)")


@dataclass
class ServeSettings:
    """Settings of ``bertsent serve``: where to listen, how to batch, what to refuse. Validated on creation."""

    host: str = DEFAULT_HOST
    """Address to listen on: loopback by default; ``0.0.0.0`` exposes the API (best with ``--api-key``)."""
    port: int = 8000
    """0 picks a free port."""
    max_batch_size: int = 32
    """Most texts the model runs at once (also the Predictor's batch size when the app loads the folder)."""
    max_wait_ms: float = 5.0
    """How long the first waiting text may wait for others to join its batch."""
    max_inputs: int = 64
    """Most texts in one request (more: 422, as the OpenAPI document's ``maxItems`` states)."""
    max_chars: int = 20_000
    """Longest text, in characters (longer: 422, as the OpenAPI document's ``maxLength`` states)."""
    max_body_bytes: int = 16_000_000
    """Largest request body (larger: 413, checked on the Content-Length header and on the bytes read). The
    default holds the largest request the OpenAPI document allows with the other defaults (64 texts of 20,000
    characters, at most 12 bytes each when JSON-escaped), so no request the document allows gets a 413."""
    threads: int | None = None
    """CPU threads for PyTorch when the app loads the folder; None leaves PyTorch's default."""
    api_key: str | None = field(default=None, repr=False)
    """Require the header ``Authorization: Bearer KEY`` on /predict and /info (else 401); /health, the page
    and the docs stay open. Default: $BERTSENT_API_KEY (better than the flag, which ps shows)."""
    graceful_timeout: float = 30.0
    """On SIGTERM or Ctrl-C, seconds the requests already accepted get to be answered before they are cut."""
    max_batch_tokens: int = 16_384
    """Most padded tokens the model runs at once: a batch's rows times its longest row (as
    text-embeddings-inference counts them), so long texts go in smaller batches and short ones are not
    padded to them. At least the model's max length."""
    max_concurrent_requests: int = 512
    """Most /predict requests held at once (queued or running); past it a request gets 429 with a
    Retry-After header at once, instead of a longer queue."""
    warmup: bool = True
    """Run one batch of the largest shape (full-length rows, as many as the caps allow) before serving, so the
    first requests are not slow and the server's memory is at its working size from the start."""

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host.strip():
            raise SettingsError("host must be a host name or address, e.g. 127.0.0.1")
        if _not_int(self.port) or not 0 <= self.port <= 65535:
            raise SettingsError(f"port must be an integer in [0, 65535] (0: any free port), got {self.port!r}")
        limits = (
            "max_batch_size",
            "max_inputs",
            "max_chars",
            "max_body_bytes",
            "max_batch_tokens",
            "max_concurrent_requests",
        )
        _check_counts(self, dict.fromkeys(limits, 1), what="a positive integer")
        wait = self.max_wait_ms
        if isinstance(wait, bool) or not isinstance(wait, int | float) or not math.isfinite(wait) or wait < 0:
            raise SettingsError(f"max_wait_ms must be a number >= 0, got {wait!r}")
        _check_counts(self, {"threads": 1}, unset=("threads",), what="a positive integer or None")
        key = self.api_key
        if key is not None and (not isinstance(key, str) or not key or not all("!" <= c <= "~" for c in key)):
            # Never the value itself: it is a secret.
            raise SettingsError("api_key must be non-empty printable ASCII without spaces (it goes in an HTTP header)")
        grace = self.graceful_timeout
        if isinstance(grace, bool) or not isinstance(grace, int | float) or not math.isfinite(grace) or grace < 0:
            raise SettingsError(f"graceful_timeout must be a number of seconds >= 0, got {grace!r}")


def _check_table(settings) -> None:
    """The recipes' ``table``, ``speed_samples`` and whole-recipe ``time_budget``, checked."""
    if settings.table not in TABLES:
        raise SettingsError(f"table must be one of {', '.join(TABLES)}, got {settings.table!r}")
    _check_counts(settings, {"speed_samples": 1}, unset=("speed_samples",))
    if settings.time_budget is not None:
        budget_seconds(settings.time_budget)


def _not_int(value: object) -> bool:
    return isinstance(value, bool) or not isinstance(value, int)


def _check_counts(
    settings: object,
    minimum: dict[str, int],
    *,
    unset: tuple[str, ...] = (),
    error: type[Exception] = SettingsError,
    what: str | None = None,
) -> None:
    """Each field in ``minimum`` an integer (a bool is not one) >= its minimum; those in ``unset`` may be None.

    ``error`` and ``what`` keep each settings class's own error type and wording (tests and users match them).
    """
    for name, low in minimum.items():
        value = getattr(settings, name)
        if value is None and name in unset:
            continue
        if _not_int(value) or value < low:
            raise error(f"{name} must be {what or f'an integer >= {low}'}, got {value!r}")


def _check_folder_paths(settings: object, error: type[Exception]) -> None:
    """``model`` and ``output_dir`` as non-empty path strings (a PathLike is stored as its string)."""
    for name in ("model", "output_dir"):
        value = getattr(settings, name)
        if isinstance(value, os.PathLike):
            setattr(settings, name, value := os.fspath(value))
        if not isinstance(value, str) or not value.strip():
            raise error(f"{name} must be a folder path, got {value!r}")


def check_opset(opset: object, error: type[Exception] = SettingsError) -> None:
    """An ONNX opset bertsent can export and quantize: an integer in [MIN_OPSET, MAX_OPSET]."""
    if _not_int(opset) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise error(f"opset must be an integer in [{MIN_OPSET}, {MAX_OPSET}], got {opset!r}")


EXPORT_FORMATS = ("onnx", "openvino", "tf-savedmodel", "keras")


@dataclass
class ExportConfig:
    """Settings of ``bertsent export``: nothing is written unless the export's logits match PyTorch's."""

    model: str
    """PyTorch model folder (fine-tuned or pruned; the Keras formats: not pruned)."""
    output_dir: str
    """Folder for the exported model and the files to load it."""
    format: str = field(default="onnx", metadata={"choices": EXPORT_FORMATS})
    """``onnx``; ``openvino`` (an OpenVINO IR folder) needs ``pip install "bertsent[openvino]"``;
    ``tf-savedmodel`` and ``keras`` need ``pip install "bertsent[keras]"``."""
    strings: bool = False
    """tf-savedmodel: add a raw-text signature (tokenizes in the graph; loading it needs tensorflow_text)."""
    opset: int = DEFAULT_OPSET
    """ONNX opset."""
    atol: float = DEFAULT_ATOL
    """Largest logit difference from PyTorch the export may have."""
    exporter: str = field(default="torchscript", metadata={"choices": EXPORTERS})
    """ONNX: ``torchscript`` (``torch.onnx.export``'s tracer) or ``dynamo`` (the torch.export-based exporter; needs
    onnxscript)."""

    def __post_init__(self) -> None:
        if self.format not in EXPORT_FORMATS or self.exporter not in EXPORTERS:
            raise SettingsError(f"format must be one of {', '.join(EXPORT_FORMATS)} and exporter one of {EXPORTERS}")
        if self.strings and self.format != "tf-savedmodel":
            raise SettingsError("--strings is for --format tf-savedmodel")
        check_opset(self.opset)
        if not self.atol > 0:
            raise SettingsError(f"atol must be > 0, got {self.atol!r}")


@dataclass
class ModelArguments:
    """The model folder a command reads."""

    model: str
    """Fine-tuned model folder (PyTorch, ONNX, pruned or quantized: any folder bertsent wrote)."""


@dataclass
class EvaluateArguments:
    """What ``bertsent evaluate`` scores and where the report goes."""

    split: str | None = field(default=None, metadata={"choices": ("test", "validation", "train")})
    """Split to score (default: test; a single file without train/test split that the model was not
    trained on is scored whole, as split ``all``). ``validation`` scores exactly the validation rows used
    in training."""
    output_dir: str | None = None
    """Report folder (default: MODEL/eval-SPLIT)."""


@dataclass
class PredictArguments:
    """Where ``bertsent predict`` reads texts and writes predictions (texts on the command line otherwise)."""

    input: str | None = None
    """CSV/JSONL/Parquet/TXT file of texts (streamed: any size); with ``--engine ray`` also a folder or a
    quoted glob of shards (``'shards/*.parquet'``)."""
    output: str | None = None
    """Where to write predictions (.csv or .jsonl), in input order; with ``--engine ray`` a new folder of
    Parquet shards (rows in any order, each with its ``row_id``)."""
    text_column: str = "text"
    """Column (CSV, Parquet) or field (JSONL) holding the texts; written as ``text``."""
    keep_columns: list[str] | None = field(default=None, metadata={"nargs": "*"})
    """Input columns to copy into the output before label and score, e.g. ``id,date`` (default: all;
    an empty value: none but the text)."""
    top_k: int = 1
    """Scores to show per text (0: all); with ``--engine ray``, other than 1 adds a ``scores`` column."""
    resume: bool = False
    """Continue an interrupted ``--input`` run where it stopped."""
    encoding: str = "utf-8"
    """Text encoding of the input file."""
    engine: str = field(default="local", metadata={"choices": PREDICT_ENGINES})
    """``local`` (this process) or ``ray``: read, score and write on a Ray cluster with Ray Data, an actor
    per ``--workers``, each with ``--threads`` CPUs (needs ``pip install "bertsent[ray]"``)."""
    address: str | None = None
    """``--engine ray``: the Ray cluster to connect to (default: ``$RAY_ADDRESS``, else a new local cluster)."""
    workers: int | None = None
    """``--engine ray``: scoring actors, each loading the model once (default: as many as fit the cluster's
    CPUs at ``--threads`` each, default 1, leaving one CPU for reading and writing)."""

    def __post_init__(self) -> None:
        if self.top_k < 0:
            raise SettingsError(f"top_k must be >= 0 (0: all scores), got {self.top_k}")
        if self.engine not in PREDICT_ENGINES:
            raise SettingsError(f"engine must be one of {', '.join(PREDICT_ENGINES)}, got {self.engine!r}")
        _check_counts(self, {"workers": 1}, unset=("workers",))
        if self.engine == "local" and (self.address or self.workers is not None):
            raise SettingsError("--address and --workers are for --engine ray")
        if self.engine == "ray" and (self.resume or not self.input or not self.output):
            raise SettingsError(
                "--engine ray scores --input PATH_OR_GLOB into --output DIR; it retries lost work itself, "
                "without --resume"
            )
        if self.input and not self.output:
            raise SettingsError("--input needs --output FILE (.csv or .jsonl)")
        if self.keep_columns is not None:
            if not self.input:
                raise SettingsError("--keep-columns needs --input FILE")
            self.keep_columns = [name.strip() for name in split_names(self.keep_columns) if name.strip()]


@dataclass
class ExplainSettings:
    """Per-word attributions for the predicted label (``bertsent predict --explain``, ``Predictor(..., explain=True)``,
    :mod:`bertsent.explain`); PyTorch folders only, as they follow the gradients."""

    explain: bool = False
    """Add each text's ``explanation``: its words with character offsets and a score in [-1, 1] (> 0: supports
    the predicted label), from Captum on the word embeddings; in JSON/JSONL a list, in CSV a JSON string."""
    explain_method: str = field(default="integrated-gradients", metadata={"choices": EXPLAIN_METHODS})
    """``integrated-gradients`` (``explain_steps`` forward and backward passes per review) or
    ``input-x-gradient`` (one pass: that many times cheaper, less faithful)."""
    explain_steps: int = 32
    """Integrated Gradients' steps from the all-[PAD] baseline to the text (more: closer to the integral)."""
    explain_batch_tokens: int = 4096
    """Tokens per forward and backward pass (texts x steps x length): what the memory grows with (4,096 tokens:
    about 1-3 GB for a BERT-base)."""

    def __post_init__(self) -> None:
        if self.explain_method not in EXPLAIN_METHODS:
            raise SettingsError(
                f"explain_method must be one of {', '.join(EXPLAIN_METHODS)}, got {self.explain_method!r}"
            )
        _check_counts(self, {"explain_steps": 1, "explain_batch_tokens": 1})


@dataclass
class OodArguments:
    """Where ``bertsent ood`` keeps the out-of-domain sets."""

    output_dir: str = "~/.cache/bertsent/ood"
    """Where the sets are written (one folder each)."""
    archive: str | None = None
    """A local copy of the set's package archive (offline)."""
