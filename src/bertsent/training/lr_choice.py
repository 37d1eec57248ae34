"""The learning rate a run uses when ``--lr`` is not given: a rule, or a short range test (``--lr auto``).

Rule (``lr`` unset). Fine-tuning learning rates shrink with the encoder's width, and a run of a few
dozen optimizer steps needs a larger one than a run of thousands to move at all::

    lr = 1e-4 * (384 / hidden_size) * min(2, sqrt(160 / steps))    when steps < 160
    lr = 1e-4 * (384 / hidden_size)                                  otherwise

so BERT-base (hidden 768) gets 5e-5, the recipe of Devlin et al. (2019), and the embedded MiniLM (384)
gets 1e-4, the rate its measured IMDB runs use; a 38-step run of MiniLM gets 2e-4.

Range test (``lr="auto"``, after Smith 2017 and ktrain's ``lr_find``): from the model's starting
weights, ``steps`` optimizer steps on training batches with the rate growing exponentially from
``1e-7`` to ``1e-2``, the loss smoothed; stop once it exceeds four times its minimum. The pick is the
rate at the smoothed loss's minimum divided by 10 (one order of magnitude below the point where
training turns unstable), kept within [1e-6, 1e-3]. The weights, optimizer and random state are put
back afterwards, so the run itself starts exactly as it would have.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bertsent.encoding import Encoded, collate, length_grouped_batches

log = logging.getLogger(__name__)

BASE_LR, BASE_WIDTH, STEPS_AT_BASE = 1e-4, 384, 160
RANGE = (1e-7, 1e-2)
PICK_LIMITS = (1e-6, 1e-3)


def rule_lr(hidden_size: int, steps: int) -> float:
    """The learning rate for an encoder of ``hidden_size`` trained for ``steps`` optimizer steps."""
    lr = BASE_LR * BASE_WIDTH / hidden_size
    if steps < STEPS_AT_BASE:
        lr *= min(2.0, math.sqrt(STEPS_AT_BASE / max(steps, 1)))
    return float(f"{lr:.3g}")


@dataclass
class RangeTest:
    """What ``--lr auto`` measured: the rates tried, the smoothed losses, and the pick."""

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    picked: float = 0.0
    rule: str = "rate at the smoothed loss's minimum / 10, within [1e-6, 1e-3]"


def range_test(model, optimizer_factory, loss_fn, train_enc: Encoded, labels: np.ndarray, args, device, pad_id,
               steps: int = 40) -> RangeTest:  # fmt: skip
    """Run the range test on ``model`` (left as it was found) and return the measurements and pick."""
    saved = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    optimizer = optimizer_factory(model)
    batches = length_grouped_batches(train_enc.lengths, args.batch_size, seed=args.seed)
    growth = (RANGE[1] / RANGE[0]) ** (1 / max(steps - 1, 1))
    result, smoothed, best = RangeTest(), None, math.inf
    model.train()
    for i in range(steps):
        lr = RANGE[0] * growth**i
        for group in optimizer.param_groups:
            group["lr"] = lr
        idx = batches[i % len(batches)]
        batch = {k: torch.from_numpy(v).to(device) for k, v in collate(train_enc, idx, pad_id).items()}
        loss = loss_fn(model, batch, torch.from_numpy(labels[idx]).to(device), idx)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        value = loss.item()
        smoothed = value if smoothed is None else 0.8 * smoothed + 0.2 * value
        result.lrs.append(lr)
        result.losses.append(smoothed)
        best = min(best, smoothed)
        if not math.isfinite(smoothed) or smoothed > 4 * best:
            break
    model.load_state_dict(saved)
    torch.set_rng_state(rng)
    low = int(np.argmin(result.losses))
    result.picked = float(f"{min(max(result.lrs[low] / 10, PICK_LIMITS[0]), PICK_LIMITS[1]):.3g}")
    return result


def choose_lr(args, model, total_steps: int, data, training, device, pad_id: int, output_dir: Path | None):
    """``args`` with the learning rate to use when ``args.lr`` is unset (the rule) or ``auto`` (the range
    test on ``model``, with ``data`` = (encoded, labels) and ``training`` = (optimizer factory, loss)),
    and how it was chosen, for training_args.json."""
    from dataclasses import asdict, replace

    if args.lr is not None and args.lr != "auto":
        return args, {"how": "given", "lr": args.lr}
    hidden = model.config.hidden_size
    if args.lr is None:
        record = {"how": "rule", "lr": rule_lr(hidden, total_steps), "hidden_size": hidden, "steps": total_steps}
    else:
        test = range_test(model, training[0], training[1], *data, args, device, pad_id)
        if output_dir is not None:  # None: another process of the same run plots it
            output_dir.mkdir(parents=True, exist_ok=True)
            plot_range_test(test, output_dir / "lr_range_test.png")
        record = {"how": "range test", "lr": test.picked} | asdict(test)
    log.info("learning rate %.3g (%s)", record["lr"], record["how"])
    return replace(args, lr=record["lr"]), record


def plot_range_test(test: RangeTest, path: Path) -> Path:
    """Loss against learning rate (log scale), the pick marked."""
    from bertsent.metrics import _new_figure, save_figure

    fig = _new_figure(figsize=(5, 3.5))
    ax = fig.add_subplot()
    ax.plot(test.lrs, test.losses)
    ax.axvline(test.picked, linestyle="--", color="black", label=f"picked {test.picked:.2g}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss (smoothed)", title="Learning-rate range test")
    ax.legend()
    return save_figure(fig, path)
