"""Run every item through a target, ``concurrency`` at a time, at most ``rate`` a second.

A rate-limited item (a judge or the server answered 429) is tried again after
a pause, doubling from ``RETRY_FLOOR_S`` with jitter (longer if Retry-After
says so), while the run's retry budget lasts; past it the item is an error.
A server that stops answering ends the run: items not yet sent are not
counted, and the run says why it stopped. So does ``stop()`` (Ctrl-C): the
items in flight are cancelled, and every finished one is kept.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from guardrail.eval.data import Item
from guardrail.eval.outcome import Outcome
from guardrail.eval.targets import Target, Unreachable

RETRY_FLOOR_S = 0.2
MAX_ATTEMPTS = 6  # per item
UNREACHABLE_ATTEMPTS = 3  # connection failures in a row on one item before the run ends


@dataclass
class Run:
    """The outcomes of one policy's run, and why it ended early if it did."""

    name: str
    outcomes: list[Outcome] = field(default_factory=list)
    stopped: str | None = None  # "interrupted", or why the server could not be reached
    retries: int = 0
    wall_s: float = 0.0


class Runner:
    """Evaluates items with bounded concurrency, an optional rate, and a retry budget."""

    def __init__(
        self,
        *,
        concurrency: int,
        rate: float | None = None,
        retry_budget: int = 100,
        on_done: Callable[[Outcome], None] | None = None,
    ) -> None:
        self.concurrency = concurrency
        self.rate = rate
        self.retry_budget = retry_budget
        self.on_done = on_done
        self._next_slot = 0.0
        self._stop_reason: str | None = None
        self._stopped = asyncio.Event()

    def stop(self, reason: str = "interrupted") -> None:
        """End the run now: in-flight items are cancelled, finished ones are kept."""
        if self._stop_reason is None:
            self._stop_reason = reason
        self._stopped.set()

    async def run(self, target: Target, items: Iterable[Item]) -> Run:
        """Every item through ``target`` (until stopped); outcomes in the order they finished."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        result = Run(target.name)
        source = iter(items)
        workers = [
            asyncio.create_task(self._work(target, source, result)) for _ in range(self.concurrency)
        ]
        stopper: asyncio.Future[Any] = asyncio.ensure_future(self._stopped.wait())
        finished: asyncio.Future[Any] = asyncio.gather(*workers)  # fails once a worker raises
        try:
            await asyncio.wait({finished, stopper}, return_when=asyncio.FIRST_COMPLETED)
            ended = finished.done()  # before the cancelling below, whose errors are ours
        finally:
            for task in [*workers, stopper]:
                task.cancel()
            await asyncio.gather(*workers, stopper, return_exceptions=True)
        if finished.done() and not finished.cancelled():
            error = finished.exception()  # retrieved even when ours, so asyncio does not log it
            if ended and error is not None:
                raise error  # a bug, not a stop
        result.stopped = self._stop_reason
        result.wall_s = loop.time() - started
        return result

    async def _work(self, target: Target, source: Iterator[Item], result: Run) -> None:
        for item in source:  # shared by the workers: each item is taken once
            if self._stopped.is_set():
                return
            outcome = await self._attempt(target, item, result)
            if outcome is None:  # unreachable: the run is over
                return
            result.outcomes.append(outcome)
            if self.on_done is not None:
                self.on_done(outcome)

    async def _attempt(self, target: Target, item: Item, result: Run) -> Outcome | None:
        unreachable = 0
        attempt = 0
        while True:
            attempt += 1
            await self._pace()
            try:
                outcome = await target.evaluate(item)
            except Unreachable as exc:
                unreachable += 1
                if unreachable >= UNREACHABLE_ATTEMPTS:
                    self.stop(f"the server stopped answering ({exc})")
                    return None
                await asyncio.sleep(_backoff(unreachable, None))
                continue
            outcome.attempts = attempt
            if outcome.retry_after_s is None or attempt >= MAX_ATTEMPTS:
                return outcome
            if result.retries >= self.retry_budget:
                outcome.error = f"{outcome.error or 'rate limited'}; retry budget spent"
                return outcome
            result.retries += 1
            await asyncio.sleep(_backoff(attempt, outcome.retry_after_s))

    async def _pace(self) -> None:
        if not self.rate:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        slot = max(now, self._next_slot)
        self._next_slot = slot + 1 / self.rate
        if slot > now:
            await asyncio.sleep(slot - now)


def _backoff(attempt: int, retry_after_s: float | None) -> float:
    pause = RETRY_FLOOR_S * 2.0 ** (attempt - 1) * random.uniform(1.0, 1.5)
    return max(pause, retry_after_s or 0.0)
