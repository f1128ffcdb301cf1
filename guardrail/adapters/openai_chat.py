"""OpenAI chat completions: ``POST /v1/chat/completions`` requests and their refusals."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from functools import partial
from typing import Any

from guardrail.adapters.answer import AnswerParts, Progress, split_parts, strings
from guardrail.adapters.base import BadRequest, ChatRequest, Reply, read_json
from guardrail.adapters.openai_request import CHAT, read_request

# Keys whose strings are not text anyone reads as language: roles, ids, and
# binary payloads (base64 images or audio would only slow the judges down).
_NOT_TEXT = frozenset(
    {"role", "type", "id", "tool_call_id", "image_url", "input_audio", "file", "detail"}
)
_JSON = [(b"content-type", b"application/json")]


class OpenAIChat:
    """Adapter for the OpenAI chat completions API."""

    reads = "messages (every content part, tool call and result), tools, every other string"
    event_names: frozenset[str] = frozenset()  # chunks carry no event names
    framing = "sse"

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
        return read_request(data, CHAT, code="not_chat")

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
        """The text of a complete answer: every string in it (see ``answer_parts``)."""
        return self.answer_parts(body).text()

    def answer_parts(self, body: bytes) -> AnswerParts:
        """Every string of a complete answer; a body that is not JSON is screened as it is."""
        raw = body.decode("utf-8", "replace")
        parts = self.event_parts(raw)
        return parts if parts is not None else AnswerParts(side=(raw,))

    def event_text(self, data: str) -> str:
        """The text of one streamed chunk (see ``event_parts``); not JSON: as it is."""
        parts = self.event_parts(data)
        return data if parts is None else parts.text()

    def event_parts(self, data: str, event: str | None = None) -> AnswerParts | None:
        """Every string of one chunk: what choices stream is a flow, the rest side values.

        None when ``data`` is not JSON: the client cannot read it as we would.
        Chunks stand alone: the ``event`` name and the stream's ``steps`` change nothing.
        """
        try:
            value = json.loads(data, parse_constant=_constant)
        except (ValueError, RecursionError):
            return None
        return self.parts_of(value)

    def parts_of(self, value: Any) -> AnswerParts:
        """The parts of one parsed event or answer, in this API's grammar."""
        return _answer_parts(value)

    def stream_refusal(
        self,
        request: ChatRequest,
        *,
        message: str,
        ident: str | None = None,
        model: str | None = None,
        newline: bool = False,
        progress: Progress | None = None,  # chunks are not indexed: unused
        steps: tuple[str, ...] = (),
    ) -> bytes:
        """The events that end a cut stream: a content_filter chunk, then [DONE].

        It continues the stream (its ``id`` and ``model``) and, when text was
        already released, starts on a line of its own.
        """
        model = model or request.model or "guardrail"
        ident = ident or f"chatcmpl-guardrail-{uuid.uuid4().hex}"
        text = f"\n{message}" if newline else message
        return _refusal_stream(ident, int(time.time()), model, text, role=False)


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


# Strings a client joins across streamed chunks, per choice (paths inside a choice).
_FLOWS = frozenset(
    {
        "delta.content",
        "delta.refusal",
        "delta.reasoning_content",
        "delta.reasoning",
        "delta.tool_calls.function.arguments",
        "delta.function_call.arguments",
        "delta.audio.transcript",
        "text",
        "logprobs.content.token",
        "logprobs.refusal.token",
    }
)
# Values that are provably not language: known enums of the API.
_ENUMS = {
    "role": frozenset({"assistant", "user", "system", "tool", "developer", "function"}),
    "finish_reason": frozenset({"stop", "length", "content_filter", "tool_calls", "function_call"}),
    "object": frozenset({"chat.completion", "chat.completion.chunk"}),
    "type": frozenset({"function", "text"}),
}
# Object keys the API defines; any other key is text a raw reader sees, so screened.
_KNOWN_KEYS = frozenset(
    {
        *_ENUMS,
        "id",
        "created",
        "model",
        "choices",
        "index",
        "delta",
        "message",
        "content",
        "refusal",
        "logprobs",
        "usage",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "prompt_tokens_details",
        "completion_tokens_details",
        "cached_tokens",
        "reasoning_tokens",
        "audio_tokens",
        "accepted_prediction_tokens",
        "rejected_prediction_tokens",
        "system_fingerprint",
        "service_tier",
        "tool_calls",
        "function_call",
        "function",
        "name",
        "arguments",
        "token",
        "bytes",
        "logprob",
        "top_logprobs",
        "text",
        "annotations",
        "audio",
        "transcript",
        "reasoning_content",
        "reasoning",
    }
)


def _not_text(path: str, text: str) -> bool:
    if path.endswith("#key"):
        return text in _KNOWN_KEYS
    field = path.rsplit(".", 1)[-1]
    return text in _ENUMS.get(field, ())


def _answer_parts(value: Any) -> AnswerParts:
    """Every string of a chunk or completion; each choice's streamed fields are flows."""
    if not isinstance(value, dict):
        return AnswerParts(side=tuple(split_parts(strings(value), _no_channel, _not_text)[1]))
    choices = value.get("choices")
    if not isinstance(choices, list):
        choices = []  # not the API's shape: whatever it holds is screened as side text
    rest = {k: v for k, v in value.items() if k != "choices" or not isinstance(v, list)}
    flows, side = split_parts(strings(rest), _no_channel, _not_text)
    for position, choice in enumerate(choices):
        index = choice.get("index") if isinstance(choice, dict) else None
        # A bool is an int to Python, but never an index.
        key = index if isinstance(index, int) and not isinstance(index, bool) else position
        f, s = split_parts(strings(choice), partial(_channel, key), _not_text)
        flows += f
        side += s
    ident, model = value.get("id"), value.get("model")
    return AnswerParts(
        tuple(flows),
        tuple(side),
        ident if isinstance(ident, str) else None,
        model if isinstance(model, str) else None,
    )


def _no_channel(path: str) -> str | None:
    return None


def _channel(index: int, path: str) -> str | None:
    return f"{index}:{path}" if path in _FLOWS else None


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


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
