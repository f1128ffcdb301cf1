"""Rewriting the strings of an answer on its way to the client, complete or streamed.

The machinery that restoring placeholders (``restore``) and redacting an
answer (``answer_redaction``) share. What a string becomes is the caller's
``Rewrite``: given a string (with what it held back of the same place
before), it returns the text to send now and the tail to hold back, which
goes in front of the same place's next string.

- A complete answer (it has a Content-Length) is held whole; a JSON body has
  its strings rewritten and is re-serialised (a value with quotes or newlines
  is escaped as JSON needs); any other body is rewritten as UTF-8 text. The
  Content-Length is fixed.
- Server-sent events: each event's ``data`` JSON has its strings rewritten;
  a string's place is its path (``choices.0.delta.content``), so a tail held
  back from one event goes in front of the same place's string in the next.
  At ``[DONE]`` or the end, what is still held is sent in a copy of the event
  it was cut from (its other strings emptied, except those every event repeats).
- Any other stream: UTF-8 text, the same holding back across chunks.
- A body with a Content-Encoding is passed as it is (the caller's reading
  decides what that means: restoring leaves placeholders, the safe side).
"""

from __future__ import annotations

import codecs
import copy
import json
import re
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from starlette.datastructures import Headers
from starlette.types import Message

from guardrail.adapters.answer import AnswerParts
from guardrail.adapters.base import Adapter
from guardrail.flow.framing import SSEFramer, looks_like_sse

# (place, text, final) -> (text to send, tail held back). ``final``: nothing follows.
Rewrite = Callable[[str, str, bool], Awaitable[tuple[str, str]]]
# Whether a decoded answer may hold anything to rewrite (a cheap test: most do not).
Relevant = Callable[[str], bool]
# The strings of one event's data that a client joins across events (the adapter's
# flows: ``delta.content``, tool call arguments); only they hold a tail back.
FlowTexts = Callable[[str], frozenset[str]]

_ANY_FIELD = AnswerParts()  # the framer only cuts events here; their strings are read below
_LINE = re.compile(r"\r\n|\r|\n")
TEXT_PLACE = "text"


