"""OpenAI chat completions: ``POST /v1/chat/completions`` requests and their refusals."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

from guardrail.adapters.base import BadRequest, ChatRequest, Reply, read_json
from guardrail.adapters.openai_request import request_text

# Keys whose strings are not text anyone reads as language: roles, ids, and
# binary payloads (base64 images or audio would only slow the judges down).
_NOT_TEXT = frozenset(
    {"role", "type", "id", "tool_call_id", "image_url", "input_audio", "file", "detail"}
)
_JSON = [(b"content-type", b"application/json")]


class OpenAIChat:
    """Adapter for the OpenAI chat completions API."""

    def parse_request(self, body: bytes) -> ChatRequest:
        """Every string of the request a receiver may read, in order (see ``openai_request``)."""
        data = read_json(body)
        if not isinstance(data, dict):
            raise BadRequest("not_chat", "expected a JSON object with a 'messages' list")
        messages = data.get("messages")
        if not isinstance(messages, list):
            raise BadRequest("not_chat", "a chat request needs a 'messages' list")
        if not messages:
            raise BadRequest("empty_messages", "'messages' must not be empty")
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise BadRequest("not_chat", f"messages[{i}] must be an object with a 'role'")
        stream = data.get("stream")
        if stream is not None and not isinstance(stream, bool):
            # 1 or "yes" is false to us and true to JavaScript: refuse what may stream.
            raise BadRequest("not_chat", "'stream' must be true, false or null")
        pieces, opaque = request_text(data)
        model = data.get("model")
        return ChatRequest(
            text="\n\n".join(pieces),
            stream=stream is True,
            model=model if isinstance(model, str) else None,
            opaque=opaque,
        )

    def refusal(self, request: ChatRequest, *, message: str, shape: str, status: int) -> Reply:
        """A refusal the OpenAI client parses: a content_filter completion, or an error."""
        if shape == "error":
            return self.error(BadRequest("content_filter", message, status=status))
        model = request.model or "guardrail"
        ident = f"chatcmpl-guardrail-{uuid.uuid4().hex}"
        created = int(time.time())
        if request.stream:
            return Reply(status, _refusal_stream(ident, created, model, message), _SSE)
        completion = {
            "id": ident,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": message, "refusal": message},
                    "finish_reason": "content_filter",
                    "logprobs": None,
                }
            ],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        }
        return Reply(status, json.dumps(completion).encode(), list(_JSON))

    def error(self, error: BadRequest) -> Reply:
        """An error body in the shape the OpenAI client raises as ``APIStatusError``."""
        body = {
            "error": {
                "message": error.message,
                "type": "invalid_request_error" if error.status < 500 else "server_error",
                "param": None,
                "code": error.code,
            }
        }
        return Reply(error.status, json.dumps(body).encode(), list(_JSON))

    def answer_text(self, body: bytes) -> str:
        """The text of a complete answer: every choice's content, refusal and tool calls."""
        return _choices_text(body.decode("utf-8", "replace"), "message", "\n")

    def event_text(self, data: str) -> str:
        """The text one streamed chunk adds: deltas of content, refusal and tool calls."""
        return _choices_text(data, "delta", "")

    def stream_refusal(self, request: ChatRequest, *, message: str) -> bytes:
        """The events that end a cut stream: a content_filter chunk, then [DONE]."""
        model = request.model or "guardrail"
        ident = f"chatcmpl-guardrail-{uuid.uuid4().hex}"
        return _refusal_stream(ident, int(time.time()), model, message, role=False)


_SSE = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]


def _refusal_stream(
    ident: str, created: int, model: str, message: str, *, role: bool = True
) -> bytes:
    def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
        event = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }
        return b"data: " + json.dumps(event).encode() + b"\n\n"

    return (
        chunk({"role": "assistant", "content": message} if role else {"content": message}, None)
        + chunk({}, "content_filter")
        + b"data: [DONE]\n\n"
    )


def _choices_text(raw: str, part: str, sep: str) -> str:
    """The strings of every choice's ``part`` (message or delta), or of whatever came."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return raw  # not JSON: screen it as it is rather than skip it
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        return sep.join(_strings(data))
    return sep.join(
        s
        for choice in data["choices"]
        if isinstance(choice, dict)
        for s in _strings(choice.get(part, choice.get("text", "")))
    )


def _strings(value: Any) -> Iterator[str]:
    """Every string in a message, however nested (content parts, tool calls, names)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            if key not in _NOT_TEXT:
                yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
