"""Training on one or many processes through Hugging Face Accelerate.

One :class:`accelerate.Accelerator` per run owns device placement, DDP wrapping (``accelerate launch``,
``torchrun``, multi-node, an FSDP/DeepSpeed config: whatever Accelerate accepts), mixed precision and the
experiment trackers (``--report-to``). A single process runs exactly the loop it always did.

How N processes see what one process would: the length-grouped batches are built once from the seed, the
same on every rank, and each global micro-batch is cut into N contiguous shares (:func:`rank_share`). Each
rank weights its share's mean loss by ``share / group * N``: DDP averages gradients over the N ranks, so
the step's gradient is the mean over the group's reviews, as in one process. Validation is sharded the
same way and gathered before any metric. Only the main process logs, writes checkpoints and the folder.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from bertsent.encoding import Encoded
from bertsent.runtime import precision_name

log = logging.getLogger(__name__)


def is_main_process() -> bool:
    """Rank 0, or no launcher at all (``torchrun`` and ``accelerate launch`` set ``RANK``)."""
    return int(os.environ.get("RANK", "0")) == 0


def make_accelerator(args, device: torch.device, dtype: torch.dtype | None):
    """The run's Accelerator: on ``device``'s type, autocast to ``dtype``, the trackers ``--report-to`` names."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, is_initialized

    name = precision_name(dtype)
    mixed = "no" if name == "fp32" else name  # "no" is Accelerate's name for fp32
    if is_initialized() and AcceleratorState().mixed_precision != mixed:
        # Accelerate keeps one mixed precision per process and refuses another; a second run in this
        # process (a recipe's next stage, the Python API, a CPU's auto bf16 after an fp32 run) may need one.
        # Its precision state is dropped, the process group (PartialState) kept.
        AcceleratorState._reset_state()
    trackers = args.report_to_list()
    return Accelerator(
        cpu=device.type == "cpu",
        mixed_precision=mixed,
        log_with=trackers or None,
        project_dir=str(Path(args.output_dir) / "logs"),
    )


def start_trackers(accelerator, args) -> None:
    """Open the ``--report-to`` trackers (main process only, as Accelerate does) with the run's settings."""
    if not args.report_to_list():
        return
    from dataclasses import asdict

    # Trackers take flat scalars and strings; None and lists are written as text.
    config = {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in asdict(args).items()}
    accelerator.init_trackers(Path(args.output_dir).name or "bertsent", config=config)


def describe(accelerator, args) -> None:
    """Say how the global batch is cut: the per-device size is what each process holds in memory."""
    n = accelerator.num_processes
    if n > 1:
        log.info(
            "%d processes (%s): global batch %d, about %d per device, gradient accumulation %d",
            n,
            accelerator.distributed_type,
            args.batch_size,
            -(-args.batch_size // n),
            args.gradient_accumulation_steps,
        )


def rank_share(idx: np.ndarray, accelerator) -> np.ndarray:
    """This rank's contiguous share of a global micro-batch (all of it in one process)."""
    if accelerator.num_processes == 1:
        return idx
    return np.array_split(idx, accelerator.num_processes)[accelerator.process_index]


def summed(accelerator, values: list[float]) -> list[float]:
    """``values`` summed over the ranks (the logged loss is the mean over all ranks' reviews, not one's)."""
    if accelerator.num_processes == 1:
        return values
    total = accelerator.reduce(torch.tensor(values, dtype=torch.float64, device=accelerator.device), "sum")
    return total.tolist()


def sharded_probs(accelerator, predict, encoded: Encoded) -> np.ndarray:
    """``predict(encoded)`` over every row, each rank scoring its contiguous share, gathered in row order."""
    if accelerator.num_processes == 1:
        return predict(encoded)
    from accelerate.utils import gather_object

    rows = np.array_split(np.arange(len(encoded)), accelerator.num_processes)[accelerator.process_index]
    share = Encoded(ids=[encoded.ids[i] for i in rows], full_lengths=encoded.full_lengths[rows])
    parts = gather_object([(rows, predict(share))])
    probs = np.zeros((len(encoded), parts[0][1].shape[1]), dtype=parts[0][1].dtype)
    for part_rows, part in parts:
        probs[part_rows] = part
    return probs


def agreed(accelerator, value):
    """The main process's ``value`` on every rank (a step plan timed on one clock, so all stop together)."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value])[0]
