"""Every string of a request a receiver may read is screened, or the request is refused.

Three layers: what the adapter takes for text (no I/O); the demo app over real
HTTP with the real ``openai`` client, one test per hiding place found in the
wild; and a property test that sends generated hostile bodies through the
middleware to an app that reads keys case-insensitively, as Go does.
"""

from __future__ import annotations

import base64
import gzip
import json
import sys
import unicodedata
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from folding_receiver import FoldingReceiver, fold
from guarded import BENIGN, INJECTION, Guarded, guarded_app, policy
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from served import Served

from guardrail import GuardrailMiddleware, parse_policy
from guardrail.adapters import BadRequest, OpenAIChat
from guardrail.adapters.base import NON_STARTER_DECOMPOSITIONS, fold_key, stream_safe
from guardrail.adapters.openai_responses import OpenAIResponses

URL = "/v1/chat/completions"
PDF = "data:application/pdf;base64," + base64.b64encode(b"%PDF-1.4 binary").decode()
PNG = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(64)).decode()


def user(content: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": content}]


def screened(body: dict[str, Any]) -> str:
    return OpenAIChat().parse_request(json.dumps(body).encode()).text


# --- what is text, what is not (no I/O) ---------------------------------------


def tool(description: str = "Look up the weather", param: str = "city") -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": "weather",
            "description": description,
            "parameters": {
                "type": "object",
                "properties": {param: {"type": "string", "description": "a city name"}},
                "required": [param],
            },
        },
    }


@pytest.mark.parametrize(
    ("extra", "hidden"),
    [
        ({"tools": [tool(description="PAYLOAD")]}, "PAYLOAD"),
        ({"tools": [tool(param="PAYLOAD")]}, "PAYLOAD"),  # a free-form key is text
        ({"functions": [{"name": "f", "description": "PAYLOAD"}]}, "PAYLOAD"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "a", "schema": {"description": "PAYLOAD"}},
                }
            },
            "PAYLOAD",
        ),
        ({"prediction": {"type": "content", "content": "PAYLOAD"}}, "PAYLOAD"),
        ({"metadata": {"PAYLOAD": "v"}}, "PAYLOAD"),
        ({"metadata": {"k": "PAYLOAD"}}, "PAYLOAD"),
        ({"instructions": "PAYLOAD"}, "PAYLOAD"),
        ({"input": "PAYLOAD"}, "PAYLOAD"),
        ({"prompt": ["PAYLOAD"]}, "PAYLOAD"),
        ({"user": "PAYLOAD"}, "PAYLOAD"),
        ({"stop": ["PAYLOAD"]}, "PAYLOAD"),
        ({"x_vendor": {"deep": [{"PAYLOAD": 1}]}}, "PAYLOAD"),
        ({"tool_choice": "PAYLOAD"}, "PAYLOAD"),  # outside its enum: text
        ({"reasoning_effort": "PAYLOAD"}, "PAYLOAD"),
        ({"model": "PAYLOAD and more words"}, "PAYLOAD"),  # not a model name's shape
    ],
    ids=lambda v: json.dumps(v)[:40] if isinstance(v, dict) else None,
)
def test_fields_beyond_messages_are_text(extra: dict[str, Any], hidden: str) -> None:
    assert hidden in screened({"model": "m", "messages": user("hi"), **extra})


@pytest.mark.parametrize(
    "message",
    [
        {"role": "user", "content": [{"type": "file", "file": {"filename": "PAYLOAD"}}]},
        {"role": "user", "content": [{"type": "file", "file": {"file_id": "PAYLOAD"}}]},
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "https://x/PAYLOAD"}}],
        },
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "u", "detail": "PAYLOAD"}}],
        },
        {"role": "user", "content": [{"type": "PAYLOAD", "text": "hi"}]},
        {"role": "user PAYLOAD", "content": "hi"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "PAYLOAD", "type": "function"}],
        },
        {"role": "tool", "tool_call_id": "PAYLOAD", "content": "42"},
        {"role": "user", "content": "hi", "id": "PAYLOAD"},
    ],
)
def test_every_field_of_a_message_is_text(message: dict[str, Any]) -> None:
    assert "PAYLOAD" in screened({"model": "m", "messages": [message]})


