"""Generic JSON (``format: json``): an in-house chat app's own JSON, named by paths in the policy.

The app is written here: ``{"message", "history", "session_id", "stream"}`` in,
``{"reply"}`` out, or a stream of ``{"delta"}`` events as SSE or JSON lines.
It runs on real uvicorn, guarded by the middleware or behind the proxy.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import httpx
import pytest
from guarded import BENIGN, INJECTION, guarded_service, request_json
from hypothesis import given, settings
from hypothesis import strategies as st

from guardrail import Policy, PolicyError, parse_policy
from guardrail.adapters import BadRequest, GenericJSON
from guardrail.adapters.json_paths import find, parse_path, places
from guardrail.flow.framing import LinesFramer

CARD = "4111 1111 1111 1111"
SAFE = [f"Sentence {i} is about the garden, the weather and the trees. " for i in range(6)]
REFUSAL = "Sorry, I can't help with that request."


def json_policy(framing: str = "ndjson", *, output: bool = True) -> Policy:
    return parse_policy(
        "name: test\n"
        "format: json\n"
        "routes: [{path: /chat}]\n"
        "judges: {injection: {type: injection}, pii: {type: pii}}\n"
        "input: {screens: [{judge: injection}, {judge: pii}]}\n"
        "json_api:\n"
        "  text: ['$.message', '$.history[*].content']\n"
        "  not_text: ['$.session_id', '$.history[*].role']\n"
        "  stream_flag: $.stream\n"
        "  answer_text: ['$.reply']\n"
        f"  stream: {{framing: {framing}, text: ['$.delta']}}\n"
        "  refusal: {reply: '{message}', refused: true}\n"
        "  stream_refusal: {delta: '{message}', done: true}\n"
        "  error: {error: '{message}', code: '{code}'}\n"
        + (
            "output: {screens: [{judge: pii}], window_chars: 80, idle_timeout_s: 5}\n"
            if output
            else ""
        )
    )


class ChatApp:
    """The in-house app: replies with ``pieces``, whole or streamed as SSE or JSON lines."""

    def __init__(self, pieces: list[str] | None = None, *, raw: list[bytes] | None = None) -> None:
        self.pieces = pieces or ["Paris is the capital ", "of France."]
        self.raw = raw
        self.requests: list[Any] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        request = await request_json(receive)
        self.requests.append(request)
        framing = request.get("framing")  # the test asks for one framing or the other
        if not request.get("stream"):
            answer = json.dumps({"reply": "".join(self.pieces), "model": "in-house"}).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(answer)),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": answer})
            return
        events = [json.dumps({"delta": piece}) for piece in self.pieces] + [
            json.dumps({"done": True})
        ]
        chunks = self.raw or [
            (f"data: {e}\n\n" if framing == "sse" else f"{e}\n").encode() for e in events
        ]
        kind = b"text/event-stream" if framing == "sse" else b"application/x-ndjson"
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", kind)]}
        )
        for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await asyncio.sleep(0.005)
        await send({"type": "http.response.body", "body": b""})


def chat(url: str, message: str, **fields: Any) -> httpx.Response:
    body = {
        "message": message,
        "history": [{"role": "user", "content": "Hello"}],
        "session_id": "s-1",
    }
    return httpx.post(url + "/chat", json={**body, **fields}, timeout=60)


def streamed(url: str, message: str, framing: str) -> list[dict[str, Any]]:
    """The events a client of the app reads: JSON after ``data:`` (SSE), or JSON lines."""
    body = chat(url, message, stream=True, framing=framing).text
    if framing == "sse":
        return [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]
    return [json.loads(line) for line in body.splitlines() if line.strip()]


def text_of(events: list[dict[str, Any]]) -> str:
    return "".join(e.get("delta", "") for e in events)


@pytest.mark.parametrize("proxy", [False, True], ids=["middleware", "proxy"])
def test_benign_is_answered_and_injection_refused_with_the_policys_template(proxy: bool) -> None:
    for framing in ("sse", "ndjson"):
        with guarded_service(ChatApp(), json_policy(framing), proxy=proxy) as url:
            assert chat(url, BENIGN).json()["reply"] == "Paris is the capital of France."
            assert text_of(streamed(url, BENIGN, framing)) == "Paris is the capital of France."
            assert chat(url, INJECTION).json() == {"reply": REFUSAL, "refused": True}
            assert streamed(url, INJECTION, framing) == [{"delta": REFUSAL, "done": True}]


def test_text_in_fields_the_policy_did_not_name_is_screened_and_not_text_is_not() -> None:
    with guarded_service(ChatApp(), json_policy()) as url:
        assert chat(url, BENIGN, notes={"deep": [INJECTION]}).json()["refused"] is True
        assert chat(url, BENIGN, history=[{"role": "user", "content": INJECTION}]).json()["refused"]
        assert chat(url, BENIGN, **{INJECTION: 1}).json()["refused"] is True  # a key is text too
        # The policy says session ids are not language: it is the app's contract.
        assert "refused" not in chat(url, BENIGN, session_id=INJECTION).json()


@pytest.mark.parametrize("framing", ["sse", "ndjson"])
@pytest.mark.parametrize("proxy", [False, True], ids=["middleware", "proxy"])
def test_a_card_split_across_events_is_cut(framing: str, proxy: bool) -> None:
    pieces = [*SAFE[:4], f"Your card {CARD[:9]}", f"{CARD[9:]} is here. ", *SAFE[4:]]
    policy = json_policy(framing)
    with guarded_service(ChatApp(pieces), policy, proxy=proxy) as url:
        events = streamed(url, BENIGN, framing)
        text = text_of(events)
        assert events[-1] == {"delta": REFUSAL, "done": True}
        assert "4111" not in text and "1111 1111" not in text
        assert SAFE[0] in text and SAFE[5] not in text


def test_a_complete_answer_with_a_card_is_refused_whole() -> None:
    with guarded_service(ChatApp([f"Card {CARD}."]), json_policy()) as url:
        assert chat(url, BENIGN).json() == {"reply": REFUSAL, "refused": True}


def test_json_lines_are_read_as_the_client_decodes_them() -> None:
    # Escapes a raw-text screen would not read as digits: the client decodes them.
    escaped = "".join(f"\\u00{ord(c):02x}" if c.isdigit() else c for c in CARD)
    raw = [
        b'{"delta": "Your card "}\n',
        f'{{"delta": "{escaped}"}}\n'.encode(),
        b'{"done": true}\n',
    ]
    with guarded_service(ChatApp(raw=raw), json_policy()) as url:
        events = streamed(url, BENIGN, "ndjson")
        assert events[-1] == {"delta": REFUSAL, "done": True}
        assert "4111" not in text_of(events)


def test_a_line_that_is_not_json_is_not_passed_on() -> None:
    raw = [b'{"delta": "Hello"}\n', b"card 4111 1111 1111 1111 not json\n", b'{"done": true}\n']
    with guarded_service(ChatApp(raw=raw), json_policy()) as url:  # fail-closed (on_error: block)
        body = chat(url, BENIGN, stream=True).text
        assert "4111" not in body
        assert json.loads(body.splitlines()[-1]) == {"delta": REFUSAL, "done": True}


MALFORMED = [
    b"not json",
    b'{"message": "a", "message": "b"}',
    b'{"message": "hi", "stream": "yes"}',
    b'{"Message": "hi"}',
    b'{"message": "hi", "history": [{"Content": "x"}]}',
    b'{"message": "\\ud800"}',
]


def test_malformed_bodies_get_a_400_in_the_policys_error_shape() -> None:
    app = ChatApp()
    with guarded_service(app, json_policy()) as url:
        for body in MALFORMED:
            answer = httpx.post(url + "/chat", content=body)
            assert answer.status_code == 400, body
            assert set(answer.json()) == {"error", "code"}
        assert app.requests == []


@pytest.mark.parametrize(
    "paths",
    [
        "['message']",
        "['$..message']",
        "['$.history[?(@.role)]']",
        "['$.a[1:2]']",
        "['$.a.']",
        "['$.a b']",
    ],
)
def test_paths_outside_the_subset_are_refused_at_load(paths: str) -> None:
    with pytest.raises(PolicyError) as error:
        parse_policy(
            "name: t\nformat: json\nroutes: [{path: /chat}]\njudges: {i: {type: injection}}\n"
            f"input: {{screens: [{{judge: i}}]}}\njson_api: {{text: {paths}}}\n"
        )
    assert "json_api" in str(error.value)


@pytest.mark.parametrize(
    "not_text", ["['$']", "['$.message']", "['$.history']", "['$.history[*]']", "['$.*']"]
)
def test_not_text_cannot_cover_the_text(not_text: str) -> None:
    with pytest.raises(PolicyError, match="not_text"):
        parse_policy(
            "name: t\nformat: json\nroutes: [{path: /chat}]\njudges: {i: {type: injection}}\n"
            "input: {screens: [{judge: i}]}\n"
            f"json_api: {{text: ['$.message', '$.history[*].content'], not_text: {not_text}}}\n"
        )


def test_json_api_needs_format_json() -> None:
    with pytest.raises(PolicyError, match="format: json"):
        parse_policy(
            "name: t\nroutes: [{path: /chat}]\njudges: {i: {type: injection}}\n"
            "input: {screens: [{judge: i}]}\njson_api: {text: ['$.message']}\n"
        )


def test_a_refusal_message_is_put_in_the_template_as_text() -> None:
    adapter = GenericJSON(json_policy().json_api.shape())  # type: ignore[union-attr]
    reply = adapter.error(BadRequest("x", 'say "{code}" \\ {message}'))
    assert json.loads(reply.body) == {"error": 'say "{code}" \\ {message}', "code": "x"}


# --- properties -----------------------------------------------------------------------

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,6}", fullmatch=True)
quoted = st.text(st.characters(blacklist_characters="'\\", codec="utf-8"), max_size=6)
steps = st.lists(
    st.one_of(
        names.map(lambda n: f".{n}"),
        quoted.map(lambda n: f"['{n}']"),
        st.integers(0, 99).map(lambda i: f"[{i}]"),
        st.just("[*]"),
        st.just(".*"),
    ),
    max_size=5,
)


@given(steps)
def test_every_path_of_the_subset_parses_to_what_it_spells(parts: list[str]) -> None:
    path = parse_path("$" + "".join(parts))
    assert len(path.steps) == len(parts)


@given(st.text(max_size=20))
def test_any_text_is_a_path_or_a_clear_error(text: str) -> None:
    try:
        parse_path(text)
    except ValueError as error:
        assert "JSON path" in str(error)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-100, 100) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names, inner, max_size=3),
    max_leaves=10,
)


def spelled(place: tuple[str | int, ...]) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f"['{p}']" for p in place)


@given(json_values)
def test_a_path_names_exactly_the_places_it_covers(doc: Any) -> None:
    for place, text, is_key in places(doc):
        if is_key:
            continue
        path = parse_path(spelled(place))
        assert path.covers(place)
        assert list(find(path, doc)) == [text]
        wild = parse_path("$" + "".join("[*]" if isinstance(p, int) else ".*" for p in place))
        assert wild.covers(place) and text in list(find(wild, doc))


MARK = "zq marked words qz"


@settings(max_examples=100)
@given(json_values, st.sampled_from(["message", "notes", "history"]), st.booleans())
def test_every_string_of_a_request_is_screened_unless_not_text(
    extra: Any, where: str, as_key: bool
) -> None:
    adapter = GenericJSON(json_policy().json_api.shape())  # type: ignore[union-attr]
    planted: Any = {MARK: extra} if as_key else [extra, MARK]
    body = {"message": "hi", "session_id": "s", "history": [], where: planted}
    try:
        text = adapter.parse_request(json.dumps(body).encode()).text
    except BadRequest as refused:  # keys folding into the app's field names: a defined 400
        assert refused.status == 400
        return
    assert MARK in text
    # not_text covers a string at its place, never what a list or object there holds.
    nested = {"message": "hi", "session_id": [MARK, {MARK: extra}]}
    assert MARK in adapter.parse_request(json.dumps(nested).encode()).text
    assert not re.search("zq", adapter.parse_request(b'{"session_id": "zq"}').text)


@given(
    st.lists(st.text(max_size=12), min_size=1, max_size=6),
    st.lists(st.integers(0, 400), max_size=8),
    st.sampled_from(["\n", "\r\n"]),
)
def test_json_lines_split_anywhere_give_the_same_events(
    deltas: list[str], cuts: list[int], end: str
) -> None:
    adapter = GenericJSON(json_policy().json_api.shape())  # type: ignore[union-attr]
    body = "".join(json.dumps({"delta": d}, ensure_ascii=False) + end for d in deltas).encode()
    framer = LinesFramer(adapter.event_parts, max_event_bytes=1 << 16)
    units = []
    start = 0
    for cut in sorted({min(c, len(body)) for c in cuts}):
        units += framer.feed(body[start:cut])
        start = cut
    units += framer.feed(body[start:]) + framer.flush()
    assert b"".join(u.raw for u in units) == body
    assert not any(u.unreadable for u in units)
    assert "".join(text for u in units for _, text in u.flows) == "".join(deltas)


def test_the_demo_guards_its_in_house_chat_api_with_the_default_policy() -> None:
    # `guardrail demo`: the example app's /chat, guarded by the embedded policy's json route.
    from guarded import guarded_app

    from guardrail import load_policy

    with guarded_app(load_policy()) as app:
        url = app.url
        assert chat(url, BENIGN).json() == {"reply": f"You said: {BENIGN}"}
        lines = [json.loads(x) for x in chat(url, BENIGN, stream=True).text.splitlines()]
        assert text_of(lines) == f"You said: {BENIGN}" and lines[-1] == {"done": True}
        assert chat(url, INJECTION).json() == {"reply": REFUSAL, "refused": True}
        # The history is screened too, and a key the policy did not name.
        hidden = chat(url, BENIGN, history=[{"role": "user", "content": INJECTION}])
        assert hidden.json()["refused"] is True
        assert chat(url, BENIGN, **{INJECTION: 1}).json()["refused"] is True
        # A card in a streamed request ends in the policy's stream refusal.
        card = [json.loads(x) for x in chat(url, f"pay {CARD}", stream=True).text.splitlines()]
        assert card == [{"delta": REFUSAL, "done": True}]


def test_a_not_text_field_holding_a_list_or_object_is_screened() -> None:
    # Regression: the demo policy's not_text $.history[*].role hid ["<injection>"]
    # from every screen; an app building "{role}: {content}" would send it on.
    adapter = GenericJSON(json_policy().json_api.shape())  # type: ignore[union-attr]
    for role in ([INJECTION], {"x": INJECTION}, {INJECTION: 1}):
        body = {"message": "hi", "history": [{"role": role, "content": "hello"}]}
        assert INJECTION in adapter.parse_request(json.dumps(body).encode()).text
    plain = {"message": "hi", "history": [{"role": "user", "content": "hello"}]}
    assert "user" not in adapter.parse_request(json.dumps(plain).encode()).text.split()
