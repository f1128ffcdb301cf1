"""Putting the original values back into the answer, in place of the placeholders the app got.

Between the guard and the client: every message for the client passes
``Restorer.feed``, after the output screens (they read the placeholders, as
the app wrote them). Only placeholders this request issued for restorable
kinds are replaced (``redaction``): one the app invents, or one the user typed
(numbers the user typed are never issued), stays as it is.

In a stream (``rewrite``), a string that ends in the first characters of a
placeholder keeps only those back, for the same place's next string: an
unfinished placeholder is held, never more. A body with a Content-Encoding
passes as it is: its placeholders reach the client unrestored (the safe side:
nothing leaks, the answer reads worse).
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.types import Message

from guardrail.decide.redaction import PLACEHOLDER
from guardrail.flow.rewrite import FlowTexts, Rewriter


class Placeholders:
    """Restores the issued placeholders in text that may arrive in pieces."""

    def __init__(self, originals: Mapping[str, str]) -> None:
        self._originals = originals
        self._prefixes = frozenset(p[:n] for p in originals for n in range(1, len(p)))
        self._longest = max(map(len, originals))

    def whole(self, text: str) -> str:
        """``text`` with every issued placeholder restored."""
        if "<" not in text:
            return text
        # Any placeholder-shaped text is looked up: one the request did not issue
        # (or issued for a kind never restored) stays as it is.
        return PLACEHOLDER.sub(lambda m: self._originals.get(m.group(), m.group()), text)

    async def piece(self, place: str, text: str, final: bool) -> tuple[str, str]:
        """The restored text to send now, and the unfinished placeholder to hold back."""
        held = ""
        if not final:
            start = text.rfind("<", max(0, len(text) - self._longest + 1))
            if start != -1 and text[start:] in self._prefixes:
                text, held = text[:start], text[start:]
        return self.whole(text), held

    @staticmethod
    def relevant(text: str) -> bool:
        """Whether ``text`` may hold a placeholder (JSON may escape ``<``)."""
        return "<" in text or "\\u003c" in text.lower()


class Restorer:
    """One request's restoring, in front of the client; ``feed`` returns the messages to send."""

    def __init__(self, originals: Mapping[str, str], flow_texts: FlowTexts) -> None:
        placeholders = Placeholders(originals)
        self._rewriter = Rewriter(placeholders.piece, placeholders.relevant, flow_texts)

    async def feed(self, message: Message) -> list[Message]:
        """One message for the client; the messages to send in its place."""
        return await self._rewriter.feed(message)
