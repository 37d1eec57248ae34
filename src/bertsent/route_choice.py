"""``--backend auto`` on a PyTorch folder: which route runs it on this machine, checked against fp32
PyTorch, measured once and cached outside the folder.

The routes (:data:`ROUTES`): ``torch`` (PyTorch at the precision ``--precision auto`` picks), ``onnx``
(ONNX Runtime on a graph exported from the folder) and ``openvino`` (an IR converted from it, at
OpenVINO's own precision choice for the CPU, fp32 when that fails the check). On the first use of a
folder with given settings on a CPU, :func:`load_route` builds every installed route, times each on the
first :data:`TIMING_REVIEWS` of the folder's recorded validation reviews and picks the fastest
(:func:`pick`), where the route picked must first pass the guard of ``--precision auto``
(:func:`~bertsent.inference.agreement_verdict`) on all of them, or leave the pick to the others. The verdict and
the winner's artifact (the ONNX graph, or the OpenVINO IR and OpenVINO's compiled blobs) go under
:func:`cache_root` (``$BERTSENT_CACHE``, else ``$XDG_CACHE_HOME/bertsent`` or ``~/.cache/bertsent``),
in a folder named by :func:`route_key`: the folder's content (its config and weight files), the CPU's
flags, the threads, the settings that change the graph and the library versions. Later runs load the
winner from there at once, without building the PyTorch model when the winner is not PyTorch.

PyTorch stays, with the reason recorded, on a GPU, with ``compile``, for early-exit and torch-dynamic
INT8 folders, where the folder records no validation reviews (no guard possible), and where
``$BERTSENT_AUTO_ROUTES`` (a comma list of the routes ``auto`` may try) allows only ``torch``. A
``backend`` of torch, onnx or openvino, or a folder that already is an ONNX or OpenVINO export, goes
straight to :func:`~bertsent.inference.load_backend`; where that runs an ONNX or OpenVINO graph,
:func:`export_tokenizer` says (checked once, cached) whether ``tokenizer.json`` alone may tokenize for it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from bertsent.config import DEFAULT_OPSET, InferenceSettings
from bertsent.encoding import Encoded
from bertsent.errors import BertsentError, SettingsError, first_line
from bertsent.folder import (
    EARLY_EXIT_FILE,
    INPUT_NAMES,
    ONNX_FILE,
    OPENVINO_XML,
    OUTPUT_NAME,
    read_id2label,
    recorded_early_exit,
    write_json_whole,
)
from bertsent.inference import (
    Backend,
    OnnxBackend,
    OpenVinoBackend,
    TorchBackend,
    ValidationSample,
    agreement_verdict,
    load_backend,
    run,
    validation_sample,
)
from bertsent.runtime import (
    auto_precision,
    cpu_fingerprint,
    pick_device,
    progress_bar,
    resolve_threads,
    torch_cpu_build,
)
from bertsent.tokenizer_json import TOKENIZER_FILE

log = logging.getLogger(__name__)

CACHE_ENV = "BERTSENT_CACHE"
"""The folder under which ``--backend auto`` keeps its verdicts and compiled artifacts."""
ROUTES_ENV = "BERTSENT_AUTO_ROUTES"
"""A comma list of the routes ``--backend auto`` may try (default: all of :data:`ROUTES`); ``torch`` alone
turns the measuring off (a test suite, or a machine where only PyTorch is wanted)."""
ROUTES = ("torch", "onnx", "openvino")
VERDICT_FILE = "route.json"
IR_DIR = "openvino"
BLOB_DIR = "openvino_cache"
LOCK_FILE = ".lock"
TOKENIZER_DIR = "tokenizers"
"""Under :func:`cache_root`: the tokenizer checks of folders that run their own exported graph."""
TOKENIZER_FILES = (TOKENIZER_FILE, "tokenizer_config.json", "special_tokens_map.json")
"""The files whose bytes key a folder's tokenizer check."""
KEY_FORMAT = 2
"""Bumped when what the cache holds changes shape: every older verdict is then measured again (2: the
verdict says which library tokenizes)."""
MIN_SPEEDUP = 1.05
"""How much faster than PyTorch another route must run the validation reviews to replace it when it would
still tokenize with transformers (which imports PyTorch): then only its speed counts, and a tie stays with
PyTorch, whose model explanations use. A route whose ``tokenizer.json`` passed the check starts without
PyTorch or transformers (seconds sooner, hundreds of MB less, docs/benchmarks.md), so it needs only to be
no slower."""
TIMING_BATCH = 32
"""Batch size of the timed passes and of the guard's."""
TIMING_REVIEWS = 160
"""Validation reviews (the sample's first) every route is timed on, after its warm-up. Only a route the pick
would choose runs the rest of the sample too, for the guard, and fp32 PyTorch with it (:func:`_checked_pick`)."""
WARMUP_ROWS = 32
"""Rows each route runs before its timed pass (first-call allocations, OpenVINO's kernel selection)."""
HASHED_FILES = ("config.json", "model*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin")
"""The folder's files whose bytes key the cache: a changed config or weight measures again."""
VERSIONED = ("bertsent", "torch", "transformers", "onnx", "onnxruntime", "openvino")