def test_only_fixed_words_and_binary_media_go_unscreened() -> None:
    body = {
        "model": "openai/gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "be brief"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this"},
                    {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}},
                    {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                    {"type": "file", "file": {"file_data": PDF}},
                ],
            },
        ],
        "temperature": 0.2,
        "seed": 7,
        "stream": False,
        "logit_bias": {"50256": -100},
        "tool_choice": "auto",
        "reasoning_effort": "low",
        "modalities": ["text"],
    }
    request = OpenAIChat().parse_request(json.dumps(body).encode())
    assert request.text.split("\n\n") == ["be brief", "what is this"]
    assert request.opaque == 3  # the image, the audio and the PDF: no judge reads them


def test_a_data_url_of_text_is_decoded_and_screened() -> None:
    plain = "data:text/plain;base64," + base64.b64encode(b"PAYLOAD in a file").decode()
    as_svg = "data:image/svg+xml,%3Csvg%3EPAYLOAD%3C/svg%3E"
    for url in (plain, as_svg, "data:,PAYLOAD"):
        part = {"type": "file", "file": {"filename": "a.txt", "file_data": url}}
        assert "PAYLOAD" in screened({"model": "m", "messages": user([part])})
        image = {"type": "image_url", "image_url": {"url": url}}
        assert "PAYLOAD" in screened({"model": "m", "messages": user([image])})


def test_a_binary_slot_holding_no_base64_is_text() -> None:
    audio = {"type": "input_audio", "input_audio": {"data": "PAYLOAD here", "format": "wav"}}
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,PAYLOAD here"}}
    for part in (audio, image):
        request = OpenAIChat().parse_request(json.dumps({"messages": user([part])}).encode())
        assert "PAYLOAD" in request.text and request.opaque == 0


SMUGGLED = base64.b64encode(INJECTION.encode() + b"   ").decode()  # strict base64, no padding
# The media and sealed slots by name, each holding an injection in base64.
_MEDIA_SHAPES = [
    {"image_url": "data:image/png;base64," + SMUGGLED},
    {"image_url": {"url": "data:image/png;base64," + SMUGGLED}},
    {"file_data": "data:application/pdf;base64," + SMUGGLED},
    {"input_audio": {"data": SMUGGLED}},
    {"encrypted_content": SMUGGLED},
]


@settings(max_examples=100)
@given(
    shape=st.sampled_from(_MEDIA_SHAPES),
    depth=st.integers(0, 3),
    where=st.sampled_from(
        ["tool schema", "response_format", "metadata", "unknown field", "another api's field"]
    ),
    api=st.sampled_from(["chat", "responses"]),
)
def test_a_media_slot_outside_the_messages_is_text(
    shape: dict[str, Any], depth: int, where: str, api: str
) -> None:
    # A tool's schema is read by the model, metadata and unknown fields by the app:
    # neither decodes media there, and a model reads base64 as it reads any text.
    nested: Any = shape
    for _ in range(depth):
        nested = {"v": [nested]}
    body: dict[str, Any] = {"model": "m"}
    if api == "chat":
        body["messages"] = user("hi")
        adapter: Any = OpenAIChat()
    else:
        body["input"] = "hi"
        adapter = OpenAIResponses()
    if where == "tool schema":
        schema = {"type": "object", "properties": {"q": {"type": "string", "examples": [nested]}}}
        function = {"name": "f", "parameters": schema}
        body["tools"] = [
            {"type": "function", **(function if api == "responses" else {"function": function})}
        ]
    elif where == "response_format":
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "n", "schema": {"default": nested}},
        }
    elif where == "metadata":
        body["metadata"] = {"note": nested}
    elif where == "another api's field":  # Responses' media fields on the chat route
        body["prompt" if api == "chat" else "messages"] = nested
    else:
        body["future_field"] = nested
    request = adapter.parse_request(json.dumps(body).encode())
    assert SMUGGLED in request.text


