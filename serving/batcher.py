"""An asyncio micro-batcher: requests queue, and rows of the same model version run together.

A request (`n` rows of one `ModelVersion`) is queued; a single worker task takes the version whose
oldest request waited longest, gathers that version's queued requests up to `max_batch_size` rows
or until `max_queue_delay_ms` passed since the first one arrived, concatenates them and runs one
`session.run` on a dedicated thread (so the event loop keeps accepting requests meanwhile). A
request larger than `max_batch_size` runs alone, never split. While a batch runs, new requests
accumulate, so under load batches fill without waiting.

A request that is a full batch by itself (`rows >= max_batch_size`), arriving while nothing is
queued or running, would form a batch of one at once: it runs directly on the event loop's thread
instead, when its version's last measured `session.run` says it takes at most `inline_max_ms`.
Same batch accounting (`on_batch`, `timing`), without the queue, the worker task's wake-up and the
two thread hand-offs, which cost about as much CPU as `session.run` of 1,000 rows of the test
model (bench/serve_cpu.py). The bound keeps a slow model off the loop: it runs on the thread.

The queue is bounded in rows (`max_queue_rows`): a request that would overflow it fails at once
with `QueueFull` (the app answers 429 with Retry-After), so memory and latency stay bounded.
Requests for different versions (of one model or several) are never mixed in one batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from serving.repository import ModelVersion

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The batcher's queue holds `max_queue_rows` rows; retry later."""


class BatcherClosed(Exception):
    """The batcher is shutting down and takes no new work."""


@dataclass(eq=False)
class _Item:
    version: ModelVersion
    feeds: dict[str, np.ndarray]
    rows: int
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)
    timing: dict[str, float] | None = None


def _timed_run(version: ModelVersion, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, float, float]:
    """`version.run(feeds)`, its duration in ms and the inference thread's CPU seconds (`time.thread_time`)."""
    t0, c0 = time.perf_counter(), time.thread_time()
    scores = version.run(feeds)
    return scores, (time.perf_counter() - t0) * 1000.0, time.thread_time() - c0


