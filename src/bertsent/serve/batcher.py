"""Dynamic micro-batching: :class:`MicroBatcher` gathers the rows of concurrent requests into batches.

Plain asyncio, no web framework: the model runs in one dedicated thread, one batch at a time, while
the event loop goes on accepting requests. A row is whatever the model takes (a text, or a text's
encoded tokens) with its length in tokens. The worker takes a *round* of waiting rows, orders it by
length and cuts it into batches of at most ``max_batch_size`` rows and ``max_batch_tokens`` padded
tokens (rows times the longest row, as text-embeddings-inference counts them), shortest first; a row
joins a batch only while it is at most :data:`PAD_RATIO` times the batch's shortest row, so short rows are
never padded to a long one, and a long row holds the others back by no more than its own batch. Each
row goes back to its own request's future; a batch that fails is retried request by request, so only the
requests whose own rows fail get the error.
"""

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from bertsent.errors import InferenceError, ServeError, first_line

if TYPE_CHECKING:
    from bertsent.serve.metrics import ServeMetrics

log = logging.getLogger(__name__)

SHUTTING_DOWN = "the server is shutting down"
NOT_RUNNING = "the batching worker is not running (server starting or shutting down)"
ROUND_BATCHES = 4
"""A round holds at most this many full batches of rows: the longest rows of a round wait at most for
the round's shorter batches, and rows that arrive meanwhile for the rest of the round."""

PAD_RATIO = 2
"""A row joins a batch only while it is at most this many times as long as the batch's shortest row (counted
as at least :data:`PAD_FLOOR` tokens): with ``max_batch_tokens`` alone, a full-length review fits beside 31
one-liners and pads them all to its length."""
PAD_FLOOR = 16


@dataclass(eq=False)
class _Item:
    row: object
    tokens: int
    future: asyncio.Future
    arrived: float
    request: int = 0
    """Which ``submit`` call the row came from: a failed batch is retried request by request."""


@dataclass
class BatchStats:
    """Counters of a :class:`MicroBatcher`, shown by ``/info``."""

    requests: int = 0
    texts: int = 0
    """Texts of the requests answered (the windows of a long text are rows of one text)."""
    batches: int = 0
    largest_batch: int = 0
    errors: int = 0
    """Model calls that raised (a failed batch of several requests is retried in halves, which count too)."""


def plan_batches(items: Sequence, max_rows: int, max_tokens: int, length=lambda item: item.tokens) -> list[list]:
    """``items`` ordered by ``length`` (ties in arrival order), cut into batches, shortest first, of at most
    ``max_rows`` rows and ``max_tokens`` padded tokens (rows x the batch's longest), each row at most
    :data:`PAD_RATIO` times the batch's first; a row longer than ``max_tokens`` makes a batch of its own."""
    batches: list[list] = []
    for item in sorted(items, key=length):
        batch = batches[-1] if batches else None
        # Sorted ascending, so this row is the longest of the batch it joins.
        too_long = batch is not None and length(item) > PAD_RATIO * max(length(batch[0]), PAD_FLOOR)
        if batch is None or too_long or len(batch) >= max_rows or (len(batch) + 1) * length(item) > max_tokens:
            batches.append([item])
        else:
            batch.append(item)
    return batches