def test_a_text_data_url_we_cannot_read_as_the_receiver_would_is_refused() -> None:
    for url in ("data:text/plain;base64,SGVsbG8_-w==", "data:text/plain;base64,//79"):
        part = {"type": "file", "file": {"file_data": url}}
        with pytest.raises(BadRequest) as caught:
            screened({"messages": user([part])})
        assert caught.value.code == "invalid_data_url"


def test_the_non_starter_set_matches_this_pythons_unicode_database() -> None:
    found = {
        chr(c)
        for c in range(sys.maxunicode + 1)
        if unicodedata.combining(chr(c)) == 0
        and (d := unicodedata.normalize("NFKD", chr(c)))
        and unicodedata.combining(d[0]) != 0
    }
    assert found == NON_STARTER_DECOMPOSITIONS


def test_keys_are_folded_in_linear_time_shape() -> None:
    # Stream-safe: no run of more than 30 non-starters is left for normalisation to sort.
    key = "a" + "\u0301\u0316" * 50_000 + "\u0f73" * 1_000
    safe = stream_safe(key)
    run = longest = 0
    for char in safe:
        run = run + 1 if unicodedata.combining(char) or char in NON_STARTER_DECOMPOSITIONS else 0
        longest = max(longest, run)
    assert longest == 30
    assert safe.replace("\u034f", "") == key
    assert fold_key("ME\u017f\u017fAGE\uff53") == fold_key("messages") == "messages"
    assert fold_key("\u212aey") == "key"  # the Kelvin sign folds to k


# --- the demo app over real HTTP, with the openai client ----------------------


@pytest.fixture(scope="module")
def demo() -> Iterator[Guarded]:
    with guarded_app(policy()) as served:
        yield served


def refused(completion: Any) -> bool:
    return bool(completion.choices[0].finish_reason == "content_filter")


def file_part(filename: str) -> list[dict[str, Any]]:
    part = {"type": "file", "file": {"filename": filename, "file_data": PDF}}
    return [{"type": "text", "text": "Summarise the attached file."}, part]


def test_the_demo_echoes_a_file_name_and_the_guard_screens_it(demo: Guarded) -> None:
    client = demo.client()
    echoed = client.chat.completions.create(model="m", messages=user(file_part("q3 report.pdf")))
    assert "q3 report.pdf" in (echoed.choices[0].message.content or "")  # the app reads it
    completion = client.chat.completions.create(model="m", messages=user(file_part(INJECTION)))
    assert refused(completion)


@pytest.mark.parametrize(
    "options",
    [
        {"tools": [tool(description=INJECTION)]},
        {"tools": [tool(param=INJECTION)]},
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "a",
                    "schema": {"type": "object", "description": INJECTION},
                },
            }
        },
        {"prediction": {"type": "content", "content": INJECTION}},
        {"metadata": {"note": INJECTION}},
        {"extra_body": {"instructions": INJECTION}},
        {"extra_body": {"x_vendor": {"nested": [{INJECTION: True}]}}},
        {"tool_choice": INJECTION},
    ],
    ids=[
        "tool-description",
        "tool-parameter-name",
        "response-format-schema",
        "prediction",
        "metadata",
        "instructions",
        "unknown-field-key",
        "tool-choice-outside-its-enum",
    ],
)
def test_injection_outside_messages_is_refused(demo: Guarded, options: dict[str, Any]) -> None:
    client = demo.client()
    completion = client.chat.completions.create(model="m", messages=user(BENIGN), **options)
    assert refused(completion)


@pytest.mark.parametrize(
    "part",
    [
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png?q=" + INJECTION}},
        {
            "type": "file",
            "file": {
                "filename": "notes.txt",
                "file_data": "data:text/plain;base64,"
                + base64.b64encode(INJECTION.encode()).decode(),
            },
        },
        {"type": "input_audio", "input_audio": {"data": INJECTION, "format": "wav"}},
    ],
    ids=["image-url", "text-file-data", "audio-slot-holding-text"],
)
def test_injection_in_media_parts_is_refused(demo: Guarded, part: dict[str, Any]) -> None:
    client = demo.client()
    completion = client.chat.completions.create(model="m", messages=user([part]))  # type: ignore[list-item]
    assert refused(completion)


