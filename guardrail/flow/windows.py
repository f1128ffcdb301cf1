"""Gathering a streamed answer's units into windows, counted in the text the judges match.

Pure: no I/O. Sizes are counted in normalised characters (``normalize``:
invisible characters removed, whitespace runs folded), so padding a secret with
zero-width or blank runs neither splits it across more windows nor pushes it
out of a window's context.

Each channel of text (a choice's content, a tool call's arguments, the SSE
lines) is screened with its own last ``overlap_chars`` characters before the new
text: a match no longer than that is always seen whole by one window. That
context is stored squeezed (``_Channel``), so text that reads as little but
weighs a lot is not repeated, megabytes at a time, in front of every window.

In hold-back mode a window that passed releases its units except those that
carry the last ``overlap_chars`` characters of a channel still writing: no
later text can complete a match inside what was released, so a match no longer
than ``overlap_chars`` is flagged before any character of it reaches the client.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from guardrail.flow.framing import Unit
from guardrail.judges.normalize import normalize, squeeze, tag_count, without_tags


@dataclass(frozen=True, slots=True)
class Window:
    """Text to screen, and the units a pass releases (in order)."""

    text: str
    release: tuple[Unit, ...]


@dataclass(slots=True)
class _Entry:
    unit: Unit
    counts: tuple[int, ...]  # normalised length of each of the unit's flows
    side: tuple[str, ...]  # its side values not seen before in this stream


# A piece of context longer than this many characters per character it reads
# as (tags included) is mostly blank: it is stored squeezed.
_SPARSE = 8
_PRIME_CHARS = 1024  # text taken as context before a stream is remembered in parts this long


@dataclass(slots=True)
class _Channel:
    """A channel's screened text that the next window repeats: its context.

    Two guarantees, each in its own count. The joined reading (tags and other
    invisibles read as nothing) keeps at least ``keep`` characters, whole
    pieces. Tag characters, which only the spaced reading reads, are kept in
    the shortest end that the spaced reading reads as ``keep`` (``near``);
    before it (``far``) they are dropped, which leaves the joined reading
    unchanged. Blank
    runs are squeezed (``normalize.squeeze``): the context reads the same and
    weighs at most a few bytes per character it reads, whatever it was sent as.
    """

    far: deque[tuple[str, int]] = field(default_factory=deque)  # (text, joined count)
    near: deque[tuple[str, int, int]] = field(default_factory=deque)  # (text, joined, wide)
    size: int = 0  # joined characters in far and near
    wide: int = 0  # characters of near as the widest reading reads them (tags included)
    last_at: int = 0  # the stream's count when it last wrote

    def texts(self) -> list[str]:
        """The context, in order."""
        return [text for text, _ in self.far] + [text for text, _, _ in self.near]

    def remember(self, piece: str, n: int, keep: int) -> None:
        """Add a screened piece that reads as ``n`` characters joined."""
        if not piece:
            return
        # Tags read in the spaced reading only, where a run of tag spaces is one space:
        # a piece with tags counts as that reading reads it.
        wide = max(n, len(normalize(piece, spaced=True))) if tag_count(piece) else n
        if len(piece) > _SPARSE * (wide + 1):
            piece = squeeze(piece)
        if wide == 0 and self.near and self.near[-1][2] == 0:
            # Blank after blank: one run, read as one word break at most.
            piece = squeeze(self.near.pop()[0] + piece)
        self.near.append((piece, n, wide))
        self.size += n
        self.wide += wide
        while self.near and self.wide - self.near[0][2] >= keep:
            # Too far back for a match of ``keep`` to reach its tags.
            text, joined, was = self.near.popleft()
            self.wide -= was
            self._recede(without_tags(text), joined)
        # (``near`` alone reads as fewer than ``keep`` once the loop above is done.)
        while self.far and self.size - self.far[0][1] >= keep:
            self.size -= self.far.popleft()[1]

    def _recede(self, text: str, n: int) -> None:
        if len(text) > _SPARSE * (n + 1):
            text = squeeze(text)
        if n == 0 and self.far and self.far[-1][1] == 0:
            text = squeeze(self.far.pop()[0] + text)
        if text:
            self.far.append((text, n))


def count(text: str) -> int:
    """How many characters of ``text`` a judge matches on (per piece: never more than joined)."""
    return len(normalize(text)) if text else 0


class Windows:
    """Units in, windows out: ``add`` returns a window when one is full, ``close`` the last."""

    def __init__(
        self, *, window_chars: int, overlap_chars: int, hold_back: bool, max_raw_bytes: int
    ) -> None:
        self._window, self._max_raw = window_chars, max_raw_bytes
        self._overlap = overlap_chars  # the context each window repeats, per channel
        self._hold = overlap_chars if hold_back else 0  # what a pass keeps back
        self._entries: list[_Entry] = []  # held from earlier windows, then the new ones
        self._new = 0  # where the units not yet screened start
        self._fill = 0  # normalised characters not yet screened
        self._raw = 0  # their bytes
        self._total = 0  # normalised characters of the whole stream so far
        self._generated = 0  # of them, the channels' text (not side values: ids, names)
        self._channels: dict[str, _Channel] = {}
        self._seen: set[str] = set()  # side values screened already (ids repeat every event)

    @property
    def empty(self) -> bool:
        """Whether nothing waits for a window."""
        return not self._entries

    @property
    def text_chars(self) -> int:
        """Normalised characters of the channels' text taken so far: what was generated."""
        return self._generated

    def prime(self, channel: str, text: str) -> None:
        """Take ``text`` as what came before the stream on ``channel``: context only,
        never screened or released here, kept as any screened text is."""
        if not text:
            return
        state = self._channels.setdefault(channel, _Channel())
        # In parts, as a stream would send it: tags far back in it are dropped.
        for begin in range(0, len(text), _PRIME_CHARS):
            part = text[begin : begin + _PRIME_CHARS]
            state.remember(part, count(part), self._overlap)

    def add(self, unit: Unit) -> Window | None:
        """Take the next unit; a window once enough text is waiting."""
        counts = tuple(count(text) for _, text in unit.flows)
        fresh = tuple(dict.fromkeys(v for v in unit.side if v and v not in self._seen))
        self._seen.update(fresh)
        self._entries.append(_Entry(unit, counts, fresh))
        self._generated += sum(counts)
        for (channel, _), n in zip(unit.flows, counts, strict=True):
            self._total += n
            self._channels.setdefault(channel, _Channel()).last_at = self._total
        side = sum(count(text) for text in fresh)
        self._fill += sum(counts) + side
        self._total += side
        self._raw += len(unit.raw)
        if self._fill >= self._window or self._raw >= self._max_raw:
            return self._close(final=False)
        if len(self._entries) == 1 and not unit.has_text:
            return Window("", (self._entries.pop().unit,))  # nothing to screen, nothing held
        return None

    def close(self) -> Window:
        """The last window: everything left, released once it passed."""
        return self._close(final=True)

    def _close(self, *, final: bool) -> Window:
        new = self._entries[self._new :]
        text = self._text(new)
        keep = len(self._entries) if final else self._hold_from()
        release = tuple(e.unit for e in self._entries[:keep])
        # Context for the next windows: each channel's last pieces, at least overlap_chars.
        for entry in new:
            for (channel, piece), n in zip(entry.unit.flows, entry.counts, strict=True):
                self._channels[channel].remember(piece, n, self._overlap)
        self._entries = self._entries[keep:] if not final else []
        self._new = len(self._entries)
        self._fill = self._raw = 0
        return Window(text, release)

    def _text(self, new: list[_Entry]) -> str:
        pieces: dict[str, list[str]] = {}
        side: list[str] = []
        for entry in new:
            for channel, piece in entry.unit.flows:
                if channel not in pieces:
                    pieces[channel] = self._channels[channel].texts()
                pieces[channel].append(piece)
            side += entry.side
        texts = ["".join(p) for p in pieces.values()] + side
        return "\n".join(t for t in texts if t)

    def _hold_from(self) -> int:
        """Where the held units start: each channel still writing keeps its last overlap_chars."""
        if not self._hold:
            return len(self._entries)
        writing = {
            channel: self._hold
            for channel, state in self._channels.items()
            if self._total - state.last_at < self._window
        }
        start = len(self._entries)
        for i in range(len(self._entries) - 1, -1, -1):
            if not writing:
                break
            entry = self._entries[i]
            for (channel, _), n in zip(entry.unit.flows, entry.counts, strict=True):
                if channel in writing:
                    start = i
                    writing[channel] -= n
                    if writing[channel] <= 0:
                        del writing[channel]
        return start
