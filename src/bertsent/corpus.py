"""Scoring a corpus on Ray Data: ``bertsent predict --engine ray`` (the ``bertsent[ray]`` extra).

One pipeline, streamed end to end so no stage holds the corpus: Ray tasks read the input files (one
task per file, in chunks of :data:`~bertsent.tabular.CHUNK` rows), a fixed pool of actors scores them
(each actor builds one :class:`~bertsent.predict.Predictor` when it starts, with the same
:class:`~bertsent.config.InferenceSettings` as local ``predict``), and Ray tasks write Parquet shards.

Files are parsed by :func:`bertsent.tabular.open_input`, the reader of local ``predict``, not by
``ray.data.read_csv``/``read_json``/``read_parquet``: those infer column types (a CSV id ``007`` comes
back as the integer 7) and do not say where in its file a row was, so neither the ids nor a row id of
file + row number would survive. Every output row carries ``row_id`` (``<file>:<row>``: the file's path
relative to the input folder, the row's 0-based place among the file's data rows), the input columns
local ``predict`` would write (``keep_columns``), ``label`` and ``score`` (and ``scores``, the best
``top_k`` labels, unless ``top_k`` is 1), ranked as local ``predict`` ranks them
(:func:`~bertsent.tabular.rank_labels`).

Ray is imported inside functions only: without it, ``bertsent`` works as before and ``--engine ray``
is a one-line error naming the install command.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import itertools
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from bertsent.config import InferenceSettings
from bertsent.errors import BertsentError, DataError, ModelError, SettingsError, first_line
from bertsent.modeling.loading import load_tokenizer
from bertsent.predict import Predictor, resolve_settings
from bertsent.runtime import THREADS_ENV, physical_cores, resolve_threads
from bertsent.tabular import CHUNK, input_format, open_input, rank_labels

log = logging.getLogger(__name__)

RAY_INSTALL = 'pip install "bertsent[ray]"'
ROW_ID = "row_id"
SCORES = "scores"
CORPUS_COLUMNS = (ROW_ID, SCORES)
"""Output columns of this engine only; an input column of that name is written as ``input_<name>``."""
BLOCK_ROWS = 512
"""Rows of a block the actors score (one ``Scorer`` call). Small against :data:`~bertsent.tabular.CHUNK`: a
block goes to one actor, so a corpus of fewer blocks than actors leaves actors idle (4,000 rows in blocks
of 4,096 ran on one of two actors, measured); 512 rows still keep the per-call cost negligible."""
SPARE_CPUS = 1
"""Logical CPUs the actors never take: read and write tasks need a CPU slot to run, and an actor pool
holding every slot waits forever for input, with no error."""


@dataclasses.dataclass(frozen=True)
class CorpusInput:
    """The files of an input: their paths, their names in ``row_id``, and the columns each must yield."""

    files: list[Path]
    names: list[str]
    columns: list[str]
    """Output names of the input's columns (what :func:`open_input` names them, e.g. ``text``)."""


@dataclasses.dataclass(frozen=True)
class CorpusResult:
    """What :func:`score_corpus` did."""

    output: Path
    rows: int
    input_files: int
    output_files: int
    workers: int
    threads: int
    seconds: float
    """Wall time, the cluster's start (when it started one) included."""


def require_ray():
    """Import Ray Data, or end with the install hint (one line: a :class:`BertsentError`)."""
    try:
        import ray
        import ray.data  # a bare `ray` install has no Data library
    except ImportError as e:
        raise BertsentError(f"--engine ray needs Ray Data, which is not installed ({e}): {RAY_INSTALL}") from None
    return ray


# --- the input ------------------------------------------------------------------------------------------


def _has_magic(spec: str) -> bool:
    return any(c in spec for c in "*?[")


def list_inputs(spec: str | os.PathLike) -> tuple[Path, list[Path]]:
    """The input files of ``spec`` (a file, a folder, or a glob of shards), sorted, and the folder their
    ``row_id`` names are relative to.

    A folder is walked recursively; names starting with ``.`` or ``_`` (``_SUCCESS``, ``.crc``) are
    skipped, and so, with a warning, are files of a format ``predict`` does not read. Matching nothing is
    a :class:`DataError`, as is a URI: inputs are paths every node of the cluster can open (NFS or similar).
    """
    spec = os.fspath(spec)
    if "://" in spec:
        raise DataError(f"{spec}: --engine ray reads paths, not URIs (on a cluster: a path every node sees)")
    path = Path(spec).expanduser()
    if _has_magic(spec):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        root = Path(*itertools.takewhile(lambda part: not _has_magic(part), path.parts))
    elif path.is_dir():
        root = path
        found = sorted(p for p in path.rglob("*") if p.is_file())
        found = [p for p in found if not any(part[0] in "._" for part in p.relative_to(path).parts)]
        files = [p for p in found if _readable(p)]
        if len(files) < len(found):
            skipped = [p.name for p in found if not _readable(p)]
            log.warning("%s: skipping %d files of unknown format (%s)", path, len(skipped), ", ".join(skipped[:3]))
    elif path.is_file():
        root, files = path.parent, [path]
    else:
        raise DataError(f"{spec}: no such file or folder")
    if not files:
        raise DataError(f"{spec}: no input files found")
    for file in files:
        input_format(file)  # an unknown format named explicitly (a file, a glob) fails here, before Ray starts
    return root, files


