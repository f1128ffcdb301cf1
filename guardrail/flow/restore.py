"""Putting the original values back into the answer, in place of the placeholders the app got.

Between the guard and the client: every message for the client passes
``Restorer.feed``, after the output screens (they read the placeholders, as
the app wrote them). Only placeholders this request issued for restorable
kinds are replaced (``redaction``): one the app invents, or one the user typed
(numbers the user typed are never issued), stays as it is.

- A complete answer (it has a Content-Length) is held whole; if a placeholder
  is in it, a JSON body is parsed, its strings restored, and re-serialised
  (a value with quotes or newlines is escaped as JSON needs); any other body
  is restored as UTF-8 text. The Content-Length is fixed.
- Server-sent events: each event's ``data`` JSON has its strings restored. A
  string (by its place: ``choices.0.delta.content``) that ends in the first
  characters of a placeholder keeps those characters back and puts them in
  front of the same place's next string: only an unfinished placeholder is
  held, never more. At ``[DONE]`` or the end, what is still held is sent as
  it was, in a copy of the event it was cut from.
- Any other stream: UTF-8 text, the same hold-back across chunks.
- A body with a Content-Encoding is passed as it is: its placeholders reach
  the client unrestored (the safe side: nothing leaks, the answer reads worse).
"""

from __future__ import annotations

import codecs
import copy
import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from starlette.datastructures import Headers
from starlette.types import Message

from guardrail.adapters.answer import AnswerParts
from guardrail.flow.framing import SSEFramer, looks_like_sse

_ANY_FIELD = AnswerParts()  # the framer only cuts events here; their text is read below


class _Text:
    """Restores placeholders in text that arrives in pieces, holding back an unfinished one."""

    def __init__(self, originals: Mapping[str, str]) -> None:
        self._originals = originals
        self._pattern = re.compile(
            "|".join(map(re.escape, sorted(originals, key=len, reverse=True)))
        )
        self._prefixes = frozenset(p[:n] for p in originals for n in range(1, len(p)))
        self._longest = max(map(len, originals))

    def whole(self, text: str) -> str:
        """``text`` with every issued placeholder restored."""
        if "<" not in text:
            return text
        return self._pattern.sub(lambda m: self._originals[m.group()], text)

    def piece(self, carried: str, text: str) -> tuple[str, str]:
        """The restored text to send now, and the unfinished placeholder to hold back."""
        text = carried + text
        held = ""
        start = text.rfind("<", max(0, len(text) - self._longest + 1))
        if start != -1 and text[start:] in self._prefixes:
            text, held = text[:start], text[start:]
        return self.whole(text), held


class Restorer:
    """Sits in front of the client for one request; ``feed`` returns the messages to send."""

    def __init__(self, originals: Mapping[str, str]) -> None:
        self._text = _Text(originals)
        self._mode: str | None = None  # whole, sse, text or pass; decided by the response start
        self._start: Message | None = None
        self._held: list[bytes] = []
        self._sniffed = b""
        self._framer: SSEFramer | None = None
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._carried = ""  # plain text: the unfinished placeholder held back
        self._events = _Events(self._text)

    def feed(self, message: Message) -> list[Message]:
        """One message for the client; the messages to send in its place."""
        if message["type"] == "http.response.start":
            return self._begin(message)
        if message["type"] != "http.response.body" or self._mode == "pass":
            return [message]
        body, more = message.get("body", b""), message.get("more_body", False)
        if self._mode == "whole":
            self._held.append(body)
            return [] if more else self._release_whole()
        return self._stream(body, more)

    def _begin(self, message: Message) -> list[Message]:
        headers = Headers(raw=list(message.get("headers", [])))
        if headers.get("content-encoding", "identity").lower() != "identity":
            self._mode = "pass"
            return [message]
        self._start = message
        if "content-length" in headers:
            self._mode = "whole"
            return []
        self._mode = (
            "sse" if headers.get("content-type", "").startswith("text/event-stream") else None
        )
        return [message]

    def _release_whole(self) -> list[Message]:
        assert self._start is not None
        body = b"".join(self._held)
        restored = _restored_body(self._text, body)
        kept = [(k, v) for k, v in self._start["headers"] if k.lower() != b"content-length"]
        start = {
            **self._start,
            "headers": [*kept, (b"content-length", str(len(restored)).encode())],
        }
        return [start, {"type": "http.response.body", "body": restored}]

    def _stream(self, body: bytes, more: bool) -> list[Message]:
        if self._mode is None:
            self._sniffed += body
            sse = looks_like_sse(self._sniffed, final=not more)
            if sse is None:
                return []
            body, self._sniffed = self._sniffed, b""
            self._mode = "sse" if sse else "text"
        if self._mode == "sse":
            out = self._sse(body, more)
        else:
            text, self._carried = self._text.piece(self._carried, self._decoder.decode(body))
            if not more:
                text += self._carried + self._decoder.decode(b"", final=True)
            out = text.encode()
        return [{"type": "http.response.body", "body": out, "more_body": more}]

    def _sse(self, body: bytes, more: bool) -> bytes:
        if self._framer is None:
            self._framer = SSEFramer(lambda _: _ANY_FIELD, max_event_bytes=1 << 62)
        units = self._framer.feed(body)
        if not more:
            units += self._framer.flush()
        out = b"".join(self._events.restored(unit.raw) for unit in units)
        if not more:
            out += self._events.flush()
        return out


