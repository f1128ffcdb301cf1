"""Run several focused screens on one text at once; the first flag settles it.

A flag cancels the screens still running: their answers can no longer change
the outcome, and an LLM judge's cancelled HTTP request stops costing tokens.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from guardrail.judges.base import Judge, JudgeError, JudgeFailure, JudgeResult, Verdict

log = logging.getLogger("guardrail")


@dataclass(frozen=True, slots=True)
class Screen:
    """A judge bound to its timeout and the categories that count as a flag."""

    judge: Judge
    timeout_s: float
    categories: frozenset[str] | None = None

    def counts(self, result: JudgeResult) -> JudgeResult:
        """The result with flags outside this screen's categories ignored."""
        if not isinstance(result, Verdict) or not result.flagged or self.categories is None:
            return result
        verdict = result
        kept = tuple(c for c in verdict.categories if c in self.categories)
        return verdict if kept else replace(verdict, flagged=False, categories=())


@dataclass(frozen=True, slots=True)
class Screening:
    """What the screens said: every result that came in, and the flag that settled it."""

    results: tuple[JudgeResult, ...]
    flag: Verdict | None

    @property
    def failures(self) -> tuple[JudgeFailure, ...]:
        """The judges that gave no verdict."""
        return tuple(r for r in self.results if isinstance(r, JudgeFailure))


async def judge_once(judge: Judge, text: str, timeout_s: float) -> JudgeResult:
    """One judge's result, with every failure turned into a ``JudgeFailure`` value."""
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            return await judge.screen(text)
    except TimeoutError:
        return JudgeFailure(judge.name, "timeout", f"no verdict in {timeout_s}s", _since(start))
    except JudgeError as exc:
        return JudgeFailure(judge.name, exc.reason, exc.detail, _since(start))
    except Exception as exc:  # a bug in a judge must fail by policy, not crash the request
        log.exception("judge %s raised", judge.name)
        return JudgeFailure(judge.name, "internal", type(exc).__name__, _since(start))


async def screen_all(screens: Sequence[Screen], text: str) -> Screening:
    """Run every screen concurrently; stop at the first flag."""
    # Network judges start first, so the local ones cost them no time; the local
    # judges then run right here (a task each would cost more than their work),
    # and a local flag cancels the network calls, most before they are sent.
    tasks = {
        asyncio.create_task(judge_once(s.judge, text, s.timeout_s)): s
        for s in screens
        if not s.judge.inline
    }
    results: list[JudgeResult] = []
    try:
        for screen in screens:
            if screen.judge.inline:
                result = screen.counts(await judge_once(screen.judge, text, screen.timeout_s))
                results.append(result)
                if isinstance(result, Verdict) and result.flagged:
                    return Screening(tuple(results), result)
        pending = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                result = tasks[task].counts(task.result())
                results.append(result)
                if isinstance(result, Verdict) and result.flagged:
                    return Screening(tuple(results), result)
        return Screening(tuple(results), None)
    finally:
        await _cancel(tasks)


async def _cancel(tasks: dict[asyncio.Task[JudgeResult], Screen]) -> None:
    stragglers = [t for t in tasks if not t.done()]
    for task in stragglers:
        task.cancel()
    if stragglers:
        # Wait so no task outlives the request (and its HTTP request is closed).
        await asyncio.gather(*stragglers, return_exceptions=True)


def _since(start: float) -> float:
    return time.perf_counter() - start
