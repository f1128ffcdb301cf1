"""Anthropic Messages (``POST /v1/messages``): the real anthropic SDK against a guarded app.

The app is an Anthropic-shaped service written here (complete and streamed
answers in the API's event grammar), guarded in-process by the middleware or
from outside by the proxy; both on real uvicorn servers.
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx
import pytest
from answers import Answer
from anthropic.lib.streaming._messages import accumulate_event
from guarded import BENIGN, INJECTION, guarded_app, guarded_service, request_json
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from guardrail import Policy, load_policy, parse_policy
from guardrail.adapters import AnthropicMessages, BadRequest

CARD = "4111 1111 1111 1111"
SAFE = [f"Sentence {i} is about the garden, the weather and the trees. " for i in range(6)]
REFUSAL = "Sorry, I can't help with that request."


def messages_policy(*, output: bool = True, on_error: str = "block") -> Policy:
    """Local judges on the Messages route: injection and pii on the way in, pii on the way out."""
    return parse_policy(
        "name: test\n"
        "format: anthropic_messages\n"
        "routes: [{path: /v1/messages}]\n"
        "judges: {injection: {type: injection}, pii: {type: pii}}\n"
        "input: {screens: [{judge: injection}, {judge: pii}]}\n"
        f"on_error: {on_error}\n"
        + (
            "output: {screens: [{judge: pii}], window_chars: 80, idle_timeout_s: 5}\n"
            if output
            else ""
        )
    )


def event(kind: str, **fields: Any) -> bytes:
    """One event of a Messages stream: its name, and data whose type repeats it."""
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}\n\n".encode()


def message(content: list[dict[str, Any]], stop: str | None = "end_turn") -> dict[str, Any]:
    return {
        "id": "msg_app_1",
        "type": "message",
        "role": "assistant",
        "model": "app-model",
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {"input_tokens": 1, "output_tokens": 1},
    }


def text_stream(pieces: list[str], *, tool_input: str | None = None) -> list[bytes]:
    """A streamed answer: a tool_use block (its input in parts) if given, then a text block."""
    events = [event("message_start", message=message([], stop=None))]
    block = 0
    if tool_input is not None:
        tool = {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}}
        events.append(event("content_block_start", index=0, content_block=tool))
        half = len(tool_input) // 2
        for part in (tool_input[:half], tool_input[half:]):
            delta = {"type": "input_json_delta", "partial_json": part}
            events.append(event("content_block_delta", index=0, delta=delta))
        events.append(event("content_block_stop", index=0))
        block = 1
    events.append(
        event("content_block_start", index=block, content_block={"type": "text", "text": ""})
    )
    events.append(event("ping"))
    for piece in pieces:
        delta = {"type": "text_delta", "text": piece}
        events.append(event("content_block_delta", index=block, delta=delta))
    events.append(event("content_block_stop", index=block))
    stop = {"stop_reason": "end_turn", "stop_sequence": None}
    events += [
        event("message_delta", delta=stop, usage={"output_tokens": 9}),
        event("message_stop"),
    ]
    return events


@dataclass
class MessagesApp:
    """An Anthropic-shaped service: answers ``pieces``, or sends the ``raw`` events as they are."""

    pieces: list[str] = field(default_factory=lambda: ["Paris is the capital ", "of France."])
    raw: list[bytes] | None = None
    tool_input: str | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        request = await request_json(receive)
        self.requests.append(request)
        if not request.get("stream"):
            answer = json.dumps(message([{"type": "text", "text": "".join(self.pieces)}])).encode()
            length = str(len(answer)).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", length)]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": answer})
            return
        events = self.raw or text_stream(self.pieces, tool_input=self.tool_input)
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for chunk in events:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await asyncio.sleep(0.005)
        await send({"type": "http.response.body", "body": b""})


def client(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key="test", max_retries=0)


def ask(url: str, text: str, **options: Any) -> anthropic.types.Message:
    return client(url).messages.create(
        model="claude-test", max_tokens=64, messages=[{"role": "user", "content": text}], **options
    )


def stream(url: str, text: str) -> tuple[str, anthropic.types.Message]:
    """The text the SDK streamed, and the message it assembled."""
    with client(url).messages.stream(
        model="claude-test", max_tokens=64, messages=[{"role": "user", "content": text}]
    ) as events:
        streamed = "".join(events.text_stream)
        return streamed, events.get_final_message()


def text_of(answer: anthropic.types.Message) -> str:
    return "".join(b.text for b in answer.content if b.type == "text")


# --- the SDK through the middleware and through the proxy ---------------------------


@pytest.mark.parametrize("proxy", [False, True], ids=["middleware", "proxy"])
def test_benign_is_answered_and_injection_refused_in_the_sdks_shape(proxy: bool) -> None:
    app = MessagesApp()
    with guarded_service(app, messages_policy(), proxy=proxy) as url:
        answer = ask(url, BENIGN)
        assert text_of(answer) == "Paris is the capital of France."
        assert answer.stop_reason == "end_turn"
        streamed, final = stream(url, BENIGN)
        assert streamed == "Paris is the capital of France."
        assert final.stop_reason == "end_turn"

        refused = ask(url, INJECTION)
        assert refused.stop_reason == "refusal"
        assert text_of(refused) == REFUSAL
        streamed, final = stream(url, INJECTION)
        assert final.stop_reason == "refusal"
        assert streamed == REFUSAL == text_of(final)


@pytest.mark.parametrize("proxy", [False, True], ids=["middleware", "proxy"])
def test_a_card_in_the_answer_is_cut_and_the_sdk_parses_the_refusal(proxy: bool) -> None:
    app = MessagesApp(
        pieces=[*SAFE[:4], f"Your card {CARD[:9]}", f"{CARD[9:]} is here. ", *SAFE[4:]]
    )
    with guarded_service(app, messages_policy(), proxy=proxy) as url:
        streamed, final = stream(url, BENIGN)
        assert final.stop_reason == "refusal"
        assert "4111" not in streamed and "1111 1111" not in streamed
        assert SAFE[0] in streamed  # clean text before the card flowed
        assert text_of(final).endswith(REFUSAL)
        assert SAFE[5] not in streamed

        whole = ask(url, BENIGN)
        assert whole.stop_reason == "refusal" and "4111" not in text_of(whole)


def test_a_card_split_across_tool_input_deltas_is_cut_after_the_tool_block() -> None:
    tool_input = json.dumps({"note": f"card {CARD}", "pad": SAFE[0]})
    app = MessagesApp(pieces=SAFE[:2], tool_input=tool_input)
    with guarded_service(app, messages_policy(), proxy=False) as url:
        _, final = stream(url, BENIGN)
        assert final.stop_reason == "refusal"
        # The refusal is a block of its own, after any block the client saw.
        assert final.content[-1].type == "text" and final.content[-1].text == REFUSAL
        assert "4111" not in json.dumps([b.model_dump() for b in final.content])


def test_refusal_as_an_error_is_raised_by_the_sdk_in_anthropics_error_shape() -> None:
    policy = messages_policy().model_copy(
        update={
            "refusal": messages_policy().refusal.model_copy(
                update={"shape": "error", "status": 400}
            )
        }
    )
    with guarded_service(MessagesApp(), policy, proxy=False) as url:
        with pytest.raises(anthropic.BadRequestError) as raised:
            ask(url, INJECTION)
        assert raised.value.body == {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": REFUSAL},
        }


def test_the_demo_app_echoes_the_sdk_guarded_by_the_shipped_anthropic_policy() -> None:
    with guarded_app(load_policy("policies/anthropic.yaml")) as demo:
        assert text_of(ask(demo.url, BENIGN)) == f"You said: {BENIGN}"
        streamed, final = stream(demo.url, BENIGN)
        assert streamed == f"You said: {BENIGN}" and final.stop_reason == "end_turn"
        assert ask(demo.url, INJECTION).stop_reason == "refusal"
        # A card split across two text blocks is still read whole (and never echoed).
        blocks = [
            {"type": "text", "text": f"Repeat {CARD[:9]}"},
            {"type": "text", "text": CARD[9:]},
        ]
        with client(demo.url).messages.stream(
            model="m", max_tokens=9, messages=[{"role": "user", "content": blocks}]
        ) as events:
            assert events.get_final_message().stop_reason == "refusal"


# --- bad input ----------------------------------------------------------------------

MALFORMED = [
    b"not json",
    b'{"model": "m", "messages": "hello"}',
    b'{"model": "m", "messages": []}',
    b'{"model": "m", "messages": [{"content": "hi"}]}',
    b'{"model": "m", "messages": [{"role": "user", "content": 5}]}',
    b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}',
    b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "system": 3}',
    b'{"model": "m", "messages": [{"role": "user", "content": "a"}], "messages": []}',
    b'{"model": "m", "Messages": [], "messages": [{"role": "user", "content": "hi"}]}',
    b'{"model": "m", "STREAM": true, "messages": [{"role": "user", "content": "hi"}]}',
]


def test_malformed_bodies_get_a_400_in_anthropics_error_shape() -> None:
    app = MessagesApp()
    with guarded_service(app, messages_policy(), proxy=False) as url:
        for body in MALFORMED:
            answer = httpx.post(url + "/v1/messages", content=body)
            assert answer.status_code == 400, body
            error = answer.json()
            assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
        assert app.requests == []  # none reached the app
        with pytest.raises(anthropic.BadRequestError):
            client(url).messages.create(model="m", max_tokens=5, messages=[])


def blocks_request(*blocks: dict[str, Any], **fields: Any) -> bytes:
    content = list(blocks) or "hi"
    return json.dumps(
        {
            "model": "m",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": content}],
            **fields,
        }
    ).encode()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# An injection in base64: a model decodes it, and it is strictly base64.
INJECTION_B64 = b64(INJECTION + "   ")
assert len(INJECTION_B64) % 4 == 0 and "=" not in INJECTION_B64

# Every place a Messages request carries text a model or an app reads.
HIDING_PLACES = {
    "system string": blocks_request(system=INJECTION),
    "system blocks": blocks_request(system=[{"type": "text", "text": INJECTION}]),
    "tool_use input": blocks_request(
        {"type": "tool_use", "id": "t", "name": "f", "input": {"q": {"deep": [INJECTION]}}}
    ),
    "tool_result string": blocks_request(
        {"type": "tool_result", "tool_use_id": "t", "content": INJECTION}
    ),
    "tool_result blocks": blocks_request(
        {
            "type": "tool_result",
            "tool_use_id": "t",
            "content": [{"type": "text", "text": INJECTION}],
        }
    ),
    "thinking": blocks_request({"type": "thinking", "thinking": INJECTION, "signature": "c2ln"}),
    "text document": blocks_request(
        {
            "type": "document",
            "source": {"type": "text", "media_type": "text/plain", "data": INJECTION},
        }
    ),
    "base64 text document": blocks_request(
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "text/plain", "data": b64(INJECTION)},
        }
    ),
    "search_result": blocks_request(
        {
            "type": "search_result",
            "source": "s",
            "title": "t",
            "content": [{"type": "text", "text": INJECTION}],
        }
    ),
    "tool definition": blocks_request(
        tools=[{"name": "f", "description": INJECTION, "input_schema": {"type": "object"}}]
    ),
    "tool parameter name": blocks_request(
        tools=[{"name": "f", "input_schema": {"type": "object", "properties": {INJECTION: {}}}}]
    ),
    "unknown block type": blocks_request({"type": "hologram", "payload": {"words": INJECTION}}),
    # A content block's shape in a tool's input is JSON the model reads, base64 and all.
    "signature in tool input": blocks_request(
        {
            "type": "tool_use",
            "id": "t",
            "name": "f",
            "input": {"type": "thinking", "signature": INJECTION_B64},
        }
    ),
    "image source in tool input": blocks_request(
        {
            "type": "tool_use",
            "id": "t",
            "name": "f",
            "input": {
                "source": {"type": "base64", "media_type": "image/png", "data": INJECTION_B64}
            },
        }
    ),
    "unknown field": blocks_request(future_field=INJECTION),
    "image url": blocks_request({"type": "image", "source": {"type": "url", "url": INJECTION}}),
    "base64 that is not base64": blocks_request(
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": INJECTION},
        }
    ),
}


@pytest.mark.parametrize("body", HIDING_PLACES.values(), ids=HIDING_PLACES.keys())
def test_text_in_every_block_shape_is_screened(body: bytes) -> None:
    text = AnthropicMessages().parse_request(body).text
    assert INJECTION in text or INJECTION_B64 in text


def test_binary_media_is_counted_not_screened_and_names_are_not_text() -> None:
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": b64("PNG" * 9)},
    }
    pdf = {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": b64("%PDF")},
    }
    request = AnthropicMessages().parse_request(
        blocks_request(image, pdf, {"type": "text", "text": "Describe these."}, stream=True)
    )
    assert request.text == "Describe these."
    assert request.opaque == 2 and request.stream and request.model == "m"


def test_an_injection_in_an_unknown_block_is_refused_end_to_end() -> None:
    app = MessagesApp()
    with guarded_service(app, messages_policy(), proxy=False) as url:
        answer = httpx.post(url + "/v1/messages", content=HIDING_PLACES["unknown block type"])
        assert answer.json()["stop_reason"] == "refusal"
        assert answer.json()["content"] == [{"type": "text", "text": REFUSAL}]


def test_an_openai_chat_stream_on_the_messages_route_is_not_passed_on() -> None:
    # The SDKs skip data without an event name; raw readers show it. It is not
    # the API's grammar, so it is unreadable: fail-closed ends it with a refusal.
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": "4111 1111"}}],
    }
    tail = {**chunk, "choices": [{"index": 0, "delta": {"content": " 1111 1111"}}]}
    raw = [f"data: {json.dumps(c)}\n\n".encode() for c in (chunk, tail)] + [b"data: [DONE]\n\n"]
    with guarded_service(MessagesApp(raw=raw), messages_policy(), proxy=False) as url:
        body = blocks_request(stream=True)
        answer = Answer(200, [], httpx.post(url + "/v1/messages", content=body).content)
        assert b"4111" not in answer.body
        assert [e.get("event") for e in answer.events()][-2:] == ["message_delta", "message_stop"]
        _, final = stream(url, BENIGN)
        assert final.stop_reason == "refusal"


def test_an_event_whose_name_and_type_differ_is_unreadable() -> None:
    adapter = AnthropicMessages()
    delta = json.dumps(
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x"}}
    )
    assert adapter.event_parts(delta, "ping") is None
    assert adapter.event_parts(delta, None) is None
    parts = adapter.event_parts(delta, "content_block_delta")
    assert parts is not None and parts.flows == (("0", "x"),)


def test_a_refusal_continues_the_blocks_the_client_saw() -> None:
    # A message that opens with a block of its own, a tool block, and a text block left open.
    seen = [
        event("message_start", message=message([{"type": "text", "text": "Pre"}], stop=None)),
        event(
            "content_block_start",
            index=1,
            content_block={"type": "tool_use", "id": "t", "name": "f", "input": {}},
        ),
        event("content_block_stop", index=1),
        event("content_block_start", index=2, content_block={"type": "text", "text": ""}),
        event("content_block_delta", index=2, delta={"type": "text_delta", "text": "Hi"}),
    ]
    adapter = AnthropicMessages()
    steps = []
    for raw in seen:
        fields = Answer(200, [], raw).events()[0]
        parts = adapter.event_parts(fields["data"], fields["event"])
        assert parts is not None
        steps += [parts.step] if parts.step else []
    request = adapter.parse_request(blocks_request(stream=True))
    refusal = adapter.stream_refusal(request, message="no", steps=tuple(steps))
    # The SDK's own accumulation of the whole stream: no event out of place.
    snapshot = None
    for fields in Answer(200, [], b"".join(seen) + refusal).events():
        data = json.loads(fields["data"])
        snapshot = accumulate_event(event=data, current_snapshot=snapshot, json_bufs={})
    assert snapshot is not None and snapshot.stop_reason == "refusal"
    assert [b.type for b in snapshot.content] == ["text", "tool_use", "text", "text"]
    assert snapshot.content[2].text == "Hi" and snapshot.content[3].text == "no"


def test_errors_use_anthropics_error_types() -> None:
    reply = AnthropicMessages().error(BadRequest("too_big", "too big", status=413))
    assert json.loads(reply.body) == {
        "type": "error",
        "error": {"type": "request_too_large", "message": "too big"},
    }


# --- properties ---------------------------------------------------------------------

MARK = "zq marked words qz"  # spaces: no enum value, model name or base64 payload holds it
json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8)
keys = st.sampled_from(
    ["type", "text", "source", "data", "media_type", "content", "input", "id"]
) | st.text(max_size=6)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=12,
)


def plant(value: Any, path: list[int], as_key: bool) -> Any:
    """``value`` with MARK put in place of (or as the key of) one of its leaves."""
    if isinstance(value, dict) and value:
        items = list(value.items())
        i = path[0] % len(items) if path else 0
        k, v = items[i]
        if as_key and not isinstance(v, dict | list):
            items[i] = (MARK, v)
        else:
            items[i] = (k, plant(v, path[1:], as_key))
        return dict(items)
    if isinstance(value, list) and value:
        i = path[0] % len(value) if path else 0
        return [*value[:i], plant(value[i], path[1:], as_key), *value[i + 1 :]]
    return MARK


@settings(max_examples=150)
@given(
    block=st.dictionaries(keys, json_values, min_size=1, max_size=4),
    path=st.lists(st.integers(0, 10), max_size=6),
    as_key=st.booleans(),
    where=st.sampled_from(["content", "system", "tool_result", "tool"]),
)
def test_every_string_of_any_block_shape_is_screened(
    block: dict[str, Any], path: list[int], as_key: bool, where: str
) -> None:
    planted = plant(block, path, as_key)
    fields: dict[str, Any] = {}
    blocks = [planted]
    if where == "system":
        fields, blocks = {"system": [planted]}, []
    elif where == "tool_result":
        blocks = [{"type": "tool_result", "tool_use_id": "t", "content": [planted]}]
    elif where == "tool":
        fields, blocks = {"tools": [planted]}, []
    body = blocks_request(*blocks, **fields)
    try:
        text = AnthropicMessages().parse_request(body).text
    except BadRequest as refused:  # a defined refusal (folded duplicate keys, say) is fine
        assert refused.status == 400
        return
    assert MARK in text


@settings(max_examples=60)
@given(st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=8))
def test_streamed_block_text_is_one_flow_per_block(pieces: list[str]) -> None:
    adapter = AnthropicMessages()
    flows = []
    for raw in text_stream(pieces):
        lines = raw.decode().splitlines()
        name, data = lines[0].removeprefix("event: "), lines[1].removeprefix("data: ")
        parts = adapter.event_parts(data, name)
        assert parts is not None
        flows += [text for channel, text in parts.flows if channel == "0"]
    assert "".join(flows) == "".join(pieces)


@settings(max_examples=150)
@given(
    extra=st.dictionaries(keys, json_values, max_size=4),
    path=st.lists(st.integers(0, 10), max_size=6),
    as_key=st.booleans(),
    name=st.sampled_from(sorted(AnthropicMessages.event_names)),
)
def test_every_string_of_any_event_or_answer_is_screened(
    extra: dict[str, Any], path: list[int], as_key: bool, name: str
) -> None:
    value = {**plant({"delta": extra, "index": 0}, path, as_key), "type": name}
    assume(MARK in json.dumps(value))
    adapter = AnthropicMessages()
    parts = adapter.event_parts(json.dumps(value), name)
    assert parts is not None and MARK in parts.text()
    assert MARK in adapter.answer_parts(json.dumps(value).encode()).text()


_sealed_shapes = st.sampled_from(
    [
        {"type": "thinking", "thinking": "t", "signature": INJECTION_B64},
        {"type": "redacted_thinking", "data": INJECTION_B64},
        {"source": {"type": "base64", "media_type": "image/png", "data": INJECTION_B64}},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": INJECTION_B64},
        },
    ]
)


@settings(max_examples=100)
@given(shape=_sealed_shapes, depth=st.integers(0, 4), where=st.sampled_from(["input", "tool"]))
def test_a_sealed_or_media_shape_outside_the_apis_blocks_is_text(
    shape: dict[str, Any], depth: int, where: str
) -> None:
    nested: Any = shape
    for _ in range(depth):
        nested = {"v": [nested]}
    if where == "input":
        body = blocks_request({"type": "tool_use", "id": "t", "name": "f", "input": {"x": nested}})
    else:
        body = blocks_request(tools=[{"name": "f", "input_schema": {"default": nested}}])
    request = AnthropicMessages().parse_request(body)
    assert INJECTION_B64 in request.text and request.opaque == 0
