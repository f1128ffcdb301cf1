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

A request is screened as jobs (``screen_jobs``): each screen on each passage
of the request it must see (``decide.pieces``). All jobs of all screens run at
once, network calls bounded per request, with the same rules: a final flag
from any passage settles it and cancels the rest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from guardrail.adapters.base import Piece
from guardrail.judges.base import (
    ConnectionWait,
    Judge,
    JudgeError,
    JudgeFailure,
    JudgeResult,
    JudgeUsage,
    Verdict,
    connection_wait,
    judge_usage,
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
    # The pieces the passage that raised ``flag`` holds new text of (attribution).
    flagged_pieces: tuple[Piece, ...] = ()
    # Each job's result, in the order of the jobs; None for a job cut off or never run.
    by_job: tuple[JudgeResult | None, ...] = ()

    @property
    def failures(self) -> tuple[JudgeFailure, ...]:
        """The judges that gave no verdict."""
        return tuple(r for r in self.results if isinstance(r, JudgeFailure))


@dataclass(frozen=True, slots=True)
class Job:
    """One screen on one passage of the request, and the pieces it screens for the first time."""

    screen: Screen
    text: str
    pieces: tuple[Piece, ...] = ()


async def judge_once(
    judge: Judge, text: str, timeout_s: float, gate: asyncio.Semaphore | None = None
) -> JudgeResult:
    """One judge's result, with every failure turned into a ``JudgeFailure`` value.

    ``gate`` bounds the calls of one request; waiting for it counts against the
    timeout, so no request costs more than its judges' timeout.
    """
    start = time.perf_counter()
    wait = ConnectionWait()
    token = connection_wait.set(wait)
    usage = JudgeUsage()
    usage_token = judge_usage.set(usage)
    try:
        async with asyncio.timeout(timeout_s):
            if gate is None:
                result: JudgeResult = await judge.screen(text)
            else:
                async with gate:
                    result = await judge.screen(text)
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
        judge_usage.reset(usage_token)
    if usage.tokens:
        result = replace(result, tokens=usage.tokens)
    queued = wait.total_s()
    return replace(result, queued_s=queued) if queued else result


async def screen_all(screens: Sequence[Screen], text: str) -> Screening:
    """Run every screen concurrently on one text; stop at the first final flag."""
    return await screen_jobs([Job(s, text) for s in screens])


async def screen_jobs(jobs: Sequence[Job], *, limit: int | None = None) -> Screening:
    """Run every job concurrently (at most ``limit`` network calls at once); stop at the
    first final flag."""
    gate = asyncio.Semaphore(limit) if limit else None
    # Network judges start first, so the local ones cost them no time; the local
    # judges then run right here (a task each would cost more than their work),
    # and a local flag cancels the network calls, most before they are sent.
    tasks = {
        asyncio.create_task(judge_once(j.screen.judge, j.text, j.screen.timeout_s, gate)): n
        for n, j in enumerate(jobs)
        if not j.screen.judge.inline
    }
    heard: list[tuple[int, JudgeResult]] = []
    handed_over: list[Screen] = []  # cut off: the panel is asked their question instead
    # Window by window: the local judges after the first read the window's
    # normalised text from the cache the first one filled (normalize.readings).
    first_at: dict[str, int] = {}
    for n, job in enumerate(jobs):
        if job.screen.judge.inline:
            first_at.setdefault(job.text, n)
    inline = sorted(
        (n for n, job in enumerate(jobs) if job.screen.judge.inline),
        key=lambda n: first_at[jobs[n].text],
    )
    # One window: its local flag comes before any network call is sent. Several
    # (a long document): the event loop gets a turn between windows, so the
    # network calls go out and wait while the local judges work, and the request
    # takes about one call's latency rather than the local work plus it.
    interleave = bool(tasks) and len(first_at) > 1
    try:
        for n in inline:
            if interleave:
                await asyncio.sleep(0)
            job = jobs[n]
            result = await judge_once(job.screen.judge, job.text, job.screen.timeout_s)
            heard.append((n, result))
            if _settles(jobs, *heard[-1]):
                return _screening(jobs, heard, handed_over)
        pending = set(tasks)
        while pending:
            if any(_disputes(jobs, *h) for h in heard):
                for task in [t for t in tasks if t in pending and not jobs[tasks[t]].screen.final]:
                    task.cancel()  # its tokens are saved; the panel answers its question
                    handed_over.append(jobs[tasks[task]].screen)
                    pending.discard(task)
                if not pending:
                    break
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                heard.append((tasks[task], task.result()))
                if _settles(jobs, *heard[-1]):
                    return _screening(jobs, heard, handed_over)
        return _screening(jobs, heard, handed_over)
    finally:
        await _cancel(tasks)


def _settles(jobs: Sequence[Job], n: int, result: JudgeResult) -> bool:
    return isinstance(result, Verdict) and result.flagged and jobs[n].screen.final


def _disputes(jobs: Sequence[Job], n: int, result: JudgeResult) -> bool:
    return isinstance(result, Verdict) and result.flagged and not jobs[n].screen.final


def _screening(
    jobs: Sequence[Job], heard: Sequence[tuple[int, JudgeResult]], handed_over: Sequence[Screen]
) -> Screening:
    results = tuple(result for _, result in heard)
    by_job: list[JudgeResult | None] = [None] * len(jobs)
    for n, result in heard:
        by_job[n] = result
    done = tuple(by_job)
    flags = [(jobs[n], r) for n, r in heard if isinstance(r, Verdict) and r.flagged]
    final = [(j, r) for j, r in flags if j.screen.final]
    if final:
        return Screening(results, final[0][1], flagged_pieces=final[0][0].pieces, by_job=done)
    failed = _union(jobs[n].screen.asks for n, r in heard if isinstance(r, JudgeFailure))
    if not flags:
        return Screening(results, None, failed_question=failed, by_job=done)
    asked = _union([*(j.screen.asks for j, _ in flags), *(s.asks for s in handed_over)])
    return Screening(results, flags[0][1], True, asked, failed, flags[0][0].pieces, done)


def _union(questions: Iterable[tuple[str, ...]]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(c for question in questions for c in question))


async def _cancel(tasks: dict[asyncio.Task[JudgeResult], int]) -> None:
    stragglers = [t for t in tasks if not t.done()]
    for task in stragglers:
        task.cancel()
    if stragglers:
        # Wait so no task outlives the request (and its HTTP request is closed).
        await asyncio.gather(*stragglers, return_exceptions=True)


def _since(start: float) -> float:
    return time.perf_counter() - start
