"""Generic JSON: an in-house chat app's own request and answer shapes, named by JSON paths.

The policy names where the app's text is (``json_paths``); the rest follows
the security rule, not the names:

- **Requests**: every string and every object key anywhere in the body is
  text, the named fields and every field the policy did not name alike; only
  what the policy lists as ``not_text`` is left out, and keys that are the
  app's own field names (those its paths spell out). A key that differs from
  one of them only by case or Unicode form is refused (400): an app that folds
  keys would read a field we did not.
- **Answers**: a complete answer is screened whole. In a stream (SSE, or JSON
  lines) the strings the policy names per event are joined across events, by
  place, as the app's client joins them; every other string of an event is
  screened on its own.
- **Refusals and errors** are the policy's JSON templates, with ``{message}``
  (and ``{code}`` in errors) replaced in every string.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from guardrail.adapters.answer import NOT_JSON, AnswerParts, Flow, Progress, read_answer
from guardrail.adapters.base import (
    BadRequest,
    ChatRequest,
    PartsAsText,
    Reply,
    fold_key,
    read_json,
    stream_flag,
)
from guardrail.adapters.json_paths import JsonPath, Place, channel, find, places

Framing = Literal["sse", "ndjson"]
_JSON = [(b"content-type", b"application/json")]
_STREAM_TYPES = {
    "sse": [(b"content-type", b"text/event-stream; charset=utf-8")],
    "ndjson": [(b"content-type", b"application/x-ndjson")],
}


@dataclass(frozen=True, slots=True)
class JsonShape:
    """Where one app's JSON carries text, and how it refuses (built from the policy)."""

    text: tuple[JsonPath, ...] = ()  # the request's text fields (all other strings are too)
    not_text: tuple[JsonPath, ...] = ()  # request fields that are not language
    stream_flag: JsonPath | None = None  # the request's boolean that asks for a stream
    answer_text: tuple[JsonPath, ...] = ()  # the answer's text fields
    framing: Framing = "sse"  # how a streamed answer is cut into events
    event_text: tuple[JsonPath, ...] = ()  # the text fields of one streamed event
    refusal: Any = field(default_factory=lambda: {"message": "{message}", "refused": True})
    stream_refusal: Any = None  # the event that ends a refused stream (None: ``refusal``)
    error: Any = field(
        default_factory=lambda: {"error": {"message": "{message}", "code": "{code}"}}
    )

    def field_names(self) -> frozenset[str]:
        """The member names the app's schema spells out: keys that are not text."""
        paths = (*self.text, *self.not_text, *self.answer_text, *self.event_text)
        flag = (self.stream_flag,) if self.stream_flag is not None else ()
        return frozenset(name for path in (*paths, *flag) for name in path.names())


