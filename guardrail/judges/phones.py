"""Phone numbers found by Google's libphonenumber (the ``phonenumbers`` package), if installed.

The local judge's regexes know a few national formats; the library knows every
country's numbering plan and says whether a number could be valid. It is an
optional extra (``pip install guardrail[phones]``): without it only the
regexes look. Numbers without a country code are read as ``REGION``'s.

The library's matcher is pure Python and not cheap: it runs only on text that
already holds a cluster of digits (the judge checks that first), a chunk at a
time with the event loop free between chunks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import cache
from typing import Any

REGION = "US"
_CHUNK = 4_096
# Chunks overlap by more than the longest number as written, so one cut by a
# chunk's edge is whole in the next chunk.
_OVERLAP = 64


@cache
def _library() -> Any | None:
    try:
        import phonenumbers
    except ImportError:
        return None
    return phonenumbers


async def found(
    text: str, accept: Callable[[str], bool], *, first_only: bool = False
) -> list[tuple[int, int]]:
    """(start, end) of each valid phone number in ``text`` that ``accept`` takes;
    [] without the library."""
    library = _library()
    if library is None:
        return []
    spans: list[tuple[int, int]] = []
    for start in range(0, len(text), _CHUNK):
        if start:
            await asyncio.sleep(0)
        chunk = text[start : start + _CHUNK + _OVERLAP]
        matcher = library.PhoneNumberMatcher(chunk, REGION, leniency=library.Leniency.VALID)
        for match in matcher:
            span = (start + match.start, start + match.end)
            if match.start < _CHUNK and span not in spans and accept(match.raw_string):
                spans.append(span)
                if first_only:
                    return spans
    return spans
