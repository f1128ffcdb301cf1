"""OpenAI Responses: ``POST /v1/responses`` requests, answers, and refusals in its event grammar.

A request is read by the same deny-list walk as chat completions
(``openai_request``) with the Responses vocabulary: ``input`` as a string or
items of any type (messages, function calls and their outputs, reasoning,
item references, types added after this was written), ``instructions``,
tool definitions, ``prompt`` variables: every string is text unless it is one
of the API's fixed words. Images and files sent inline are opaque like chat's
media. Not visible to the guard: what ``previous_response_id``,
``conversation`` or a stored ``prompt`` id bring from the vendor's storage.

A streamed answer is a sequence of typed events; the ``delta`` of each
``*.delta`` event is a flow of its output item and content part (what the
client joins), everything else a side value. An event outside the grammar
(another API's chunks on this route) is screened with every field a flow.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import replace
from typing import Any

from guardrail.adapters.answer import AnswerParts, Progress, foreign_parts, split_parts, strings
from guardrail.adapters.base import BadRequest, ChatRequest, Reply, read_json
from guardrail.adapters.openai_chat import OpenAIChat
from guardrail.adapters.openai_request import (
    _ENUMS,
    _FIELDS,
    Vocabulary,
    _is_base64,
    read_request,
)

_ITEM_TYPES = """
    additional_tools allowed_tools allowlist apply_patch apply_patch_call
    apply_patch_call_output approximate auto cache_hit cache_miss click code_interpreter
    code_interpreter_call compaction compaction_trigger computer computer_call
    computer_call_output computer_screenshot computer_use_preview container_auto
    container_file_citation container_reference create_file custom custom_tool_call
    custom_tool_call_output delete_file disabled double_click drag error exec exit
    file_citation file_path file_search file_search_call find_in_page function function_call
    function_call_output image image_generation image_generation_call input_audio input_file
    input_image input_text item_reference json_object json_schema keypress local local_shell
    local_shell_call local_shell_call_output logs mcp mcp_approval_request
    mcp_approval_response mcp_call mcp_list_tools message move namespace open_page output_text
    reasoning reasoning_text refusal screenshot scroll search shell shell_call
    shell_call_output summary_text text tool_search tool_search_call tool_search_output
    update_file url url_citation wait web_search web_search_call web_search_preview
    string number integer boolean object array null grammar