@dataclasses.dataclass(frozen=True)
class Route:
    """Which route a folder runs with and why (what ``describe()``, ``compare.json`` and ``evaluate``'s
    metrics record)."""

    name: str
    """``torch``, ``onnx`` or ``openvino``."""
    reason: str
    auto: bool = False
    """Chosen by ``--backend auto`` for a PyTorch folder (its PyTorch weights are there for explanations)."""
    measured_seconds: float | None = None
    """What measuring cost, when this run measured (the first use); None when it loaded a verdict."""
    cache_dir: Path | None = None
    """Where the verdict and the winner's artifact live (auto only)."""
    light_tokenizer: bool = False
    """The winner is not PyTorch and :class:`~bertsent.tokenizer_json.JsonTokenizer` encoded the validation
    reviews exactly as transformers does: the route starts without importing transformers or PyTorch."""

    def record(self) -> dict:
        """The route as a record's fields: ``{"route", "route_reason"}`` (and what measuring cost)."""
        extra = {"route_measured_seconds": self.measured_seconds} if self.measured_seconds is not None else {}
        return {"route": self.name, "route_reason": self.reason} | extra


def cache_root() -> Path:
    """``$BERTSENT_CACHE``, else ``$XDG_CACHE_HOME/bertsent``, else ``~/.cache/bertsent``."""
    explicit = os.environ.get(CACHE_ENV, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(base).expanduser() if base else Path.home() / ".cache") / "bertsent"


def allowed_routes() -> tuple[str, ...]:
    """The routes :data:`ROUTES_ENV` lets ``auto`` try (all by default); PyTorch, the reference, always."""
    raw = os.environ.get(ROUTES_ENV, "").strip()
    if not raw:
        return ROUTES
    named = [part.strip() for part in raw.split(",") if part.strip()]
    unknown = sorted(set(named) - set(ROUTES))
    if unknown:
        raise SettingsError(f"{ROUTES_ENV} names unknown routes {unknown}; known: {', '.join(ROUTES)}")
    return tuple(route for route in ROUTES if route == "torch" or route in named)


def _route_of(backend: Backend) -> str:
    return {"onnxruntime": "onnx", "openvino": "openvino"}.get(backend.name, "torch")


