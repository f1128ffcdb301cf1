"""Anthropic Messages: ``POST /v1/messages`` requests, answers, refusals and errors.

Requests are screened as a deny-list, like OpenAI chat (``openai_request``):
every string anywhere in the body is text (``system`` as a string or blocks,
every content block of every type, ``tool_use`` input, ``tool_result``
content, tool definitions, unknown fields), and so is every object key that
is not one of the API's own field names. Not screened, because they provably
are not language: numbers, booleans, null; ``model`` when it has the shape of
a model name; enum fields holding a known value; and base64 payloads of
binary media (an image or PDF ``source``) and of sealed blobs (a thinking
block's ``signature``, ``redacted_thinking`` data), counted as ``opaque``. A
base64 source of a text type is decoded and screened.

A streamed answer is SSE whose ``event:`` name repeats the data's ``type``.
Clients differ in which one they act on (the Python SDK reads the data's
type, the TypeScript SDK the event name), so an event where they differ is
unreadable: the fail mode decides. A cut stream ends as the SDKs parse it: the
open blocks stop, a text block carries the refusal, ``stop_reason: refusal``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from typing import Any

from guardrail.adapters.answer import (
    NOT_JSON,
    AnswerParts,
    Progress,
    read_answer,
    split_parts,
    strings,
)
from guardrail.adapters.base import (
    BadRequest,
    ChatRequest,
    Marked,
    PartsAsText,
    Piece,
    Reply,
    field_location,
    fold_key,
    read_json,
    role_of,
    stream_flag,
)

_FIELDS = frozenset(
    """
    model messages max_tokens system metadata user_id stop_sequences stream temperature
    top_k top_p tools tool_choice thinking budget_tokens service_tier container
    mcp_servers context_management output_format output_config effort inference_geo
    role content type text source media_type data url file_id cache_control ttl
    citations enabled title context id name input tool_use_id is_error signature
    disable_parallel_tool_use input_schema description max_uses allowed_domains
    blocked_domains user_location city region country timezone authorization_token
    tool_configuration allowed_tools cited_text document_index document_title
    start_char_index end_char_index start_page_number end_page_number
    start_block_index end_block_index search_result_index
    properties required items enum const default additionalProperties anyOf allOf
    oneOf not $ref $defs definitions pattern minimum maximum minLength maxLength
    minItems maxItems uniqueItems format $schema
    """.split()
)
_ENUMS: dict[str, frozenset[str]] = {
    key: frozenset(values.split())
    for key, values in {
        "role": "user assistant",
        "type": "text image document search_result thinking redacted_thinking tool_use "
        "tool_result server_tool_use web_search_tool_result base64 url file content "
        "enabled disabled auto any tool none ephemeral custom approximate json_schema "
        "char_location page_location content_block_location search_result_location "
        "string number integer boolean object array null",
        "media_type": "image/jpeg image/png image/gif image/webp application/pdf text/plain",
        "service_tier": "auto standard_only",
        "ttl": "5m 1h",
        "effort": "low medium high",
        "format": "date-time date time email uri uuid",
    }.items()
}
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}")
_BASE64 = re.compile(r"[A-Za-z0-9+/\r\n]*={0,2}")
# Strings the API seals: a base64 blob here is not language (the model never reads it as text).
_SEALED = {("thinking", "signature"), ("redacted_thinking", "data")}
# Content blocks whose base64 ``source`` is media (an image, a PDF), not text.
_MEDIA_BLOCKS = frozenset({"image", "document"})
# Every field name is ASCII, so folding one is lower-casing it; folding never shortens
# a key to an ASCII word, so a longer key cannot fold to a field name.
_FOLDED = frozenset(name.lower() for name in _FIELDS)
_LONGEST_FIELD = max(map(len, _FIELDS))
_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]


class _Reading(Marked):
    """Walks a parsed body, collecting the text to screen and counting binary parts."""

    def __init__(self, blocks: frozenset[int] = frozenset()) -> None:
        super().__init__()
        self.opaque = 0
        # The ids of the objects that are the API's own content blocks (``content_blocks``):
        # only there is a blob sealed or a source media. The same shape nested in a
        # tool's input is JSON the model reads as text, base64 and all.
        self.blocks = blocks

    def value(self, value: Any, key: str | None, block: str | None) -> None:
        # Recursion is bounded: read_json refused anything nested deeper than MAX_DEPTH.
        if isinstance(value, str):
            self.string(value, key, block)
        elif isinstance(value, list):
            for item in value:
                self.value(item, key, block)
        elif isinstance(value, dict):
            kind = value.get("type") if id(value) in self.blocks else None
            inner = kind if isinstance(kind, str) else None
            for child_key, child in value.items():
                if child_key not in _FIELDS:
                    self.text(child_key)
                if child_key == "source" and inner in _MEDIA_BLOCKS and self.source(child):
                    continue
                self.value(child, child_key, inner if isinstance(child, str) else None)

    def string(self, value: str, key: str | None, block: str | None) -> None:
        if key in _ENUMS and value in _ENUMS[key]:
            return
        if (block, key) in _SEALED and _is_base64(value):
            self.opaque += 1
            return
        self.text(value)

    def source(self, source: Any) -> bool:
        """A base64 media source: binary counted, text decoded and screened; else walked."""
        if not isinstance(source, dict):
            return False
        data, media_type = source.get("data"), source.get("media_type")
        if source.get("type") != "base64" or not isinstance(data, str):
            return False
        if not isinstance(media_type, str) or not _is_base64(data):
            return False  # not a payload a decoder reads as we would: all of it is text
        if set(source) - {"type", "data", "media_type", "cache_control"}:
            return False  # more than a source: walk it whole
        if not _is_text_type(media_type):
            self.opaque += 1
            return True
        try:
            raw = base64.b64decode(data.replace("\r", "").replace("\n", ""), validate=True)
            self.text(raw.decode("utf-8"))
        except (binascii.Error, UnicodeDecodeError):
            raise BadRequest("invalid_source", f"a {media_type} source is not UTF-8 text") from None
        return True

    def text(self, value: str) -> None:
        if value.strip():
            self.pieces.append(value)


def _is_base64(payload: str) -> bool:
    compact = payload.replace("\r", "").replace("\n", "")
    return bool(compact) and _BASE64.fullmatch(payload) is not None and len(compact) % 4 == 0


def _is_text_type(media_type: str) -> bool:
    media_type = media_type.split(";")[0].strip().lower()
    return media_type.startswith("text/") or media_type.endswith(("json", "xml", "+yaml"))


def content_blocks(data: dict[str, Any]) -> frozenset[int]:
    """The ids of the request's content blocks: each message's, and each tool result's."""
    found: list[Any] = []
    for message in data.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        for block in content if isinstance(content, list) else ():
            found.append(block)
            inner = block.get("content") if isinstance(block, dict) else None
            if isinstance(block, dict) and block.get("type") == "tool_result":
                found += inner if isinstance(inner, list) else ()
    return frozenset(id(block) for block in found if isinstance(block, dict))


