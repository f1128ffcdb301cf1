"""Regex search over a long text in overlapping windows, yielding to the event loop between them.

``re`` holds the GIL for a whole search, so one search over a 1 MiB text
stalls every other request, and a thread running it cannot be stopped at a
timeout. Searching a window at a time keeps each step short; between steps
the event loop serves other requests, and a judge's timeout cancels the scan.

Each window is one chunk of the text plus an overlap as long as the longest
match the pattern can make (its *reach*), so a match that starts in a chunk
is seen whole. The built-in patterns all have a bounded reach. A policy
pattern may not (``a+``): its reach is capped at ``MAX_REACH``, and a match
that runs to the end of its window is matched again with room to grow.
"""

from __future__ import annotations

import asyncio
import importlib
import re
from collections.abc import AsyncIterator
from functools import lru_cache

__all__ = ["MAX_REACH", "WINDOW", "batches", "finditer", "reach", "search"]

# Characters searched between two turns of the event loop: well under a
# millisecond for the built-in patterns.
WINDOW = 16_384
MAX_REACH = 4_096
# Lookarounds are not counted in a pattern's width; this much room after a
# match lets them see the real text, not the window's end.
_LOOKAROUND = 64


# Bounded: a policy reload compiles new patterns, and old ones should not pile up.
@lru_cache(maxsize=512)
def reach(pattern: re.Pattern[str]) -> int:
    """The longest match ``pattern`` can make, capped at ``MAX_REACH``."""
    try:
        # re's own parser knows each pattern's width; it is private, so any
        # surprise falls back to the cap, which is always safe.
        parser = importlib.import_module("re._parser")
        _, longest = parser.parse(pattern.pattern, pattern.flags).getwidth()
        return min(int(longest), MAX_REACH)
    except Exception:
        return MAX_REACH


async def finditer(
    pattern: re.Pattern[str], text: str, *, window: int = WINDOW
) -> AsyncIterator[re.Match[str]]:
    """The matches ``pattern.finditer(text)`` gives, found a window at a time."""
    async for found in batches(pattern, text, window=window):
        for match in found:
            yield match


async def batches(
    pattern: re.Pattern[str], text: str, *, window: int = WINDOW
) -> AsyncIterator[list[re.Match[str]]]:
    """``finditer``'s matches, one list per window: a text with a match every few
    characters costs one turn of the generator per window, not per match."""
    size = len(text)
    overlap = reach(pattern) + _LOOKAROUND
    start = 0
    while start < size:
        if start:
            await asyncio.sleep(0)
        chunk_end = min(start + window, size)
        end = min(chunk_end + overlap, size)
        found: list[re.Match[str]] = []
        for match in pattern.finditer(text, start, end):
            if match.start() >= chunk_end:
                break
            whole: re.Match[str] | None = match
            if end < size and match.end() + _LOOKAROUND > end:
                # Cut short by the window, or only a match because the window
                # ends there (a lookahead or ``$``): match again with room.
                whole = await _regrown(pattern, text, match.start(), end)
            if whole is not None:
                found.append(whole)
        yield found
        start = chunk_end


async def search(
    pattern: re.Pattern[str], text: str, *, window: int = WINDOW
) -> re.Match[str] | None:
    """The first match in ``text``, found a window at a time."""
    if len(text) <= window:
        # One window: the same match, without the generator (which, like
        # ``finditer``, takes no empty match at the very end).
        match = pattern.search(text)
        return match if match is not None and match.start() < len(text) else None
    async for match in finditer(pattern, text, window=window):
        return match
    return None


async def _regrown(pattern: re.Pattern[str], text: str, at: int, end: int) -> re.Match[str] | None:
    size = len(text)
    while True:
        end = min(size, at + 2 * (end - at))
        match = pattern.match(text, at, end)
        if end == size or match is None or match.end() + _LOOKAROUND <= end:
            return match
        await asyncio.sleep(0)
