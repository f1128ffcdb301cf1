"""Where a local judge's findings are in the original text: spans to redact.

A judge matches a reading of the text (``normalize``): invisible characters
dropped, lookalikes mapped, case and whitespace folded. ``mapped_reading``
keeps, for each character of a reading, the original character it came from,
so a match maps back to the original from its first character to its last:
an invisible character inside a value ("ana\\u200b@example.org") is inside
the span and is redacted with it. A text holding invisible characters is also
read with them as spaces, as the judges read it; overlapping spans merge.

Each span has a ``key``: the value as the judge read it (folded; digits only
for numbers), so the same value in two spellings ("Ana@Example.org",
"ana@example.org", "4111-1111-1111-1111", "4111 1111 1111 1111") is one value.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from guardrail.judges.normalize import _has_invisible, mapped_reading

__all__ = ["NEVER_RESTORED", "NUMBER_KINDS", "Span", "spans_in"]


@dataclass(frozen=True, slots=True)
class Span:
    """``text[start:end]`` is a value of this kind; ``key`` names it whatever its spelling."""

    start: int
    end: int
    kind: str
    key: str


# Found in a reading: (start, end, kind) of each value.
Finder = Callable[[str], Awaitable[list[tuple[int, int, str]]]]

# Kinds whose value is its digits (and letters): separators are spelling.
NUMBER_KINDS = frozenset({"phone", "card", "iban", "ssn"})
_NOT_ALNUM = re.compile(r"[\W_]+")


def _key(kind: str, found: str) -> str:
    if kind not in NUMBER_KINDS:
        return found.strip()
    key = _NOT_ALNUM.sub("", found).upper()
    if kind == "phone" and len(key) == 11 and key.startswith("1"):
        key = key[1:]  # +1 415 555 2671 is (415) 555-2671: North America's country code
    return key


async def spans_in(text: str, find: Finder, *, fold: bool = True) -> list[Span]:
    """The values ``find`` finds in ``text``'s readings, as spans of ``text``, merged."""
    found: list[Span] = []
    for spaced in (False, True) if _has_invisible(text) else (False,):
        form, origin = await mapped_reading(text, spaced=spaced, fold=fold)
        for start, end, kind in await find(form):
            if end <= start:
                continue
            found.append(
                Span(origin[start], origin[end - 1] + 1, kind, _key(kind, form[start:end]))
            )
    return merged(found)


# Kinds whose values never come back into an answer (``decide.redaction``): a
# span holding one, merged into another kind's ("sk-...@host.com" is an e-mail
# address too), takes its kind, so the value it holds is not restored either.
NEVER_RESTORED = frozenset({"card", "secret"})


def merged(spans: list[Span]) -> list[Span]:
    """Spans in order, overlapping ones joined (the first one's kind and key kept,
    unless a joined one is of a kind never restored: then that kind)."""
    out: list[Span] = []
    for span in sorted(spans, key=lambda s: (s.start, -s.end)):
        if out and span.start < out[-1].end:
            last = out[-1]
            kind = last.kind
            if span.kind in NEVER_RESTORED and kind not in NEVER_RESTORED:
                kind = span.kind
            out[-1] = Span(last.start, max(last.end, span.end), kind, last.key)
            continue
        out.append(span)
    return out