def request_text(data: dict[str, Any]) -> tuple[list[str], int]:
    """Every string of a Messages request a receiver may read, in order; and its binary parts."""
    strings, _, opaque = request_pieces(data)
    return strings, opaque


def request_pieces(data: dict[str, Any]) -> tuple[list[str], list[Piece], int]:
    """``request_text``'s strings, the same strings as pieces, and the binary parts.

    A piece is each message's content block (or its text, a string content), the
    system prompt, each tool definition, or another top-level field: what a
    client may drop or resend whole.
    """
    reading = _Reading(content_blocks(data))
    for key, value in data.items():
        if key not in _FIELDS and len(key) <= _LONGEST_FIELD and fold_key(key) in _FOLDED:
            # "Stream" or "MESSAGES" alone: a receiver that folds keys reads the API's
            # field, we would read an unknown one (and decide streaming, say, wrongly).
            raise BadRequest("ambiguous_key", f"{key!r} is not the API's field name; fix its case")
        reading.mark(field_location(key), "system" if key == "system" else "request")
        if key not in _FIELDS:
            reading.text(key)
        if key == "model" and isinstance(value, str) and _MODEL_NAME.fullmatch(value):
            continue
        if key == "messages" and isinstance(value, list):
            for i, message in enumerate(value):
                _read_message(reading, i, message)
        elif key == "tools" and isinstance(value, list):
            for j, tool in enumerate(value):
                reading.mark(f"tools[{j}]", "tools")
                reading.value([tool], key, None)  # one item: read as within its list
        else:
            reading.value(value, key, None)
    return reading.pieces, reading.grouped(), reading.opaque


