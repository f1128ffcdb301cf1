"""Cutting a streamed response body into units: each is bytes to release and text to screen.

Pure: no I/O. Network reads split events anywhere (mid-line, mid-UTF-8
character); a framer keeps the partial tail until the unit is complete.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Unit:
    """A piece of the response: ``raw`` goes to the client once ``text`` has been screened."""

    raw: bytes
    text: str
    done: bool = False  # the stream's end marker (e.g. ``data: [DONE]``)


class Framer(Protocol):
    """Turns body chunks into units; ``flush`` returns what is left at the end."""

    def feed(self, chunk: bytes) -> list[Unit]: ...

    def flush(self) -> list[Unit]: ...


class SSEFramer:
    """Server-sent events: one unit per event (a block ending in a blank line)."""

    def __init__(self, event_text: Callable[[str], str], *, max_event_bytes: int) -> None:
        self._event_text = event_text
        self._max = max_event_bytes
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[Unit]:
        """Complete events in ``chunk`` plus what was buffered before."""
        self._buffer += chunk
        units = []
        while True:
            end, sep = _event_end(self._buffer)
            if end < 0:
                break
            raw, self._buffer = self._buffer[: end + sep], self._buffer[end + sep :]
            units.append(self._unit(raw))
        if len(self._buffer) > self._max:
            # An enormous event is screened and released in pieces rather than
            # buffered without bound; its text still passes every window.
            raw, self._buffer = self._buffer, b""
            units.append(Unit(raw, raw.decode("utf-8", "replace")))
        return units

    def flush(self) -> list[Unit]:
        """An unterminated last event (the app ended abruptly)."""
        raw, self._buffer = self._buffer, b""
        return [self._unit(raw)] if raw.strip() else []

    def _unit(self, raw: bytes) -> Unit:
        text = raw.decode("utf-8", "replace")
        data = "\n".join(
            line[5:].removeprefix(" ")
            for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
            if line.startswith("data:")
        )
        if data.strip() == "[DONE]":
            return Unit(raw, "", done=True)
        if not data and not any(
            line.strip() and not line.startswith(":") for line in text.splitlines()
        ):
            return Unit(raw, "")  # a comment or keep-alive
        # Text the adapter does not understand is screened as it is, never skipped.
        return Unit(raw, self._event_text(data) if data else text)


class TextFramer:
    """Any other streamed body: each chunk is a unit, decoded as UTF-8 across chunk edges."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def feed(self, chunk: bytes) -> list[Unit]:
        """One unit for the chunk."""
        return [Unit(chunk, self._decoder.decode(chunk))] if chunk else []

    def flush(self) -> list[Unit]:
        """A dangling partial character, if any."""
        tail = self._decoder.decode(b"", final=True)
        return [Unit(b"", tail)] if tail else []


def _event_end(buffer: bytes) -> tuple[int, int]:
    """Where the first event ends and the length of its blank-line separator."""
    found = [(buffer.find(sep), len(sep)) for sep in (b"\n\n", b"\r\n\r\n", b"\r\r")]
    found = [f for f in found if f[0] >= 0]
    return min(found) if found else (-1, 0)
