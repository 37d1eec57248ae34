"""Early exit (dynamic inference): exit heads on every encoder layer, a threshold chosen on validation.

``early_exit`` turns a fine-tuned BERT classifier folder into one whose reviews leave the encoder at the
first layer that is confident enough (:mod:`bertsent.modeling.early_exit` has the model, the two rules
and the batching rule). In order:

1. **Heads, backbone frozen** (DeeBERT's second stage, Xin et al., 2020): the source model runs once over
   ``head_train_samples`` training reviews and every layer's [CLS] vector is cached; a head per layer but the
   last (:class:`~bertsent.modeling.early_exit.ExitHead`: the vector standardised with the training
   reviews' statistics, then pooler-shaped) is trained on them with cross-entropy for ``head_epochs``
   epochs. The backbone and the last layer's head are untouched, so full depth *is* the source model,
   bit for bit, and epochs cost seconds, not backbone passes.
   Joint training (PABEE's weighted sum of every layer's loss) would change the backbone and so the
   full-depth accuracy the threshold is measured against, at the cost of a full fine-tune: not done.
2. **Sweep** on ``validation_samples`` validation reviews: for each threshold, the exit loop runs through
   :func:`bertsent.inference.run` (the one batched loop) and is timed; accuracy, mean layers per review,
   the share of reviews leaving at each layer and reviews/s are recorded, next to the plain full-depth
   model timed in the same run.
3. **Choice**: the threshold with the fewest mean layers whose accuracy is within ``max_drop`` points of
   the full-depth accuracy (ties: the more accurate, then the more cautious threshold). Mean layers rather
   than the measured reviews/s decide: the time is proportional to them, and unlike a wall clock on a
   shared machine they are the same on every rerun. ``exit_threshold`` records a given threshold instead.
4. **Folder**: the source's files and weights unchanged, ``early_exit.safetensors`` (the heads), the rule
   in ``config.json`` (``bertsent_early_exit``), ``compression.json``, ``metrics.json``, the curve
   (``early_exit_curve.png``) and the card.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bertsent.compression.stage import StageResult, apply_run_policy, finish, folders, stage_reviews
from bertsent.config import ENTROPY_THRESHOLDS, EarlyExitConfig
from bertsent.errors import EarlyExitError
from bertsent.folder import (
    COMPRESSION_FILE,
    EARLY_EXIT_FILE,
    EARLY_EXIT_KEY,
    clear_weights,
    copy_model_files,
    weights_bytes,
)
from bertsent.inference import EarlyExitBackend, TorchBackend, run
from bertsent.modeling.early_exit import (
    EarlyExitModel,
    ExitHead,
    ExitRule,
    check_supported,
    save_heads,
)
from bertsent.modeling.passes import model_pass, pass_batches
from bertsent.modeling.pooling import own_layers

log = logging.getLogger(__name__)

CURVE_PLOT = "early_exit_curve.png"


EarlyExitResult = StageResult
"""The name early exit's result had before every stage returned a :class:`StageResult`."""


def default_thresholds(criterion: str, layers: int) -> list[float]:
    """The sweep when none is given: entropy :data:`ENTROPY_THRESHOLDS`; patience 0 and 1 .. layers - 2
    (a patience of layers - 1 or more can never be met before the last layer)."""
    if criterion == "entropy":
        return list(ENTROPY_THRESHOLDS)
    return [0.0, *(float(t) for t in range(1, layers - 1))]


# --- 1. heads ----------------------------------------------------------------------------------------


def cls_states(exit_model: EarlyExitModel, encoded, batch_size: int, pad_id: int) -> torch.Tensor:
    """Every layer's exit features (``EarlyExitModel.cls_states``) of every encoded review, ``(reviews, layers,
    hidden)``, in input order; the model's mode is restored after (``model_pass``)."""
    out = torch.empty((len(encoded), exit_model.num_layers, exit_model.model.config.hidden_size))
    with model_pass(exit_model):
        for idx, batch in pass_batches(exit_model, encoded, batch_size, pad_id, desc="exit features"):
            out[torch.as_tensor(idx)] = exit_model.cls_states(**batch).float().cpu()
    return out


