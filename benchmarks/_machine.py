"""What every benchmark reports about where it ran, and how it pins threads: shared by the scripts here.

Benchmarks run as scripts (``python benchmarks/<name>.py``), so this folder is on ``sys.path``.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
from pathlib import Path

import numpy as np
import torch

from bertsent.runtime import THREADS_ENV, cpu_summary, physical_cores


def restore_sigint() -> None:
    """Give a child the default SIGINT (``preexec_fn``): a job started in the background (nohup, CI)
    inherits SIGINT ignored, and Python then never raises KeyboardInterrupt, so a Ctrl-C stop fails."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def set_threads(threads: int) -> dict:
    """Pin torch's intra-op threads (and ONNX Runtime's, via the env children inherit); returns them."""
    torch.set_num_threads(threads)
    # One forward pass is a chain of large ops: inter-op parallelism only adds threads that compete.
    with contextlib.suppress(RuntimeError):  # already set, or torch already ran parallel work
        torch.set_num_interop_threads(1)
    os.environ[THREADS_ENV] = str(threads)  # read by OnnxBackend (bertsent.export.resolve_threads)
    return thread_settings()


def thread_settings() -> dict:
    return {
        "torch_intra_op": torch.get_num_threads(),
        "torch_inter_op": torch.get_num_interop_threads(),
        THREADS_ENV: os.environ.get(THREADS_ENV),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM"),
    }


def read_lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a live process, in kB (empty once it has exited)."""
    values = {}
    for line in read_lines(f"/proc/{pid}/status"):
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


def machine_info(**versions: str | None) -> dict:
    """The machine, its load right now, and library versions (``versions`` adds the caller's own)."""
    import transformers

    import bertsent

    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in read_lines("/proc/cpuinfo")
            if line.startswith(("model name", "Model name"))
        ),
        platform.processor(),
    )
    mem_kb = next((int(line.split()[1]) for line in read_lines("/proc/meminfo") if line.startswith("MemTotal")), 0)
    return {
        "platform": platform.platform(),
        "cpu": cpu_model,
        "cpu_count": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "physical_cores": physical_cores(),
        "memory_gb": round(mem_kb / 1024**2, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnxruntime": ort_version,
        "numpy": np.__version__,
        "bertsent": bertsent.__version__,
        "cpu_features": cpu_summary(),  # the flags that decide the fastest route (AMX, AVX512-BF16, VNNI)
    } | versions
