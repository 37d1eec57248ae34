"""Dynamic micro-batching: :class:`MicroBatcher` gathers the texts of concurrent requests into batches.

Plain asyncio, no web framework: the model runs in one dedicated thread, one batch at a time, while
the event loop goes on accepting requests; each row goes back to its own request's future, and a
batch that fails is retried request by request so that only the requests whose own texts fail get
the error.
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


@dataclass
class _Item:
    text: str
    future: asyncio.Future
    arrived: float
    request: int = 0
    """Which ``submit`` call the text came from: a failed batch is retried request by request."""


@dataclass
class BatchStats:
    """Counters of a :class:`MicroBatcher`, shown by ``/info``."""

    requests: int = 0
    texts: int = 0
    batches: int = 0
    largest_batch: int = 0
    errors: int = 0
    """Model calls that raised (a failed batch of several requests is retried in halves, which count too)."""


class MicroBatcher:
    """Queues texts from concurrent requests and runs them through ``predict`` in batches, off the event loop.

    ``predict(texts) -> array (len(texts), k)`` is only ever called from one dedicated thread, one batch
    at a time (the Predictor is thread-compatible, not thread-safe). When it raises on a batch holding
    texts of several requests, the requests are run again in two halves, recursively, so that only the
    requests whose own texts fail get an :class:`InferenceError`.
    """

    def __init__(
        self,
        predict: Callable[[list[str]], np.ndarray],
        max_batch_size: int,
        max_wait_ms: float,
        metrics: "ServeMetrics | None" = None,
    ) -> None:
        self.predict = predict
        self.max_batch_size = max_batch_size
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

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def queued(self) -> int:
        """Texts waiting for a batch now."""
        return self._queue.qsize() if self._queue is not None else 0

    def start(self) -> None:
        """Start the worker on the running event loop (from the app's lifespan)."""
        if self.running:
            return
        self._closing = False
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bertsent-inference")
        self._task = asyncio.get_running_loop().create_task(self._work(), name="bertsent-batcher")

    async def stop(self, drain: float = 0.0) -> None:
        """Stop the worker; new texts are refused at once.

        With ``drain`` > 0 the texts already queued (and the batch running) are answered first, for at
        most ``drain`` seconds; whatever is still waiting then gets a ``ServeError`` instead of hanging.
        """
        self._closing = True
        if drain > 0 and self.running and self._queue is not None:
            try:
                await asyncio.wait_for(self._queue.join(), drain)
            except TimeoutError:
                log.warning("shutdown: %d texts still queued after %g s are refused", self.queued, drain)
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

    async def submit(self, texts: Sequence[str]) -> np.ndarray:
        """Probabilities for ``texts`` (rows in input order), once the worker has run them."""
        if not self.running or self._queue is None or self._closing:
            raise ServeError("the batching worker is not running (server starting or shutting down)")
        loop = asyncio.get_running_loop()
        now = loop.time()
        request = next(self._request_ids)
        futures = [loop.create_future() for _ in texts]
        for text, future in zip(texts, futures, strict=True):
            self._queue.put_nowait(_Item(text, future, now, request))
        self.stats.requests += 1
        # return_exceptions: when a batch fails, the other futures' exceptions are still collected
        # (no "exception was never retrieved" noise); a cancelled request cancels its futures, which
        # the worker then skips.
        rows = await asyncio.gather(*futures, return_exceptions=True)
        for row in rows:
            if isinstance(row, BaseException):
                raise row
        return np.stack(rows)

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            batch = await self._next_batch()
            try:
                await self._run(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()  # what stop(drain=...) waits on

    async def _next_batch(self) -> list[_Item]:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        # Wait up to max_wait from now (not from the first text's arrival): the clients answered by
        # the previous batch need a moment to send their next request, and without this pause every
        # batch would only hold the texts that arrived while the previous one ran (measured: mean
        # batch 8 of 16 clients, 66% of offline throughput).
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

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
        """Run ``items`` as one batch; on failure, isolate the requests whose texts fail (see the class)."""
        try:
            probs = await self._predict([item.text for item in items])
        except Exception as e:
            self.stats.errors += 1
            if self.metrics is not None:
                self.metrics.batch_errors.inc()
            groups = list(_by_request(items).values())
            if len(groups) == 1:
                log.error("inference failed on %d texts of one request", len(items), exc_info=e)
                _fail(items, InferenceError(f"{type(e).__name__}: {e}"))
                return
            log.warning(
                "inference failed on a batch of %d texts from %d requests (%s: %s): running them in two halves",
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
        self.stats.texts += len(items)
        self.stats.largest_batch = max(self.stats.largest_batch, len(items))
        if self.metrics is not None:
            self.metrics.batch(len(items))
        log.debug("batch of %d texts", len(items))
        for item, row in zip(items, probs, strict=True):
            if not item.future.done():
                item.future.set_result(row)

    async def _predict(self, texts: list[str]) -> np.ndarray:
        loop = asyncio.get_running_loop()
        probs = np.asarray(await loop.run_in_executor(self._executor, self.predict, texts))
        if probs.ndim != 2 or len(probs) != len(texts):
            raise ValueError(f"predict returned shape {probs.shape} for {len(texts)} texts")
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
