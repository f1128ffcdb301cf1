"""Redacting the app's answer instead of cutting it (``output.on_flag: redact``).

Before the output screens read the answer, the values the output screens'
pii and keywords judges find in it are replaced by placeholders of their kind,
numbered after those the request was given (a value the app invents is never
restored: the restorer knows only the request's). The screens then read the
redacted answer as usual: what redaction missed is still cut.

In a stream (``rewrite``) each place's text keeps its last ``hold_chars``
characters back (the output stage's overlap, which the policy check makes at
least the longest finding of its judges), and never cuts inside a value: a
value growing over several events is redacted whole once it is complete.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from starlette.types import Message

from guardrail.decide.redaction import PlaceholderBook, SpanJudge
from guardrail.flow.rewrite import FlowTexts, Rewriter, flow_texts
from guardrail.judges.spans import Span, merged

if TYPE_CHECKING:
    from guardrail.adapters import Adapter
    from guardrail.decide.guard import Guard

# The least a stream holds back per place, whatever the overlap: a long e-mail.
MIN_HOLD_CHARS = 64


class AnswerRedactor:
    """One answer's redaction, between the app and the output screens."""

    def __init__(
        self,
        judges: Sequence[SpanJudge],
        flow_texts: FlowTexts,
        *,
        hold_chars: int,
        taken: frozenset[str],
    ) -> None:
        self._judges = judges
        self._hold = max(hold_chars, MIN_HOLD_CHARS)
        self._book = PlaceholderBook(set(taken))
        self._rewriter = Rewriter(self._piece, lambda _: True, flow_texts)

    @property
    def counts(self) -> Counter[str]:
        """Values redacted so far, by kind."""
        return self._book.counts

    def feeding(
        self, downstream: Callable[[Message], Awaitable[None]]
    ) -> Callable[[Message], Awaitable[None]]:
        """A ``send`` that redacts each message, then passes what it gives to ``downstream``."""

        async def send(message: Message) -> None:
            for redacted in await self._rewriter.feed(message):
                await downstream(redacted)

        return send

    async def _piece(self, place: str, text: str, final: bool) -> tuple[str, str]:
        found: list[Span] = []
        for judge in self._judges:
            found += await judge.spans(text)
        spans = merged(found)
        cut = len(text) if final else max(0, len(text) - self._hold)
        for span in spans:
            if span.start < cut < span.end:
                cut = span.start  # a value still being written: held whole
        pieces: list[str] = []
        done = 0
        for span in spans:
            if span.end > cut:
                break
            pieces += [text[done : span.start], self._book.placeholder(span, "", restore=False)]
            done = span.end
        pieces.append(text[done:cut])
        return "".join(pieces), text[cut:]


def answer_redactor(
    guard: Guard, taken: frozenset[str], adapter: Adapter | None = None
) -> AnswerRedactor | None:
    """The answer's redactor if the output stage redacts, with the judges that can
    (``adapter``: the route's API, the policy's by default)."""
    stage = guard.policy.output
    if stage is None or stage.on_flag != "redact":
        return None
    judges = [s.judge for s in guard.output_screens if isinstance(s.judge, SpanJudge)]
    if not judges:
        return None
    flows = flow_texts(adapter or guard.adapter)
    return AnswerRedactor(judges, flows, hold_chars=stage.overlap_chars, taken=taken)