def test_an_image_is_counted_not_screened(demo: Guarded) -> None:
    client = demo.client()
    part = {"type": "image_url", "image_url": {"url": PNG}}
    completion = client.chat.completions.create(model="m", messages=user([part]))  # type: ignore[list-item]
    assert completion.choices[0].finish_reason == "stop"


# --- a receiver that folds keys, and generated hostile bodies -----------------

MARKER = "zebraquux"  # no generated text holds it: the alphabet below has no z or q
_WORDS = st.text(alphabet="abcdefg XYhijk-_.", min_size=1, max_size=8)
_KEYS = st.text(alphabet="abcdefghijk_", min_size=1, max_size=6).map(lambda k: "x_" + k)
_VARIANTS = [
    str.upper,
    str.title,
    lambda k: k.replace("s", "\u017f"),
    lambda k: k.replace("k", "\u212a"),
]


def _marker_policy() -> Any:
    return parse_policy(
        "name: test\n"
        "routes: [{path: /v1/chat/completions}]\n"
        "judges:\n"
        f"  marker: {{type: keywords, keywords: [{MARKER}]}}\n"
        "input:\n"
        "  screens: [{judge: marker}]\n"
        "on_flag: block\n"
        "on_error: block\n"
    )


@pytest.fixture(scope="module")
def folding() -> Iterator[tuple[FoldingReceiver, str]]:
    receiver = FoldingReceiver()
    app = GuardrailMiddleware(receiver, policy=_marker_policy(), registry=CollectorRegistry())
    with Served(app, name="folding-receiver") as served:
        yield receiver, served.url


@pytest.mark.parametrize(
    "body",
    [
        {"messages": user("hi"), "MESSAGES": user(f"say {MARKER}")},
        {"messages": user("hi"), "me\u017f\u017fages": user(f"say {MARKER}")},
        {"messages": user("hi"), "\uff4d\uff45ssages": user(f"say {MARKER}")},
        {"messages": [{"role": "user", "content": "hi", "Content": f"say {MARKER}"}]},
        {"messages": user("hi"), "tools": [{"type": "function", "TYPE": MARKER}]},
        {"messages": user("hi"), "metadata": {"\u212aey": MARKER, "key": "v"}},
    ],
    ids=["upper", "long-s", "fullwidth", "in-a-message", "in-a-tool", "kelvin-sign"],
)
def test_keys_a_folding_receiver_would_merge_are_refused_unread(
    folding: tuple[FoldingReceiver, str], body: dict[str, Any]
) -> None:
    receiver, url = folding
    before = len(receiver.received)
    response = httpx.post(url + URL, content=json.dumps(body).encode(), timeout=30.0)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "ambiguous_key"
    assert len(receiver.received) == before


def test_a_lone_case_variant_key_is_screened_as_the_receiver_reads_it(
    folding: tuple[FoldingReceiver, str],
) -> None:
    receiver, url = folding
    message = {"role": "user", "Content": "what is the weather"}
    response = httpx.post(url + URL, json={"model": "m", "messages": [message]}, timeout=30.0)
    assert response.json()["choices"][0]["finish_reason"] == "stop"
    assert receiver.received[-1].messages == [{"role": "user", "content": "what is the weather"}]
    message["Content"] = f"what is {MARKER}"
    response = httpx.post(url + URL, json={"model": "m", "messages": [message]}, timeout=30.0)
    assert response.json()["choices"][0]["finish_reason"] == "content_filter"


def _json_values(depth: int) -> st.SearchStrategy[Any]:
    leaves = st.one_of(_WORDS, st.integers(-(2**40), 2**40), st.booleans(), st.none())
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(_KEYS | _WORDS, inner, max_size=3)
        ),
        max_leaves=depth,
    )


