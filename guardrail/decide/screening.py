"""Run several focused screens on one text at once; the first final flag settles it.

A flag is final unless the policy lets the panel overturn its judge
(``Screen.final``). A final flag cancels the screens still running: their
answers can no longer change the outcome, and an LLM judge's cancelled HTTP
request stops costing tokens.

A flag the panel may overturn settles nothing yet: the panel will rule, and
must not release what another screen would have caught. So every local screen
still runs (they cost microseconds), and so does every network screen whose
flag would be final; network screens the panel may overturn are cut off, and
the panel is asked their question too (``Screening.flag_question``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from guardrail.judges.base import (
    ConnectionWait,
    Judge,
    JudgeError,
    JudgeFailure,
    JudgeResult,
    Verdict,
    connection_wait,
)

log = logging.getLogger("guardrail")


@dataclass(frozen=True, slots=True)
class Screen:
    """A judge bound to its timeout, what it is asked about, and whether its flag is final."""

    judge: Judge
    timeout_s: float
    # The categories the judge is asked about: on escalation, the panel's question.
    asks: tuple[str, ...] = ()
    final: bool = True


@dataclass(frozen=True, slots=True)
class Screening:
    """What the screens said: every result that came in, and the flag that settled it.

    ``flag`` is a final flag if any screen raised one; otherwise the first flag
    the panel may overturn (``disputable``), with the question to put to it.
    """

    results: tuple[JudgeResult, ...]
    flag: Verdict | None
    disputable: bool = False
    # What the screens with disputable flags asked, and those cut off because of them.
    flag_question: tuple[str, ...] = ()
    failed_question: tuple[str, ...] = ()  # what the screens that failed asked

    @property
    def failures(self) -> tuple[JudgeFailure, ...]:
        """The judges that gave no verdict."""
        return tuple(r for r in self.results if isinstance(r, JudgeFailure))


async def judge_once(judge: Judge, text: str, timeout_s: float) -> JudgeResult:
    """One judge's result, with every failure turned into a ``JudgeFailure`` value."""
    start = time.perf_counter()
    wait = ConnectionWait()
    token = connection_wait.set(wait)
    try:
        async with asyncio.timeout(timeout_s):
            result: JudgeResult = await judge.screen(text)
    except TimeoutError:
        if wait.starved(_since(start)):
            detail = f"no free connection within {timeout_s}s"
            result = JudgeFailure(judge.name, "pool", detail, _since(start))
        else:
            detail = f"no verdict in {timeout_s}s"
            result = JudgeFailure(judge.name, "timeout", detail, _since(start))
    except JudgeError as exc:
        result = JudgeFailure(judge.name, exc.reason, exc.detail, _since(start))
    except Exception as exc:  # a bug in a judge must fail by policy, not crash the request
        log.exception("judge %s raised", judge.name)
        result = JudgeFailure(judge.name, "internal", type(exc).__name__, _since(start))
    finally:
        connection_wait.reset(token)
    queued = wait.total_s()
    return replace(result, queued_s=queued) if queued else result


async def screen_all(screens: Sequence[Screen], text: str) -> Screening:
    """Run every screen concurrently; stop at the first final flag."""
    # Network judges start first, so the local ones cost them no time; the local
    # judges then run right here (a task each would cost more than their work),
    # and a local flag cancels the network calls, most before they are sent.
    tasks = {
        asyncio.create_task(judge_once(s.judge, text, s.timeout_s)): s
        for s in screens
        if not s.judge.inline
    }
    heard: list[tuple[Screen, JudgeResult]] = []
    handed_over: list[Screen] = []  # cut off: the panel is asked their question instead
    try:
        for screen in screens:
            if screen.judge.inline:
                heard.append((screen, await judge_once(screen.judge, text, screen.timeout_s)))
                if _settles(*heard[-1]):
                    return _screening(heard, handed_over)
        pending = set(tasks)
        while pending:
            if any(_disputes(*h) for h in heard):
                for task in [t for t in tasks if t in pending and not tasks[t].final]:
                    task.cancel()  # its tokens are saved; the panel answers its question
                    handed_over.append(tasks[task])
                    pending.discard(task)
                if not pending:
                    break
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                heard.append((tasks[task], task.result()))
                if _settles(*heard[-1]):
                    return _screening(heard, handed_over)
        return _screening(heard, handed_over)
    finally:
        await _cancel(tasks)


def _settles(screen: Screen, result: JudgeResult) -> bool:
    return isinstance(result, Verdict) and result.flagged and screen.final


def _disputes(screen: Screen, result: JudgeResult) -> bool:
    return isinstance(result, Verdict) and result.flagged and not screen.final


def _screening(
    heard: Sequence[tuple[Screen, JudgeResult]], handed_over: Sequence[Screen]
) -> Screening:
    results = tuple(result for _, result in heard)
    flags = [(s, r) for s, r in heard if isinstance(r, Verdict) and r.flagged]
    final = [r for s, r in flags if s.final]
    if final:
        return Screening(results, final[0])
    failed = _union(s.asks for s, r in heard if isinstance(r, JudgeFailure))
    if not flags:
        return Screening(results, None, failed_question=failed)
    asked = _union([*(s.asks for s, _ in flags), *(s.asks for s in handed_over)])
    return Screening(results, flags[0][1], True, asked, failed)


def _union(questions: Iterable[tuple[str, ...]]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(c for question in questions for c in question))


async def _cancel(tasks: dict[asyncio.Task[JudgeResult], Screen]) -> None:
    stragglers = [t for t in tasks if not t.done()]
    for task in stragglers:
        task.cancel()
    if stragglers:
        # Wait so no task outlives the request (and its HTTP request is closed).
        await asyncio.gather(*stragglers, return_exceptions=True)


def _since(start: float) -> float:
    return time.perf_counter() - start
