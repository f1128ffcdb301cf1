"""Phone numbers found by Google's libphonenumber (the ``phonenumbers`` package), if installed.

The local judge's regexes know a few national formats; the library knows every
country's numbering plan and says whether a number could be valid. It is an
optional extra (``pip install guardrail[phones]``): without it only the
regexes look. Numbers without a country code are read as ``REGION``'s.

The library's matcher is pure Python and not cheap: it reads only the text
around clusters of seven digits (every number has one), with the event loop
free between every few clusters. A region holds at most a number's length
around each cluster, so a run of clusters makes one region linear in its length.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from functools import cache
from typing import Any

REGION = "US"


@cache
def _library() -> Any | None:
    try:
        import phonenumbers
    except ImportError:
        return None
    return phonenumbers


# Seven digits close together (the fewest a number has, its separators at most
# three characters): the library reads only around such clusters.
_CLUSTER = re.compile(r"\d(?:\D{0,3}\d){6}")
# Around a cluster, enough text for the rest of the longest number as written.
_AROUND = 32


async def found(
    text: str, accept: Callable[[str], bool], *, first_only: bool = False
) -> list[tuple[int, int]]:
    """(start, end) of each valid phone number in ``text`` that ``accept`` takes;
    [] without the library."""
    library = _library()
    if library is None:
        return []
    spans: list[tuple[int, int]] = []
    for turn, (start, end) in enumerate(_regions(text)):
        if turn and turn % 64 == 0:
            await asyncio.sleep(0)
        region = text[start:end]
        matcher = library.PhoneNumberMatcher(region, REGION, leniency=library.Leniency.VALID)
        for match in matcher:
            span = (start + match.start, start + match.end)
            if span not in spans and accept(match.raw_string):
                spans.append(span)
                if first_only:
                    return spans
    return spans


def _regions(text: str) -> list[tuple[int, int]]:
    """Stretches of ``text`` around its digit clusters, overlapping ones joined."""
    regions: list[tuple[int, int]] = []
    for cluster in _CLUSTER.finditer(text):
        start, end = max(0, cluster.start() - _AROUND), cluster.end() + _AROUND
        if regions and start <= regions[-1][1]:
            regions[-1] = (regions[-1][0], end)
        else:
            regions.append((start, end))
    return regions
