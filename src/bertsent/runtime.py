"""Where and how code runs: CPU threads, the torch device, autocast precision, ONNX Runtime sessions,
OpenVINO compile settings (its compiled-blob cache too), what the CPU can do (:func:`cpu_capabilities`,
:func:`cpu_summary`, and :func:`cpu_fingerprint` for cache keys), and progress bars.

One thread policy for every backend (``BERTSENT_THREADS`` / ``--threads``, else the physical cores), and
one progress policy for every long pass (:func:`progress_bar`: ``None`` shows a bar on a terminal only).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from bertsent.errors import BertsentError, ModelError, SettingsError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
THREADS_ENV = "BERTSENT_THREADS"


def require_onnxruntime():
    """Import onnxruntime, or fail with the install hint."""
    try:
        import onnxruntime
    except ImportError as e:
        raise ModelError("onnxruntime is not installed: pip install onnxruntime") from e
    return onnxruntime


OPENVINO_HINT = 'OpenVINO is not installed: pip install "bertsent[openvino]"'


def require_openvino():
    """Import openvino, or fail with the install hint."""
    try:
        import openvino
    except ImportError as e:
        raise ModelError(OPENVINO_HINT) from e
    return openvino


OPENVINO_PRECISIONS = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}
"""OpenVINO's element type names for inference precision, as bertsent names precisions."""


def openvino_own_precision() -> str:
    """The inference precision OpenVINO's CPU plugin picks by itself here (bf16 where the CPU has AMX or
    AVX512-BF16, else fp32): what ``--precision auto`` runs an OpenVINO graph at once the check passes."""
    require_openvino()
    import openvino as ov
    import openvino.properties.hint as hints

    own = ov.Core().get_property("CPU", hints.inference_precision).to_string()
    return OPENVINO_PRECISIONS.get(own, own)


def openvino_config(
    threads: int | None = None, precision: str | None = None, cache_dir: str | os.PathLike | None = None
) -> dict:
    """OpenVINO CPU compile settings: ``INFERENCE_NUM_THREADS`` by the thread policy of
    :func:`session_options`, and ``INFERENCE_PRECISION_HINT`` only when ``precision`` is ``fp32`` (f32) or
    ``bf16``; otherwise OpenVINO keeps its own choice for the CPU (bf16 where it has AMX or AVX512-BF16).
    ``cache_dir``: OpenVINO's ``CACHE_DIR``, where it keeps compiled blobs so a later compile loads one."""
    ov = require_openvino()
    import openvino.properties as props
    import openvino.properties.hint as hints

    config: dict = {props.inference_num_threads: resolve_threads(threads)}
    if precision in ("fp32", "bf16"):
        config[hints.inference_precision] = ov.Type.f32 if precision == "fp32" else ov.Type.bf16
    if cache_dir is not None:
        config[props.cache_dir] = str(cache_dir)
    return config


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


def torch_cpu_build() -> bool:
    """Whether the installed PyTorch is a CPU-only wheel (version tag ``+cpu``), read without importing it: on
    such a build ``device="auto"`` is the CPU, and the ONNX and OpenVINO routes start without PyTorch."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch").endswith("+cpu")
    except PackageNotFoundError:
        return False


def pick_device(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The training autocast dtype for a precision setting; None means plain fp32.

    On the CPU, ``auto`` is bf16 only where it has AMX (:func:`cpu_bf16_fast`): there a 10-minute budget ran
    1.23x the optimizer steps of fp32 and scored 0.65 points more (docs/benchmarks.md); without AMX
    PyTorch's bf16 CPU kernels gain little (inference measured slower), so fp32 stays. ``bf16`` forces it;
    fp16 autocast is for GPUs."""
    import torch

    if precision == "fp32":
        return None
    if device.type == "cpu":
        if precision == "fp16":
            log.warning("fp16 autocast is for GPUs; training in fp32 on the CPU")
            return None
        return torch.bfloat16 if precision == "bf16" or cpu_bf16_fast() else None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def precision_name(dtype: torch.dtype | None) -> str:
    """``bf16``, ``fp16`` or ``fp32`` for an autocast dtype (None: plain fp32), as records and rows name it."""
    import torch

    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


# --- the CPU's capabilities --------------------------------------------------------------------------

CPU_FEATURES = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx2")
"""The instruction-set flags that decide how fast (and in which precision) inference runs on a CPU."""
CPUINFO = Path("/proc/cpuinfo")