def _restored_body(text: _Text, body: bytes) -> bytes:
    try:
        decoded = body.decode("utf-8")
    except UnicodeDecodeError:
        return body  # not text: no placeholder could be read in it, by us or the client
    if "<" not in decoded and "\\u003c" not in decoded.lower():
        return body
    try:
        data = json.loads(decoded)
    except ValueError:
        return text.whole(decoded).encode()
    restored = _map_strings(data, lambda _, value: text.whole(value))
    return json.dumps(restored, ensure_ascii=False, separators=(",", ":")).encode()


def _map_strings(data: Any, change: Any, path: str = "") -> Any:
    """``data`` with every string value (not key) replaced by ``change(path, value)``."""
    if isinstance(data, str):
        return change(path, data)
    if isinstance(data, dict):
        return {k: _map_strings(v, change, f"{path}.{k}") for k, v in data.items()}
    if isinstance(data, list):
        return [_map_strings(v, change, f"{path}.{i}") for i, v in enumerate(data)]
    return data


_LINE = re.compile(r"\r\n|\r|\n")


class _Events:
    """Server-sent events, one at a time, each with its placeholders restored."""

    def __init__(self, text: _Text) -> None:
        self._text = text
        self._carried: dict[str, str] = {}  # place -> unfinished placeholder held back
        self._cut_from: dict[str, Any] = {}  # place -> the event it was held back from
        self._first: dict[str, str] = {}  # place -> its string in the first event (ids, model)

    def restored(self, raw: bytes) -> bytes:
        """One event (its raw bytes, with its blank line), restored."""
        event = raw.decode("utf-8", "replace")
        lines = [line for line in _LINE.split(event) if line]
        data = [line.partition(":")[2].removeprefix(" ") for line in lines if _is_data(line)]
        if not data:
            return raw
        joined = "\n".join(data)
        if joined.strip() == "[DONE]":
            return self.flush() + raw
        if "<" not in joined and not self._carried:
            return raw
        try:
            parsed = json.loads(joined)
        except ValueError:
            return raw  # the client cannot read it as JSON either: no string to restore
        if not self._first:
            self._first = dict(_places(parsed))
        restored = _map_strings(parsed, lambda place, value: self._piece(place, value, parsed))
        others = [line for line in lines if not _is_data(line)]
        payload = json.dumps(restored, ensure_ascii=False, separators=(",", ":"))
        return "".join(f"{line}\n" for line in [*others, f"data: {payload}"]).encode() + b"\n"

    def _piece(self, place: str, value: str, event: Any) -> str:
        text, held = self._text.piece(self._carried.pop(place, ""), value)
        if held:
            self._carried[place] = held
            self._cut_from[place] = event
        return text

    def flush(self) -> bytes:
        """What is still held back, sent as written, each in a copy of its event."""
        out = b""
        for place, held in self._carried.items():
            event = self._cut_from[place]
            copied = _map_strings(
                copy.deepcopy(event),
                lambda p, v, place=place, held=held: (
                    held if p == place else v if self._first.get(p) == v else ""
                ),
            )
            payload = json.dumps(copied, ensure_ascii=False, separators=(",", ":"))
            out += f"data: {payload}\n\n".encode()
        self._carried.clear()
        return out


def _is_data(line: str) -> bool:
    return line == "data" or line.startswith("data:")


def _places(data: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(data, str):
        yield path, data
    elif isinstance(data, dict):
        for k, v in data.items():
            yield from _places(v, f"{path}.{k}")
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _places(v, f"{path}.{i}")
