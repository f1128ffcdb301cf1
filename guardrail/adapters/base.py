"""What every adapter provides, and strict JSON reading shared by the JSON APIs.

``read_json`` accepts only JSON that every common parser reads the same way:
where Python's ``json`` would read a body one way and another receiver (Go's
``encoding/json``, JavaScript, a C library) another, we could screen one
reading while the receiver acts on the other, so the body is refused (400).
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Protocol


class BadRequest(Exception):
    """A guarded request we cannot screen; ``code`` is a closed-set reason for metrics."""

    def __init__(self, code: str, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """The parts of a chat request the guard needs."""

    text: str
    stream: bool = False
    model: str | None = None
    opaque: int = 0  # binary media parts (images, audio, files) no judge could read


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

    def parse_request(self, body: bytes) -> ChatRequest: ...

    def refusal(self, request: ChatRequest, *, message: str, shape: str, status: int) -> Reply: ...

    def error(self, error: BadRequest) -> Reply: ...

    def answer_text(self, body: bytes) -> str: ...

    def event_text(self, data: str) -> str: ...

    def stream_refusal(self, request: ChatRequest, *, message: str) -> bytes: ...


# Deeper than any real request; checked by the walk that looks for surrogates,
# so no later recursive walk over the parsed body can hit Python's recursion limit.
MAX_DEPTH = 200
# Integers a 64-bit receiver can hold (int64 or uint64): beyond them parsers
# disagree (JavaScript rounds to a float, Go fails, Python raises past 4,300 digits).
_INT_RANGE = range(-(2**63), 2**64)
_MAX_NUMBER_CHARS = 100  # more digits than any float needs; bounds the cost of parsing one
_SURROGATE = re.compile(r"[\ud800-\udfff]")
# Code points whose canonical class is 0 but whose decomposition starts with a
# non-starter: runs of them cost normalisation as much as runs of combining marks.
# (A test checks this set against the running Python's Unicode database.)
NON_STARTER_DECOMPOSITIONS = frozenset("\u0f73\u0f75\u0f81\uff9e\uff9f")
_STREAM_SAFE_RUN = 30  # UAX #15: at most 30 non-starters in a row


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if _SURROGATE.search(key):
            raise _lone_surrogate()
        if key in obj:
            # Parsers disagree on which duplicate wins: we could screen one value
            # while the app acts on the other. Refuse instead of guessing.
            raise BadRequest("duplicate_key", f"duplicate JSON key {key!r}")
        obj[key] = value
    if len(obj) > 1:
        _no_ambiguous_keys(obj)
    return obj


def _no_ambiguous_keys(obj: dict[str, Any]) -> None:
    # Go's encoding/json (and others) match keys case-insensitively, with Unicode
    # folding (``me\u017f\u017fages`` is ``messages``), the last one winning: two keys equal
    # under folding are duplicates to such a receiver.
    seen: dict[str, str] = {}
    for key in obj:
        folded = fold_key(key)
        if folded in seen:
            raise BadRequest(
                "ambiguous_key",
                f"JSON keys {seen[folded]!r} and {key!r} differ only by case or Unicode form",
            )
        seen[folded] = key


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
    run = 0
    out: list[str] | None = None
    for i, char in enumerate(text):
        if unicodedata.combining(char) or char in NON_STARTER_DECOMPOSITIONS:
            run += 1
            if run > _STREAM_SAFE_RUN:
                if out is None:
                    out = [text[:i]]
                out.append("\u034f")
                run = 1
        else:
            run = 0
        if out is not None:
            out.append(char)
    return text if out is None else "".join(out)


def _no_constants(name: str) -> Any:
    raise BadRequest("invalid_json", f"{name} is not valid JSON")


def _integer(literal: str) -> int:
    value = int(literal) if len(literal) <= _MAX_NUMBER_CHARS else None
    if value is None or value not in _INT_RANGE:
        raise BadRequest("number_out_of_range", f"the integer {literal[:24]}... is outside 64 bits")
    return value


def _float(literal: str) -> float:
    value = float(literal) if len(literal) <= _MAX_NUMBER_CHARS else None
    if value is None or value in (float("inf"), float("-inf")):
        raise BadRequest(
            "number_out_of_range", f"the number {literal[:24]}... does not fit a 64-bit float"
        )
    return value


def _check_strings(data: Any) -> None:
    """Refuse lone surrogates in string values, and nesting deeper than ``MAX_DEPTH``."""
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                raise _lone_surrogate()
        elif isinstance(value, dict | list):
            if depth >= MAX_DEPTH:
                raise BadRequest("invalid_json", "the request body is nested too deeply")
            items = value.values() if isinstance(value, dict) else value
            stack.extend((item, depth + 1) for item in items)


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
        data = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constants,
            parse_int=_integer,
            parse_float=_float,
        )
    except json.JSONDecodeError as exc:
        raise BadRequest("invalid_json", f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("invalid_json", "the request body is nested too deeply") from None
    _check_strings(data)
    return data
