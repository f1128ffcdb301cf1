"""What every adapter provides, and strict JSON reading shared by the JSON APIs.

``read_json`` accepts only JSON that every common parser reads the same way:
where Python's ``json`` would read a body one way and another receiver (Go's
``encoding/json``, JavaScript, a C library) another, we could screen one
reading while the receiver acts on the other, so the body is refused (400).
"""

from __future__ import annotations

import json
import math
import re
import sys
import unicodedata
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Protocol

from guardrail.adapters.answer import AnswerParts, Progress
from guardrail.judges.normalize import char_class


class BadRequest(Exception):
    """A guarded request we cannot screen; ``code`` is a closed-set reason for metrics."""

    def __init__(self, code: str, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


# --- pieces: what an adapter yields so each part of a request is screened once ---
# Roles a piece may name: a closed set, as they become metric labels.
ROLES = frozenset(
    {"system", "developer", "user", "assistant", "tool", "function", "tools", "request", "other"}
)


@dataclass(frozen=True, slots=True)
class Piece:
    """One part of a request a receiver reads as a unit, and where it sits in the body.

    Any adapter can yield them: a message, a content part, a tool call or result,
    a tool definition, or a top-level field. ``message`` is the index in the API's
    list of messages (None outside it); ``location`` a JSON path such as
    ``messages[3].content[1]``; ``role`` one of ``ROLES``.
    """

    role: str
    message: int | None
    location: str
    text: str


def role_of(value: object) -> str:
    """A message's role as a closed-set label: an unknown role is ``other``."""
    return value if isinstance(value, str) and value in ROLES else "other"


class Marked:
    """The strings a walk read from a body, in order, and where each run was read.

    A reader calls ``mark`` when it enters a piece (a message, a content block, a
    tool); ``grouped`` then gives the strings as pieces, each location's runs joined.
    """

    def __init__(self) -> None:
        self.pieces: list[str] = []
        # Where each run of ``pieces`` was read: (first index, JSON location, role, message).
        self.marks: list[tuple[int, str, str, int | None]] = []

    def mark(self, location: str, role: str, message: int | None = None) -> None:
        """The strings read from now on belong to the piece at ``location``."""
        if self.marks and self.marks[-1][0] == len(self.pieces):
            self.marks.pop()  # the last piece got no text
        self.marks.append((len(self.pieces), location, role, message))

    def grouped(self) -> list[Piece]:
        """The strings read as pieces, in the order read: a run of strings per mark, and
        runs of one location next to each other joined (a message's fields).

        Runs are never moved: a piece sits where the receiver reads its text, so
        two halves of a split stay next to each other in the windows.
        """
        found: list[tuple[str, str, int | None, list[str]]] = []
        ends = [start for start, *_ in self.marks[1:]] + [len(self.pieces)]
        for (start, location, role, message), end in zip(self.marks, ends, strict=True):
            if start == end:
                continue
            if found and found[-1][0] == location:
                found[-1][3].extend(self.pieces[start:end])
            else:
                found.append((location, role, message, self.pieces[start:end]))
        return [Piece(role, message, at, "\n\n".join(texts)) for at, role, message, texts in found]


def field_location(key: str) -> str:
    """A top-level field's location: its name, or quoted if it is not a plain name,
    so no field can take the location of a message (``messages[0]``) or a tool."""
    return key if _PLAIN_NAME.fullmatch(key) else f"[{json.dumps(key)}]"


_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """The parts of a chat request the guard needs."""

    text: str
    stream: bool = False
    model: str | None = None
    opaque: int = 0  # binary media parts (images, audio, files) no judge could read
    # The answer is fetched later, by another request (a Responses ``background`` run):
    # it never passes through this exchange, so an output stage could not screen it.
    deferred: bool = False
    # The same strings as ``text``, as pieces; empty: the whole text is one piece.
    pieces: tuple[Piece, ...] = ()
    max_tokens: int | None = None  # the most the app may generate, if the request says


@dataclass(frozen=True, slots=True)
class Reply:
    """A complete HTTP answer the guard sends itself (a refusal or an error)."""

    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def messages(self) -> list[dict[str, Any]]:
        """The ASGI messages that send this reply."""
        length = (b"content-length", str(len(self.body)).encode())
        return [
            {
                "type": "http.response.start",
                "status": self.status,
                "headers": [*self.headers, length],
            },
            {"type": "http.response.body", "body": self.body},
        ]


class Adapter(Protocol):
    """Reads one API's request bodies and speaks its refusals and errors."""

    # The ``event:`` names of the API's streams: known values, so not text to screen.
    event_names: frozenset[str]
    # How a streamed answer is cut into events: "sse" (server-sent events when the
    # bytes are SSE, else plain text) or "ndjson" (one JSON value per line).
    framing: str

    def parse_request(self, body: bytes) -> ChatRequest: ...

    def refusal(self, request: ChatRequest, *, message: str, shape: str, status: int) -> Reply: ...

    def error(self, error: BadRequest) -> Reply: ...

    def answer_text(self, body: bytes) -> str: ...

    def event_text(self, data: str) -> str: ...

    def answer_parts(self, body: bytes) -> AnswerParts: ...

    def event_parts(self, data: str, event: str | None = None) -> AnswerParts | None: ...

    def stream_refusal(
        self,
        request: ChatRequest,
        *,
        message: str,
        ident: str | None = None,
        model: str | None = None,
        newline: bool = False,
        progress: Progress | None = None,
        steps: tuple[str, ...] = (),
    ) -> bytes: ...


class PartsAsText:
    """An adapter's ``answer_text`` and ``event_text``, from its parts of answers and events."""

    def answer_parts(self, body: bytes) -> AnswerParts:
        raise NotImplementedError

    def event_parts(self, data: str, event: str | None = None) -> AnswerParts | None:
        raise NotImplementedError

    def answer_text(self, body: bytes) -> str:
        """The text of a complete answer: every string in it (see ``answer_parts``)."""
        return self.answer_parts(body).text()

    def event_text(self, data: str) -> str:
        """The text of one streamed event (see ``event_parts``); unreadable: as it is."""
        parts = self.event_parts(data)
        return data if parts is None else parts.text()


def stream_flag(value: Any, name: str = "'stream'") -> bool:
    """Whether a request asks for a stream; anything but true, false or null is refused."""
    if value is not None and not isinstance(value, bool):
        # 1 or "yes" is false to us and true to JavaScript: refuse what may stream.
        raise BadRequest("not_chat", f"{name} must be true, false or null")
    return value is True


# Deeper than any real request; checked without recursion (``_check_values``), so
# no later recursive walk over the parsed body can hit Python's recursion limit.
MAX_DEPTH = 200
# Integers a 64-bit receiver can hold (int64 or uint64): beyond them parsers
# disagree (JavaScript rounds to a float, Go fails, Python raises past 4,300 digits).
_INT_RANGE = range(-(2**63), 2**64)
_SURROGATE = re.compile(r"[\ud800-\udfff]")
# A lone surrogate comes only from a \uD800-\uDFFF escape (UTF-8 cannot carry
# one): without such an escape in the raw text, no string needs searching.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
# Code points whose canonical class is 0 but whose decomposition starts with a
# non-starter: runs of them cost normalisation as much as runs of combining marks.
# (A test checks this set against the running Python's Unicode database.)
NON_STARTER_DECOMPOSITIONS = frozenset("\u0f73\u0f75\u0f81\uff9e\uff9f")
_STREAM_SAFE_RUN = 30  # UAX #15: at most 30 non-starters in a row


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) < len(pairs):
        # Parsers disagree on which duplicate wins: we could screen one value
        # while the app acts on the other. Refuse instead of guessing.
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise BadRequest("duplicate_key", f"duplicate JSON key {key!r}")
            seen.add(key)
    if len(obj) > 1 and len({k.lower() if k.isascii() else fold_key(k) for k in obj}) < len(obj):
        raise _ambiguous(obj)
    return obj