def load_route(model_dir: Path, settings: InferenceSettings) -> tuple[Backend, Route]:
    """The backend ``settings`` ask for, and the :class:`Route` it is: for ``backend="auto"`` on a PyTorch
    folder, the cached winner of the routes (measured now on first use), else what
    :func:`~bertsent.inference.load_backend` loads."""
    model_dir = Path(model_dir)
    if settings.backend != "auto":
        backend = load_backend(model_dir, settings)
        route = _route_of(backend)
        light = route != "torch" and _light(export_tokenizer(model_dir))
        return backend, Route(route, f"--backend {settings.backend} forces it", light_tokenizer=light)
    for name, route in ((OPENVINO_XML, "openvino"), (ONNX_FILE, "onnx")):
        if (model_dir / name).is_file():
            why = f"the folder is an export ({name}): runs as it is"
            return load_backend(model_dir, settings), Route(
                route, why, light_tokenizer=_light(export_tokenizer(model_dir))
            )
    why = _stays_torch(model_dir, settings)
    if why is not None:
        return _torch(model_dir, settings, why)
    try:
        folder = cache_root() / "routes" / route_key(model_dir, settings)
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return _torch(model_dir, settings, f"cannot write the route cache ({first_line(e)}); set ${CACHE_ENV}")
    loaded = _load_cached(model_dir, settings, folder)
    if loaded is not None:
        return loaded
    with _locked(folder):
        loaded = _load_cached(model_dir, settings, folder)  # another process may have measured meanwhile
        if loaded is not None:
            return loaded
        started = time.perf_counter()
        backend, verdict = measure(model_dir, settings, folder)
        seconds = round(time.perf_counter() - started, 1)
        if verdict.pop("cache", True):
            write_json_whole(folder / VERDICT_FILE, verdict | {"measure_seconds": seconds})
            log.info(
                "backend auto: %s runs with %s (%s); choosing took %.1f s, once: later runs load it from %s",
                model_dir, verdict["route"], verdict["reason"], seconds, folder,
            )  # fmt: skip
        else:
            log.info("backend auto: %s runs with PyTorch: %s", model_dir, verdict["reason"])
        return backend, Route(verdict["route"], verdict["reason"], True, seconds, folder, _light(verdict))


def _light(verdict: dict) -> bool:
    return verdict.get("tokenizer") == "tokenizers"  # only a non-PyTorch winner is ever checked for it


def _torch(model_dir: Path, settings: InferenceSettings, why: str) -> tuple[Backend, Route]:
    log.info("backend auto: %s runs with PyTorch: %s", model_dir, why)
    return load_backend(model_dir, settings, backend="torch"), Route("torch", why, auto=True)


def _stays_torch(model_dir: Path, settings: InferenceSettings) -> str | None:
    """Why ``auto`` keeps a PyTorch folder on PyTorch without measuring, or None."""
    cpu = settings.device == "cpu" or (settings.device == "auto" and torch_cpu_build())
    if not cpu and pick_device(settings.device).type != "cpu":
        return "a GPU device: PyTorch runs there"
    if settings.compile:
        return "--compile is PyTorch's"
    if recorded_early_exit(model_dir) is not None or (model_dir / EARLY_EXIT_FILE).is_file():
        return "an early-exit folder: exported graphs would run every layer"
    if settings.exit_threshold is not None:
        return "exit_threshold is PyTorch early exit's"
    if allowed_routes() == ("torch",):
        return f"${ROUTES_ENV} allows PyTorch only"
    return None


# --- the cache key ----------------------------------------------------------------------------------


