"""Cutting a streamed response body into units: each is bytes to release and text to screen.

Pure: no I/O. Network reads split events anywhere (mid-line, mid-UTF-8
character, between a ``\\r`` and its ``\\n``); a framer keeps the partial tail
until the unit is complete.

Server-sent events are read as the spec (and so every client) reads them:
lines end in ``\\r\\n``, ``\\n`` or ``\\r``, in any mixture; an empty line ends
an event; a field is split at its first colon. Whether a body is SSE is decided
by its content (``looks_like_sse``), not by its headers: a client parses the
bytes it gets whatever the ``Content-Type`` says.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from guardrail.adapters.answer import AnswerParts, Flow, Progress

# Text outside ``data:`` (comments, ``event:``/``id:``, unknown fields) is read
# as lines by raw clients and logs: one channel, so a value split over lines is
# still screened whole.
SSE_LINES = "sse"
TEXT = "text"

_LINE_END = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"
_FIELDS = (b"data", b"event", b"id", b"retry", b"")  # b"": a comment line starts with ":"


@dataclass(frozen=True, slots=True)
class Unit:
    """A piece of the response: ``raw`` goes to the client once its text has been screened."""

    raw: bytes
    flows: tuple[Flow, ...] = ()
    side: tuple[str, ...] = ()
    done: bool = False  # the stream's end marker (``data: [DONE]``)
    unreadable: bool = False  # we cannot read it as the client will: the fail mode decides
    ident: str | None = None
    model: str | None = None
    progress: Progress | None = None
    step: str | None = None  # where the event moves the stream (see ``AnswerParts.step``)

    @property
    def has_text(self) -> bool:
        """Whether there is anything to screen in it."""
        return any(text for _, text in self.flows) or any(self.side)


# An event's data and its ``event:`` name (None: none given) -> its parts, None: unreadable.
ParseEvent = Callable[[str, str | None], AnswerParts | None]


class Framer(Protocol):
    """Turns body chunks into units; ``flush`` returns what is left at the end."""

    def feed(self, chunk: bytes) -> list[Unit]: ...

    def flush(self) -> list[Unit]: ...


def looks_like_sse(prefix: bytes, *, final: bool = False) -> bool | None:
    """Whether a body starting with ``prefix`` is server-sent events; None: too short to say."""
    body = prefix.removeprefix(_BOM).lstrip(b"\r\n")
    if not body:
        return None if not final else False
    for field in _FIELDS:
        name = field + b":"
        if body.startswith(name):
            return True
        if name.startswith(body) and not final:
            return None  # "dat" may still become "data:"
    # A line that is only a field name ("data" then a line end) is a field too.
    line = _LINE_END.split(body, maxsplit=1)
    return len(line) > 1 and line[0] in _FIELDS[:-1]


class SSEFramer:
    """Server-sent events: one unit per event (its lines up to an empty line)."""

    def __init__(
        self,
        parse_data: ParseEvent,
        *,
        max_event_bytes: int,
        event_names: frozenset[str] = frozenset(),
    ) -> None:
        self._parse = parse_data
        self._names = event_names  # the API's own event names: known values, not text
        self._max = max_event_bytes
        self._buffer = b""
        self._scan = 0  # where the next unread line starts in the buffer
        self._lines: list[str] = []
        self._first = True
        self._skipping = False  # inside an event too large to read: dropped until its end

    def feed(self, chunk: bytes) -> list[Unit]:
        """Complete events in ``chunk`` plus what was buffered before."""
        self._buffer += chunk
        if self._first and len(self._buffer) >= len(_BOM):
            self._first = False
            if self._buffer.startswith(_BOM):
                # Clients ignore one leading BOM; so do we (it is not part of a field name).
                self._buffer, self._scan = self._buffer[len(_BOM) :], 0
        units = self._read_lines(final=False)
        if len(self._buffer) > self._max:
            # Too large to hold: the part we have is released as unreadable, and
            # the rest of the event is unreadable too, until its empty line.
            units.append(Unit(self._buffer, unreadable=True))
            self._buffer, self._scan, self._lines = b"", 0, []
            self._skipping = True
        return units

    def flush(self) -> list[Unit]:
        """An unterminated last event (the app ended without its empty line)."""
        units = self._read_lines(final=True)
        if self._scan < len(self._buffer):
            self._lines.append(self._decode(self._buffer[self._scan :]))
        if self._buffer:
            units.append(self._unit(self._buffer))
        self._buffer, self._scan, self._lines = b"", 0, []
        return units

    def _read_lines(self, *, final: bool) -> list[Unit]:
        units: list[Unit] = []
        while (end := _LINE_END.search(self._buffer, self._scan)) is not None:
            if end.group() == b"\r" and end.end() == len(self._buffer) and not final:
                break  # a "\r" at the end may be the first half of "\r\n"
            line = self._buffer[self._scan : end.start()]
            self._scan = end.end()
            if line:
                self._lines.append(self._decode(line))
                continue
            raw, self._buffer, self._scan = self._buffer[: end.end()], self._buffer[end.end() :], 0
            if self._skipping:
                units.append(Unit(raw, unreadable=True))
                self._skipping = False
            else:
                units.append(self._unit(raw))
            self._lines = []
        return units

    def _unit(self, raw: bytes) -> Unit:
        if self._skipping:
            return Unit(raw, unreadable=True)
        data: list[str] = []
        lines: list[Flow] = []
        event: str | None = None  # the last event: line names the event, as clients read it
        for line in self._lines:
            field, colon, value = line.partition(":")
            if field == "event":
                event = value.removeprefix(" ")
                if event in self._names:
                    continue
            if colon and field == "data":
                data.append(value.removeprefix(" "))
            elif field == "data":  # "data" alone: an empty data line
                data.append("")
            elif field == "retry" and value.strip().isdigit():
                continue  # a number of milliseconds, not text
            else:
                lines.append((SSE_LINES, line + "\n"))
        if not data:
            return Unit(raw, flows=tuple(lines))
        joined = "\n".join(data)
        if joined.strip() == "[DONE]":
            return Unit(raw, flows=tuple(lines), done=True)
        parts = self._parse(joined, event)
        if parts is None:
            return Unit(raw, unreadable=True)
        flows = tuple(lines) + parts.flows
        return Unit(
            raw,
            flows,
            parts.side,
            ident=parts.ident,
            model=parts.model,
            progress=parts.progress,
            step=parts.step,
        )

    @staticmethod
    def _decode(line: bytes) -> str:
        # Lines end at ASCII bytes, so a UTF-8 character is never split here.
        return line.decode("utf-8", "replace")


class LinesFramer:
    """JSON lines (NDJSON): one unit per line, its value parsed as one event.

    A line ends at ``\n`` (a ``\r`` before it is part of the line ending, as
    JSON-lines readers strip it); a blank line carries nothing.
    """

    def __init__(self, parse_line: ParseEvent, *, max_event_bytes: int) -> None:
        self._parse = parse_line
        self._max = max_event_bytes
        self._buffer = b""
        self._skipping = False  # inside a line too large to read: dropped until its end

    def feed(self, chunk: bytes) -> list[Unit]:
        """Complete lines in ``chunk`` plus what was buffered before."""
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        units = [self._unit(line + b"\n") for line in lines]
        if len(self._buffer) > self._max:
            units.append(Unit(self._buffer, unreadable=True))
            self._buffer, self._skipping = b"", True
        return units

    def flush(self) -> list[Unit]:
        """An unterminated last line."""
        tail, self._buffer = self._buffer, b""
        return [self._unit(tail)] if tail else []

    def _unit(self, raw: bytes) -> Unit:
        if self._skipping:
            self._skipping = not raw.endswith(b"\n")
            return Unit(raw, unreadable=True)
        line = raw.rstrip(b"\r\n")
        if not line.strip():
            return Unit(raw)
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return Unit(raw, unreadable=True)  # the client's decoder may fail or replace
        parts = self._parse(text, None)
        if parts is None:
            return Unit(raw, unreadable=True)
        return Unit(raw, parts.flows, parts.side, ident=parts.ident, model=parts.model)


class TextFramer:
    """Any other streamed body: each chunk is a unit, decoded as UTF-8 across chunk edges."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def feed(self, chunk: bytes) -> list[Unit]:
        """One unit for the chunk."""
        return [Unit(chunk, ((TEXT, self._decoder.decode(chunk)),))] if chunk else []

    def flush(self) -> list[Unit]:
        """A dangling partial character, if any."""
        tail = self._decoder.decode(b"", final=True)
        return [Unit(b"", ((TEXT, tail),))] if tail else []


def whole_parts(
    body: bytes, parse_data: ParseEvent, event_names: frozenset[str] = frozenset()
) -> list[Unit]:
    """A complete SSE body, cut into its events."""
    framer = SSEFramer(parse_data, max_event_bytes=len(body) + 1, event_names=event_names)
    return framer.feed(body) + framer.flush()