"""
_EVENT_TYPES = frozenset(
    "response." + name
    for name in """
    audio.delta audio.done audio.transcript.delta audio.transcript.done
    code_interpreter_call.completed code_interpreter_call.in_progress
    code_interpreter_call.interpreting code_interpreter_call_code.delta
    code_interpreter_call_code.done completed content_part.added content_part.done created
    custom_tool_call_input.delta custom_tool_call_input.done failed
    file_search_call.completed file_search_call.in_progress file_search_call.searching
    function_call_arguments.delta function_call_arguments.done
    image_generation_call.completed image_generation_call.generating
    image_generation_call.in_progress image_generation_call.partial_image in_progress
    incomplete mcp_call.completed mcp_call.failed mcp_call.in_progress
    mcp_call_arguments.delta mcp_call_arguments.done mcp_list_tools.completed
    mcp_list_tools.failed mcp_list_tools.in_progress output_item.added output_item.done
    output_text.annotation.added output_text.delta output_text.done queued
    reasoning_summary_part.added reasoning_summary_part.done reasoning_summary_text.delta
    reasoning_summary_text.done reasoning_text.delta reasoning_text.done refusal.delta
    refusal.done web_search_call.completed web_search_call.in_progress
    web_search_call.searching
    """.split()
)
_STATUS = "in_progress completed incomplete failed queued cancelled searching generating"
_STATUS += " interpreting calling"

RESPONSES = Vocabulary(
    _FIELDS
    | frozenset(
        """
        input instructions previous_response_id conversation background max_output_tokens
        max_tool_calls prompt variables version reasoning effort summary generate_summary
        truncation include context_management prompt_cache_retention call_id output status
        file_url encrypted_content server_label server_url server_description headers
        require_approval vector_store_ids filters max_num_results ranking_options container
        action results queries
        """.split()
    ),
    {
        **_ENUMS,
        "type": frozenset(_ITEM_TYPES.split()),
        "role": frozenset({"user", "assistant", "system", "developer"}),
        "status": frozenset(_STATUS.split()),
        "truncation": frozenset({"auto", "disabled"}),
        "effort": frozenset({"none", "minimal", "low", "medium", "high", "xhigh"}),
        "summary": frozenset({"auto", "concise", "detailed"}),
        "tool_choice": frozenset({"none", "auto", "required"}),
    },
    # Reasoning the vendor encrypted for itself: no judge reads it; counted as opaque.
    binary_keys=frozenset({"encrypted_content"}),
    # Files and images the vendor fetches by id or URL: their content is unseen.
    reference_keys=frozenset({"file_id", "file_url", "image_url"}),
    media_fields=frozenset({"input", "prompt"}),  # items and a stored prompt's variables
    conversation="input",
)
# Where a request names what the model reads; without one of them there is no request.
_SOURCES = ("input", "prompt", "previous_response_id", "conversation")
_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]


class OpenAIResponses(OpenAIChat):
    """Adapter for the OpenAI Responses API (errors and body reading as chat completions)."""

    reads = "input (text, every item and content part, function call outputs), instructions,"
    reads += " tools, prompt variables, every other string"

    def parse_request(self, body: bytes) -> ChatRequest:
        """Every string of the request a receiver may read, in order; wrong shapes refused."""
        data = read_json(body)
        if not isinstance(data, dict):
            raise BadRequest("not_responses", "expected a JSON object with an 'input'")
        if all(data.get(key) is None for key in _SOURCES):
            raise BadRequest("not_responses", "a Responses request needs 'input' (or 'prompt')")
        given = data.get("input")
        if given is not None and not isinstance(given, str | list):
            raise BadRequest("not_responses", "'input' must be a string or a list of items")
        for i, item in enumerate(given if isinstance(given, list) else ()):
            if not isinstance(item, dict):
                raise BadRequest("not_responses", f"input[{i}] must be an object")
        instructions = data.get("instructions")
        if instructions is not None and not isinstance(instructions, str | list):
            raise BadRequest("not_responses", "'instructions' must be a string")
        background = data.get("background")
        if background is not None and not isinstance(background, bool):
            raise BadRequest("not_responses", "'background' must be true, false or null")
        request = read_request(data, RESPONSES, code="not_responses")
        return replace(request, deferred=background is True)

    def refusal(self, request: ChatRequest, *, message: str, shape: str, status: int) -> Reply:
        """A completed response whose one message holds a refusal part, or an error."""
        if shape == "error":
            return self.error(BadRequest("content_filter", message, status=status))
        model = request.model or "guardrail"
        ident = f"resp_guardrail_{uuid.uuid4().hex}"
        if request.stream:
            events = _Events(ident, model, Progress())
            return Reply(status, events.refusal(message, ending="response.completed"), _SSE)
        response = _response(ident, model, "completed", [_refusal_item(message, "completed")])
        return Reply(status, json.dumps(response).encode(), list(_JSON))

    def parts_of(self, value: Any) -> AnswerParts:
        """Every string of one event (or a whole response); deltas are flows, the rest side."""
        return _answer_parts(value)

    def stream_refusal(
        self,
        request: ChatRequest,
        *,
        message: str,
        ident: str | None = None,
        model: str | None = None,
        newline: bool = False,
        progress: Progress | None = None,
        steps: tuple[str, ...] = (),  # unused: ``progress`` carries where the stream is
    ) -> bytes:
        """The events that end a cut response: a refusal message item, then ``response.incomplete``.

        The refusal takes the next output slot and continues the sequence
        numbers. ``incomplete`` (reason ``content_filter``), not ``completed``:
        the items the app had opened were never finished, and the SDK's stream
        helper refuses to complete a response with unfinished items.
        """
        model = model or request.model or "guardrail"
        ident = ident or f"resp_guardrail_{uuid.uuid4().hex}"
        events = _Events(ident, model, progress or Progress(), started=True)
        return events.refusal(message, ending="response.incomplete")


class _Events:
    """The event sequence of one refusal, numbered after what the stream already sent."""

    def __init__(self, ident: str, model: str, progress: Progress, *, started: bool = False):
        self.ident, self.model = ident, model
        self.slot, self.sequence = progress.slots, progress.sequence
        self.started = started
        self.out: list[bytes] = []

    def emit(self, kind: str, **fields: Any) -> None:
        self.sequence += 1
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.out.append(f"event: {kind}\ndata: {json.dumps(event)}\n\n".encode())

    def refusal(self, message: str, *, ending: str) -> bytes:
        if not self.started:
            for kind in ("response.created", "response.in_progress"):
                self.emit(kind, response=_response(self.ident, self.model, "in_progress", []))
        where = {"output_index": self.slot}
        item = _refusal_item(message, "in_progress")
        part = {"item_id": item["id"], **where, "content_index": 0}
        self.emit("response.output_item.added", **where, item={**item, "content": []})
        self.emit("response.content_part.added", **part, part={"type": "refusal", "refusal": ""})
        self.emit("response.refusal.delta", **part, delta=message)
        self.emit("response.refusal.done", **part, refusal=message)
        self.emit("response.content_part.done", **part, part=item["content"][0])
        done = {**item, "status": "completed"}
        self.emit("response.output_item.done", **where, item=done)
        status = "completed" if ending == "response.completed" else "incomplete"
        self.emit(ending, response=_response(self.ident, self.model, status, [done]))
        return b"".join(self.out)


def _refusal_item(message: str, status: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": f"msg_guardrail_{uuid.uuid4().hex}",
        "status": status,
        "role": "assistant",
        "content": [{"type": "refusal", "refusal": message}],
    }


def _response(ident: str, model: str, status: str, output: list[Any]) -> dict[str, Any]:
    """A response object with every field the SDK's ``Response`` model requires."""
    return {
        "id": ident,
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "model": model,
        "output": output,
        "error": None,
        "incomplete_details": {"reason": "content_filter"} if status == "incomplete" else None,
        "instructions": None,
        "metadata": {},
        "parallel_tool_calls": True,
        "temperature": None,
        "tool_choice": "auto",
        "tools": [],
        "top_p": None,
        "usage": {
            "input_tokens": 0,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 0,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 0,
        },
    }


