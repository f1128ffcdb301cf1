"""What one item's evaluation under one policy left behind: the record every report is built from.

An item ends ``refused`` (the user would have got the refusal), ``passed`` (the
request, and its answer if given, would have been released) or ``error`` (a
judge failed, the request could not be read, or the server did not answer).
An error is never counted as a pass or a catch: it is reported on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Verdict = Literal["refused", "passed", "error"]
# Judge call outcomes: flag, pass, or a failure reason (timeout, http, ...).
Stage = Literal["input", "output", "panel"]


@dataclass(frozen=True, slots=True)
class JudgeCall:
    """One judge's answer on one item."""

    judge: str
    stage: Stage
    result: str  # "flag", "pass", or why it failed ("timeout", "rate_limited", ...)
    latency_s: float
    categories: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PanelNote:
    """What the panel did on one item."""

    trigger: str  # "flag" or "error"
    ruling: str  # "block", "allow" or "no_quorum"
    ended: str
    duration_s: float

    @property
    def overturned(self) -> bool:
        """Whether the panel cleared what a screen had flagged."""
        return self.trigger == "flag" and self.ruling == "allow"


@dataclass(slots=True)
class Outcome:
    """One item under one policy."""

    id: str
    unsafe: bool
    category: str
    verdict: Verdict
    decision: str  # the guard's decision (allowed, blocked, ...), or what went wrong over HTTP
    latency_s: float
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage
    calls: list[JudgeCall] = field(default_factory=list)
    panel: PanelNote | None = None
    error: str | None = None
    attempts: int = 1
    retry_after_s: float | None = None  # set when the item was rate-limited (429)
    prompts: dict[str, int] = field(default_factory=dict)  # calls asked of each LLM judge
    prompt_chars: dict[str, int] = field(default_factory=dict)  # text sent to each LLM judge

    @property
    def caught_by(self) -> list[str]:
        """The judges that flagged this item."""
        return [c.judge for c in self.calls if c.result == "flag"]

    def as_dict(self) -> dict[str, object]:
        """The outcome for JSON (no user text)."""
        return {
            "id": self.id,
            "label": "unsafe" if self.unsafe else "safe",
            "category": self.category,
            "verdict": self.verdict,
            "decision": self.decision,
            "latency_ms": round(self.latency_s * 1000, 3),
            "caught_by": self.caught_by,
            "error": self.error,
            "attempts": self.attempts,
        }
