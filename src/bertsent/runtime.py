"""Where and how code runs: CPU threads, the torch device, autocast precision and ONNX Runtime sessions.

One thread policy for every backend (``BERTSENT_THREADS`` / ``--threads``, else the physical cores).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from bertsent.errors import BertsentError, ModelError, SettingsError

if TYPE_CHECKING:
    import torch

log = logging.getLogger("bertsent.runtime")
THREADS_ENV = "BERTSENT_THREADS"


def require_onnxruntime():
    """Import onnxruntime, or fail with the install hint."""
    try:
        import onnxruntime
    except ImportError as e:
        raise ModelError("onnxruntime is not installed: pip install onnxruntime") from e
    return onnxruntime


def physical_cores() -> int:
    """Physical cores this process may use: hyper-threads share one core's matrix units, so they don't help.

    Read from sysfs topology (no psutil dependency); falls back to the logical CPUs available.
    """
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:
            return len(cpus)
        cores.add((package, core))
    return max(len(cores), 1)


def resolve_threads(threads: int | None = None) -> int:
    """Intra-op threads: the argument, else ``$BERTSENT_THREADS``, else one per physical core."""
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise SettingsError(f"threads must be an integer >= 1, got {threads!r}")
        return threads
    env = os.environ.get(THREADS_ENV, "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise BertsentError(f"{THREADS_ENV} must be an integer >= 1, got {env!r}")
        return int(env)
    return physical_cores()


def session_options(threads: int | None = None):
    """CPU session settings, chosen deliberately rather than left to ONNX Runtime's defaults."""
    ort = require_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = resolve_threads(threads)
    # One request's graph is a chain of large MatMuls: parallelism belongs inside the ops, not across them.
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: ORT's warnings about its own rewrites are noise here
    return options


def torch_threads(threads: int | None = None) -> int:
    """PyTorch's intra-op threads by the policy of :func:`session_options`: ``threads``, else
    ``$BERTSENT_THREADS``; with neither, PyTorch keeps its own default (one per physical core too).

    ``torch.set_num_threads`` is process-wide. Returns the threads in effect.
    """
    import torch

    if threads is not None or os.environ.get(THREADS_ENV, "").strip():
        torch.set_num_threads(resolve_threads(threads))
    return torch.get_num_threads()


def pick_device(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision setting; None means plain fp32."""
    import torch

    if precision == "fp32" or device.type == "cpu":
        if precision in ("bf16", "fp16"):
            log.warning("%s autocast is for GPUs; training in fp32 on the CPU", precision)
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16