# Values that are provably not language: the API's known enums, by field name.
_ANSWER_ENUMS = {
    "type": frozenset(_ITEM_TYPES.split()) | _EVENT_TYPES,
    "object": frozenset({"response"}),
    "status": frozenset(_STATUS.split()),
    "role": frozenset({"assistant", "user", "system", "developer"}),
    "reason": frozenset({"max_output_tokens", "content_filter"}),
    "tool_choice": frozenset({"none", "auto", "required"}),
    "truncation": frozenset({"auto", "disabled"}),
    "service_tier": _ENUMS["service_tier"],
}
# Object keys of the API's answers; any other key is text a raw reader sees.
_ANSWER_KEYS = RESPONSES.fields | frozenset(
    """
    object created_at output_index content_index summary_index item_id item part delta
    sequence_number response error incomplete_details usage input_tokens output_tokens
    total_tokens input_tokens_details output_tokens_details cached_tokens reasoning_tokens
    annotations annotation annotation_index logprobs logprob top_logprobs token bytes
    refusal partial_image_b64 partial_image_index obfuscation reason code message param
    """.split()
)
# Binary payloads in answers (audio deltas, partial images): opaque when strictly base64.
_BINARY_EVENTS = frozenset({"response.audio.delta"})


def _answer_parts(value: Any) -> AnswerParts:
    if not isinstance(value, dict):
        return AnswerParts(side=tuple(split_parts(strings(value), _no_channel, _not_text)[1]))
    kind = value.get("type")
    lifecycle = value.get("response")
    if value.get("object") == "response":
        lifecycle = value
    elif not isinstance(kind, str) or kind not in _EVENT_TYPES:
        return foreign_parts(value)
    channel: str | None = None
    if isinstance(kind, str) and kind.endswith(".delta"):
        where = [value.get(k) for k in ("output_index", "content_index", "summary_index")]
        channel = f"{':'.join(map(str, where))}:{kind}"
    if isinstance(kind, str) and kind in _BINARY_EVENTS and isinstance(value.get("delta"), str):
        if _is_base64(value["delta"]):
            value = {k: v for k, v in value.items() if k != "delta"}

    def channel_of(path: str) -> str | None:
        if channel is None:
            return None
        if path == "delta":
            return channel
        return f"{channel}:logprobs" if path == "logprobs.token" else None

    flows, side = split_parts(strings(value), channel_of, _not_text)
    ident = model = None
    if isinstance(lifecycle, dict):
        ident, model = lifecycle.get("id"), lifecycle.get("model")
    return AnswerParts(
        tuple(flows),
        tuple(side),
        ident if isinstance(ident, str) else None,
        model if isinstance(model, str) else None,
        _progress(value, lifecycle),
    )


def _progress(event: dict[str, Any], lifecycle: Any) -> Progress:
    index, sequence = _count(event.get("output_index")), _count(event.get("sequence_number"))
    slots = index + 1 if index is not None else 0
    if isinstance(lifecycle, dict) and isinstance(lifecycle.get("output"), list):
        slots = max(slots, len(lifecycle["output"]))
    return Progress(slots, sequence if sequence is not None else -1)


def _count(value: Any) -> int | None:
    """An index or sequence number (a bool is an int to Python, but never a count)."""
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31
    return value if ok else None


def _not_text(path: str, text: str) -> bool:
    if path.endswith("#key"):
        return text in _ANSWER_KEYS
    if path.endswith("partial_image_b64"):
        return _is_base64(text)
    field = path.rsplit(".", 1)[-1]
    return text in _ANSWER_ENUMS.get(field, ())


def _no_channel(path: str) -> str | None:
    return None