class MicroBatcher:
    """Queues rows from concurrent requests and runs them through ``predict`` in batches, off the event loop.

    ``predict(rows) -> array (len(rows), k)`` is only ever called from one dedicated thread, one batch
    at a time (the Predictor is thread-compatible, not thread-safe), with the batch's rows in length
    order. Rows submitted without lengths count one token each: they keep their arrival order and
    only ``max_batch_size`` caps their batches. When ``predict`` raises on a batch holding rows of
    several requests, the requests are run again in two halves, recursively, so that only the
    requests whose own rows fail get an :class:`InferenceError`.
    """

    def __init__(
        self,
        predict: Callable[[list], np.ndarray],
        max_batch_size: int,
        max_wait_ms: float,
        metrics: "ServeMetrics | None" = None,
        max_batch_tokens: int = 16_384,
    ) -> None:
        self.predict = predict
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_wait = max_wait_ms / 1000
        self.stats = BatchStats()
        self.metrics = metrics
        if metrics is not None:
            # Read at scrape time, so the gauge is exact without counting puts and gets; the app makes a
            # new batcher per lifespan, and the newest one takes the gauge over.
            metrics.queue_depth.set_function(lambda: self.queued)
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._request_ids = itertools.count()
        self._closing = False
        self._held = 0  # rows the worker has taken into its round and not yet run

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def queued(self) -> int:
        """Rows waiting for a batch now (queued, or in the worker's round and not run yet)."""
        return (self._queue.qsize() if self._queue is not None else 0) + self._held

    def start(self) -> None:
        """Start the worker on the running event loop (from the app's lifespan)."""
        if self.running:
            return
        self._closing = False
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bertsent-inference")
        self._task = asyncio.get_running_loop().create_task(self._work(), name="bertsent-batcher")

    async def warm_up(self, rows: Sequence) -> float:
        """Run ``rows`` once in the inference thread, outside the stats (the thread that serves allocates
        what a batch of that shape needs); returns the seconds it took."""
        if not self.running:
            raise ServeError(NOT_RUNNING)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await loop.run_in_executor(self._executor, self.predict, list(rows))
        return loop.time() - started

    async def stop(self, drain: float = 0.0) -> None:
        """Stop the worker; new rows are refused at once.

        With ``drain`` > 0 the rows already queued (and the batch running) are answered first, for at
        most ``drain`` seconds; whatever is still waiting then gets a ``ServeError`` instead of hanging.
        """
        self._closing = True
        if drain > 0 and self.running and self._queue is not None:
            try:
                await asyncio.wait_for(self._queue.join(), drain)
            except TimeoutError:
                log.warning("shutdown: %d rows still queued after %g s are refused", self.queued, drain)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._queue is not None and not self._queue.empty():
            _fail([self._queue.get_nowait()], ServeError(SHUTTING_DOWN))
        if self._executor is not None:
            # A batch already running finishes in its thread; nothing waits for it any more.
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._task = self._executor = None

    async def submit(
        self, rows: Sequence, lengths: Sequence[int] | None = None, *, texts: int | None = None
    ) -> np.ndarray:
        """Probabilities for ``rows`` (in input order), once the worker has run them.

        ``lengths``: each row's tokens (None: one each). ``texts``: how many texts the rows make, counted
        in the stats once all are answered (default: one per row).
        """
        if not self.running or self._queue is None or self._closing:
            raise ServeError(NOT_RUNNING)
        loop = asyncio.get_running_loop()
        now = loop.time()
        request = next(self._request_ids)
        futures = [loop.create_future() for _ in rows]
        tokens = [1] * len(rows) if lengths is None else [int(n) for n in lengths]
        for row, n, future in zip(rows, tokens, futures, strict=True):
            self._queue.put_nowait(_Item(row, n, future, now, request))
        self.stats.requests += 1
        # return_exceptions: when a batch fails, the other futures' exceptions are still collected
        # (no "exception was never retrieved" noise); a cancelled request cancels its futures, which
        # the worker then skips.
        answers = await asyncio.gather(*futures, return_exceptions=True)
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
        counted = len(rows) if texts is None else texts
        self.stats.texts += counted
        if self.metrics is not None:
            self.metrics.scored(counted)
        return np.stack(answers)

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            plan = plan_batches(await self._next_round(), self.max_batch_size, self.max_batch_tokens)
            self._held = sum(len(batch) for batch in plan)
            next_batch = 0
            try:
                for batch in plan:
                    next_batch += 1
                    self._held -= len(batch)
                    try:
                        await self._run(batch)
                    finally:
                        for _ in batch:
                            self._queue.task_done()  # what stop(drain=...) waits on
            except asyncio.CancelledError:
                # Rows taken into the round and never run; the batch running fails in _run.
                _fail([item for batch in plan[next_batch:] for item in batch], ServeError(SHUTTING_DOWN))
                raise
            finally:
                self._held = 0

    async def _next_round(self) -> list[_Item]:
        """The first waiting row, the rows arriving up to ``max_wait`` after it (until a batch is full),
        then every row already waiting, up to :data:`ROUND_BATCHES` full batches."""
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        held = [await self._queue.get()]
        # Wait up to max_wait from now (not from the first row's arrival): the clients answered by
        # the previous batch need a moment to send their next request, and without this pause every
        # batch would only hold the rows that arrived while the previous one ran.
        deadline = loop.time() + self.max_wait
        while len(held) < self.max_batch_size:
            if not self._queue.empty():
                held.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                held.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        while not self._queue.empty() and len(held) < ROUND_BATCHES * self.max_batch_size:
            held.append(self._queue.get_nowait())
        return held

    async def _run(self, batch: list[_Item]) -> None:
        live = [item for item in batch if not item.future.done()]  # skip requests that went away
        if not live:
            return
        try:
            await self._score(live)
        except asyncio.CancelledError:
            _fail(live, ServeError(SHUTTING_DOWN))
            raise

    async def _score(self, items: list[_Item]) -> None:
        """Run ``items`` as one batch; on failure, isolate the requests whose rows fail (see the class)."""
        try:
            probs = await self._predict([item.row for item in items])
        except Exception as e:
            self.stats.errors += 1
            if self.metrics is not None:
                self.metrics.batch_errors.inc()
            groups = list(_by_request(items).values())
            if len(groups) == 1:
                log.error("inference failed on %d rows of one request", len(items), exc_info=e)
                _fail(items, InferenceError(f"{type(e).__name__}: {e}"))
                return
            log.warning(
                "inference failed on a batch of %d rows from %d requests (%s: %s): running them in two halves",
                len(items),
                len(groups),
                type(e).__name__,
                first_line(e),
            )
            half = len(groups) // 2
            for part in (groups[:half], groups[half:]):
                live = [item for group in part for item in group if not item.future.done()]
                if live:
                    await self._score(live)
            return
        self.stats.batches += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(items))
        if self.metrics is not None:
            self.metrics.batch(len(items), len(items) * max(item.tokens for item in items))
        log.debug("batch of %d rows", len(items))
        for item, row in zip(items, probs, strict=True):
            if not item.future.done():
                item.future.set_result(row)

    async def _predict(self, rows: list) -> np.ndarray:
        loop = asyncio.get_running_loop()
        probs = np.asarray(await loop.run_in_executor(self._executor, self.predict, rows))
        if probs.ndim != 2 or len(probs) != len(rows):
            raise ValueError(f"predict returned shape {probs.shape} for {len(rows)} rows")
        return probs


def _by_request(items: list[_Item]) -> dict[int, list[_Item]]:
    groups: dict[int, list[_Item]] = {}
    for item in items:
        groups.setdefault(item.request, []).append(item)
    return groups


def _fail(items: list[_Item], error: Exception) -> None:
    for item in items:
        if not item.future.done():
            item.future.set_exception(error)