def _ambiguous(obj: dict[str, Any]) -> BadRequest:
    # Go's encoding/json (and others) match keys case-insensitively, with Unicode
    # folding (``me\u017f\u017fages`` is ``messages``), the last one winning: two
    # keys equal under folding are duplicates to such a receiver.
    seen: dict[str, str] = {}
    for key in obj:
        folded = fold_key(key)
        if folded in seen:
            break
        seen[folded] = key
    return BadRequest(
        "ambiguous_key",
        f"JSON keys {seen[folded]!r} and {key!r} differ only by case or Unicode form",
    )


def fold_key(key: str) -> str:
    """A key as a case- and compatibility-insensitive receiver matches it (NFKC + casefold)."""
    if key.isascii():
        return key.lower()
    safe = stream_safe(key)
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", safe).casefold())


def stream_safe(text: str) -> str:
    """``text`` with a U+034F after every 30 non-starters in a row (UAX #15 stream-safe).

    Normalising sorts each run of non-starters by insertion, quadratic in the run's
    length: capped runs make it linear. Only for comparing keys; never forwarded.
    """
    if text.isascii() or max(text) < "\u0300":  # below U+0300 every character is a starter
        return text
    return _long_non_starter_runs().sub(_break_run, text)


def _break_run(match: re.Match[str]) -> str:
    run = match.group()
    step = _STREAM_SAFE_RUN
    return "\u034f".join(run[i : i + step] for i in range(0, len(run), step))