def _readable(path: Path) -> bool:
    try:
        input_format(path)
    except DataError:
        return False
    return True


def corpus_input(
    spec: str | os.PathLike,
    text_column: str = "text",
    encoding: str = "utf-8",
    keep_columns: Sequence[str] | None = None,
) -> CorpusInput:
    """The files of ``spec`` (:func:`list_inputs`) and the columns all of them must yield: the first
    file's, opened here so a missing text or kept column is a :class:`DataError` before Ray starts."""
    root, files = list_inputs(spec)
    first = open_input(files[0], text_column, encoding, keep_columns)
    first.rows.close()  # only its columns are needed; the read tasks reopen it
    names = [file.relative_to(root).as_posix() for file in files]
    return CorpusInput(files, names, first.columns)


def output_names(columns: list[str]) -> list[str]:
    """``columns`` with those named like this engine's own (``row_id``, ``scores``) renamed ``input_<name>``
    (as local ``predict`` renames ``label`` and ``score``), never overwritten."""
    taken, names = {*columns, *CORPUS_COLUMNS}, []
    for name in columns:
        new = name
        if name in CORPUS_COLUMNS:
            new = next(n for k in itertools.count(1) if (n := f"input_{name}{'' if k == 1 else f'_{k}'}") not in taken)
            taken.add(new)
            log.warning("writing input column %r as %r (%s are the output's own)", name, new, ", ".join(CORPUS_COLUMNS))
        names.append(new)
    return names


def _arrow_column(values: Sequence):
    import pyarrow as pa

    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        # A JSONL field holding values of several types (3 and "3"): Parquet needs one type per column,
        # so the chunk's values are written as their JSON text, as local predict writes them in CSV.
        return pa.array([None if v is None else json.dumps(v, ensure_ascii=False, default=str) for v in values])


def read_file(
    path: str, name: str, columns: list[str], text_column: str, encoding: str, keep_columns, chunk_size: int
) -> Iterator:
    """The rows of one input file as Arrow tables of ``chunk_size`` rows, ``row_id`` first (runs in a
    Ray task). A file whose columns differ from the first file's is a :class:`DataError`."""
    import pyarrow as pa

    table = open_input(Path(path), text_column, encoding, keep_columns)
    if table.columns != columns:
        raise DataError(
            f"{path}: has columns {', '.join(table.columns)} where the first input file has {', '.join(columns)}: "
            "pass --keep-columns with the columns every file has"
        )
    names = output_names(columns)
    for start in itertools.count(0, chunk_size):
        chunk = list(itertools.islice(table.rows, chunk_size))
        if not chunk:
            return
        data = {ROW_ID: pa.array([f"{name}:{row}" for row in range(start, start + len(chunk))], pa.string())}
        data |= {column: _arrow_column(values) for column, values in zip(names, zip(*chunk, strict=True), strict=True)}
        yield pa.table(data)


def _read_batch(batch, **options) -> Iterator:
    """``map_batches`` over the file list: one file a call (``batch_size=1``), its chunks streamed out."""
    for path, name in zip(batch.column("path").to_pylist(), batch.column("name").to_pylist(), strict=True):
        yield from read_file(path, name, **options)


# --- the actors -----------------------------------------------------------------------------------------


class Scorer:
    """One actor of the pool: builds its :class:`Predictor` once, then scores one Ray batch per call.

    A batch is an Arrow table holding ``text``; the same table comes back with ``label`` and ``score`` (the
    best label's probability, as local ``predict`` writes it), and ``scores`` unless ``top_k`` is 1.
    """

    def __init__(self, model_dir: str, settings: InferenceSettings, top_k: int = 1) -> None:
        # The actor owns `threads` CPUs: a tokenizer thread pool sized to the whole node would take others'.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.predictor = Predictor(model_dir, settings)
        self.top_k = top_k

    def __call__(self, batch):
        import pyarrow as pa

        probs = self.predictor.predict_proba(batch.column("text").to_pylist())
        ranked = rank_labels(probs, self.predictor.id2label, self.top_k)
        batch = batch.append_column("label", pa.array([r[0]["label"] for r in ranked], pa.string()))
        batch = batch.append_column("score", pa.array([r[0]["score"] for r in ranked], pa.float32()))
        if self.top_k != 1:
            entry = pa.struct([("label", pa.string()), ("score", pa.float32())])
            batch = batch.append_column(SCORES, pa.array(ranked, pa.list_(entry)))
        return batch