def _read_message(reading: _Reading, i: int, message: Any) -> None:
    """One message, each of its content blocks a piece; read as within the list."""
    here = f"messages[{i}]"
    role = role_of(message.get("role")) if isinstance(message, dict) else "other"
    if not isinstance(message, dict):
        reading.mark(here, role, i)
        reading.value([message], "messages", None)
        return
    for key, child in message.items():
        if key == "content" and isinstance(child, list):
            for j, block in enumerate(child):
                reading.mark(f"{here}.content[{j}]", role, i)
                reading.value({key: [block]}, "messages", None)
        else:
            reading.mark(here, role, i)
            reading.value({key: child}, "messages", None)


class AnthropicMessages(PartsAsText):
    """Adapter for the Anthropic Messages API."""

    reads = "system, messages (every block type, tool_use input, tool_result content), tools,"
    reads += " every other string"
    event_names = frozenset(
        """message_start content_block_start content_block_delta content_block_stop
        message_delta message_stop ping error""".split()
    )
    framing = "sse"

    def parse_request(self, body: bytes) -> ChatRequest:
        """Every string of the request a receiver may read (see the module's docstring)."""
        data = read_json(body)
        if not isinstance(data, dict):
            raise BadRequest("not_chat", "expected a JSON object with a 'messages' list")
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("not_chat", "a Messages request needs a non-empty 'messages' list")
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise BadRequest("not_chat", f"messages[{i}] must be an object with a 'role'")
            if not isinstance(message.get("content"), str | list):
                raise BadRequest("not_chat", f"messages[{i}].content must be a string or blocks")
        system = data.get("system")
        if system is not None and not isinstance(system, str | list):
            raise BadRequest("not_chat", "'system' must be a string or a list of blocks")
        stream = stream_flag(data.get("stream"))
        strings, pieces, opaque = request_pieces(data)
        model, limit = data.get("model"), data.get("max_tokens")
        return ChatRequest(
            text="\n\n".join(strings),
            stream=stream,
            model=model if isinstance(model, str) else None,
            opaque=opaque,
            pieces=tuple(pieces),
            max_tokens=limit if type(limit) is int and limit > 0 else None,
        )

    def refusal(self, request: ChatRequest, *, message: str, shape: str, status: int) -> Reply:
        """A refusal the anthropic SDK parses: ``stop_reason: refusal``, or an error."""
        if shape == "error":
            return self.error(BadRequest("content_filter", message, status=status))
        ident, model = _ident(), request.model or "guardrail"
        if request.stream:
            return Reply(status, _refusal_events(ident, model, message, steps=()), list(_SSE))
        body = {**_message(ident, model), "content": [{"type": "text", "text": message}]}
        body["stop_reason"] = "refusal"
        return Reply(status, json.dumps(body).encode(), list(_JSON))

    def error(self, error: BadRequest) -> Reply:
        """An error body in the shape the anthropic SDK raises as ``APIStatusError``."""
        body = {
            "type": "error",
            "error": {"type": _error_type(error.status), "message": error.message},
        }
        return Reply(error.status, json.dumps(body).encode(), list(_JSON))

    def answer_parts(self, body: bytes) -> AnswerParts:
        """Every string of a complete answer; a body that is not JSON is screened as it is."""
        raw = body.decode("utf-8", "replace")
        value = read_answer(raw)
        return AnswerParts(side=(raw,)) if value is NOT_JSON else _parts(value)

    def event_parts(self, data: str, event: str | None = None) -> AnswerParts | None:
        """Every string of one event: what a block streams is a flow, the rest side values.

        None when ``data`` is not JSON, or its ``type`` is not the ``event:`` name:
        clients that act on one or the other would read different streams, and the
        SDKs skip data with no name (an OpenAI chunk, say) that raw readers show.
        """
        value = read_answer(data)
        kind = value.get("type") if isinstance(value, dict) else None
        if value is NOT_JSON or event is None or event != kind:
            return None
        parts = _parts(value)
        step = _step(value) if event not in ("ping", "error") else None
        return AnswerParts(parts.flows, parts.side, parts.ident, parts.model, step=step)

    def stream_refusal(
        self,
        request: ChatRequest,
        *,
        message: str,
        ident: str | None = None,
        model: str | None = None,
        newline: bool = False,
        progress: Progress | None = None,  # the Responses API's bookkeeping: unused here
        steps: tuple[str, ...] = (),
    ) -> bytes:
        """The events that end a cut stream, after the ``steps`` the client has seen."""
        model = model or request.model or "guardrail"
        return _refusal_events(ident or _ident(), model, message, steps=steps)


def _ident() -> str:
    return f"msg_guardrail_{uuid.uuid4().hex}"