class Rewriter:
    """Sits in front of the client for one answer; ``feed`` returns the messages to send."""

    def __init__(self, rewrite: Rewrite, relevant: Relevant, flow_texts: FlowTexts) -> None:
        self._rewrite, self._relevant, self._flow_texts = rewrite, relevant, flow_texts
        self._flow_places: set[str] = set()  # places whose strings were flows
        self._mode: str | None = None  # whole, sse, text or pass; decided by the response start
        self._start: Message | None = None
        self._held: list[bytes] = []
        self._sniffed = b""
        self._framer: SSEFramer | None = None
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._carried: dict[str, str] = {}  # place -> tail held back
        self._cut_from: dict[str, Any] = {}  # place -> the event its tail was held back from
        self._first: dict[str, str] | None = None  # the first event's strings (ids, model)

    async def feed(self, message: Message) -> list[Message]:
        """One message for the client; the messages to send in its place."""
        if message["type"] == "http.response.start":
            return self._begin(message)
        if message["type"] != "http.response.body" or self._mode == "pass":
            return [message]
        body, more = message.get("body", b""), message.get("more_body", False)
        if self._mode == "whole":
            self._held.append(body)
            return [] if more else await self._release_whole()
        return await self._stream(body, more)

    def _begin(self, message: Message) -> list[Message]:
        headers = Headers(raw=list(message.get("headers", [])))
        if headers.get("content-encoding", "identity").lower() != "identity":
            self._mode = "pass"
            return [message]
        self._start = message
        if "content-length" in headers:
            self._mode = "whole"
            return []
        sse = headers.get("content-type", "").startswith("text/event-stream")
        self._mode = "sse" if sse else None
        return [message]

    async def _release_whole(self) -> list[Message]:
        assert self._start is not None
        body = await self._whole_body(b"".join(self._held))
        kept = [(k, v) for k, v in self._start["headers"] if k.lower() != b"content-length"]
        length = (b"content-length", str(len(body)).encode())
        return [
            {**self._start, "headers": [*kept, length]},
            {"type": "http.response.body", "body": body},
        ]

    async def _whole_body(self, body: bytes) -> bytes:
        try:
            decoded = body.decode("utf-8")
        except UnicodeDecodeError:
            return body  # not text: nothing in it reads as a value, to us or the client
        if not self._relevant(decoded):
            return body
        try:
            data = json.loads(decoded)
        except ValueError:
            return (await self._rewrite(TEXT_PLACE, decoded, True))[0].encode()
        rewritten = await _map_strings(data, lambda place, v: self._whole_string(place, v))
        return json.dumps(rewritten, ensure_ascii=False, separators=(",", ":")).encode()

    async def _whole_string(self, place: str, value: str) -> str:
        return (await self._rewrite(place, value, True))[0]

    async def _stream(self, body: bytes, more: bool) -> list[Message]:
        if self._mode is None:
            self._sniffed += body
            sse = looks_like_sse(self._sniffed, final=not more)
            if sse is None:
                return []
            body, self._sniffed = self._sniffed, b""
            self._mode = "sse" if sse else "text"
        if self._mode == "sse":
            out = await self._sse(body, more)
        else:
            text = self._carried.pop(TEXT_PLACE, "") + self._decoder.decode(body, final=not more)
            sent, held = await self._rewrite(TEXT_PLACE, text, not more)
            if held:
                self._carried[TEXT_PLACE] = held
            out = sent.encode()
        return [{"type": "http.response.body", "body": out, "more_body": more}]

    async def _sse(self, body: bytes, more: bool) -> bytes:
        if self._framer is None:
            self._framer = SSEFramer(_any_field, max_event_bytes=1 << 62)
        units = self._framer.feed(body)
        if not more:
            units += self._framer.flush()
        out = b"".join([await self._event(unit.raw) for unit in units])
        if not more:
            out += await self._flush()
        return out

    async def _event(self, raw: bytes) -> bytes:
        """One event (its raw bytes, with its blank line), rewritten."""
        event = raw.decode("utf-8", "replace")
        lines = [line for line in _LINE.split(event) if line]
        data = [line.partition(":")[2].removeprefix(" ") for line in lines if _is_data(line)]
        if not data:
            return raw
        joined = "\n".join(data)
        if joined.strip() == "[DONE]":
            return await self._flush() + raw
        if not self._carried and not self._relevant(joined):
            return raw
        try:
            parsed = json.loads(joined)
        except ValueError:
            return raw  # the client cannot read it as JSON either: no string to rewrite
        if self._first is None:
            self._first = dict(_places(parsed))
        flows = self._flow_texts(joined)
        rewritten = await _map_strings(parsed, lambda p, v: self._piece(p, v, parsed, flows))
        others = [line for line in lines if not _is_data(line)]
        payload = json.dumps(rewritten, ensure_ascii=False, separators=(",", ":"))
        return "".join(f"{line}\n" for line in [*others, f"data: {payload}"]).encode() + b"\n"

    async def _piece(self, place: str, value: str, event: Any, flows: frozenset[str]) -> str:
        # An id or a model name repeats in every event: rewritten whole, never joined.
        flow = value in flows
        if flow:
            self._flow_places.add(place)
        text = self._carried.pop(place, "") + value
        sent, held = await self._rewrite(place, text, not flow)
        if held:
            self._carried[place] = held
            self._cut_from[place] = event
        return sent

    async def _flush(self) -> bytes:
        """What is still held back, rewritten as final, each in a copy of its event."""
        out = b""
        first = self._first or {}
        for place, held in list(self._carried.items()):
            sent, _ = await self._rewrite(place, held, True)

            async def copied(p: str, v: str, place: str = place, sent: str = sent) -> str:
                if p == place:
                    return sent
                return v if first.get(p) == v and p not in self._flow_places else ""

            event = await _map_strings(copy.deepcopy(self._cut_from[place]), copied)
            payload = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
            out += f"data: {payload}\n\n".encode()
        self._carried.clear()
        return out


def flow_texts(adapter: Adapter) -> FlowTexts:
    """What the adapter reads as flows in an event's data."""

    def texts(data: str) -> frozenset[str]:
        parts = adapter.event_parts(data)
        return frozenset(text for _, text in parts.flows) if parts is not None else frozenset()

    return texts


async def _map_strings(
    data: Any, change: Callable[[str, str], Awaitable[str]], path: str = ""
) -> Any:
    """``data`` with every string value (not key) replaced by ``await change(path, value)``."""
    if isinstance(data, str):
        return await change(path, data)
    if isinstance(data, dict):
        return {k: await _map_strings(v, change, f"{path}.{k}") for k, v in data.items()}
    if isinstance(data, list):
        return [await _map_strings(v, change, f"{path}.{i}") for i, v in enumerate(data)]
    return data


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


def _any_field(data: str, event: str | None = None) -> AnswerParts:
    """Every event is readable here: the rewriter finds its strings itself."""
    return _ANY_FIELD