# --- the cluster ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def cluster(address: str | None = None) -> Iterator[None]:
    """Ray connected for the ``with`` block: the caller's session if Ray is initialized already (tests,
    notebooks), else ``address``, else ``$RAY_ADDRESS``, else a new local cluster, shut down after."""
    ray = require_ray()
    if ray.is_initialized():
        if address:
            log.warning("Ray is connected already in this process: using that session, not --address %s", address)
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address)
    else:
        # "local": a new cluster, never one a `ray start` left running. One logical CPU more than the
        # cores: the actors get every core, and the light read and write tasks a slot of their own.
        ray.init(address="local", num_cpus=physical_cores() + SPARE_CPUS, include_dashboard=False)
    try:
        yield
    finally:
        ray.shutdown()


def plan_workers(cluster_cpus: float, threads: int, workers: int | None = None) -> int:
    """Actors of ``threads`` CPUs each that leave :data:`SPARE_CPUS` of the cluster's CPUs free: ``workers``
    when they fit (else as many as fit, with a warning), as many as fit when None."""
    budget = int(cluster_cpus) - SPARE_CPUS
    if budget < threads:
        raise SettingsError(
            f"the Ray cluster has {cluster_cpus:g} CPUs: an actor of --threads {threads} and {SPARE_CPUS} CPU for "
            f"reading and writing do not fit; use --threads {max(budget, 1)} or a larger cluster"
        )
    fit = budget // threads
    if workers is not None and workers > fit:
        log.warning(
            "--workers %d x --threads %d would take %d of the cluster's %g CPUs and leave fewer than %d for reading "
            "and writing (the pipeline would stall): running %d actors",
            workers,
            threads,
            workers * threads,
            cluster_cpus,
            SPARE_CPUS,
            fit,
        )
    return fit if workers is None else min(workers, fit)


def actor_settings(model_dir: Path, settings: InferenceSettings | None) -> InferenceSettings:
    """``settings`` resolved once here (max length and truncation from the folder), so every actor runs the
    same ones and a bad folder fails before Ray starts; threads per actor default to 1, not every core."""
    if not (model_dir / "config.json").is_file():
        raise ModelError(f"{model_dir}: not a model folder (no config.json)")
    settings = resolve_settings(model_dir, load_tokenizer(model_dir), settings)
    explicit = settings.threads is not None or os.environ.get(THREADS_ENV, "").strip()
    return dataclasses.replace(settings, threads=resolve_threads(settings.threads) if explicit else 1)


# --- the pipeline ---------------------------------------------------------------------------------------


def _check_output(output: Path, input_spec: str) -> None:
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise DataError(f"{output}: exists and is not an empty folder; --engine ray writes a new folder")
    source = Path(input_spec).expanduser()
    if source.is_dir() and output.resolve().is_relative_to(source.resolve()):
        raise DataError(f"{output}: is inside the input folder {source}; a later run would read the predictions")


def _user_error(error: BaseException) -> BertsentError | None:
    """The :class:`BertsentError` a Ray task raised (a bad row, a file without the text column), if that
    is what ``error`` wraps, as a one-line error: Ray re-raises it inside its own errors, its message
    extended with Ray's retry advice."""
    for _ in range(8):
        cause = getattr(error, "cause", None) or error.__cause__
        if isinstance(error, BertsentError) and not isinstance(cause, BaseException):
            return type(error)(first_line(error))
        if not isinstance(cause, BaseException):
            return None
        error = cause
    return None


