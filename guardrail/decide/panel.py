"""The panel runner: ask every seat at once, stop the moment the vote is settled.

Fanning out to several vendors usually makes the slowest one everybody's
latency. Here the vote is re-decided as each answer lands (``voting.decide``)
and the stragglers are cancelled as soon as no answer could change it: their
HTTP requests are closed, so the vendor stops working on them.

Every seat is asked the question the escalating screens asked (``convene``'s
``question``): a panel judging another question could clear what was flagged.

A seat answered 429 is asked again after a pause: at least ``RETRY_FLOOR_S``,
doubling with jitter, longer if the vendor's Retry-After says so, at most
``MAX_RETRIES`` times and only while the deadline allows. A vendor answering
``Retry-After: 0`` is not hammered.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from guardrail.decide.voting import (
    QuorumRule,
    Ruling,
    Seat,
    SeatState,
    decide,
    final_ruling,
    state_of,
)
from guardrail.judges.base import (
    Askable,
    ConnectionWait,
    FailureReason,
    Judge,
    JudgeError,
    JudgeFailure,
    JudgeResult,
    JudgeUsage,
    connection_wait,
    judge_usage,
)

log = logging.getLogger("guardrail")

# Why the panel ended: a closed set, used as a metric label.
Ended = Literal["quorum", "all_voted", "tie", "no_quorum", "deadline"]
# Why a seat gave no vote (judge failure reasons, plus the panel's own).
Abstention = Literal[
    "timeout", "pool", "http", "rate_limited", "parse", "internal", "deadline", "cancelled"
]

# 429 handling: the first pause, doubled on each retry (with jitter), and how many retries.
RETRY_FLOOR_S = 0.1
MAX_RETRIES = 3


@dataclass(frozen=True, slots=True)
class PanelJudge:
    """A judge holding one seat (one sample) on the panel."""

    judge: Judge
    seat: Seat


@dataclass(frozen=True, slots=True)
class SeatResult:
    """What one seat did: its verdict, or why it abstained, and how long it took."""

    judge: str
    state: SeatState
    result: JudgeResult | None
    latency_s: float
    abstained: Abstention | None = None
    attempts: int = 1
    tokens: int = 0  # what the provider billed over all attempts, where it said (usage)

    @property
    def cancelled(self) -> bool:
        """Whether the seat was cut off because the vote was already settled."""
        return self.abstained == "cancelled"


@dataclass(frozen=True, slots=True)
class PanelOutcome:
    """The panel's ruling, every seat's part in it, and why the vote ended."""

    ruling: Ruling
    ended: Ended
    seats: tuple[SeatResult, ...]
    duration_s: float


class PanelRunner:
    """Runs one panel for one text at a time; holds no per-request state."""

    def __init__(
        self, judges: Sequence[PanelJudge], rule: QuorumRule, *, deadline_s: float
    ) -> None:
        self.judges = tuple(judges)
        self.rule = rule
        self.seats = tuple(j.seat for j in judges)
        self.deadline_s = deadline_s

    async def convene(self, text: str, question: Sequence[str] = ()) -> PanelOutcome:
        """Ask every seat about ``question`` at once; return as soon as the ruling cannot change.

        An empty ``question`` asks each seat what its judge asks by default.
        """
        start = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + self.deadline_s
        asked = [_asked(j.judge, question) for j in self.judges]
        tasks = [asyncio.create_task(_ask(judge, text, deadline)) for judge in asked]
        index = {task: i for i, task in enumerate(tasks)}
        results: list[SeatResult | None] = [None] * len(tasks)
        states: list[SeatState] = ["pending"] * len(tasks)
        ruling: Ruling | None = None
        try:
            pending = set(tasks)
            while pending and ruling is None:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                done, pending = await asyncio.wait(
                    pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    seat = results[index[task]] = task.result()
                    states[index[task]] = seat.state
                ruling = decide(self.rule, self.seats, states)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        now = time.perf_counter()
        settled_early = ruling is not None
        why: Abstention = "cancelled" if settled_early else "deadline"
        for i, result in enumerate(results):
            if result is None:  # cut off: the vote was settled, or time ran out
                results[i] = SeatResult(
                    self.judges[i].judge.name, "abstain", None, now - start, why
                )
                states[i] = "abstain"
        if ruling is None:
            ruling = final_ruling(self.rule, self.seats, states)
        seats = tuple(r for r in results if r is not None)
        return PanelOutcome(ruling, _ended(ruling, settled_early, seats), seats, now - start)


def _ended(ruling: Ruling, settled_early: bool, seats: tuple[SeatResult, ...]) -> Ended:
    if ruling.reason == "too_few_votes" or ruling.outcome == "no_quorum":
        return "deadline" if any(s.abstained == "deadline" for s in seats) else "no_quorum"
    if settled_early and any(s.cancelled for s in seats):
        return "quorum"
    return "tie" if ruling.reason == "tie" else "all_voted"


def _asked(judge: Judge, question: Sequence[str]) -> Judge:
    # Seats are chat judges (policy-checked); a judge that cannot be asked keeps its own question.
    return judge.asking(question) if question and isinstance(judge, Askable) else judge


async def _ask(judge: Judge, text: str, deadline: float) -> SeatResult:
    """One seat's vote, and the tokens its calls were billed for."""
    usage = JudgeUsage()
    judge_usage.set(usage)  # this task's own context: no reset needed
    seat = await _vote(judge, text, deadline)
    return replace(seat, tokens=usage.tokens) if usage.tokens else seat


