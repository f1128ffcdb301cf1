"""Issue 9's examples, each over real HTTP: an app that tries to get a card past the answer screens.

The app is a raw ASGI function, so every byte (framing, headers, encoding) is
chosen; the caller is the real ``openai`` client where the stream is
OpenAI-shaped, and raw httpx where the bytes themselves matter.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from typing import Any

import httpx
import openai
import pytest
from answers import SSE, Answer, chunk_event, raw_app, request_body, sse
from prometheus_client import CollectorRegistry
from served import Served, wait_for

from guardrail import GuardrailMiddleware, Policy, PolicyError, parse_policy

CARD = "4111 1111 1111 1111"
REFUSAL = "Sorry, I can't help with that request."
FILLER = "Here is a long and harmless answer about gardens and the weather. "


def output_policy(
    *, window: int = 400, overlap: int | None = None, on_error: str = "block", extra: str = ""
) -> Policy:
    overlap_line = f", overlap_chars: {overlap}" if overlap is not None else ""
    return parse_policy(
        "name: test\n"
        "routes: [{path: /v1/chat/completions}]\n"
        "judges: {injection: {type: injection}, pii: {type: pii}}\n"
        "input: {screens: [{judge: injection}]}\n"
        f"on_error: {on_error}\n"
        f"output: {{screens: [{{judge: pii}}], window_chars: {window}{overlap_line}"
        f", idle_timeout_s: 1.0{extra}}}\n"
    )


def served(app: Any, policy: Policy) -> tuple[Served, CollectorRegistry]:
    registry = CollectorRegistry()
    return Served(GuardrailMiddleware(app, policy=policy, registry=registry)), registry


def events(text: str, size: int) -> list[bytes]:
    """``text`` as OpenAI chunks of ``size`` characters, then [DONE]."""
    pieces = [text[i : i + size] for i in range(0, len(text), size)]
    return [sse(chunk_event(p)) for p in pieces] + [sse("[DONE]")]


def openai_stream(server: Served) -> tuple[str, set[str], str | None]:
    """Content, chunk ids and last finish_reason, as the openai client reads the stream."""
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="k", max_retries=0)
    content, ids, finish = [], set(), None
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hello"}], stream=True
    )
    for chunk in stream:
        ids.add(chunk.id)
        for choice in chunk.choices:
            content.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    return "".join(content), ids, finish


def post(server: Served, *, stream: bool = True) -> Answer:
    response = httpx.post(
        server.url + "/v1/chat/completions",
        content=request_body(stream),
        headers={"content-type": "application/json"},
        timeout=10,
    )
    return Answer(response.status_code, list(response.headers.raw), response.content)


def digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


# --- 1. window boundaries -------------------------------------------------------------------


@pytest.mark.parametrize(
    "pad", ["\u200b" * 600, " " * 600, "\n" * 600], ids=["zwsp", "spaces", "lf"]
)
def test_padding_inside_a_card_does_not_split_it_across_windows(pad: str) -> None:
    text = FILLER * 2 + "Card: 4111" + pad + " 1111 1111 1111 and more text follows here."
    server, _ = served(raw_app(events(text, 9)), output_policy())
    with server:
        content, ids, finish = openai_stream(server)
    assert finish == "content_filter"
    assert "4111" not in content
    assert ids == {"chatcmpl-app-1"}  # the refusal continues the stream's id


@pytest.mark.parametrize(("window", "overlap"), [(400, None), (100, 64), (65, 64)])
def test_a_card_straddling_a_window_boundary_releases_no_digit(
    window: int, overlap: int | None
) -> None:
    # 382 characters before the card: the first window ends inside it (issue 9).
    text = ("x" * 381 + " ") + CARD + " is the number. " + FILLER * 3
    server, _ = served(raw_app(events(text, 7)), output_policy(window=window, overlap=overlap))
    with server:
        content, ids, finish = openai_stream(server)
    released = content.partition("\n" + REFUSAL)[0]
    assert finish == "content_filter"
    assert digits(content) == ""  # not 15 of 16 digits: none
    assert text.startswith(released)
    assert ids == {"chatcmpl-app-1"}
    assert content.endswith("\n" + REFUSAL) or content == REFUSAL  # on a line of its own


@pytest.mark.parametrize("overlap", [0, 18, 20, 63])
def test_an_overlap_shorter_than_a_finding_is_refused_at_load(overlap: int) -> None:
    with pytest.raises(PolicyError, match="overlap_chars of at least 64"):
        output_policy(window=100, overlap=overlap)


def test_an_llm_judge_needs_its_context_in_the_overlap() -> None:
    text = (
        "name: t\nroutes: [{path: /x}]\n"
        "judges: {i: {type: injection}, out: {type: llm, model: openai/x}}\n"
        "input: {screens: [{judge: i}]}\n"
        "output: {screens: [{judge: out}], overlap_chars: 64, llm_context_chars: 120}\n"
    )
    with pytest.raises(PolicyError, match="llm_context_chars"):
        parse_policy(text)


# --- 2. framing -----------------------------------------------------------------------------


@pytest.mark.parametrize("end", ["\n\r\n", "\n\r", "\r\n\r\n", "\r\r", "\r\n\n"])
def test_events_ending_in_any_blank_line_are_split_as_the_client_splits_them(end: str) -> None:
    pieces = [FILLER, "card 4111 1111", " 1111 1111 ok. ", FILLER]
    body = [sse(chunk_event(p), end) for p in pieces] + [sse("[DONE]", end)]
    server, _ = served(raw_app(body), output_policy())
    with server:
        content, _, finish = openai_stream(server)
    assert finish == "content_filter"
    assert "4111" not in content


@pytest.mark.parametrize(
    "headers",
    [
        [(b"content-type", b"application/json")],
        [(b"content-type", b"text/plain")],
        [],
    ],
    ids=["json", "text", "none"],
)
def test_sse_without_its_content_type_is_read_as_sse(headers: list[tuple[bytes, bytes]]) -> None:
    body = events(FILLER + "card 4111 1111 1111 1111 ok. " + FILLER, 6)
    server, _ = served(raw_app(body, headers=headers), output_policy())
    with server:
        got = post(server)
    assert "4111" not in got.content()
    assert got.chunks()[-1]["choices"][0]["finish_reason"] == "content_filter"


@pytest.mark.parametrize("escaped", [False, True], ids=["split", "escaped-fullwidth"])
def test_sse_with_a_content_length_is_read_as_sse(escaped: bool) -> None:
    if escaped:  # full-width digits, JSON-escaped: invisible to a raw-text read
        card = "".join(f"\\u{0xFF10 + int(d):04x}" if d.isdigit() else d for d in CARD)
        data = chunk_event("card XX ok").replace("XX", card)
        body = sse(data) + sse("[DONE]")
    else:
        body = b"".join(events("card 4111 1111 1111 1111 ok", 6))
    headers = [
        (b"content-type", b"text/event-stream"),
        (b"content-length", str(len(body)).encode()),
    ]
    server, _ = served(raw_app([body], headers=headers), output_policy())
    with server:
        got = post(server)
    assert "1111" not in got.content() and "\uff11" not in got.content()
    assert "content_filter" in got.body.decode()


def gzip_app(payload: bytes, encodings: list[bytes], *, stream: bool) -> Any:
    headers = [(b"content-encoding", e) for e in encodings]
    headers.append((b"content-type", b"text/event-stream" if stream else b"application/json"))
    compressed = gzip.compress(payload)
    if not stream:
        headers.append((b"content-length", str(len(compressed)).encode()))
    return raw_app([compressed[:20], compressed[20:]], headers=headers)


@pytest.mark.parametrize(
    "encodings",
    [[b"identity", b"gzip"], [b"identity, gzip"], [b"gzip"]],
    ids=["two-lines", "comma-list", "gzip"],
)
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_content_encoding_lists_are_decoded_as_clients_decode_them(
    encodings: list[bytes], stream: bool
) -> None:
    if stream:
        payload = b"".join(events(FILLER + f"card {CARD} ok", 8))
    else:
        payload = json.dumps(
            {"choices": [{"index": 0, "message": {"role": "assistant", "content": f"c {CARD}"}}]}
        ).encode()
    server, _ = served(gzip_app(payload, encodings, stream=stream), output_policy())
    with server:
        got = post(server, stream=stream)
    assert "content_filter" in got.body.decode()
    assert "4111" not in got.body.decode()


def test_a_clean_compressed_answer_reaches_the_client_decoded() -> None:
    payload = b"".join(events(FILLER * 3, 20))
    server, _ = served(gzip_app(payload, [b"gzip"], stream=True), output_policy())
    with server:
        got = post(server)
    # Exactly what was screened: decoded, and the headers say so.
    assert got.body == payload
    assert not [v for k, v in got.headers if k.lower() == b"content-encoding"]


@pytest.mark.parametrize(("on_error", "refused"), [("block", True), ("allow", False)])
def test_an_encoding_we_cannot_decode_follows_the_fail_mode(on_error: str, refused: bool) -> None:
    headers = [(b"content-encoding", b"br"), (b"content-type", b"application/json")]
    app = raw_app([b"\x0b\x02\x80opaque"], headers=headers)
    server, registry = served(app, output_policy(on_error=on_error))
    with server:
        got = post(server, stream=False)
    assert (b"content_filter" in got.body) is refused
    decision = "error_blocked" if refused else "error_allowed"
    assert wait_for(
        lambda: (
            registry.get_sample_value(
                "guardrail_requests_total", {"policy": "test", "decision": decision}
            )
            == 1
        )
    )


# --- 3. where text hides --------------------------------------------------------------------


def chunk_with(extra: dict[str, Any], choice: dict[str, Any] | None = None) -> bytes:
    chunk = {
        "id": "chatcmpl-app-1",
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": "fine"}, **(choice or {})}],
        **extra,
    }
    return sse(json.dumps(chunk))


@pytest.mark.parametrize(
    "event",
    [
        chunk_with({"note": f"card {CARD}"}),
        chunk_with({}, {"logprobs": {"content": [{"token": CARD, "logprob": -0.1}]}}),
        chunk_with({}, {"text": f"card {CARD}"}),
        chunk_with({}, {"message": {"role": "assistant", "content": f"card {CARD}"}}),
        chunk_with({f"card {CARD}": 1}),
        f": card {CARD}\n\n".encode(),
        f"event: card {CARD}\ndata: {chunk_event('x')}\n\n".encode(),
        f"id: card {CARD}\ndata: {chunk_event('x')}\n\n".encode(),
    ],
    ids=["top-level", "logprobs", "text", "message", "key", "comment", "event", "id"],
)
def test_text_outside_the_delta_is_screened(event: bytes) -> None:
    body = [sse(chunk_event(FILLER)), event, sse(chunk_event(FILLER)), sse("[DONE]")]
    server, _ = served(raw_app(body), output_policy())
    with server:
        got = post(server)
    assert CARD.encode() not in got.body
    assert b'"finish_reason": "content_filter"' in got.body


def test_a_response_header_value_is_screened_before_it_is_sent() -> None:
    headers = [*SSE, (b"x-debug", f"card {CARD}".encode())]
    server, _ = served(raw_app(events(FILLER, 20), headers=headers), output_policy())
    with server:
        got = post(server)
    assert CARD.encode() not in b"".join(v for _, v in got.headers)
    assert "content_filter" in got.body.decode()


@pytest.mark.parametrize("on_error", ["block", "allow"])
def test_data_that_is_not_json_is_refused_or_stripped_by_the_fail_mode(on_error: str) -> None:
    body = [
        sse(chunk_event(FILLER)),
        sse("{not json " + CARD),
        sse(chunk_event("end.")),
        sse("[DONE]"),
    ]
    server, _ = served(raw_app(body), output_policy(on_error=on_error))
    with server:
        got = post(server)
    assert CARD.encode() not in got.body
    if on_error == "block":
        assert got.chunks()[-1]["choices"][0]["finish_reason"] == "content_filter"
    else:
        assert got.content() == FILLER + "end."  # the unreadable event was stripped


# --- 4. a clean cut, and the idle clock -----------------------------------------------------


def test_a_cut_stream_starts_the_refusal_on_a_new_line_and_keeps_its_id() -> None:
    text = FILLER * 4 + "word114. Card: " + CARD + " " + FILLER
    server, _ = served(raw_app(events(text, 11)), output_policy(window=100))
    with server:
        content, ids, finish = openai_stream(server)
    assert finish == "content_filter"
    released, newline, rest = content.partition("\n" + REFUSAL)
    assert newline and rest == "" and released  # text flowed, then the refusal on its own line
    assert ids == {"chatcmpl-app-1"}


def test_a_healthy_app_with_gaps_shorter_than_the_idle_timeout_is_never_cut() -> None:
    # Eight pieces 0.25 s apart: 2 s in all, twice the idle timeout, no gap near it.
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": SSE})
        for piece in [FILLER] * 8:
            await send(
                {"type": "http.response.body", "body": sse(chunk_event(piece)), "more_body": True}
            )
            await asyncio.sleep(0.25)
        await send({"type": "http.response.body", "body": sse("[DONE]")})

    server, _ = served(app, output_policy())
    with server:
        content, _, finish = openai_stream(server)
    assert content == FILLER * 8
    assert finish is None  # the app's own chunks carry none; nothing was cut


@pytest.mark.parametrize("on_error", ["block", "allow"])
def test_a_silent_app_is_cut_from_its_last_byte(on_error: str) -> None:
    state: dict[str, Any] = {}
    gate = asyncio.Event()  # never set: the app sends one chunk, then falls silent
    app = raw_app(events(FILLER * 8, 60)[:6], gate=gate, state=state)
    server, registry = served(app, output_policy(on_error=on_error))
    with server:
        got = post(server)
        assert wait_for(lambda: state.get("cancelled", False))
    assert got.status == 200
    assert got.content().startswith(FILLER[:40]) or got.content() == REFUSAL
    if on_error == "block":
        assert got.chunks()[-1]["choices"][0]["finish_reason"] == "content_filter"
    cut = {"policy": "test", "reason": "idle"}
    assert wait_for(lambda: registry.get_sample_value("guardrail_streams_cut_total", cut) == 1)


@pytest.mark.parametrize(("on_error", "status"), [("block", 200), ("allow", 504)])
def test_an_app_silent_before_its_first_byte_still_gets_a_well_formed_answer(
    on_error: str, status: int
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await receive()
            await asyncio.Event().wait()  # never answers

    server, registry = served(app, output_policy(on_error=on_error))
    with server:
        response = httpx.post(
            server.url + "/v1/chat/completions",
            content=request_body(False),
            headers={"content-type": "application/json"},
            timeout=10,
        )
    assert response.status_code == status
    body = response.json()  # well-formed JSON in the API's shape, not a bare 500
    if on_error == "allow":
        assert body["error"]["code"] == "app_error"
        decision = "app_error"
    else:
        assert body["choices"][0]["finish_reason"] == "content_filter"
        decision = "error_blocked"
    labels = {"policy": "test", "decision": decision}
    assert wait_for(lambda: registry.get_sample_value("guardrail_requests_total", labels) == 1)


@pytest.mark.parametrize(("on_error", "refused"), [("block", True), ("allow", False)])
def test_a_corrupt_compressed_answer_follows_the_fail_mode(on_error: str, refused: bool) -> None:
    corrupt = gzip.compress(b'{"choices": []}')[:12] + b"not deflate at all"
    headers = [
        (b"content-encoding", b"gzip"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(corrupt)).encode()),
    ]
    server, _ = served(raw_app([corrupt], headers=headers), output_policy(on_error=on_error))
    with server:
        with httpx.stream(
            "POST",
            server.url + "/v1/chat/completions",
            content=request_body(False),
            headers={"content-type": "application/json"},
            timeout=10,
        ) as response:
            raw = b"".join(response.iter_raw())  # the bytes as sent, not decoded
    if refused:
        assert b"content_filter" in raw
    else:
        # Fail-open passes the app's bytes on as they came (never screened as text).
        assert response.headers["content-encoding"] == "gzip"
        assert raw == corrupt


def test_an_llm_window_judge_sees_the_previous_window_s_tail(stub_llm_factory: Any) -> None:
    judge = stub_llm_factory()  # answers "not flagged" and records what it was asked
    sentences = [f"Sentence {i} is about the garden and the trees. " for i in range(8)]
    pol = parse_policy(
        "name: test\n"
        "routes: [{path: /v1/chat/completions}]\n"
        "judges:\n"
        "  injection: {type: injection}\n"
        f"  out: {{type: llm, model: openai/out, api_base: '{judge.base_url}'}}\n"
        "input: {screens: [{judge: injection}]}\n"
        "output: {screens: [{judge: out, timeout_s: 5}], window_chars: 100}\n"
    )
    server, _ = served(raw_app(events("".join(sentences), 16)), pol)
    with server:
        content, _, _ = openai_stream(server)
    assert content == "".join(sentences)
    asked = [json.dumps(r) for r in judge.requests]
    assert len(asked) >= 3
    # Each window repeats the end of the one before, so some sentence is asked about twice.
    marks = [sum(f"Sentence {i} is" in a for a in asked) for i in range(8)]
    assert max(marks) >= 2, marks
