"""The one interface every judge speaks: ``screen(text) -> Verdict``.

A judge that cannot give a verdict raises ``JudgeError``; the screening and
panel runners turn that into a ``JudgeFailure`` value, so a failure is never
mistaken for a pass. A runner also sets a ``ConnectionWait`` for each call, so
that time spent waiting for a free connection (reason ``pool``) is told apart
from a slow judge (``timeout``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

# Closed set: these become Prometheus label values.
FailureReason = Literal["timeout", "pool", "http", "rate_limited", "parse", "internal"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a judge said about one text."""

    judge: str
    flagged: bool
    categories: tuple[str, ...] = ()
    score: float | None = None
    reason: str = ""
    latency_s: float = 0.0
    queued_s: float = 0.0  # of latency_s, the time spent waiting for a free connection
    tokens: int = 0  # what the provider billed for the call (its usage), where it says


@dataclass(frozen=True, slots=True)
class JudgeFailure:
    """A judge that gave no verdict: it timed out, errored, or answered garbage."""

    judge: str
    reason: FailureReason
    detail: str = ""
    latency_s: float = 0.0
    queued_s: float = 0.0  # of latency_s, the time spent waiting for a free connection
    tokens: int = 0  # what the provider billed for the call, where it answered at all


JudgeResult = Verdict | JudgeFailure


class JudgeUsage:
    """Tokens a judge call was billed, as its provider said: the judge writes, its runner reads."""

    __slots__ = ("tokens",)

    def __init__(self) -> None:
        self.tokens = 0

    def add(self, usage: object) -> None:
        """Count a provider's ``usage`` (an object or mapping with ``total_tokens``)."""
        total = usage.get("total_tokens") if isinstance(usage, dict) else None
        if total is None:
            total = getattr(usage, "total_tokens", None)
        if isinstance(total, int) and not isinstance(total, bool) and total > 0:
            self.tokens += total


# Set by the runner around one judge call, like ``connection_wait``.
judge_usage: ContextVar[JudgeUsage | None] = ContextVar("judge_usage", default=None)


class ConnectionWait:
    """How long one judge call waited for a free connection: the judge writes, its runner reads."""

    __slots__ = ("_since", "waited_s")

    def __init__(self) -> None:
        self.waited_s = 0.0
        self._since: float | None = None

    def begin(self) -> None:
        """The call found every connection busy and queued."""
        self._since = time.perf_counter()

    def end(self) -> None:
        """The call got a connection."""
        if self._since is not None:
            self.waited_s += time.perf_counter() - self._since
            self._since = None

    @property
    def waiting(self) -> bool:
        """Whether the call is queued for a connection right now."""
        return self._since is not None

    def total_s(self) -> float:
        """Time waited so far, including a wait still going on."""
        ongoing = 0.0 if self._since is None else time.perf_counter() - self._since
        return self.waited_s + ongoing

    def starved(self, elapsed_s: float) -> bool:
        """Whether a call that ran out of time lost it mostly to waiting for a connection.

        A call that got its connection just before its deadline still failed
        because of the pool, not because the judge was slow.
        """
        return self.waiting or self.total_s() >= elapsed_s / 2


# Set by the runner around one judge call (each call runs in its own task or is
# reset after), read by a network judge's connection pool.
connection_wait: ContextVar[ConnectionWait | None] = ContextVar("connection_wait", default=None)


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


@runtime_checkable
class Askable(Protocol):
    """A judge that can be asked about chosen categories (a chat model can; a regex cannot)."""

    def asking(self, categories: Sequence[str]) -> Judge:
        """This judge, asked about ``categories`` only; it shares its connections."""
        ...
