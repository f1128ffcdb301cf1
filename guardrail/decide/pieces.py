"""A request's pieces cut into passages, and which passages each screen must see.

Pure but for the event-loop turns normalising takes. The pieces, in body order,
make one text; ``flow.windows.Windows`` (the output stage's windowing) cuts it
into windows counted in normalised characters, each repeating the last
``overlap`` characters before it. So a long piece is several windows screened
side by side, and many small pieces share one.

Each piece has a key: a hash of its reading (invisible characters removed,
lookalikes mapped, case kept: a judge may read case) and of the ``overlap``
characters of that reading before it. A screen that passed a piece under that
key need not see it again; a window is screened when it holds a piece the screen
has not passed. Because the key holds the context too, a piece that moved
next to new text is new again: an attack split across two pieces is always
seen whole by one window (if no longer than ``overlap``), however the pieces
were sent before.

Keys come first (``key``), windows second (``lay_out``): once the verdict
cache said which pieces are new, only the text from the first new piece on is
cut into windows, after the context before it. A conversation's history is
read once per process (``_NORMAL`` keeps each piece's reading), so what a turn
costs grows with its new text, not with the conversation.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass

from guardrail.adapters.base import Piece
from guardrail.flow.framing import Unit
from guardrail.flow.windows import Windows, count
from guardrail.judges.normalize import CHUNK, readings
from guardrail.judges.prompt import Framed

# Raw characters per unit fed to the windowing: a long piece is cut at most this
# far past a window's end.
UNIT_CHARS = 1024
_SEPARATOR = "\n\n"  # between pieces, as in the joined request text
_CHANNEL = "request"  # the one channel of text the windowing keeps context for
# Invisible characters a model can read as data: tag characters (ASCII spelled
# invisibly) and variation selectors (bytes hidden after any character). The
# reading a key is made of drops them, so the key keeps them as they stand:
# "hello" passed must not pass "hello" followed by a hidden instruction.
_CARRIERS = re.compile("[\ufe00-\ufe0f\U000e0000-\U000e0fff]+")


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
    """A request's pieces, each with its key (made with ``overlap_chars`` of context)."""

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


class _Readings:
    """Each recent piece's reading (normalised text, hidden carriers), by its raw text.

    A chat client resends the whole conversation every turn: without this, each
    turn would normalise all of it again. Bounded in entries and in characters
    (a reading can be longer than its text); least recently used goes first.
    """

    def __init__(self, entries: int, chars: int) -> None:
        self._entries, self._chars = entries, chars
        self._held: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._size = 0

    async def of(self, text: str) -> tuple[str, str]:
        if (reading := self._held.get(text)) is not None:
            self._held.move_to_end(text)
            return reading
        # Case kept: a judge may tell "AKIA..." (a key) from "akia..." (none).
        reading = ((await readings(text, fold=False))[0], "".join(_CARRIERS.findall(text)))
        if text in self._held:  # another request read it meanwhile
            return reading
        self._held[text] = reading
        self._size += _chars(text, reading)
        while len(self._held) > self._entries or (self._size > self._chars and self._held):
            old, old_reading = self._held.popitem(last=False)
            self._size -= _chars(old, old_reading)
        return reading


def _chars(text: str, reading: tuple[str, str]) -> int:
    return len(text) + len(reading[0]) + len(reading[1])


_NORMAL = _Readings(entries=1 << 16, chars=1 << 24)


async def key(pieces: Sequence[Piece], *, overlap_chars: int) -> Keyed:
    """Each piece's key: its reading and the ``overlap_chars`` normalised characters before it."""
    keys: list[str] = []
    tail = ""  # the last overlap_chars of the normalised text so far
    for piece in pieces:
        normal, hidden = await _NORMAL.of(piece.text)
        digest = hashlib.sha256(f"{tail}\x1f{normal}\x1f{hidden}".encode("utf-8", "surrogatepass"))
        keys.append(digest.hexdigest())
        tail = f"{tail} {normal}{hidden}"[-overlap_chars:] if overlap_chars else ""
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