def _message(ident: str, model: str) -> dict[str, Any]:
    return {
        "id": ident,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0},
    }


def _event(kind: str, **fields: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}\n\n".encode()


def _refusal_events(ident: str, model: str, message: str, *, steps: tuple[str, ...]) -> bytes:
    """A refusal block and ``stop_reason: refusal``, continuing a stream that saw ``steps``.

    The SDKs index a message's blocks in the order they started, so the refusal
    is the next block; blocks left open are stopped first.
    """
    first = next((s for s in steps if s.startswith("message_start:")), None)
    events = [] if first else [_event("message_start", message=_message(ident, model))]
    opening = int(first.removeprefix("message_start:")) if first else 0  # its own blocks
    started = [s for s in steps if s.startswith("content_block_start:")]
    stopped = {
        s.removeprefix("content_block_stop:") for s in steps if s.startswith("content_block_stop:")
    }
    for start in started:
        index = start.removeprefix("content_block_start:")
        if index not in stopped and index.isdigit():
            events.append(_event("content_block_stop", index=int(index)))
    block = opening + len(started)
    events += [
        _event("content_block_start", index=block, content_block={"type": "text", "text": ""}),
        _event("content_block_delta", index=block, delta={"type": "text_delta", "text": message}),
        _event("content_block_stop", index=block),
        _event(
            "message_delta",
            delta={"stop_reason": "refusal", "stop_sequence": None},
            usage={"output_tokens": 0},
        ),
        _event("message_stop"),
    ]
    return b"".join(events)


def _error_type(status: int) -> str:
    named = {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}
    named |= {413: "request_too_large", 429: "rate_limit_error", 529: "overloaded_error"}
    return named.get(status, "invalid_request_error" if status < 500 else "api_error")


def _step(value: Any) -> str | None:
    """Where an event moves the stream: the refusal that may follow continues from there."""
    if not isinstance(value, dict):
        return None
    kind, index = value.get("type"), value.get("index")
    if kind in ("content_block_start", "content_block_stop"):
        return f"{kind}:{index}" if type(index) is int else f"{kind}:?"
    if kind == "message_start":  # the blocks a message starts with count as started
        message = value.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        return f"message_start:{len(content) if isinstance(content, list) else 0}"
    return kind if isinstance(kind, str) else None


# Strings a client joins across a stream's events, per block (paths inside an event).
_FLOWS = frozenset(
    {
        "content_block.text",
        "content_block.thinking",
        "delta.text",
        "delta.partial_json",
        "delta.thinking",
    }
)
_ANSWER_ENUMS = {
    "type": frozenset(
        """message text tool_use thinking redacted_thinking server_tool_use message_start
        message_delta message_stop content_block_start content_block_delta content_block_stop
        ping error text_delta input_json_delta thinking_delta signature_delta citations_delta
        web_search_tool_result""".split()
    ),
    "role": frozenset({"assistant"}),
    "stop_reason": frozenset(
        "end_turn max_tokens stop_sequence tool_use pause_turn refusal "
        "model_context_window_exceeded".split()
    ),
    "service_tier": frozenset({"standard", "priority", "batch"}),
}
_ANSWER_KEYS = frozenset(
    """id type role model content text stop_reason stop_sequence usage input_tokens
    output_tokens cache_creation_input_tokens cache_read_input_tokens server_tool_use
    service_tier message index content_block delta partial_json thinking signature
    name input citations error container""".split()
)


def _not_text(path: str, text: str) -> bool:
    if path.endswith("#key"):
        return text in _ANSWER_KEYS
    field = path.rsplit(".", 1)[-1]
    if field == "signature" and _is_base64(text):
        return True  # sealed, never shown as language
    return text in _ANSWER_ENUMS.get(field, ())


def _parts(value: Any) -> AnswerParts:
    """Every string of an event or message; what a block streams is a flow, by block index."""
    index = value.get("index") if isinstance(value, dict) else None
    block = str(index) if type(index) is int else "?"
    flows, side = split_parts(
        strings(value), lambda path: block if path in _FLOWS else None, _not_text
    )
    message = value.get("message") if isinstance(value, dict) else None
    source = message if isinstance(message, dict) else value if isinstance(value, dict) else {}
    ident, model = source.get("id"), source.get("model")
    return AnswerParts(
        tuple(flows),
        tuple(side),
        ident if isinstance(ident, str) else None,
        model if isinstance(model, str) else None,
    )
