"""Settings of the training stages: flat dataclasses that validate themselves.

Kept free of heavy imports so the CLI can build its options from them without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass

TRUNCATION_STRATEGIES = ("head", "tail", "head+tail")
BACKENDS = ("torch", "keras")
BEST_METRICS = ("accuracy", "f1", "f1_macro", "loss")


@dataclass
class TrainingArguments:
    """Settings of one fine-tuning run. Validated on creation; saved as ``training_args.json``."""

    output_dir: str = "runs/bertsent"
    """Folder for the final model, metrics, plots, model card and checkpoints."""
    model: str | None = None
    """Starting weights: a local ``save_pretrained`` folder, a hub name, or None for the embedded MiniLM."""
    max_length: int = 256
    """Tokens per review, special tokens included."""
    truncation: str = "head"
    """Which part of a long review to keep: ``head``, ``tail`` or ``head+tail`` (Sun et al., 2019)."""
    epochs: int = 1
    max_steps: int | None = None
    """Stop after this many optimizer steps (overrides ``epochs``; the schedule spans these steps)."""
    batch_size: int = 16
    eval_batch_size: int = 64
    gradient_accumulation_steps: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    """Share of the optimizer steps spent warming the learning rate up linearly (then linear decay)."""
    optimizer: str = "adamw"
    """``adamw`` (decoupled weight decay) or ``adam`` (as the original system used)."""
    max_grad_norm: float = 1.0
    attention_dropout: float | None = 0.0
    """Attention-probability dropout during training. 0 lets PyTorch run its fused attention kernel
    (1.55x faster training steps on CPU: benchmarks/step_profile.py); None keeps the model's own
    setting (0.1 for BERT)."""
    seed: int = 42
    precision: str = "auto"
    """``auto`` (bf16 on a GPU that supports it, else fp32), ``fp32``, ``bf16`` or ``fp16`` (GPU only)."""
    device: str = "auto"
    threads: int | None = None
    """CPU threads for PyTorch; None leaves PyTorch's default (one per core)."""
    logging_steps: int = 10
    eval_steps: int | None = None
    """Also validate every N optimizer steps (validation always runs at the end of each epoch)."""
    save_steps: int | None = 200
    """Write a resumable checkpoint every N optimizer steps (and at the end of each epoch)."""
    save_total_limit: int | None = 1
    """How many step checkpoints to keep (None keeps all)."""
    keep_checkpoints: bool = False
    """Keep the checkpoints folder after a successful run (it holds optimizer state: large)."""
    metric_for_best_model: str = "accuracy"
    early_stopping_patience: int | None = None
    """Stop after this many validations without improvement of ``metric_for_best_model``."""
    resume: bool = False
    """Continue from the latest checkpoint in ``output_dir`` (same result as an uninterrupted run)."""
    evaluate_test: bool = True
    """Evaluate the final model on the test split when the data has one."""
    progress: bool | None = None
    """Progress bar: None shows it only on a terminal."""
    backend: str = "torch"
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
                raise ValueError(f"{name} must be >= 1, got {value}")
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
                raise ValueError(f"{name} must be >= 1 or unset, got {value}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0 or not 0 <= self.warmup_ratio < 1 or self.max_grad_norm <= 0:
            raise ValueError("weight_decay must be >= 0, warmup_ratio in [0, 1) and max_grad_norm > 0")
        if self.attention_dropout is not None and not 0 <= self.attention_dropout < 1:
            raise ValueError(f"attention_dropout must be in [0, 1), got {self.attention_dropout}")
        choices = {
            "truncation": TRUNCATION_STRATEGIES,
            "optimizer": ("adam", "adamw"),
            "precision": ("auto", "fp32", "bf16", "fp16"),
            "metric_for_best_model": BEST_METRICS,
            "backend": BACKENDS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.backend == "keras":
            # model.fit validates per epoch and keeps the best weights in memory: no mid-epoch state.
            unsupported = {
                "resume": self.resume,
                "max_steps": self.max_steps is not None,
                "eval_steps": self.eval_steps is not None,
                "gradient_accumulation_steps": self.gradient_accumulation_steps != 1,
                "precision": self.precision not in ("auto", "fp32"),
                "device": self.device not in ("auto", "cpu"),
            }
            if names := [name for name, used in unsupported.items() if used]:
                raise ValueError(f"--backend keras does not support {', '.join(names)} (use --backend torch)")


@dataclass
class DistillationArguments(TrainingArguments):
    """``TrainingArguments`` plus the teacher, the student and the loss mix."""

    teacher: str = ""
    """Fine-tuned teacher folder (its tokenizer and labels are used)."""
    student_layers: int | None = None
    """Student = this many of the teacher's layers, evenly spaced (6 -> 3 keeps layers 0, 2, 4)."""
    student: str | None = None
    """Or start the student from this model (folder or hub name); it must share the teacher's tokenizer."""
    alpha: float = 0.5
    """Weight of the cross-entropy on the true labels; 1 - alpha goes to the teacher's soft labels."""
    temperature: float = 2.0
    hidden_weight: float = 0.0
    """Weight of the hidden-state MSE (needs equal hidden sizes; runs the teacher at every step)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.teacher:
            raise ValueError("teacher is required: the fine-tuned model folder to distil from")
        if (self.student_layers is None) == (self.student is None):
            raise ValueError("give exactly one of student_layers (a share of the teacher's layers) or student")
        if self.student_layers is not None and self.student_layers < 1:
            raise ValueError(f"student_layers must be >= 1, got {self.student_layers}")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.hidden_weight < 0:
            raise ValueError(f"hidden_weight must be >= 0, got {self.hidden_weight}")
        # The tokenizer (and max length) come from the teacher unless a student model is given.
        if self.model is None:
            self.model = self.student or self.teacher