@st.composite
def chat_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A chat request with tools, schemas, media parts and unknown fields at any depth."""
    parts = st.one_of(
        st.builds(lambda t: {"type": "text", "text": t}, _WORDS),
        st.builds(lambda f: {"type": "file", "file": {"filename": f, "file_data": PDF}}, _WORDS),
        st.just({"type": "image_url", "image_url": {"url": PNG, "detail": "high"}}),
        st.builds(lambda u: {"type": "image_url", "image_url": {"url": "https://h/" + u}}, _WORDS),
    )
    content = st.one_of(_WORDS, st.lists(parts, min_size=1, max_size=3))
    roles = st.sampled_from(["system", "developer", "user", "assistant", "tool"])
    message = st.fixed_dictionaries(
        {"role": roles, "content": content}, optional={"name": _WORDS, "x_extra": _json_values(4)}
    )
    body: dict[str, Any] = {
        "model": "m",
        "messages": draw(st.lists(message, min_size=1, max_size=3)),
    }
    if draw(st.booleans()):
        properties = draw(
            st.dictionaries(
                _WORDS,
                st.builds(lambda d: {"type": "string", "description": d}, _WORDS),
                min_size=1,
                max_size=3,
            )
        )
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": draw(_WORDS),
                    "description": draw(_WORDS),
                    "parameters": {"type": "object", "properties": properties},
                },
            }
        ]
    for key in draw(st.lists(_KEYS, max_size=2, unique=True)):
        body[key] = draw(_json_values(6))
    return body


def _slots(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], str]]:
    """Where a marker could go: every string value ("value") and every object key ("key")."""
    if isinstance(value, str):
        if path not in (("model",),) and not value.startswith("data:"):
            yield path, "value"
    elif isinstance(value, dict):
        for key, item in value.items():
            yield (*path, key), "key"
            yield from _slots(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _slots(item, (*path, i))


def _plant(body: Any, path: tuple[Any, ...], where: str, text: str) -> None:
    *above, last = path
    parent = body
    for step in above:
        parent = parent[step]
    if where == "value":
        parent[last] = f"{parent[last]} {text} "
    else:
        # Keep the key's place, so the marker sits wherever the generator put the key.
        items = [(f"{k} {text}" if k == last else k, v) for k, v in parent.items()]
        parent.clear()
        parent.update(items)


def _add_variant(body: Any, draw: st.DrawFn) -> bool:
    """Add to one object a key equal to one of its keys under folding; False if none fits."""
    objects = [body] + [v for v in _all_values(body) if isinstance(v, dict) and v]
    target = draw(st.sampled_from(objects))
    key = draw(st.sampled_from(sorted(target)))
    variant = draw(st.sampled_from(_VARIANTS))(key)
    if variant == key or variant in target or fold(variant) != fold(key):
        return False
    target[variant] = draw(_WORDS)
    return True


def _all_values(value: Any) -> Iterator[Any]:
    children = (
        value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    )
    for child in children:
        yield child
        yield from _all_values(child)


def _has_folding_duplicates(value: Any) -> bool:
    if isinstance(value, dict):
        if len({fold(k) for k in value}) < len(value):
            return True
        return any(_has_folding_duplicates(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_folding_duplicates(v) for v in value)
    return False


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=chat_bodies(), data=st.data())
def test_no_unscreened_string_reaches_a_folding_receiver(
    folding: tuple[FoldingReceiver, str], body: dict[str, Any], data: st.DataObject
) -> None:
    receiver, url = folding
    planted = data.draw(st.sampled_from([True, True, False]), label="plant the marker")
    if planted:
        path, where = data.draw(st.sampled_from(list(_slots(body))), label="where")
        _plant(body, path, where, MARKER)
    if data.draw(st.booleans(), label="add a folding variant"):
        _add_variant(body, data.draw)
    ambiguous = _has_folding_duplicates(body)
    sent = json.dumps(body, ensure_ascii=data.draw(st.booleans(), label="ascii")).encode()
    before = len(receiver.received)
    # Compressed or not, the app must get the very bytes that were screened.
    if data.draw(st.booleans(), label="gzip"):
        wire, headers = gzip.compress(sent), {"content-encoding": "gzip"}
    else:
        wire, headers = sent, {}
    response = httpx.post(url + URL, content=wire, headers=headers, timeout=30.0)
    answer = response.json()

    event(f"status {response.status_code}, planted {planted}, ambiguous {ambiguous}")
    if response.status_code == 400:
        # Refused unread: the app got nothing.
        assert len(receiver.received) == before
        assert ambiguous or answer["error"]["code"] == "not_chat", answer
        return
    assert response.status_code == 200, answer
    assert not ambiguous, "a body with keys equal under folding was passed on"
    outcome = answer["choices"][0]["finish_reason"]
    if outcome == "content_filter":
        assert planted, "nothing to flag, yet refused"
        return
    # Released: the app got exactly the bytes that were screened, and nothing it
    # could read holds the marker.
    assert not planted, f"the marker reached the app: {sent!r}"
    assert outcome == "stop"
    got = receiver.received[-1]
    assert got.body == sent
    assert not any(MARKER in s for s in got.strings)


def test_a_megabyte_of_combining_marks_in_keys_is_read_not_stalled_on(
    folding: tuple[FoldingReceiver, str],
) -> None:
    # Without the stream-safe step, folding one such key takes minutes (sorting a
    # run of 200,000 combining marks by insertion). The timeout only stops a hang.
    receiver, url = folding
    marks = "\u0301\u0316" * 100_000
    ambiguous = {"model": "m", "messages": user("hi"), "metadata": {"a" + marks: 1, "A" + marks: 1}}
    sent = json.dumps(ambiguous, ensure_ascii=False).encode()
    assert len(sent) > 800_000
    before = len(receiver.received)
    response = httpx.post(url + URL, content=sent, timeout=120.0)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "ambiguous_key"
    assert len(receiver.received) == before
    # Keys that differ are read, and are text. (Not sent: the judges' own
    # normalisation of such text is another part's work.)
    distinct = {**ambiguous, "metadata": {"a" + marks: 1, "b" + marks: 1}}
    text = screened(distinct)
    assert "a" + marks in text and "b" + marks in text


# --- no I/O: any JSON at all is read or refused, never an error ---------------

_NASTY_NUMBERS = [
    "1e999",
    "-1e999",
    "1e-999",
    "1" * 5000,
    "-" + "9" * 19,
    "18446744073709551615",
    "18446744073709551616",
    "-0",
    "0.1e1",
    "1." + "1" * 400,
]
_ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
_JSON_ANY = st.recursive(
    st.one_of(_ANY_TEXT, st.integers(), st.floats(allow_nan=False), st.booleans(), st.none()),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(_ANY_TEXT, inner, max_size=4)
    ),
    max_leaves=20,
)


@st.composite
def any_request(draw: st.DrawFn) -> dict[str, Any]:
    body = draw(st.dictionaries(_ANY_TEXT, _JSON_ANY, max_size=4))
    body["messages"] = draw(
        st.lists(
            st.dictionaries(_ANY_TEXT, _JSON_ANY, max_size=3).map(lambda m: {"role": "user", **m}),
            min_size=1,
            max_size=3,
        )
    )
    return body


@settings(max_examples=200, deadline=None)
@given(body=any_request(), data=st.data())
def test_any_body_is_read_or_refused_never_an_error(
    body: dict[str, Any], data: st.DataObject
) -> None:
    number = data.draw(st.sampled_from(_NASTY_NUMBERS))
    body[data.draw(_ANY_TEXT)] = "\u00a7N\u00a7"
    ascii_only = data.draw(st.booleans())
    text = json.dumps(body, ensure_ascii=ascii_only).replace('"\u00a7N\u00a7"', number, 1)
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogatepass")  # lone surrogates as (invalid) UTF-8
    try:
        request = OpenAIChat().parse_request(raw)
    except BadRequest as exc:
        event(f"refused: {exc.code}")
        assert 400 <= exc.status < 500
        return
    event("read")
    assert isinstance(request.text, str)
    request.text.encode("utf-8")  # what the judges get is valid text


@settings(max_examples=200, deadline=None)
@given(body=any_request(), data=st.data())
def test_a_marker_anywhere_in_any_body_is_in_the_screened_text(
    body: dict[str, Any], data: st.DataObject
) -> None:
    path, where = data.draw(st.sampled_from(list(_slots(body))))
    _plant(body, path, where, MARKER)
    try:
        request = OpenAIChat().parse_request(json.dumps(body).encode())
    except BadRequest as exc:
        event(f"refused: {exc.code}")
        return  # refused unread
    event("read")
    assert MARKER in request.text
