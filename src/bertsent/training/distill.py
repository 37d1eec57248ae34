"""Knowledge distillation: a smaller student learns from a fine-tuned teacher's soft labels.

The student starts from the teacher's own layers (every other one, as DistilBERT did) or from any
``--student`` model. Its loss is ``alpha * CE(labels) + (1 - alpha) * T^2 * KL(teacher_T || student_T)``
(Hinton et al., 2015), optionally plus an MSE between the student's hidden states and the matching
teacher layers. The teacher's logits are computed once and cached, so the teacher does not run every
epoch (only the hidden-state term needs it at every step); that pass, and the teacher's validation scores
of the record, run on the route ``Predictor`` picks for the teacher's folder by default (on a CPU the
fastest that passes the fp32 guard). Everything else is ``train``'s loop.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch

from bertsent.config import DataConfig, DistillationArguments
from bertsent.data.loading import Splits
from bertsent.encoding import Encoded
from bertsent.errors import ModelError, SettingsError
from bertsent.modeling.loading import load_classifier, load_tokenizer
from bertsent.modeling.pooling import POOLING_KEY, own_layers, pooling_layer
from bertsent.training.distributed import is_main_process
from bertsent.training.loop import train
from bertsent.training.tracking import TrainResult

log = logging.getLogger(__name__)

TEACHER_LOGITS = "teacher_logits.npy"
TEACHER_BATCH_SIZE = 64


def student_layer_indices(n_teacher: int, n_student: int) -> list[int]:
    """Evenly spaced teacher layers for the student, starting at the first (DistilBERT: 12 -> 0, 2, ..., 10)."""
    if not 1 <= n_student <= n_teacher:
        raise SettingsError(f"student_layers must be between 1 and the teacher's {n_teacher} layers, got {n_student}")
    return [int(i * n_teacher / n_student) for i in range(n_student)]


def student_from_teacher(teacher, n_layers: int):
    """A copy of the teacher keeping ``n_layers`` of its transformer layers (weights included).

    A teacher's mean-pooling layer (``modeling.pooling``) is not one of them: the student keeps it as its
    last layer, so it reads what the teacher's head reads.
    """
    encoder = teacher.base_model.encoder
    pooling = pooling_layer(teacher.config)
    keep = student_layer_indices(own_layers(teacher.config), n_layers)
    keep += [] if pooling is None else [pooling]
    student = copy.deepcopy(teacher)
    student.base_model.encoder.layer = torch.nn.ModuleList(copy.deepcopy(encoder.layer[i]) for i in keep)
    student.config.num_hidden_layers = len(keep)
    student.config.bertsent_student_of = {"layers": keep}
    if pooling is not None:
        setattr(student.config, POOLING_KEY, {"layer": len(keep) - 1})
    return student, keep


def teacher_logits(
    teacher, encoded: Encoded, pad_id: int, device: torch.device, cache: Path, teacher_dir: Path | None = None
) -> np.ndarray:
    """The teacher's logits for every training review (batches of 64), computed once and cached next to
    the run. With ``teacher_dir`` (the teacher's folder) they run on the route ``Predictor`` picks by
    default: on a CPU, the fastest that passes the fp32 guard (``--backend auto``), whose logits agree with
    fp32 PyTorch's labels; else (or on a GPU) the teacher in memory, in fp32, moved to ``device``."""
    from bertsent.inference import TorchBackend, run

    key = hashlib.sha256(b"".join(ids.tobytes() + b"|" for ids in encoded.ids)).hexdigest()[:16]
    meta = cache.with_suffix(".json")
    if cache.is_file() and meta.is_file() and json.loads(meta.read_text()).get("key") == key:
        log.info("teacher logits from cache %s", cache)
        return np.load(cache)
    progress = None if is_main_process() else False  # one bar, on a terminal, from the main process
    backend, route = _fast_route(teacher_dir, device)
    if backend is None:
        teacher.eval().to(device)
        backend = TorchBackend.from_model(teacher, device)
    log.info("computing the teacher's logits for %d training reviews (once), with %s", len(encoded), route)
    out = run(backend, encoded, TEACHER_BATCH_SIZE, pad_id, progress)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, out)
    meta.write_text(json.dumps({"key": key, "rows": len(encoded), "route": route}))
    return out