def train_heads(exit_model: EarlyExitModel, states: torch.Tensor, labels: np.ndarray, config: EarlyExitConfig) -> dict:
    """Fit the heads of layers 0 .. L-2 on cached [CLS] ``states`` (AdamW, linear decay); the rest stays frozen."""
    heads, device = exit_model.heads, next(exit_model.parameters()).device
    targets = torch.tensor(labels, dtype=torch.long)
    n, batch_size = len(targets), config.batch_size
    steps = config.head_epochs * math.ceil(n / batch_size)
    optimizer = torch.optim.AdamW(heads.parameters(), lr=config.head_lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)  # the heads' dropout masks
    for i, head in enumerate(heads):
        head.standardise(states[:, i].to(device))
    heads.train()
    losses = []
    for _ in range(config.head_epochs):
        total = 0.0
        for chunk in torch.randperm(n, generator=generator).split(batch_size):
            x, y = states[chunk].to(device), targets[chunk].to(device)
            # Heads are independent: the mean of their losses trains each on its own layer.
            loss = torch.stack([nn.functional.cross_entropy(h(x[:, i]), y) for i, h in enumerate(heads)]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(chunk)
        losses.append(round(total / n, 5))
    heads.eval()
    return {"loss_by_epoch": losses, "train_accuracy_by_layer": layer_accuracy(exit_model, states, labels)}


def layer_accuracy(exit_model: EarlyExitModel, states: torch.Tensor, labels: np.ndarray) -> list[float]:
    """Accuracy of every layer's head on cached ``states`` (the last: the model's own head)."""
    device = next(exit_model.parameters()).device
    with model_pass(exit_model):
        predicted = torch.cat([exit_model.layer_logits(s.to(device)).argmax(-1).cpu() for s in states.split(256)])
    return [round(float(np.mean(predicted[:, i].numpy() == labels)), 5) for i in range(exit_model.num_layers)]


# --- 2. sweep, 3. choice ------------------------------------------------------------------------------


def _timed(backend, encoded, labels: np.ndarray, batch_size: int, pad_id: int) -> dict:
    """Accuracy and reviews/s of one pass of ``backend`` over ``encoded`` (after a warm-up batch)."""
    from bertsent.encoding import Encoded

    warm_up = Encoded(ids=encoded.ids[:batch_size], full_lengths=encoded.full_lengths[:batch_size])
    run(backend, warm_up, batch_size, pad_id)
    if isinstance(backend, EarlyExitBackend):
        backend.reset_exit_counts()  # the warm-up is not part of the measurement
    started = time.perf_counter()
    logits = run(backend, encoded, batch_size, pad_id)
    seconds = time.perf_counter() - started
    return {
        "accuracy": round(float(np.mean(logits.argmax(-1) == labels)), 5),
        "reviews_per_second": round(len(labels) / seconds, 2),
    }


def sweep(exit_model: EarlyExitModel, encoded, labels: np.ndarray, thresholds, config, pad_id: int):
    """The plain full-depth model and every threshold through the exit loop, on the same reviews in one run.

    Returns ``(full_depth, points)``; each point has its threshold, accuracy, the drop in points from full
    depth, mean layers, the share of reviews leaving at each layer, reviews/s and the speed-up."""
    device = next(exit_model.parameters()).device
    full = _timed(TorchBackend.from_model(exit_model.model, device), encoded, labels, config.batch_size, pad_id)
    full |= {"mean_layers": float(exit_model.num_layers)}
    log.info("full depth: accuracy %.4f, %.1f reviews/s", full["accuracy"], full["reviews_per_second"])
    backend = EarlyExitBackend(exit_model, device)
    points = []
    for threshold in thresholds:
        exit_model.rule = ExitRule(config.criterion, float(threshold))
        point = {"threshold": float(threshold)} | _timed(backend, encoded, labels, config.batch_size, pad_id)
        point |= {
            "accuracy_drop_points": round(100 * (full["accuracy"] - point["accuracy"]), 3),
            "mean_layers": round(backend.mean_layers, 4),
            "exit_share_by_layer": [round(float(c) / len(labels), 5) for c in backend.exit_counts],
            "speedup": round(point["reviews_per_second"] / full["reviews_per_second"], 3),
        }
        log.info(
            "%s %g: accuracy %.4f (%+.2f points), %.2f mean layers, %.1f reviews/s (%.2fx)",
            config.criterion,
            threshold,
            point["accuracy"],
            0.0 - point["accuracy_drop_points"],  # 0.0 - x: never "-0.00"
            point["mean_layers"],
            point["reviews_per_second"],
            point["speedup"],
        )
        points.append(point)
    return full, points


def choose(points: list[dict], max_drop: float, criterion: str, given: float | None = None) -> dict:
    """The point of ``given`` when set; else the fewest mean layers within ``max_drop`` points of full depth.

    Ties (the same mean layers: the same work) go to the more accurate, then to the more cautious threshold
    (entropy: the lower, patience: the higher), never to a timing difference that is noise."""
    if given is not None:
        return next(p for p in points if p["threshold"] == float(given))
    within = [p for p in points if p["accuracy_drop_points"] <= max_drop + 1e-9]
    if not within:  # threshold 0 is full depth, so this only happens if float rounding flips a label
        within = [min(points, key=lambda p: p["accuracy_drop_points"])]
    caution = -1 if criterion == "entropy" else 1
    return min(within, key=lambda p: (p["mean_layers"], -p["accuracy"], -caution * p["threshold"]))


# --- the stage --------------------------------------------------------------------------------------


def _reviews(config: EarlyExitConfig, source: Path):
    reviews, reason = stage_reviews(source, config, train_samples=config.head_train_samples, train=True)
    if reviews is None or len(reviews.train) == 0:
        raise EarlyExitError(
            f"early exit trains its heads on training reviews and picks the threshold on validation: pass --data "
            f"({reason or 'the data has no training reviews'})"
        )
    return reviews


def _load(config: EarlyExitConfig, source: Path):
    """The source model with fresh heads on ``config.device`` (last layer [CLS]-only), and its tokenizer."""
    from bertsent.modeling.cls_only import cls_only_last_layer
    from bertsent.modeling.loading import load_classifier, load_tokenizer
    from bertsent.runtime import pick_device

    apply_run_policy(config)
    model = load_classifier(source).to(pick_device(config.device)).eval()
    check_supported(model)
    cls_only_last_layer(model)  # only the last layer's [CLS] is ever read, in training and in the sweep
    torch.manual_seed(config.seed)  # the heads' initialisation, whatever loading drew
    heads = nn.ModuleList([ExitHead.like(model) for _ in range(own_layers(model.config) - 1)])
    return EarlyExitModel(model, heads), load_tokenizer(source)


def _train(exit_model: EarlyExitModel, encode, reviews, config: EarlyExitConfig, pad_id: int) -> dict:
    """The backbone's pass over the training reviews (cached [CLS] vectors), then the heads' epochs on them."""
    labels = reviews.train["label"].to_numpy()
    started = time.perf_counter()
    states = cls_states(exit_model, encode(reviews.train["text"].tolist()), config.batch_size, pad_id)
    backbone_seconds = time.perf_counter() - started
    training = train_heads(exit_model, states, labels, config)
    log.info("exit heads trained on %d reviews: accuracy by layer %s", len(labels), training["train_accuracy_by_layer"])
    return {
        "scheme": "backbone frozen, heads only (DeeBERT's second stage); the last layer's head is the model's own",
        "train_reviews": len(labels),
        "epochs": config.head_epochs,
        "lr": config.head_lr,
        "features": "the [CLS] vector" if exit_model.pooling is None else "the mean of the token vectors",
        "head": "the features standardised per dimension (training reviews' mean and std), dense, tanh, dropout, "
        "linear",
        **training,
        "backbone_seconds": round(backbone_seconds, 2),
        "head_seconds": round(time.perf_counter() - started - backbone_seconds, 2),
    }


def _validate(exit_model: EarlyExitModel, encode, reviews, config: EarlyExitConfig, pad_id: int) -> dict:
    """Accuracy by layer, the sweep and the chosen point on the validation reviews."""
    labels = reviews.validation["label"].to_numpy()
    encoded = encode(reviews.validation["text"].tolist())
    by_layer = layer_accuracy(exit_model, cls_states(exit_model, encoded, config.batch_size, pad_id), labels)
    given = [] if config.exit_threshold is None else [float(config.exit_threshold)]
    # 0 is always swept: full depth through the exit loop, the reference every threshold is held to.
    grid = config.thresholds or default_thresholds(config.criterion, exit_model.num_layers)
    thresholds = sorted({0.0, *grid, *given})
    full, points = sweep(exit_model, encoded, labels, thresholds, config, pad_id)
    chosen = choose(points, config.max_drop, config.criterion, config.exit_threshold)
    return {
        "data": reviews.report.get("source"),
        "origin": reviews.report.get("origin"),
        "reviews": len(labels),
        "accuracy_by_layer": by_layer,
        "full_depth": full,
        "curve": points,
        "chosen": chosen,
        "chosen_by": "--exit-threshold"
        if given
        else f"fewest mean layers within {config.max_drop:g} accuracy points of full depth",
    }


def early_exit(config: EarlyExitConfig) -> StageResult:
    """Train exit heads on ``config.model``, sweep thresholds on validation, and write the early-exit folder."""
    from bertsent.encoding import encode
    from bertsent.folder import inference_settings

    source, out = folders(config, EarlyExitError)
    reviews = _reviews(config, source)
    exit_model, tokenizer = _load(config, source)
    max_length, truncation = inference_settings(source, tokenizer)
    pad_id = tokenizer.pad_token_id or 0

    def encoder(texts: list[str]):
        return encode(tokenizer, texts, max_length, truncation)

    started = time.perf_counter()
    training = _train(exit_model, encoder, reviews, config, pad_id)
    validation = _validate(exit_model, encoder, reviews, config, pad_id)
    chosen = validation["chosen"]
    exit_model.rule = ExitRule(config.criterion, chosen["threshold"])
    record = {
        "method": "early-exit",
        "source": str(source),
        "arguments": asdict(config) | {"data": asdict(config.data) if config.data else None},
        "rule": {"criterion": config.criterion, "threshold": chosen["threshold"]},
        "layers": exit_model.num_layers,
        "max_length": max_length,
        "truncation": truncation,
        "device": str(next(exit_model.parameters()).device),
        "threads": torch.get_num_threads(),
        "training": training,
        "validation": validation,
        "parameters": {
            "model": sum(p.numel() for p in exit_model.model.parameters()),
            "heads": sum(p.numel() for p in exit_model.heads.parameters()),
        },
        "versions": _versions(),
        "seconds": round(time.perf_counter() - started, 2),
    }
    _write(out, source, exit_model, record)
    result = finish(out, record, flat_metrics, write_early_exit_card, exit_model)
    log.info(
        "early exit (%s %g): %.2f of %d layers, accuracy %.4f vs %.4f at full depth; folder %s",
        config.criterion,
        chosen["threshold"],
        chosen["mean_layers"],
        exit_model.num_layers,
        chosen["accuracy"],
        validation["full_depth"]["accuracy"],
        out,
    )
    return result


def _versions() -> dict[str, str]:
    import transformers

    import bertsent

    return {"bertsent": bertsent.__version__, "torch": torch.__version__, "transformers": transformers.__version__}


def _write(out: Path, source: Path, exit_model: EarlyExitModel, record: dict) -> None:
    """The source's files and weights, the heads, the rule in config.json and the curve (the scaffold's
    :func:`~bertsent.compression.stage.finish` writes the records and the card)."""
    out.mkdir(parents=True, exist_ok=True)
    clear_weights(out)
    copy_model_files(source, out, weights=True)
    save_heads(exit_model, out)
    config_file = out / "config.json"
    config = json.loads(config_file.read_text())
    validation = record["validation"]
    config[EARLY_EXIT_KEY] = record["rule"] | {
        "heads": EARLY_EXIT_FILE,
        "layers": exit_model.num_layers,
        "chosen_on": f"{validation['reviews']} validation reviews: {validation['chosen_by']}",
    }
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    record["weights_bytes"] = {"model": weights_bytes(source), "heads": (out / EARLY_EXIT_FILE).stat().st_size}
    plot_curve(validation, record["rule"]["criterion"], out / CURVE_PLOT)


def flat_metrics(record: dict) -> dict:
    """``metrics.json`` of the folder: the chosen setting against full depth, on validation."""
    validation, chosen = record["validation"], record["validation"]["chosen"]
    return {
        "method": "early-exit",
        "criterion": record["rule"]["criterion"],
        "exit_threshold": record["rule"]["threshold"],
        "layers": record["layers"],
        "validation_reviews": validation["reviews"],
        "validation_accuracy": chosen["accuracy"],
        "validation_accuracy_full_depth": validation["full_depth"]["accuracy"],
        "validation_accuracy_drop_points": chosen["accuracy_drop_points"],
        "validation_mean_layers": chosen["mean_layers"],
        "validation_speedup": chosen["speedup"],
        "num_parameters": record["parameters"]["model"] + record["parameters"]["heads"],
    }


def plot_curve(validation: dict, criterion: str, path: Path) -> Path:
    """Accuracy and reviews/s against mean layers per review, one point per threshold, the choice marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from bertsent.metrics import save_figure

    points, full, chosen = validation["curve"], validation["full_depth"], validation["chosen"]
    layers = [p["mean_layers"] for p in points]
    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    for column, (key, label, scale) in enumerate(
        (("accuracy", "validation accuracy (%)", 100), ("reviews_per_second", "reviews/s", 1))
    ):
        ax = fig.add_subplot(1, 2, column + 1)
        ax.plot(layers, [scale * p[key] for p in points], "o-")
        for p in points:
            ax.annotate(
                f"{p['threshold']:g}",
                (p["mean_layers"], scale * p[key]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
        ax.axhline(scale * full[key], color="tab:gray", linestyle="--", label="full depth (plain forward)")
        ax.plot([chosen["mean_layers"]], [scale * chosen[key]], "*", color="tab:red", markersize=14, label="chosen")
        ax.set_xlabel("mean encoder layers per review")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Early exit on {validation['reviews']} validation reviews (point labels: {criterion} thresholds)")
    fig.tight_layout()
    return save_figure(fig, path)


def write_early_exit_card(folder: Path, record: dict) -> Path:
    """README.md of an early-exit folder: what was done, the curve, the choice, how it loads."""
    from bertsent.folder import card_base_model, write_card

    validation, rule, chosen = record["validation"], record["rule"], record["validation"]["chosen"]
    rows = "\n".join(
        f"| {p['threshold']:g} | {p['accuracy']:.4f} | {p['mean_layers']:.2f} | {p['reviews_per_second']:.1f} |"
        for p in validation["curve"]
    )
    full = validation["full_depth"]
    training = record["training"]
    sections = {
        "What was done": f"""A classifier on {training.get("features", "the [CLS] vector")} of each of the first
{record["layers"] - 1} encoder layers (`{EARLY_EXIT_FILE}`; the last layer's is the model's own), trained with the
backbone frozen on {training["train_reviews"]} training reviews for {training["epochs"]} epochs. At inference a review
leaves at the first layer where {_rule_text(rule)}; a batch goes on with the rows not yet exited only.""",
        "What was measured": f"""On {validation["reviews"]} validation reviews of `{validation["data"]}`
(full depth, plain forward: accuracy {full["accuracy"]:.4f}, {full["reviews_per_second"]:.1f} reviews/s):

| {rule["criterion"]} threshold | Accuracy | Mean layers | Reviews/s |
|---|---|---|---|
{rows}

Chosen: **{rule["threshold"]:g}** ({validation["chosen_by"]}): {chosen["mean_layers"]:.2f} of
{record["layers"]} layers, accuracy {chosen["accuracy"]:.4f} ({0.0 - chosen["accuracy_drop_points"]:+.2f} points),
{chosen["speedup"]:.2f}x full depth. Curve: `{CURVE_PLOT}`; everything in `{COMPRESSION_FILE}`.""",
        "Use": f"""`bertsent predict --model {folder} "A wonderful, moving film."` (and `evaluate`, `compare`,
`serve`, `bertsent.predict.Predictor`) run early exit; `--exit-threshold T` overrides the recorded
threshold (0: full depth). `transformers.pipeline("text-classification", model="{folder}")` loads
the full-depth model (the heads are ignored), as do ONNX and OpenVINO exports of this folder.""",
    }
    return write_card(
        folder,
        title=f"Early-exit sentiment classifier ({rule['criterion']})",
        summary=f"Early exit added to `{record['source']}` by `bertsent early-exit`.",
        sections=sections,
        results={"validation": {"accuracy": chosen["accuracy"]}},
        dataset=validation.get("data"),
        base_model=card_base_model(Path(record["source"])),
        tags=["early-exit"],
        versions=record["versions"],
    )


def _rule_text(rule: dict) -> str:
    if not rule["threshold"]:
        return f"it reaches the last layer ({rule['criterion']} threshold 0: never early, full depth)"
    if rule["criterion"] == "entropy":
        return f"the softmax entropy over ln(labels) is below {rule['threshold']:g} (DeeBERT)"
    return f"{int(rule['threshold'])} layers in a row before it gave the same label (PABEE)"
