"""What every adapter provides, and strict JSON reading shared by the JSON APIs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

from guardrail.adapters.answer import AnswerParts


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

    def answer_parts(self, body: bytes) -> AnswerParts: ...

    def event_parts(self, data: str) -> AnswerParts | None: ...

    def stream_refusal(
        self,
        request: ChatRequest,
        *,
        message: str,
        ident: str | None = None,
        model: str | None = None,
        newline: bool = False,
    ) -> bytes: ...


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            # Parsers disagree on which duplicate wins: we could screen one value
            # while the app acts on the other. Refuse instead of guessing.
            raise BadRequest("duplicate_key", f"duplicate JSON key {key!r}")
        obj[key] = value
    return obj


def _no_constants(name: str) -> Any:
    raise BadRequest("invalid_json", f"{name} is not valid JSON")


def read_json(body: bytes) -> Any:
    """Parse a body as strict JSON: UTF-8, no duplicate keys, no NaN/Infinity."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("invalid_utf8", "the request body is not UTF-8") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise BadRequest("invalid_json", f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("invalid_json", "the request body is nested too deeply") from None
