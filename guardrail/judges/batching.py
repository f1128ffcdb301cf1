"""A micro-batcher: concurrent requests share one model run, in a thread, never on the loop.

A local model costs far less per text when it scores many at once: one
``session.run`` over sixteen texts takes little more than over one. So each
request puts its items in a queue; a worker takes up to ``size`` of those
pending (whoever they belong to), scores them in one call of ``run`` on the
batcher's thread pool, and hands each request its results.

Nobody waits for a batch to fill: the worker takes what is pending the moment
it is free. At low load a batch is one request; under load, requests that
arrive while a batch runs go together in the next. A request cancelled while
it waits (its judge's timeout, a final flag elsewhere) leaves the queue, so
its items are never scored; items already in a running batch finish with it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass(slots=True)
class _Waiting(Generic[Item, Result]):
    item: Item
    future: asyncio.Future[Result]


class MicroBatcher(Generic[Item, Result]):
    """Scores items in batches of up to ``size`` with ``run``, on ``workers`` threads."""

    def __init__(
        self,
        run: Callable[[list[Item]], Sequence[Result]],
        *,
        size: int,
        workers: int = 1,
        name: str = "batch",
    ) -> None:
        self._run = run
        self.size = size
        self._workers = workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._queue: deque[_Waiting[Item, Result]] = deque()
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        # Read by tests and benchmarks: how many runs scored how many items.
        self.runs = 0
        self.items_run = 0

    @property
    def pending(self) -> int:
        """Items queued and not yet taken by a worker."""
        return len(self._queue)

    async def submit(self, items: Sequence[Item]) -> list[Result]:
        """Each item's result, in order; an exception from ``run`` is raised here."""
        if not items:
            return []
        self._start()
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        waiting = [_Waiting(item, loop.create_future()) for item in items]
        self._queue.extend(waiting)
        self._wake.set()
        try:
            return [await w.future for w in waiting]
        except BaseException:
            # Cancelled, or one item failed: what is still queued is nobody's now.
            # (Items a worker already took run, and their results are dropped.)
            for w in waiting:
                w.future.cancel()
            mine = {id(w) for w in waiting}
            self._queue = deque(w for w in self._queue if id(w) not in mine)
            raise

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop and all(not t.done() for t in self._tasks):
            return
        # First use, or first use on a new loop (a guard built in a thread on
        # reload, then served): the workers belong to the loop that waits on them.
        if self._loop is not loop:
            self._queue.clear()  # waiters of a loop that is gone
        for task in self._tasks:
            if not task.get_loop().is_closed():
                task.cancel()
        self._loop, self._wake = loop, asyncio.Event()
        self._tasks = [loop.create_task(self._work()) for _ in range(self._workers)]

    async def _work(self) -> None:
        assert self._wake is not None and self._loop is not None
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._take()
            if batch:
                await self._score(self._loop, batch)

    async def _score(
        self, loop: asyncio.AbstractEventLoop, batch: list[_Waiting[Item, Result]]
    ) -> None:
        try:
            results = await loop.run_in_executor(self._pool, self._run, [w.item for w in batch])
            if len(results) != len(batch):
                raise ValueError(f"{len(results)} results for {len(batch)} items")
        except asyncio.CancelledError:
            for w in batch:  # the batcher is closing: nobody will answer them
                w.future.cancel()
            raise
        except Exception as exc:
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(exc)
            return
        finally:
            self.runs += 1
            self.items_run += len(batch)
        for w, result in zip(batch, results, strict=True):
            if not w.future.done():
                w.future.set_result(result)

    def _take(self) -> list[_Waiting[Item, Result]]:
        batch: list[_Waiting[Item, Result]] = []
        while self._queue and len(batch) < self.size:
            w = self._queue.popleft()
            if not w.future.done():  # cancelled before its request could take it out
                batch.append(w)
        return batch

    async def aclose(self) -> None:
        """Stop the workers; queued requests are cancelled, a running batch finishes."""
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for w in self._queue:
            w.future.cancel()
        self._queue.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
