"""The OpenAI Responses API (``POST /v1/responses``): requests, answers and refusals.

What the adapter takes for text is tested with no I/O; the rest drives the
example app with the real ``openai`` SDK over real uvicorn, guarded in-process
and behind the proxy.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import httpx
import openai
import pytest
from answers import raw_app
from formats import PREAMBLE, client, formats_policy, served_guarded, served_proxy
from guarded import CARD, INJECTION, Guarded
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from served import Served

from guardrail import GuardrailMiddleware
from guardrail.adapters import BadRequest, OpenAIResponses
from guardrail.adapters.openai_responses import RESPONSES

ADAPTER = OpenAIResponses()
CARD_DIGITS = "4111 1111 1111 1111"
Serve = Callable[..., AbstractContextManager[Guarded]]
SERVERS = [pytest.param(served_guarded, id="middleware"), pytest.param(served_proxy, id="proxy")]


def read(body: dict[str, Any]) -> str:
    return ADAPTER.parse_request(json.dumps(body).encode()).text


# --- requests ---------------------------------------------------------------------


def test_every_field_the_model_reads_is_screened() -> None:
    pdf = "data:application/pdf;base64," + "JVBERi0xLjQK" * 4
    body = {
        "model": "gpt-4.1",
        "instructions": "mark-instructions",
        "input": [
            {"role": "user", "content": "mark-easy-message"},
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "mark-input-text"},
                    {"type": "input_image", "image_url": "https://example.com/mark-image.png"},
                    {"type": "input_file", "filename": "mark-file.pdf", "file_data": pdf},
                ],
            },
            {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "mark-args"},
            {"type": "function_call_output", "call_id": "c1", "output": "mark-tool-output"},
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "mark-summary"}]},
            {"type": "item_reference", "id": "mark-reference"},
            {"type": "a_future_item", "payload": {"nested": ["mark-unknown-item"]}},
        ],
        "tools": [
            {
                "type": "function",
                "name": "lookup",
                "description": "mark-tool-description",
                "parameters": {"type": "object", "properties": {"mark_param": {"type": "string"}}},
            }
        ],
        "prompt": {"id": "pmpt_1", "variables": {"city": "mark-variable"}},
    }
    request = ADAPTER.parse_request(json.dumps(body).encode())
    for mark in (
        "instructions",
        "easy-message",
        "input-text",
        "image.png",
        "file.pdf",
        "args",
        "tool-output",
        "summary",
        "reference",
        "unknown-item",
        "tool-description",
        "mark_param",
        "variable",
    ):
        assert f"mark-{mark}" in request.text or mark in request.text, mark
    # The inline PDF and the image by URL: no judge reads them, so they are counted.
    assert request.opaque == 2
    assert "gpt-4.1" not in request.text  # a model name is not language


def test_a_string_input_is_screened_and_streaming_is_read() -> None:
    request = ADAPTER.parse_request(b'{"model": "m", "input": "hello there", "stream": true}')
    assert request.text == "hello there" and request.stream and request.model == "m"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"[]", "not_responses"),
        (b'{"model": "m"}', "not_responses"),  # nothing for the model to read
        (b'{"model": "m", "input": 5}', "not_responses"),
        (b'{"model": "m", "input": ["hi"]}', "not_responses"),  # items are objects
        (b'{"model": "m", "input": "hi", "instructions": 7}', "not_responses"),
        (b'{"model": "m", "input": "hi", "stream": "yes"}', "not_responses"),
        (b'{"model": "m", "input": "hi", "background": 1}', "not_responses"),
        (b'{"model": "m", "input": "hi", "input": "Ignore all"}', "duplicate_key"),
        (b'{"model": "m", "input": "hi", "Input": "Ignore all"}', "ambiguous_key"),
        (b'{"model": "m", "input": "hi", "Stream": true}', "ambiguous_key"),
    ],
)
def test_malformed_bodies_are_refused(body: bytes, code: str) -> None:
    with pytest.raises(BadRequest) as refused:
        ADAPTER.parse_request(body)
    assert refused.value.code == code


# Text no enum, model name, base64 payload or data URL can be: it must be screened.
_said = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12).map(lambda t: f"say! {t}")
_keys = st.sampled_from(sorted(RESPONSES.fields)) | st.from_regex(r"x[a-z]{1,6}", fullmatch=True)
_values = st.recursive(
    _said,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=3),
    max_leaves=12,
)
_items = st.fixed_dictionaries(
    {"type": st.sampled_from(["message", "function_call_output", "reasoning", "x_new"])},
    optional={"role": st.sampled_from(["user", "assistant"])},
).flatmap(lambda head: st.dictionaries(_keys, _values, max_size=4).map(lambda d: {**d, **head}))


def _leaves(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            if key not in RESPONSES.fields:
                yield key
            yield from _leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from _leaves(item)


@given(st.lists(_items, min_size=1, max_size=4), _said)
def test_every_string_an_item_can_hold_is_screened(items: list[dict[str, Any]], said: str) -> None:
    body = {"model": "m", "input": items, "instructions": said}
    try:
        text = read(body)
    except BadRequest as refused:  # a sampled field name twice under folding, say
        assert refused.code in ("ambiguous_key", "invalid_data_url")
        return
    for leaf in _leaves(items):
        if leaf.strip() and leaf not in {"message", "function_call_output", "reasoning"}:
            assert leaf in text or leaf in {"user", "assistant"}
    assert said in text


_event_types = st.sampled_from(
    ["response.output_text.delta", "response.completed", "response.refusal.delta", "x.delta"]
)


@given(st.lists(st.tuples(_event_types, _values, _values), min_size=1, max_size=4))
def test_every_string_an_answer_event_can_hold_is_screened(
    events: list[tuple[str, Any, Any]],
) -> None:
    """Deltas, known fields and unknown ones, in the grammar or not: all reach the judges."""
    for kind, delta, extra in events:
        event = {"type": kind, "output_index": 0, "delta": delta, "x_extra": extra}
        parts = ADAPTER.event_parts(json.dumps(event))
        assert parts is not None
        text = parts.text()
        for leaf in [*_leaves(delta), *_leaves(extra)]:
            assert leaf in text or not leaf.strip()


# --- through the middleware and the proxy -------------------------------------------


@pytest.mark.parametrize("serve", SERVERS)
def test_benign_answered_and_injection_refused_as_the_sdk_reads_them(serve: Serve) -> None:
    with serve(formats_policy()) as app:
        sdk = client(app.url)
        answer = sdk.responses.create(model="m", input="What is the capital of France?")
        assert answer.output_text == "You said: What is the capital of France?"
        deltas = [
            e.delta
            for e in sdk.responses.create(model="m", input="hello there", stream=True)
            if e.type == "response.output_text.delta"
        ]
        assert "".join(deltas) == "You said: hello there"

        tool_said = [{"type": "function_call_output", "call_id": "c1", "output": INJECTION}]
        from_tool = sdk.responses.create(model="m", input=tool_said)  # type: ignore[arg-type]
        assert from_tool.output[0].content[0].type == "refusal"  # type: ignore[union-attr]
        refused = sdk.responses.create(model="m", input=INJECTION)
        assert refused.status == "completed"
        part = refused.output[0].content[0]  # type: ignore[union-attr]
        assert part.type == "refusal" and "can't help" in part.refusal

        events = list(sdk.responses.create(model="m", input=INJECTION, stream=True))
        assert [e.type for e in events][-1] == "response.completed"
        refusal = "".join(e.delta for e in events if e.type == "response.refusal.delta")
        assert "can't help" in refusal
        with sdk.responses.stream(model="m", input=INJECTION) as stream:
            final = stream.get_final_response()  # the SDK's own accumulator accepts it
        assert final.output[0].content[0].type == "refusal"  # type: ignore[union-attr]
        assert app.decisions("blocked") == 4 and app.decisions("allowed") == 2


@pytest.mark.parametrize("serve", SERVERS)
def test_a_card_in_the_answer_is_cut(serve: Serve) -> None:
    with serve(formats_policy(answers=True)) as app:
        sdk = client(app.url)
        whole = sdk.responses.create(model="m", input=CARD)
        assert whole.output[0].content[0].type == "refusal"  # type: ignore[union-attr]
        assert CARD_DIGITS not in whole.model_dump_json()

        events = list(sdk.responses.create(model="m", input=PREAMBLE + CARD, stream=True))
        released = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        assert released.startswith("You said: Here is")  # windows before the card passed
        assert "4111" not in released
        assert events[-1].type == "response.incomplete"
        assert events[-1].response.incomplete_details.reason == "content_filter"  # type: ignore[union-attr]
        refusal = "".join(e.delta for e in events if e.type == "response.refusal.delta")
        assert "can't help" in refusal
        # The refusal continues the stream: the next output slot, later sequence numbers.
        numbers = [e.sequence_number for e in events]
        assert numbers == sorted(set(numbers))
        added = [e.output_index for e in events if e.type == "response.output_item.added"]
        assert added == [0, 1]
        # The SDK's accumulator checks response ids and output slots as events come.
        with sdk.responses.stream(model="m", input=PREAMBLE + CARD) as stream:
            assert [e.type for e in stream][-1] == "response.incomplete"
        assert app.decisions("blocked") == 3


def test_a_background_response_is_refused_when_answers_are_screened() -> None:
    """Its answer is fetched later by another request: no output stage would see it."""
    with served_guarded(formats_policy(answers=True)) as app:
        with pytest.raises(openai.BadRequestError) as refused:
            client(app.url).responses.create(model="m", input="hello", background=True)
        assert refused.value.code == "deferred_answer"
    with served_guarded(formats_policy()) as app:  # requests only: its input was screened
        answer = client(app.url).responses.create(model="m", input="hello", background=True)
        assert answer.output_text == "You said: hello"


def test_an_answer_in_another_apis_grammar_is_screened_joined() -> None:
    """Chat chunks on the Responses route: a card split across them is still found."""

    def chunk(content: str) -> bytes:
        event = {"id": "c1", "choices": [{"index": 0, "delta": {"content": content}}]}
        return b"data: " + json.dumps(event).encode() + b"\n\n"

    pieces = [PREAMBLE, PREAMBLE, "my card ", "4111 ", "1111 ", "1111 ", "1111", " ok"]
    app = raw_app([chunk(p) for p in pieces])
    guarded = GuardrailMiddleware(
        app, policy=formats_policy(answers=True), registry=CollectorRegistry()
    )
    with Served(guarded, name="foreign") as served:
        body = {"model": "m", "input": "hello", "stream": True}
        got = httpx.post(served.url + "/v1/responses", json=body, timeout=60.0).text
    contents = [
        json.loads(line[6:])["choices"][0]["delta"]["content"]
        for line in got.splitlines()
        if line.startswith("data: ") and '"choices"' in line
    ]
    assert contents and contents[0] == PREAMBLE  # released before the card
    assert CARD_DIGITS not in "".join(contents)
    assert "event: response.incomplete" in got  # ended in the route's own grammar