class GenericJSON(PartsAsText):
    """Adapter for an app's own JSON API, as the policy's ``JsonShape`` describes it."""

    event_names: frozenset[str] = frozenset()  # the app's event names are not known: text

    def __init__(self, shape: JsonShape | None = None) -> None:
        self.shape = shape or JsonShape()
        self.framing: str = self.shape.framing
        self._names = self.shape.field_names()
        self._folded = {fold_key(name): name for name in self._names}

    def parse_request(self, body: bytes) -> ChatRequest:
        """Every string and key of the body but what the policy lists as not text."""
        data = read_json(body)
        shape = self.shape
        stream = False
        if shape.stream_flag is not None:
            name = shape.stream_flag.text
            stream = any([stream_flag(flag, name) for flag in find(shape.stream_flag, data)])
        pieces = [text for text in self._request_strings(data) if text.strip()]
        return ChatRequest(text="\n\n".join(pieces), stream=stream)

    def _request_strings(self, data: Any) -> list[str]:
        not_text = self.shape.not_text
        out: list[str] = []
        for place, text, is_key in places(data):
            # not_text names a field whose value is not language (an id, a role): a
            # string right there. Anything else found there (a list, an object, a key)
            # the app may still put in front of its model: it is screened.
            if not is_key and any(_names_exactly(path, place) for path in not_text):
                continue
            if is_key:
                if text in self._names:
                    continue
                twin = self._folded.get(fold_key(text))
                if twin is not None:
                    raise BadRequest(
                        "ambiguous_key", f"{text!r} is not the field {twin!r}; fix its case"
                    )
            out.append(text)
        return out

    def refusal(self, request: ChatRequest, *, message: str, shape: str, status: int) -> Reply:
        """The policy's refusal template (as one event of a stream), or its error template."""
        if shape == "error":
            return self.error(BadRequest("content_filter", message, status=status))
        if request.stream:
            body = self.stream_refusal(request, message=message)
            return Reply(status, body, list(_STREAM_TYPES[self.framing]))
        return Reply(status, _filled(self.shape.refusal, message=message), list(_JSON))

    def error(self, error: BadRequest) -> Reply:
        """The policy's error template, with the message and a closed-set code."""
        body = _filled(self.shape.error, message=error.message, code=error.code)
        return Reply(error.status, body, list(_JSON))

    def answer_parts(self, body: bytes) -> AnswerParts:
        """Every string of a complete answer: one JSON document, or JSON lines; else as it is."""
        raw = body.decode("utf-8", "replace")
        value = read_answer(raw)
        if value is not NOT_JSON:
            return self._parts(value, self.shape.answer_text)
        # Lines end at "\n" only, as the framer reads them (U+2028 is not a line end).
        lines = [read_answer(line) for line in raw.split("\n") if line.strip()]
        if self.framing != "ndjson" or not lines or any(v is NOT_JSON for v in lines):
            return AnswerParts(side=(raw,))
        flows: list[Flow] = []
        side: list[str] = []
        for line in lines:
            parts = self._parts(line, self.shape.event_text)
            flows += parts.flows
            side += parts.side
        return AnswerParts(tuple(flows), tuple(side))

    def event_parts(self, data: str, event: str | None = None) -> AnswerParts | None:
        """The named text of one event as flows (by place), every other string on its own."""
        value = read_answer(data)
        return None if value is NOT_JSON else self._parts(value, self.shape.event_text)

    def _parts(self, value: Any, text: tuple[JsonPath, ...]) -> AnswerParts:
        flows: list[Flow] = []
        side: list[str] = []
        for place, string, is_key in places(value):
            if not string or (is_key and string in self._names):
                continue
            if not is_key and _covered(text, place):
                flows.append((channel(place), string))
            else:
                side.append(string)
        return AnswerParts(tuple(flows), tuple(side))

    def stream_refusal(
        self,
        request: ChatRequest,
        *,
        message: str,
        ident: str | None = None,
        model: str | None = None,
        newline: bool = False,
        progress: Progress | None = None,  # unused: an in-house stream has no indexed slots
        steps: tuple[str, ...] = (),  # unused: its grammar is one event per refusal
    ) -> bytes:
        """The event that ends a refused stream: an SSE event or one JSON line."""
        template = self.shape.stream_refusal
        event = _filled(self.shape.refusal if template is None else template, message=message)
        return b"data: " + event + b"\n\n" if self.framing == "sse" else event + b"\n"


def _covered(paths: tuple[JsonPath, ...], place: Place) -> bool:
    return any(path.covers(place) for path in paths)


_PLACEHOLDER = re.compile(r"\{(message|code)\}")


def _filled(template: Any, **values: str) -> bytes:
    """The template as JSON, each ``{name}`` in its strings replaced (keys left as they are)."""

    def fill(value: Any) -> Any:
        if isinstance(value, str):  # one pass: a message holding "{code}" stays as it is
            return _PLACEHOLDER.sub(lambda m: values.get(m[1], m[0]), value)
        if isinstance(value, dict):
            return {key: fill(item) for key, item in value.items()}
        if isinstance(value, list):
            return [fill(item) for item in value]
        return value

    return json.dumps(fill(template)).encode()


def _names_exactly(path: JsonPath, place: Place) -> bool:
    """Whether ``place`` is a place ``path`` names, not one inside it."""
    return len(place) == len(path.steps) and path.covers(place)