def _fast_route(teacher_dir: Path | None, device: torch.device):
    """The backend ``Predictor(teacher_dir)`` runs with its default settings and what it is, or
    ``(None, "PyTorch fp32")`` without a folder or on an accelerator (the teacher in memory runs there)."""
    if teacher_dir is None or device.type != "cpu":
        return None, "PyTorch fp32"
    from bertsent.predict import Predictor

    predictor = Predictor(teacher_dir, batch_size=TEACHER_BATCH_SIZE, device="cpu")
    backend = predictor.backend
    route = getattr(getattr(predictor, "route", None), "name", None) or backend.name
    return backend, f"route {route} ({backend.name}, {backend.precision})"


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, alpha: float, temperature: float
) -> torch.Tensor:
    """``alpha * CE + (1 - alpha) * T^2 * KL(teacher_T || student_T)``; T^2 keeps gradient scales comparable."""
    ce = torch.nn.functional.cross_entropy(student_logits, labels)
    kl = torch.nn.functional.kl_div(
        torch.log_softmax(student_logits / temperature, dim=-1),
        torch.log_softmax(teacher_logits / temperature, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * ce + (1 - alpha) * temperature**2 * kl


def soft_label_loss(teacher_dir: Path, model, cache: Path):
    """A ``make_loss`` for :func:`~bertsent.training.loop.train` that fine-tunes ``model`` on the
    distillation loss against the teacher in ``teacher_dir`` (its logits on the run's training reviews,
    computed once and cached at ``cache``), with ``distill``'s default alpha and temperature. The
    teacher's logits run on the recovering model's token ids, so both need the same vocabulary."""
    teacher = load_classifier(str(teacher_dir))
    if teacher.config.vocab_size != model.config.vocab_size:
        raise ModelError(
            f"{teacher_dir}: a teacher's logits need the model's vocabulary ({teacher.config.vocab_size} "
            f"WordPieces against {model.config.vocab_size}); give the teacher the model was made from"
        )
    alpha, temperature = DistillationArguments.alpha, DistillationArguments.temperature
    pad_id = load_tokenizer(str(teacher_dir)).pad_token_id or 0

    def make_loss(splits: Splits, train_enc: Encoded, device: torch.device):
        soft = teacher_logits(teacher, train_enc, pad_id, device, cache, teacher_dir)
        soft = torch.from_numpy(soft.astype(np.float32))

        def loss(model, batch, labels, idx):
            logits = model(**batch).logits.float()
            return distillation_loss(logits, soft[idx].to(device), labels, alpha, temperature)

        return loss

    return make_loss


def distill(args: DistillationArguments, data: DataConfig) -> TrainResult:
    """Distil ``args.teacher`` into a smaller student on ``data``; writes a ``train``-style folder."""
    teacher = load_classifier(args.teacher)
    if args.student_layers is not None:
        # Their per-layer shapes are recorded by layer index, which a student renumbers.
        if any(getattr(teacher.config, key, None) for key in ("bertsent_pruning", "bertsent_factorization")):
            raise ModelError(
                f"{args.teacher}: a pruned or factorized teacher cannot seed a student by layers; pass --student"
            )
        student, mapping = student_from_teacher(teacher, args.student_layers)
        log.info("student: teacher layers %s of %d", mapping, teacher.config.num_hidden_layers)
    else:
        student = load_classifier(args.student, {int(k): v for k, v in teacher.config.id2label.items()}, args.pooling)
        mapping = student_layer_indices(teacher.config.num_hidden_layers, student.config.num_hidden_layers)
    if args.hidden_weight and student.config.hidden_size != teacher.config.hidden_size:
        raise ModelError("hidden_weight needs the student's hidden size to equal the teacher's")
    output_dir = Path(args.output_dir)
    pad_id = load_tokenizer(args.model).pad_token_id or 0

    def make_loss(splits: Splits, train_enc: Encoded, device: torch.device):
        cache = output_dir / TEACHER_LOGITS
        folder = Path(args.teacher)  # the teacher's folder: its logits run on the fastest agreeing route
        soft = torch.from_numpy(teacher_logits(teacher, train_enc, pad_id, device, cache, folder).astype(np.float32))
        if not args.hidden_weight:
            teacher.cpu()  # the cached logits are all the teacher is needed for

        def loss(model, batch, labels, idx):
            outputs = model(**batch, output_hidden_states=bool(args.hidden_weight))
            total = distillation_loss(
                outputs.logits.float(), soft[idx].to(device), labels, args.alpha, args.temperature
            )
            if args.hidden_weight:
                with torch.no_grad():
                    t_hidden = teacher(**batch, output_hidden_states=True).hidden_states
                mask = batch["attention_mask"].unsqueeze(-1).float()
                # Student layer j imitates teacher layer mapping[j] (+1: hidden_states[0] is the embeddings).
                mse = sum(
                    (((outputs.hidden_states[j + 1] - t_hidden[t + 1]) ** 2) * mask).sum() / mask.sum()
                    for j, t in enumerate(mapping)
                ) / len(mapping)
                total = total + args.hidden_weight * mse / student.config.hidden_size
            return total

        return loss

    if args.hidden_weight:
        teacher.to(torch.device("cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu"))
    finished = _finished_training(output_dir, args)
    if finished is not None:  # a run killed after training, before its record: write the record only
        log.info("%s: training finished before the run was stopped; writing its record", output_dir)
        result = TrainResult(output_dir=output_dir, metrics=finished)
    else:
        # Hidden-state distillation reads every position of the student's last layer.
        result = train(args, data, model=student, make_loss=make_loss, cls_only=not args.hidden_weight)
    if not is_main_process():  # under a launcher: the main process scores the teacher and writes the record
        return result
    return _report(args, data, teacher, result)


def _finished_training(output_dir: Path, args: DistillationArguments) -> dict | None:
    """The metrics of a training with these arguments that finished in ``output_dir`` but has no
    distillation record yet (``train`` writes metrics.json; the record comes after it), else None."""
    from dataclasses import asdict

    from bertsent.folder import COMPRESSION_FILE, METRICS_FILE, read_training_args

    if not (output_dir / METRICS_FILE).is_file() or (output_dir / COMPRESSION_FILE).is_file():
        return None
    recorded = read_training_args(output_dir).get("training", {})
    wanted = json.loads(json.dumps(asdict(args), default=str))
    if any(recorded.get(key) != value for key, value in wanted.items() if key != "resume"):
        return None
    return json.loads((output_dir / METRICS_FILE).read_text())


def _report(args: DistillationArguments, data: DataConfig, teacher, result: TrainResult) -> TrainResult:
    """Score the teacher (already in memory) on the student's validation rows; record both side by side."""
    from bertsent.data.loading import load_data
    from bertsent.encoding import encode
    from bertsent.folder import set_card_section
    from bertsent.inference import predict_probs
    from bertsent.metrics import classification_metrics

    # Same DataConfig as training, so exactly the rows the student was selected on.
    validation = load_data(data, splits=("validation",)).validation
    tokenizer = load_tokenizer(args.model)
    encoded = encode(tokenizer, validation["text"].tolist(), args.max_length, args.truncation)
    device = next(teacher.parameters()).device
    backend, _ = _fast_route(Path(args.teacher), device)
    if backend is None:
        probs = predict_probs(teacher, encoded, args.eval_batch_size, tokenizer.pad_token_id or 0, device)
    else:
        from bertsent.inference import run, softmax

        probs = softmax(run(backend, encoded, args.eval_batch_size, tokenizer.pad_token_id or 0))
    teacher_eval = classification_metrics(validation["label"].to_numpy(), probs, teacher.config.id2label)
    metrics = result.metrics
    summary = {
        "method": "distill",
        "teacher": args.teacher,
        "student_layers": args.student_layers,
        "student": args.student,
        "alpha": args.alpha,
        "temperature": args.temperature,
        "hidden_weight": args.hidden_weight,
        "teacher_num_parameters": sum(p.numel() for p in teacher.parameters()),
        "student_num_parameters": metrics["num_parameters"],
        "teacher_validation_accuracy": teacher_eval["accuracy"],
        "student_validation_accuracy": metrics.get("validation_accuracy"),
    }
    out = Path(args.output_dir)
    (out / "compression.json").write_text(json.dumps(summary, indent=2))
    metrics |= {k: v for k, v in summary.items() if k.startswith("teacher_")}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    ratio = summary["student_num_parameters"] / summary["teacher_num_parameters"]
    set_card_section(
        out,
        "Distillation",
        f"Distilled from `{args.teacher}` (alpha {args.alpha}, temperature "
        f"{args.temperature}, hidden-state weight {args.hidden_weight}). Student "
        f"{summary['student_num_parameters']:,} parameters ({ratio:.0%} of the teacher's "
        f"{summary['teacher_num_parameters']:,}); validation accuracy student "
        f"{summary['student_validation_accuracy']:.4f} vs teacher {summary['teacher_validation_accuracy']:.4f} "
        "on the same reviews.",
    )
    return result