async def _vote(judge: Judge, text: str, deadline: float) -> SeatResult:
    """One seat's vote; a 429 is retried with backoff, a few times, while the deadline allows."""
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    wait = ConnectionWait()
    connection_wait.set(wait)  # this task's own context: no reset needed
    attempt = 0
    while True:
        attempt += 1
        try:
            async with asyncio.timeout_at(deadline):
                verdict = await judge.screen(text)
            if queued := wait.total_s():
                verdict = replace(verdict, queued_s=queued)
            return SeatResult(judge.name, state_of(verdict), verdict, _since(start), None, attempt)
        except TimeoutError:
            if wait.starved(_since(start)):
                detail = "no free connection before the deadline"
                return _abstain(judge, "pool", detail, start, attempt, wait)
            return _abstain(
                judge, "deadline", "no verdict before the panel's deadline", start, attempt, wait
            )
        except JudgeError as exc:
            if exc.reason == "rate_limited" and attempt <= MAX_RETRIES:
                pause = retry_pause(attempt, exc.retry_after_s)
                if loop.time() + pause < deadline:
                    await asyncio.sleep(pause)
                    continue
            return _abstain(judge, exc.reason, exc.detail, start, attempt, wait)
        except Exception as exc:  # a judge bug abstains; it must not sink the panel
            log.exception("panel judge %s raised", judge.name)
            return _abstain(judge, "internal", type(exc).__name__, start, attempt, wait)


def retry_pause(attempt: int, retry_after_s: float | None) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based) after a 429."""
    backoff: float = RETRY_FLOOR_S * 2 ** (attempt - 1) * (1 + random.random())
    # Retry-After can only lengthen the pause: 0 must not mean "at once, forever".
    return max(backoff, retry_after_s or 0.0)


def _abstain(
    judge: Judge,
    reason: FailureReason | Literal["deadline"],
    detail: str,
    start: float,
    attempts: int,
    wait: ConnectionWait,
) -> SeatResult:
    failure = JudgeFailure(
        judge.name,
        "timeout" if reason == "deadline" else reason,
        detail,
        _since(start),
        wait.total_s(),
    )
    return SeatResult(judge.name, "abstain", failure, failure.latency_s, reason, attempts)


def _since(start: float) -> float:
    return time.perf_counter() - start
