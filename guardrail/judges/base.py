"""The one interface every judge speaks: ``screen(text) -> Verdict``.

A judge that cannot give a verdict raises ``JudgeError``; the screening and
panel runners turn that into a ``JudgeFailure`` value, so a failure is never
mistaken for a pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

# Closed set: these become Prometheus label values.
FailureReason = Literal["timeout", "http", "rate_limited", "parse", "internal"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a judge said about one text."""

    judge: str
    flagged: bool
    categories: tuple[str, ...] = ()
    score: float | None = None
    reason: str = ""
    latency_s: float = 0.0


@dataclass(frozen=True, slots=True)
class JudgeFailure:
    """A judge that gave no verdict: it timed out, errored, or answered garbage."""

    judge: str
    reason: FailureReason
    detail: str = ""
    latency_s: float = 0.0


JudgeResult = Verdict | JudgeFailure


class JudgeError(Exception):
    """Raised by a judge that cannot give a verdict."""

    def __init__(
        self, reason: FailureReason, detail: str = "", *, retry_after_s: float | None = None
    ) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason: FailureReason = reason
        self.detail = detail
        self.retry_after_s = retry_after_s


class Judge(Protocol):
    """Screens one text and returns a verdict, or raises ``JudgeError``."""

    # True for judges that answer on the CPU in microseconds (no I/O): they run
    # in the request's own task instead of a task each.
    inline: bool

    @property
    def name(self) -> str: ...

    async def screen(self, text: str) -> Verdict: ...

    async def aclose(self) -> None: ...