def parse_cpu_flags(flags: str) -> dict[str, bool]:
    """``{feature: present}`` for :data:`CPU_FEATURES`, from a ``/proc/cpuinfo`` flags string
    (space-separated, e.g. ``"fpu ... avx2 avx512_vnni amx_bf16"``; a leading ``flags :`` is ignored)."""
    if ":" in flags:
        flags = flags.split(":", 1)[1]
    present = set(flags.lower().split())
    return {feature: feature in present for feature in CPU_FEATURES}


def parse_cpuinfo(text: str) -> dict:
    """Vendor, model name and :data:`CPU_FEATURES` of the first processor in ``/proc/cpuinfo`` text."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor is enough: every core of a machine reports the same flags
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    return {
        "vendor": fields.get("vendor_id", ""),
        "model_name": fields.get("model name", ""),
        **parse_cpu_flags(fields.get("flags", "")),
    }


def cpu_capabilities() -> dict:
    """This machine's CPU: ``vendor``, ``model_name`` and a bool per :data:`CPU_FEATURES` (all False
    where ``/proc/cpuinfo`` cannot be read, e.g. not Linux: the safe side, fp32)."""
    import platform

    try:
        info = parse_cpuinfo(CPUINFO.read_text())
    except OSError:
        info = {"vendor": "", "model_name": "", **parse_cpu_flags("")}
    info["model_name"] = info["model_name"] or platform.processor() or platform.machine()
    return info


def cpu_fingerprint() -> str:
    """This CPU as a route cache key: its model name and every flag ``/proc/cpuinfo`` lists for it
    (sorted; a changed CPU, or a virtual machine that hides a flag, gives another key)."""
    import platform

    try:
        text = CPUINFO.read_text()
    except OSError:
        text = ""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() and fields:
            break
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    name = fields.get("model name") or platform.processor() or platform.machine()
    return f"{name} | {' '.join(sorted(set(fields.get('flags', '').split())))}"


def cpu_summary() -> dict:
    """What a measurement should record about the CPU it ran on: the capabilities, the machine, the
    cores, and the ``features`` present as one string (``"amx_bf16 amx_int8 avx512_bf16 ..."``)."""
    import platform

    info = cpu_capabilities()
    return {
        **info,
        "features": " ".join(f for f in CPU_FEATURES if info[f]) or "none of " + ", ".join(CPU_FEATURES),
        "machine": platform.machine(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": physical_cores(),
    }


CPU_BF16_ENV = "BERTSENT_CPU_BF16"
"""``0`` or ``1`` overrides what :func:`cpu_bf16_fast` reads from the CPU (a test suite that must give the
same numbers on every machine, or a CPU whose flags mislead)."""


def cpu_bf16_fast() -> bool:
    """Whether bf16 is faster than fp32 on this CPU: it needs AMX tiles (``amx_bf16``); AVX512-BF16 alone
    converts and dots in bf16 but PyTorch's CPU kernels then gain little, so fp32 stays the choice there.
    :data:`CPU_BF16_ENV` overrides the flags."""
    override = os.environ.get(CPU_BF16_ENV, "").strip()
    if override:
        if override not in ("0", "1"):
            raise SettingsError(f"{CPU_BF16_ENV} must be 0 or 1, got {override!r}")
        return override == "1"
    return cpu_capabilities()["amx_bf16"]


def auto_precision(device: torch.device) -> str:
    """The reduced precision ``precision="auto"`` tries on ``device``: ``bf16`` on a CUDA device that
    supports it or a CPU with AMX (:func:`cpu_bf16_fast`), else ``fp32``."""
    import torch

    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_bf16_fast() else "fp32"
    return "fp32"


def quiet_transformers() -> None:
    """Silence transformers' load reports and progress bars; bertsent logs what matters itself."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def progress_disable(progress: bool | None) -> bool | None:
    """tqdm's ``disable`` by bertsent's progress policy: ``progress=None`` shows a bar only where stderr is a
    terminal (tqdm's own ``disable=None``), True always shows one, False never."""
    return None if progress is None else not progress


def progress_bar(progress: bool | None, **tqdm_kwargs):
    """A ``tqdm.auto`` bar under the progress policy of :func:`progress_disable` (``total``, ``desc``, ...
    as tqdm takes them); a context manager, ``update(n)`` as usual."""
    from tqdm.auto import tqdm

    return tqdm(disable=progress_disable(progress), **tqdm_kwargs)