def route_key(model_dir: Path, settings: InferenceSettings) -> str:
    """The cache folder's name for this folder, CPU, thread count, settings and library versions."""
    parts = {
        "format": KEY_FORMAT,
        "folder": content_digest(model_dir),
        "cpu": cpu_fingerprint(),
        "threads": resolve_threads(settings.threads),
        "precision": settings.precision,
        "cls_only": settings.cls_only,
        "routes": allowed_routes(),
        "versions": library_versions(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def library_versions(names: tuple[str, ...] = VERSIONED) -> dict[str, str | None]:
    """The installed versions of ``names`` (None: not installed), read without importing them."""
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def content_digest(model_dir: Path) -> str:
    """SHA-256 over the names and bytes of the folder's :data:`HASHED_FILES`. Each file's digest is kept
    in the cache by path, size and modification time, so an unchanged folder is not read again."""
    memo_path = cache_root() / "digests.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    memo = memo if isinstance(memo, dict) else {}
    files = sorted({p for pattern in HASHED_FILES for p in Path(model_dir).glob(pattern) if p.is_file()})
    total, changed = hashlib.sha256(), False
    for path in files:
        stat = path.stat()
        stamp = [stat.st_size, stat.st_mtime_ns]
        entry = memo.get(str(path.resolve()))
        if not (isinstance(entry, list) and entry[:2] == stamp):
            with path.open("rb") as f:
                entry = [*stamp, hashlib.file_digest(f, "sha256").hexdigest()]
            memo[str(path.resolve())], changed = entry, True
        total.update(f"{path.name}:{entry[2]};".encode())
    if changed:
        with contextlib.suppress(OSError):  # an unwritable cache: the next run hashes again
            memo_path.parent.mkdir(parents=True, exist_ok=True)
            write_json_whole(memo_path, memo)
    return total.hexdigest()


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder`` (processes starting together, Ray actors: one measures, the others
    wait and then load its verdict). No lock where ``fcntl`` is missing (Windows): both then measure."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with (folder / LOCK_FILE).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- loading a verdict ------------------------------------------------------------------------------


def read_verdict(folder: Path) -> dict | None:
    """The verdict cached in ``folder``, or None (none yet, or unreadable)."""
    try:
        verdict = json.loads((folder / VERDICT_FILE).read_text())
    except (OSError, ValueError):
        return None
    return verdict if isinstance(verdict, dict) and verdict.get("route") in ROUTES else None


def _load_cached(model_dir: Path, settings: InferenceSettings, folder: Path) -> tuple[Backend, Route] | None:
    """The cached winner, loaded; None when there is no verdict or its artifact no longer loads."""
    verdict = read_verdict(folder)
    if verdict is None:
        return None
    try:
        backend = load_winner(model_dir, settings, folder, verdict)
    except BertsentError as e:
        log.warning("backend auto: the cached %s route does not load (%s): measuring again", verdict["route"], e)
        return None
    log.info("backend auto: %s runs with %s (%s; cached in %s)", model_dir, verdict["route"], verdict["reason"], folder)
    return backend, Route(verdict["route"], verdict["reason"], True, None, folder, _light(verdict))


def load_winner(model_dir: Path, settings: InferenceSettings, folder: Path, verdict: dict) -> Backend:
    """The route a verdict names, from its artifact in ``folder`` (PyTorch: from the model folder, at the
    precision the verdict checked)."""
    route, precision = verdict["route"], verdict.get("precision", "fp32")
    if route == "torch":
        return load_backend(model_dir, settings, backend="torch", precision=precision)
    id2label = read_id2label(model_dir)
    if route == "onnx":
        backend = OnnxBackend.from_file(folder / ONNX_FILE, id2label, settings.threads)
        backend.precision = "fp32"
        return backend
    return OpenVinoBackend.from_file(
        folder / IR_DIR / OPENVINO_XML, id2label, settings.threads, verdict.get("hint"), folder / BLOB_DIR
    )


# --- measuring --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Contender:
    """A route to try: ``build()`` makes its backend (exporting what it needs into the cache folder)."""

    route: str
    build: Callable[[], Backend]
    hint: str | None = None
    """OpenVINO's precision hint (None: its own choice)."""
    guarded: bool = True
    """Checked against fp32 PyTorch (a precision the user forced on PyTorch is not: it is what they asked)."""


def measure(model_dir: Path, settings: InferenceSettings, folder: Path) -> tuple[Backend, dict]:
    """Try every allowed, installed route on the folder's validation reviews; returns the winner's backend
    and the verdict (``route``, ``precision``, ``reason``, every contender's result)."""
    reference = load_backend(model_dir, settings, backend="torch", precision="fp32", compile=False)
    from bertsent.modeling.quantized import is_torch_dynamic

    if is_torch_dynamic(reference.model):
        return reference, {"route": "torch", "precision": "fp32", "reason": "a torch-dynamic INT8 folder"}
    sample, why = validation_sample(model_dir, reference.id2label)
    if sample is None:
        reason = f"the folder records no validation reviews to check other routes against ({why}): no guard possible"
        return reference, {"route": "torch", "precision": "fp32", "reason": reason, "cache": False}
    contenders = _contenders(reference, settings, folder)
    log.info(
        "backend auto: first use of %s here: trying %s against fp32 PyTorch on %d validation reviews "
        "(once; --backend torch skips this)",
        model_dir, ", ".join(dict.fromkeys(c.route for c in contenders)), len(sample.labels),
    )  # fmt: skip
    timing = _rows(sample.encoded, slice(TIMING_REVIEWS))
    with progress_bar(None, total=1 + len(contenders), desc="backend auto: trying routes", unit="route") as bar:
        bar.set_postfix_str("torch fp32")
        labels, seconds = _timed_labels(reference, timing, sample.pad_id)
        trials = [_Trial(_result("torch", reference, seconds, None), reference, labels, guarded=False)]
        bar.update(1)
        for contender in contenders:
            bar.set_postfix_str(contender.route)
            trials.append(_try(contender, timing, sample.pad_id))
            bar.update(1)
        others_ran = any(t.backend is not None and t.result["route"] != "torch" for t in trials)
        tokenizer = _tokenizer_verdict(model_dir, sample) if others_ran else {"tokenizer": "transformers"}
        light = tokenizer["tokenizer"] == "tokenizers"
        fallback = functools.partial(_openvino_fp32, folder, reference, settings)
        winner = _checked_pick(trials, sample, timing, light, bar, fallback)
    chosen = winner.result
    if chosen["route"] == "torch":
        tokenizer, light = {"tokenizer": "transformers"}, False
    _drop_losers(folder, chosen["route"])
    verdict = {
        "route": chosen["route"],
        "precision": chosen["precision"],
        "hint": chosen.get("hint"),
        "reason": _reason(chosen, trials[0].result, light),
        "data": sample.source,
        "reviews": len(sample.labels),
        "timed_reviews": len(timing),
        "measured_at": _now(),
        "model": str(model_dir),
        "candidates": [t.result for t in trials],
    } | tokenizer
    return winner.backend, verdict


def _tokenizer_verdict(model_dir: Path, sample: ValidationSample) -> dict:
    """Which library a non-PyTorch route would tokenize with on later runs: ``tokenizers`` where
    :func:`~bertsent.tokenizer_json.same_encoding` finds its ids equal to transformers' on the sample (then
    neither transformers nor PyTorch is imported to predict), else ``transformers`` and why. ``measure``
    asks only when such a route ran (PyTorch tokenizes with transformers)."""
    from bertsent.tokenizer_json import same_encoding

    differs = same_encoding(model_dir, sample.tokenizer, sample.texts, sample.max_length, sample.truncation)
    if differs is None:
        return {"tokenizer": "tokenizers"}
    log.info("%s tokenizes with transformers: tokenizer.json alone does not match it (%s)", model_dir, differs)
    return {"tokenizer": "transformers", "tokenizer_reason": differs}


def export_tokenizer(model_dir: Path) -> dict:
    """Which library tokenizes a folder that runs its own ONNX or OpenVINO graph (an export, or a forced
    ``--backend onnx|openvino``): ``{"tokenizer": "tokenizers"}`` where its ``tokenizer.json`` alone encodes
    the folder's recorded validation reviews as transformers does (:func:`_tokenizer_verdict`), else
    ``transformers`` and why. Checked on first use and cached under :func:`cache_root` by the tokenizer
    files' bytes and the library versions (the folder may be read-only); a folder that records no
    validation reviews tokenizes with transformers (no evidence, nothing cached)."""
    model_dir = Path(model_dir)
    if not (model_dir / TOKENIZER_FILE).is_file():
        return {"tokenizer": "transformers", "tokenizer_reason": f"no {TOKENIZER_FILE}"}
    path = cache_root() / TOKENIZER_DIR / f"{_tokenizer_key(model_dir)}.json"
    with contextlib.suppress(OSError, ValueError):
        cached = json.loads(path.read_text())
        if isinstance(cached, dict) and cached.get("tokenizer") in ("tokenizers", "transformers"):
            return cached
    sample, why = validation_sample(model_dir, read_id2label(model_dir))
    if sample is None:
        log.info(
            "%s tokenizes with transformers: no validation reviews to check %s on (%s)", model_dir, TOKENIZER_FILE, why
        )
        return {"tokenizer": "transformers", "tokenizer_reason": f"no validation reviews to check it on ({why})"}
    verdict = _tokenizer_verdict(model_dir, sample)
    checked = {"reviews": len(sample.texts), "model": str(model_dir), "checked_at": _now()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_whole(path, verdict | checked)
    except OSError as e:  # an unwritable cache: the check runs again next time
        log.info("cannot cache the tokenizer check in %s (%s); set $%s", path, first_line(e), CACHE_ENV)
    return verdict


def _tokenizer_key(model_dir: Path) -> str:
    """SHA-256 (24 hex digits) over the folder's tokenizer files and the versions of the libraries that read them."""
    digest = hashlib.sha256(
        json.dumps([KEY_FORMAT, library_versions(("bertsent", "tokenizers", "transformers"))]).encode()
    )
    for name in TOKENIZER_FILES:
        if (model_dir / name).is_file():
            digest.update(name.encode() + b":" + (model_dir / name).read_bytes())
    return digest.hexdigest()[:24]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclasses.dataclass
class _Trial:
    """A route tried: its result (what the verdict records), its backend (None: it failed), its labels of
    the reviews it has run so far, and whether it is held to the guard."""

    result: dict
    backend: Backend | None
    labels: np.ndarray | None = None
    guarded: bool = True


def _rows(encoded: Encoded, rows: slice) -> Encoded:
    return Encoded(ids=encoded.ids[rows], full_lengths=encoded.full_lengths[rows])


def _timed_labels(backend: Backend, encoded: Encoded, pad_id: int) -> tuple[np.ndarray, float]:
    """``backend``'s labels of ``encoded`` and the seconds its pass took (after a warm-up batch)."""
    run(backend, _rows(encoded, slice(WARMUP_ROWS)), TIMING_BATCH, pad_id)
    started = time.perf_counter()
    labels = run(backend, encoded, TIMING_BATCH, pad_id).argmax(-1)
    return labels, time.perf_counter() - started


def _result(route: str, backend: Backend, seconds: float, hint: str | None) -> dict:
    entry = {"route": route, "backend": backend.name, "precision": str(backend.precision), "seconds": round(seconds, 3)}
    return entry | ({"hint": hint} if route == "openvino" else {}) | {"passed": True}


def _try(contender: Contender, timing: Encoded, pad_id: int) -> _Trial:
    """One contender built and timed on the timing reviews; a failure to build or run is its result, not
    an error. Its ``passed`` stays provisional until :func:`_checked_pick` checks it."""
    started = time.perf_counter()
    try:
        backend = contender.build()
        build_seconds = time.perf_counter() - started
        labels, seconds = _timed_labels(backend, timing, pad_id)
    except Exception as e:  # exporters and runtimes raise many types; the route is then simply not used
        log.info("backend auto: the %s route failed (%s): not used", contender.route, first_line(e))
        return _Trial({"route": contender.route, "passed": False, "error": first_line(e)}, None)
    result = _result(contender.route, backend, seconds, contender.hint) | {"build_seconds": round(build_seconds, 2)}
    return _Trial(result, backend, labels, contender.guarded)


def _checked_pick(
    trials: list[_Trial], sample: ValidationSample, timing: Encoded, light: bool, bar, fallback: Callable
) -> _Trial:
    """The trial :func:`pick` chooses, where every route it would choose is first held to the guard on the
    whole sample (``trials[0]``, fp32 PyTorch, then runs it too); one that fails is out, and the pick is
    made again. OpenVINO's own precision that fails brings in OpenVINO fp32 (``fallback()``). A route the
    pick never reached records that it was not checked (``passed`` None)."""
    while True:
        chosen = pick([t.result for t in trials], light=light)
        trial = next(t for t in trials if t.result is chosen)
        if trial is trials[0] or not trial.guarded or "agreement" in chosen:
            break
        bar.total += 1
        bar.set_postfix_str(f"checking {chosen['route']}")
        chosen |= agreement_verdict(_all_labels(trials[0], sample), _all_labels(trial, sample), sample.labels)
        bar.update(1)
        if chosen["passed"]:
            break
        if chosen["route"] == "openvino" and chosen.get("hint") is None and chosen["precision"] != "fp32":
            trials.append(_try(fallback(), timing, sample.pad_id))
    for other in trials:
        if other.guarded and other.backend is not None and "agreement" not in other.result:
            other.result |= {"passed": None, "check": "not run: the pick chose another route first"}
    return trial


def _all_labels(trial: _Trial, sample: ValidationSample) -> np.ndarray:
    """The trial's labels of the whole sample: the timing reviews' and, run now, the rest's."""
    done = len(trial.labels)
    if done < len(sample.labels):
        rest = _rows(sample.encoded, slice(done, None))
        trial.labels = np.concatenate([trial.labels, run(trial.backend, rest, TIMING_BATCH, sample.pad_id).argmax(-1)])
    return trial.labels


def pick(results: list[dict], light: bool = False) -> dict:
    """The winner among the contenders' results (``results[0]`` is PyTorch, which always qualifies): the
    fastest that passed the guard, if it beats PyTorch by :data:`MIN_SPEEDUP`, or is no slower than
    PyTorch where it would start ``light`` (its ``tokenizer.json`` checked); PyTorch otherwise.
    Tests replace this function to choose a route without depending on timings."""
    torch_result = next(r for r in results if r["route"] == "torch" and r["passed"])
    passed = [r for r in results if r.get("passed") and "seconds" in r]
    fastest = min(passed, key=lambda r: r["seconds"])
    needed = 1.0 if light and fastest["route"] != "torch" else MIN_SPEEDUP
    return fastest if fastest["seconds"] * needed <= torch_result["seconds"] else torch_result


def _reason(chosen: dict, torch_fp32: dict, light: bool) -> str:
    speed = torch_fp32["seconds"] / chosen["seconds"] if chosen.get("seconds") else 1.0
    if chosen["route"] == "torch" and chosen is torch_fp32:
        return "no other route both ran faster than PyTorch fp32 and passed the check"
    agreement = f", labels {100 * chosen['agreement']:.1f}% as fp32" if "agreement" in chosen else ""
    start = ", starts without PyTorch" if light else ""
    return f"fastest route that passed the check: {speed:.2f}x PyTorch fp32 on the validation reviews{agreement}{start}"


def _drop_losers(folder: Path, route: str) -> None:
    """Delete the artifacts of the routes that lost (the winner's stay for later runs)."""
    if route != "onnx":
        (folder / ONNX_FILE).unlink(missing_ok=True)
    if route != "openvino":
        shutil.rmtree(folder / IR_DIR, ignore_errors=True)
        shutil.rmtree(folder / BLOB_DIR, ignore_errors=True)


def _contenders(reference: TorchBackend, settings: InferenceSettings, folder: Path) -> list[Contender]:
    """The routes to try besides fp32 PyTorch (the reference): PyTorch bf16 where ``--precision auto`` would
    take it (or the precision forced), ONNX Runtime (fp32 only) and OpenVINO, those installed and allowed."""
    allowed, precision = allowed_routes(), settings.precision
    torch_precision = auto_precision(reference.device) if precision == "auto" else precision
    contenders = []
    if torch_precision == "bf16":
        contenders.append(Contender("torch", lambda: _torch_bf16(reference), guarded=precision == "auto"))
    if "onnx" in allowed and precision in ("auto", "fp32") and importlib.util.find_spec("onnxruntime"):
        contenders.append(Contender("onnx", lambda: _onnx_route(reference, settings, folder)))
    if "openvino" in allowed and importlib.util.find_spec("openvino"):
        hint = None if precision == "auto" else precision
        contenders.append(Contender("openvino", lambda: _openvino_route(reference, settings, folder, hint), hint))
    return contenders


def _torch_bf16(reference: TorchBackend) -> TorchBackend:
    import torch

    return TorchBackend(reference.model, reference.device, torch.bfloat16, reference.cls_only)


def _onnx_route(reference: TorchBackend, settings: InferenceSettings, folder: Path) -> OnnxBackend:
    path = _exported_onnx(reference, folder)
    backend = OnnxBackend.from_file(path, reference.id2label, settings.threads)
    backend.precision = "fp32"
    return backend


def _openvino_route(
    reference: TorchBackend, settings: InferenceSettings, folder: Path, hint: str | None
) -> OpenVinoBackend:
    """The folder as an fp32 OpenVINO IR in the cache (converted from the exported ONNX graph), compiled
    with ``hint`` and OpenVINO's compiled-blob cache."""
    import openvino as ov

    xml = folder / IR_DIR / OPENVINO_XML
    if not xml.is_file():
        converted = ov.convert_model(str(_exported_onnx(reference, folder)))
        staged = folder / f"{IR_DIR}.{os.getpid()}.tmp"
        shutil.rmtree(staged, ignore_errors=True)
        staged.mkdir()
        ov.save_model(converted, str(staged / OPENVINO_XML), compress_to_fp16=False)  # fp32 weights, as the folder
        shutil.rmtree(folder / IR_DIR, ignore_errors=True)
        os.replace(staged, folder / IR_DIR)
    return OpenVinoBackend.from_file(xml, reference.id2label, settings.threads, hint, folder / BLOB_DIR)


def _openvino_fp32(folder: Path, reference: TorchBackend, settings: InferenceSettings) -> Contender:
    """OpenVINO held to fp32, tried after its own precision choice failed the check."""
    log.info("backend auto: OpenVINO's own precision failed the check; trying OpenVINO fp32")
    return Contender("openvino", lambda: _openvino_route(reference, settings, folder, "fp32"), "fp32")


def _exported_onnx(reference: TorchBackend, folder: Path) -> Path:
    """The reference model (its [CLS]-only last layer included) exported to ``folder/model.onnx`` in fp32,
    with dynamic batch and length, as ``bertsent export`` does; exported once per cache folder."""
    import torch

    path = folder / ONNX_FILE
    if path.is_file():
        return path
    model = copy.deepcopy(reference.model).float().eval()
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")  # SDPA exports to a larger graph that ORT does not simplify
    ids = torch.randint(1000, 2000, (2, 16), dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    staged = folder / f"{ONNX_FILE}.{os.getpid()}.tmp"
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES} | {OUTPUT_NAME: {0: "batch"}}
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's legacy and tracing warnings; the guard decides
        torch.onnx.export(
            model,
            (ids, mask),
            str(staged),
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes=axes,
            opset_version=DEFAULT_OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    os.replace(staged, path)
    return path