class _HeldErrors(logging.Filter):
    """Holds Ray Data's console errors back during a run: a failed task is logged with its traceback
    (twice) before the driver sees the error, and a user error is one line. Ray Data's log file keeps them."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        self.held.append(record)
        return False


@contextlib.contextmanager
def _one_line_user_errors() -> Iterator[None]:
    """Run a Ray Data pipeline; a :class:`BertsentError` from its tasks comes out as one line, anything
    else as Ray raised it, with the errors Ray logged shown after all."""
    consoles = logging.getLogger("ray.data").handlers
    handlers = [h for h in consoles if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    held = _HeldErrors()
    for handler in handlers:
        handler.addFilter(held)
    user_error = None
    try:
        yield
    except Exception as e:
        user_error = _user_error(e)
        if user_error is None:
            raise
        raise user_error from None
    finally:
        for handler in handlers:
            handler.removeFilter(held)
            for record in held.held if user_error is None else ():
                handler.handle(record)


def pipeline(corpus: CorpusInput, model_dir: Path, settings: InferenceSettings, workers: int, options: dict):
    """The Ray Dataset: read tasks over the files, the actor pool, nothing run yet (Ray Data is lazy)."""
    import ray.data

    files = [{"path": str(path), "name": name} for path, name in zip(corpus.files, corpus.names, strict=True)]
    read_options = {k: options[k] for k in ("text_column", "encoding", "keep_columns", "chunk_size")}
    ds = ray.data.from_items(files, override_num_blocks=len(files))
    ds = ds.map_batches(
        _read_batch,
        batch_size=1,
        batch_format="pyarrow",
        fn_kwargs={"columns": corpus.columns, **read_options},
    )
    # Ray Data merges a task's outputs into blocks of up to 128 MiB, so a file's chunks would reach one
    # actor as one block. Fused into the read tasks, this emits blocks of BLOCK_ROWS as they are read:
    # even a single small file spreads over the pool (and Ray does not fuse the reads into the actors).
    block = min(options["chunk_size"], BLOCK_ROWS)
    ds = ds.repartition(target_num_rows_per_block=block)
    # Ray Data restarts a dead actor and retries its batch (its defaults: max_restarts=-1 and
    # max_task_retries=-1; passing them is deprecated as of Ray 2.60): a batch's rows reach the writer
    # once, when the call that scored them returns. Exceptions (bad input) are not retried.
    return ds.map_batches(
        Scorer,
        batch_size=block,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=workers),
        fn_constructor_kwargs={"model_dir": str(model_dir), "settings": settings, "top_k": options["top_k"]},
        num_cpus=settings.threads,
        num_gpus=1 if settings.device.startswith("cuda") else 0,
        udf_modifying_row_count=False,
    )


def score_corpus(
    model_dir: str | os.PathLike,
    input: str | os.PathLike,
    output: str | os.PathLike,
    settings: InferenceSettings | None = None,
    *,
    text_column: str = "text",
    keep_columns: Sequence[str] | None = None,
    top_k: int = 1,
    encoding: str = "utf-8",
    address: str | None = None,
    workers: int | None = None,
    chunk_size: int = CHUNK,
) -> CorpusResult:
    """Score every row of ``input`` (a CSV/JSONL/Parquet/TXT file, a folder or a glob of shards) into Parquet
    shards in the new folder ``output``, on Ray (see the module's docstring for the columns).

    ``workers`` actors of ``settings.threads`` CPUs (default 1) each; None: as many as leave
    :data:`SPARE_CPUS` free. The shards are written to a hidden folder beside ``output`` and moved into
    place at the end, so ``output`` holds every row or does not exist.
    """
    require_ray()
    output, model_dir = Path(output).expanduser(), Path(model_dir)
    _check_output(output, os.fspath(input))
    corpus = corpus_input(input, text_column, encoding, keep_columns)
    settings = actor_settings(model_dir, settings)
    options = {"text_column": text_column, "encoding": encoding, "keep_columns": keep_columns}
    options |= {"chunk_size": chunk_size, "top_k": top_k}
    staging = output.parent / f".{output.name}.partial-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    with cluster(address):
        import ray

        workers = plan_workers(ray.cluster_resources().get("CPU", 0), settings.threads, workers)
        log.info("scoring %d files with %d actors x %d threads", len(corpus.files), workers, settings.threads)
        try:
            with _one_line_user_errors():
                ds = pipeline(corpus, model_dir, settings, workers, options)
                ds.write_parquet(str(staging))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)  # no half-written output, whatever stopped the run
            raise
    return _finish(staging, output, corpus, workers, settings.threads, time.perf_counter() - started)


def _finish(staging: Path, output: Path, corpus: CorpusInput, workers: int, threads: int, seconds: float):
    import pyarrow.parquet as pq

    staging.mkdir(parents=True, exist_ok=True)  # no rows: Ray writes no shard, and no folder
    if output.is_dir():
        output.rmdir()  # empty (checked before the run)
    os.replace(staging, output)
    shards = sorted(output.rglob("*.parquet"))
    rows = sum(pq.ParquetFile(shard).metadata.num_rows for shard in shards)
    return CorpusResult(output, rows, len(corpus.files), len(shards), workers, threads, round(seconds, 2))
