"""A request's pieces cut into passages, and which passages each screen must see.

Pure but for the event-loop turns normalising takes. The pieces, in body order,
make one text; ``flow.windows.Windows`` (the output stage's windowing) cuts it
into windows counted in normalised characters, each repeating the last
``overlap`` characters before it. So a long piece is several windows screened
side by side, and many small pieces share one.

Each piece has a key: a hash of its exact text and of all the text before it
in the request (a chain: each key extends the one before). A screen that
passed a piece under that key need not see it again; a window is screened
when it holds a piece the screen has not passed. A client resending its
conversation sends the same text in the same order, so every old piece is a
hit; anything else is new, because two texts that differ in any character (an
invisible one that a judge reads as a word break, a case a secret check
tells apart) can get different verdicts, and a piece after different text may
complete or be completed by it.

Keys come first (``key``), windows second (``lay_out``): once the verdict
cache said which pieces are new, only the text from the first new piece on is
cut into windows, after the context before it. Keys need no normalising, so
what a turn costs grows with its new text, not with the conversation.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from guardrail.adapters.base import Piece
from guardrail.flow.framing import Unit
from guardrail.flow.windows import Windows, count
from guardrail.judges.normalize import CHUNK
from guardrail.judges.prompt import Framed

# Raw characters per unit fed to the windowing: a long piece is cut at most this
# far past a window's end.
UNIT_CHARS = 1024
_SEPARATOR = "\n\n"  # between pieces, as in the joined request text
_CHANNEL = "request"  # the one channel of text the windowing keeps context for


@dataclass(frozen=True, slots=True)
class Cut:
    """One window of the request: its context, then its units (piece index, raw text)."""

    context: str
    units: tuple[tuple[int, str], ...]

    @property
    def pieces(self) -> frozenset[int]:
        """The pieces it holds text of."""
        return frozenset(i for i, _ in self.units)

    def passage(self, new: Sequence[bool], context_chars: int) -> Framed:
        """The text a judge screens: new pieces marked, after ``context_chars`` of context.

        Text before the first new piece was screened before, with its own context:
        only its last ``context_chars`` (normalised, whole units) are repeated, so
        what a judge reads per turn stays flat however long the window's history.
        Old text after a new piece is kept whole: it may complete what the new began.
        """
        first = next(k for k, (i, _) in enumerate(self.units) if new[i])
        start, seen = first, 0
        while start > 0 and seen < context_chars:
            start -= 1
            seen += count(self.units[start][1])
        parts: list[tuple[str, bool]] = []
        if seen < context_chars and self.context:
            parts.append((self.context, False))
        for i, text in self.units[start:]:
            if parts and parts[-1][1] == new[i]:
                parts[-1] = (parts[-1][0] + text, new[i])
            else:
                parts.append((text, new[i]))
        return Framed(tuple(parts))


@dataclass(frozen=True, slots=True)
class Keyed:
    """A request's pieces, each with its key; ``overlap_chars``: the windows' context."""

    pieces: tuple[Piece, ...]
    keys: tuple[str, ...]
    overlap_chars: int


@dataclass(frozen=True, slots=True)
class Layout:
    """A request cut for screening: each piece's key, and the windows."""

    pieces: tuple[Piece, ...]
    keys: tuple[str, ...]
    cuts: tuple[Cut, ...]
    windows_of: tuple[tuple[int, ...], ...]  # for each piece, the cuts holding its text


async def key(pieces: Sequence[Piece], *, overlap_chars: int) -> Keyed:
    """Each piece's key: a hash of the request's text up to and including it."""
    keys: list[str] = []
    chain = hashlib.sha256()
    unyielded = 0
    for piece in pieces:
        text = piece.text.encode("utf-8", "surrogatepass")
        # Length first: ["ab", "c"] and ["a", "bc"] are other requests.
        chain.update(len(text).to_bytes(8, "big") + text)
        keys.append(chain.copy().hexdigest())
        unyielded += len(text)
        if unyielded >= 1 << 20:
            await asyncio.sleep(0)  # a 4 MiB body: other requests get their turn
            unyielded = 0
    return Keyed(tuple(pieces), tuple(keys), overlap_chars)


async def lay_out(keyed: Keyed, *, window_chars: int, max_raw_bytes: int, start: int = 0) -> Layout:
    """Cut the pieces from ``start`` on into overlapping windows, after the context before it.

    Pieces before ``start`` are in no window: every screen knows them already.
    """
    windows = Windows(
        window_chars=window_chars,
        overlap_chars=keyed.overlap_chars,
        hold_back=False,
        max_raw_bytes=max_raw_bytes,
    )
    pieces = keyed.pieces
    if start:
        # The text before ``start`` is every window's context until new text has
        # replaced it, however little a window's own text reads as (blank runs).
        windows.prime(_CHANNEL, _text_before(pieces, start, keyed.overlap_chars))
    cuts: list[Cut] = []
    fed: deque[tuple[int, str]] = deque()  # units in the window being filled
    unyielded = 0  # characters worked on since the event loop last had a turn
    for index in range(start, len(pieces)):
        piece = pieces[index]
        text = piece.text if index == len(pieces) - 1 else piece.text + _SEPARATOR
        for begin in range(0, len(text), UNIT_CHARS):
            chunk = text[begin : begin + UNIT_CHARS]
            fed.append((index, chunk))
            unit = Unit(chunk.encode("utf-8", "surrogatepass"), ((_CHANNEL, chunk),))
            window = windows.add(unit)
            if window is not None:
                cuts.append(_cut(window.text, fed, len(window.release)))
            unyielded += len(chunk)
            if unyielded >= CHUNK:
                # Ten thousand messages or a 1 MiB one: other requests get their turn.
                await asyncio.sleep(0)
                unyielded = 0
    if not windows.empty:
        window = windows.close()
        cuts.append(_cut(window.text, fed, len(window.release)))
    windows_of: list[list[int]] = [[] for _ in pieces]
    for c, cut in enumerate(cuts):
        for i in cut.pieces:
            windows_of[i].append(c)
    return Layout(pieces, keyed.keys, tuple(cuts), tuple(map(tuple, windows_of)))


def _text_before(pieces: Sequence[Piece], start: int, chars: int) -> str:
    """The shortest end of the text before piece ``start`` that reads as ``chars``
    normalised characters (or all of it), without reading more than it needs."""
    ends: list[str] = []
    have = 0
    for index in range(start - 1, -1, -1):
        text = pieces[index].text + _SEPARATOR
        take = min(len(text), chars)
        while True:
            end = text[len(text) - take :]
            n = count(end)
            if have + n >= chars or take == len(text):
                break
            take = min(len(text), 2 * take)  # invisible or blank runs read shorter
        ends.append(end)
        have += n
        if have >= chars:
            break
    return "".join(reversed(ends))


def _cut(text: str, fed: deque[tuple[int, str]], count: int) -> Cut:
    units = tuple(fed.popleft() for _ in range(count))
    own = sum(len(chunk) for _, chunk in units)
    # Windows puts the channel's context first, then the units' text.
    return Cut(text[: len(text) - own], units)


def history_before(pieces: Sequence[Piece]) -> int:
    """The index of the last user message: what ``history: latest_only`` calls history is before."""
    users = [p.message for p in pieces if p.role == "user" and p.message is not None]
    return max(users, default=0)