@cache
def _long_non_starter_runs() -> re.Pattern[str]:
    """Runs of more than 30 non-starters; built on first use from the Unicode database."""
    marks = (c for c in range(0x300, sys.maxunicode + 1) if unicodedata.combining(chr(c)))
    members = char_class(marks)
    others = "".join(map(re.escape, sorted(NON_STARTER_DECOMPOSITIONS)))
    return re.compile(f"[{members}{others}]{{{_STREAM_SAFE_RUN + 1},}}")


def _no_constants(name: str) -> Any:
    raise BadRequest("invalid_json", f"{name} is not valid JSON")


def _check_values(data: Any, *, surrogates: bool) -> None:
    """Refuse nesting deeper than ``MAX_DEPTH``, numbers outside 64 bits, lone surrogates."""
    if not isinstance(data, dict | list):
        data = [data]
    stack: list[tuple[dict[str, Any] | list[Any], int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        if depth >= MAX_DEPTH:
            raise BadRequest("invalid_json", "the request body is nested too deeply")
        items = list(value.values()) if isinstance(value, dict) else value
        if any(
            (type(item) is int and item not in _INT_RANGE)
            or (type(item) is float and not math.isfinite(item))
            for item in items
        ):
            raise _out_of_range()
        if surrogates:
            strings = [*value] if isinstance(value, dict) else []  # its keys
            strings.extend(item for item in items if isinstance(item, str))
            if _SURROGATE.search("".join(strings)):
                raise _lone_surrogate()
        stack.extend((item, depth + 1) for item in items if isinstance(item, dict | list))


def _out_of_range() -> BadRequest:
    return BadRequest(
        "number_out_of_range",
        "a number does not fit 64 bits (an int64 or uint64 integer, or a finite double)",
    )


def _lone_surrogate() -> BadRequest:
    # Python keeps it; other parsers read U+FFFD or fail, and the app may crash on it.
    return BadRequest("invalid_unicode", "a JSON string holds a lone surrogate (\\ud800-\\udfff)")


def read_json(body: bytes) -> Any:
    """Parse a body as JSON every receiver reads alike, or raise ``BadRequest``.

    UTF-8 without a BOM; no duplicate keys, not even under case or Unicode folding;
    no NaN or Infinity, no number outside 64 bits, no lone surrogate, no deep nesting.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("invalid_utf8", "the request body is not UTF-8") from None
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise BadRequest("invalid_json", f"the request body is not valid JSON: {exc}") from None
    except ValueError:  # an integer of more than 4,300 digits (sys.get_int_max_str_digits)
        raise _out_of_range() from None
    except RecursionError:
        raise BadRequest("invalid_json", "the request body is nested too deeply") from None
    _check_values(data, surrogates=_SURROGATE_ESCAPE.search(text) is not None)
    return data