class MicroBatcher:
    """Queue and batch scoring work per model version.

    Args:
        max_batch_size: rows per `session.run` (1 disables merging).
        max_queue_delay_ms: the most the first request of a batch waits for company, ms.
        max_queue_rows: rows allowed to wait; past it `submit` raises `QueueFull`.
        on_batch: called on the event loop after each batch with (version, rows, seconds of
            `session.run`, CPU seconds of the inference thread in it); for metrics, statistics, cost.
        on_queue: called with the queued row count whenever it changes; for metrics.
        inline_max_ms: a full-batch request on an idle batcher runs on the event loop's thread
            when its version's last batch took at most this long per row times its rows, ms
            (0 = always on the inference thread); "took" is the smaller of wall and CPU time.
    """

    def __init__(
        self,
        *,
        max_batch_size: int = 256,
        max_queue_delay_ms: float = 1.0,
        max_queue_rows: int = 8192,
        on_batch: Callable[[ModelVersion, int, float, float], None] | None = None,
        on_queue: Callable[[int], None] | None = None,
        inline_max_ms: float = 2.0,
    ) -> None:
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_ms / 1000.0
        self.max_queue_rows = max_queue_rows
        self._on_batch = on_batch
        self._on_queue = on_queue
        self._queues: dict[ModelVersion, deque[_Item]] = {}
        self._queued_rows = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False
        self.inline_max_s = inline_max_ms / 1000.0
        self._running = False  # a batch is on the inference thread
        # Seconds per row of each version's last batch (absent = never run here: the thread runs it):
        # the smaller of wall and thread CPU time, so a process descheduled on a loaded machine does
        # not read as a slow model (and with several ORT threads the wall time is the smaller).
        self._per_row_s: weakref.WeakKeyDictionary[ModelVersion, float] = weakref.WeakKeyDictionary()

    @property
    def queued_rows(self) -> int:
        """Rows waiting (not yet in a running batch)."""
        return self._queued_rows

    async def start(self) -> None:
        """Start the worker task and the inference thread (call from the running loop)."""
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="driftloop-infer")
        self._closing = False
        self._task = asyncio.create_task(self._run(), name="driftloop-batcher")

    async def stop(self) -> None:
        """Finish every queued request, then stop; new `submit`s raise `BatcherClosed`."""
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def submit(
        self,
        version: ModelVersion,
        feeds: dict[str, np.ndarray],
        rows: int,
        timing: dict[str, float] | None = None,
    ) -> np.ndarray:
        """Queue `rows` rows for `version` and wait for their scores.

        Args:
            version: the loaded version that must score them.
            feeds: one `[rows, 1]` array per input name.
            rows: the row count.
            timing: if given, filled with `queue_s` (seconds waiting for the batch to start) and
                `run_s` (seconds of the batch's `session.run`).

        Returns:
            (float32 `[rows, 1]` probabilities, service ms, queue ms): service is the time inside
            `session.run` of the batch that scored them (this version's own cost, whatever else
            queued), queue the time from `submit` to that batch's start.

        Raises:
            QueueFull: the queue cannot take `rows` more rows now.
            BatcherClosed: the server is shutting down.
        """
        if self._closing or self._task is None:
            raise BatcherClosed("the server is shutting down")
        if (
            rows >= self.max_batch_size
            and self.inline_max_s > 0
            and not self._queues
            and not self._running
            and rows * self._per_row_s.get(version, float("inf")) <= self.inline_max_s
        ):
            return self._run_inline(version, feeds, rows, timing)
        if self._queued_rows + rows > self.max_queue_rows and self._queued_rows > 0:
            raise QueueFull(f"{self._queued_rows} rows are queued; the limit is {self.max_queue_rows}")
        item = _Item(version, feeds, rows, asyncio.get_running_loop().create_future(), timing=timing)
        queue = self._queues.get(version)
        if queue is None:
            queue = self._queues[version] = deque()
        queue.append(item)
        self._queued_rows += rows
        if self._on_queue:
            self._on_queue(self._queued_rows)
        self._wakeup.set()
        return await item.future

    def _run_inline(
        self, version: ModelVersion, feeds: dict[str, np.ndarray], rows: int, timing: dict[str, float] | None
    ) -> np.ndarray:
        """Run a full batch on the calling (event loop) thread: what `_execute` does for a batch of one."""
        try:
            scores, run_ms, cpu_s = _timed_run(version, feeds)
        except Exception:
            log.exception("inference failed for %s/%s on a batch of 1 request(s)", version.name, version.version)
            raise
        run_s = run_ms / 1000.0
        self._per_row_s[version] = min(run_s, cpu_s) / rows
        if timing is not None:
            timing["queue_s"] = 0.0
            timing["run_s"] = run_s
        if self._on_batch:
            self._on_batch(version, rows, run_s, cpu_s)
        return scores

    def _pick(self) -> deque[_Item] | None:
        best = None
        for queue in self._queues.values():
            if queue and (best is None or queue[0].enqueued < best[0].enqueued):
                best = queue
        return best

    def _take(self, queue: deque[_Item]) -> list[_Item]:
        batch = [queue.popleft()]
        rows = batch[0].rows
        while queue and rows + queue[0].rows <= self.max_batch_size:
            item = queue.popleft()
            batch.append(item)
            rows += item.rows
        self._queued_rows -= rows
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            queue = self._pick()
            if queue is None:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # Wait for the batch to fill, bounded by the first request's deadline.
            if self.max_batch_size > 1 and self.max_queue_delay_s > 0 and not self._closing:
                deadline = queue[0].enqueued + self.max_queue_delay_s
                while sum(i.rows for i in queue) < self.max_batch_size:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), remaining)
                    except TimeoutError:
                        break
            batch = self._take(queue)
            if not queue:
                del self._queues[batch[0].version]
            if self._on_queue:
                self._on_queue(self._queued_rows)
            await self._execute(loop, batch)

    async def _execute(self, loop: asyncio.AbstractEventLoop, batch: list[_Item]) -> None:
        version = batch[0].version
        if len(batch) == 1:
            feeds = batch[0].feeds
        else:
            feeds = {name: np.concatenate([i.feeds[name] for i in batch]) for name in version.input_names}
        started = time.perf_counter()
        self._running = True
        try:
            scores, run_ms, cpu_s = await loop.run_in_executor(self._executor, _timed_run, version, feeds)
        except Exception as exc:  # noqa: BLE001 - forwarded to every waiting request
            log.exception(
                "inference failed for %s/%s on a batch of %d request(s)",
                version.name,
                version.version,
                len(batch),
            )
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        finally:
            self._running = False
        run_s = run_ms / 1000.0  # inside session.run only: the version's own cost, not the executor hand-off
        self._per_row_s[version] = min(run_s, cpu_s) / sum(item.rows for item in batch)
        start = 0
        for item in batch:
            if item.timing is not None:
                item.timing["queue_s"] = started - item.enqueued
                item.timing["run_s"] = run_s
            if not item.future.done():  # a cancelled request (client gone) is skipped
                item.future.set_result(scores[start : start + item.rows])
            start += item.rows
        if self._on_batch:
            self._on_batch(version, start, run_s, cpu_s)
