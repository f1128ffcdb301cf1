"""Redaction: the app gets placeholders, the user gets the originals back (issue 14).

End to end through the example app, served by a real uvicorn, called by the real
``openai`` client; a recording app inside the guard shows what the app received.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai import OpenAI
from prometheus_client import CollectorRegistry
from served import Served, wait_for

from examples.chat_app import create_app
from guardrail import Guard, GuardrailMiddleware, parse_policy
from guardrail.adapters import OpenAIChat
from guardrail.decide.redaction import Redacting, redact, redact_request
from guardrail.flow.restore import Restorer
from guardrail.flow.rewrite import flow_texts
from guardrail.judges.local import KeywordJudge, PIIJudge
from guardrail.policy.errors import PolicyError

EMAIL = "ana@example.org"
CARD = "4111 1111 1111 1111"
PHONE = "(415) 555-2671"
KEY = "sk-proj-" + "Q3eGkV2xMbN7z4Pa" * 3

Message = dict[str, Any]
FLOWS = flow_texts(OpenAIChat())


def redaction_policy(*, restore: bool = True, extra: str = "", timeout_s: float = 10.0) -> Any:
    # Generous timeouts: a loaded machine must not turn a redaction into a refusal.
    return parse_policy(
        "name: test\n"
        "routes: [{path: /v1/chat/completions}]\n"
        "judges:\n"
        "  pii: {type: pii}\n"
        "  words: {type: keywords, keywords: [project hydra]}\n"
        "input:\n"
        "  screens:\n"
        f"    - {{judge: pii, on_flag: redact, restore: {str(restore).lower()}, "
        f"timeout_s: {timeout_s}}}\n"
        f"    - {{judge: words, on_flag: redact, timeout_s: {timeout_s}}}\n"
        f"{extra}"
    )


class Recording:
    """The app inside the guard, recording each request body it received."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.bodies: list[bytes] = []
        self.lengths: list[str | None] = []
        self.headers: list[dict[bytes, bytes]] = []

    async def __call__(self, scope: Message, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        while True:
            messages.append(await receive())
            if not messages[-1].get("more_body", False):
                break
        body = b"".join(m.get("body", b"") for m in messages)
        self.bodies.append(body)
        self.lengths.append(dict(scope["headers"]).get(b"content-length", b"").decode() or None)
        self.headers.append(dict(scope["headers"]))
        replay = iter(messages)

        async def replayed() -> Message:
            return next(replay, None) or await receive()

        await self.app(scope, replayed, send)

    def last(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.bodies[-1])
        return data


class Served_:
    def __init__(self, served: Served, app: Recording, registry: CollectorRegistry) -> None:
        self.served, self.app, self.registry = served, app, registry

    def client(self) -> OpenAI:
        return OpenAI(base_url=self.served.url + "/v1", api_key="test", max_retries=0)

    def value(self, name: str, **labels: str) -> float:
        self.settled()
        return self.registry.get_sample_value(name, {"policy": "test", **labels}) or 0.0

    def settled(self) -> None:
        in_flight = {"policy": "test"}
        assert wait_for(
            lambda: self.registry.get_sample_value("guardrail_requests_in_flight", in_flight) == 0
        )


def serve(policy: Any, app: Any = None) -> Iterator[Served_]:
    recording = Recording(app if app is not None else create_app(None))
    registry = CollectorRegistry()
    guarded = GuardrailMiddleware(recording, policy=policy, registry=registry)
    with Served(guarded) as served:
        yield Served_(served, recording, registry)


@pytest.fixture
def guarded() -> Iterator[Served_]:
    yield from serve(redaction_policy())


def ask(client: OpenAI, text: str, *, stream: bool) -> str:
    messages: Any = [{"role": "user", "content": text}]
    if not stream:
        answer = client.chat.completions.create(model="m", messages=messages)
        return answer.choices[0].message.content or ""
    chunks = client.chat.completions.create(model="m", messages=messages, stream=True)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# --- end to end --------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_the_app_sees_placeholders_and_the_user_the_originals(
    guarded: Served_, stream: bool
) -> None:
    text = f"Mail {EMAIL} or call {PHONE}; card {CARD}, key {KEY}. Mail {EMAIL} again."
    answer = ask(guarded.client(), text, stream=stream)

    received = guarded.app.last()["messages"][0]["content"]
    sent = "Mail <EMAIL_1> or call <PHONE_1>; card <CARD_1>, key <SECRET_1>. Mail <EMAIL_1> again."
    assert received == sent
    assert guarded.app.lengths[-1] == str(len(guarded.app.bodies[-1]))
    # The echo app repeats what it got: restored, but cards and secrets never come back.
    restored = f"Mail {EMAIL} or call {PHONE}; card <CARD_1>, key <SECRET_1>. Mail {EMAIL} again."
    assert answer == f"You said: {restored}"
    assert guarded.value("guardrail_requests_total", decision="redacted") == 1
    assert guarded.value("guardrail_redactions_total", kind="email") == 2
    assert guarded.value("guardrail_redactions_total", kind="card") == 1


def test_without_restore_the_user_sees_placeholders() -> None:
    for served in serve(redaction_policy(restore=False)):
        answer = ask(served.client(), f"mail {EMAIL}", stream=False)
        assert answer == "You said: mail <EMAIL_1>"


def test_one_value_gets_one_placeholder_across_the_conversation(guarded: Served_) -> None:
    messages: Any = [
        {"role": "system", "content": f"The user is {EMAIL.upper()}."},
        {"role": "assistant", "content": "Noted, project HYDRA."},
        {"role": "user", "content": f"Write to {EMAIL} about Project  Hydra."},
    ]
    guarded.client().chat.completions.create(model="m", messages=messages)
    got = [m["content"] for m in guarded.app.last()["messages"]]
    assert got == [
        "The user is <EMAIL_1>.",
        "Noted, <BANNED_1>.",
        "Write to <EMAIL_1> about <BANNED_1>.",
    ]


def test_a_clean_request_reaches_the_app_byte_for_byte(guarded: Served_) -> None:
    guarded.client().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "What is the capital of France?"}]
    )
    assert b'"What is the capital of France?"' in guarded.app.bodies[-1]
    assert guarded.value("guardrail_requests_total", decision="allowed") == 1
    assert guarded.value("guardrail_requests_total", decision="redacted") == 0


def test_a_value_redaction_cannot_reach_is_still_refused(guarded: Served_) -> None:
    # Object keys are the app's schema, never rewritten: the screens still see the e-mail.
    answer = guarded.client().chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "hi"}],
        extra_body={"metadata": {EMAIL: "x"}},
    )
    assert answer.choices[0].finish_reason == "content_filter"
    assert guarded.value("guardrail_requests_total", decision="blocked") == 1
    assert guarded.app.bodies == []  # the app waited for the verdict: it never had the value


def test_a_value_in_the_query_never_reaches_the_app(guarded: Served_) -> None:
    answer = guarded.client().chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "hi"}],
        extra_query={"contact": EMAIL},
    )
    assert answer.choices[0].finish_reason == "content_filter"
    assert guarded.app.bodies == []


def test_the_audit_trail_records_kinds_and_counts_never_values(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    policy = redaction_policy(extra=f"audit: {{sink: file, path: '{path}'}}\n")
    for served in serve(policy):
        ask(served.client(), f"{EMAIL}, {EMAIL} and {CARD}", stream=False)
        served.settled()
        assert wait_for(lambda: path.exists() and path.read_text().strip() != "")
        text = path.read_text()
        record = json.loads(text.splitlines()[-1])
        assert record["decision"] == "redacted"
        assert record["redactions"] == {"email": 2, "card": 1}
        assert EMAIL not in text and "4111" not in text


def test_redact_is_only_for_judges_that_say_where_their_findings_are() -> None:
    with pytest.raises(PolicyError, match="needs a pii or keywords judge"):
        parse_policy(
            "name: t\nroutes: [{path: /x}]\n"
            "judges: {j: {type: injection}}\n"
            "input: {screens: [{judge: j, on_flag: redact}]}\n"
        )
    with pytest.raises(PolicyError, match="restore is used only with on_flag: redact"):
        parse_policy(
            "name: t\nroutes: [{path: /x}]\n"
            "judges: {j: {type: pii}}\n"
            "input: {screens: [{judge: j, restore: true}]}\n"
        )


# --- a streamed placeholder cut anywhere, through the guard ------------------------


def spelling_app() -> Any:
    """Streams the last user message back one character per event, its bytes cut once
    where the request's ``x-cut`` header says."""

    async def app(scope: Message, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        cut = int(dict(scope["headers"]).get(b"x-cut", b"0"))
        body = json.loads((await receive())["body"])
        text = body["messages"][-1]["content"]
        events = b"".join(
            b"data: "
            + json.dumps({"choices": [{"index": 0, "delta": {"content": char}}]}).encode()
            + b"\n\n"
            for char in text
        )
        events += b"data: [DONE]\n\n"
        start = {"type": "http.response.start", "status": 200}
        await send({**start, "headers": [(b"content-type", b"text/event-stream")]})
        for piece in (events[:cut], events[cut:]):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return app


def test_a_placeholder_spelled_out_over_many_events_is_restored() -> None:
    # The app streams "to <EMAIL_1>!" a character per event (about 70 bytes each),
    # its bytes cut once: before, inside and after each event of the placeholder.
    for served in serve(redaction_policy(), spelling_app()):
        client = served.client()
        for cut in range(0, 70 * 14, 23):
            headers = {"x-cut": str(cut)}
            messages: Any = [{"role": "user", "content": f"to {EMAIL}!"}]
            chunks = client.chat.completions.create(
                model="m", messages=messages, stream=True, extra_headers=headers
            )
            answer = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert answer == f"to {EMAIL}!", cut
        assert served.app.last()["messages"][0]["content"] == "to <EMAIL_1>!"


def test_ten_thousand_values_through_the_guard() -> None:
    text = " ".join(f"user{i}@mail{i % 7}.org" for i in range(10_000))
    for guarded in serve(redaction_policy(timeout_s=120.0)):
        assert ask(guarded.client(), text, stream=False) == f"You said: {text}"
        received = guarded.app.last()["messages"][0]["content"]
        assert received == " ".join(f"<EMAIL_{i}>" for i in range(1, 10_001))
        assert guarded.value("guardrail_redactions_total", kind="email") == 10_000


# --- bad input, without a server ------------------------------------------------------


def body_of(*texts: str) -> bytes:
    messages = [{"role": "user", "content": text} for text in texts]
    return json.dumps({"model": "m", "messages": messages}).encode()


def contents(body: bytes) -> list[str]:
    return [m["content"] for m in json.loads(body)["messages"]]


PII = Redacting(PIIJudge("pii"), restore=True)


def test_values_split_by_invisible_characters_are_redacted_whole() -> None:
    hidden = "a\u200bna@exam\u2060ple.org"
    card = "4111\u200b1111\u200d1111\u20601111"
    redaction = asyncio.run(redact([PII], body_of(f"mail {hidden}, card {card}")))
    assert redaction is not None
    assert contents(redaction.body) == ["mail <EMAIL_1>, card <CARD_1>"]
    assert redaction.restorable == {"<EMAIL_1>": hidden}  # as the user wrote it


def test_the_same_value_in_two_spellings_is_one_placeholder() -> None:
    body = body_of(
        f"{EMAIL} and ANA@Example.ORG",
        "4111-1111-1111-1111 or 4111 1111 1111 1111",
        f"{PHONE} or +1 415 555 2671",
    )
    redaction = asyncio.run(redact([PII], body))
    assert redaction is not None
    assert contents(redaction.body) == [
        "<EMAIL_1> and <EMAIL_1>",
        "<CARD_1> or <CARD_1>",
        "<PHONE_1> or <PHONE_1>",
    ]


def test_a_placeholder_the_user_typed_is_never_restored_to_another_value() -> None:
    redaction = asyncio.run(redact([PII], body_of(f"<EMAIL_1> is not me, {EMAIL} is")))
    assert redaction is not None
    assert contents(redaction.body) == ["<EMAIL_1> is not me, <EMAIL_2> is"]
    assert redaction.restorable == {"<EMAIL_2>": EMAIL}
    answer = restored(redaction.restorable, [complete("<EMAIL_1> and <EMAIL_2>")])
    assert json.loads(answer)["content"] == f"<EMAIL_1> and {EMAIL}"


def test_a_placeholder_the_app_invents_stays_as_it_is() -> None:
    answer = restored({"<EMAIL_1>": EMAIL}, [complete("<EMAIL_1>, <EMAIL_7>, <PHONE_1>")])
    assert json.loads(answer)["content"] == f"{EMAIL}, <EMAIL_7>, <PHONE_1>"


def test_ten_thousand_values_in_one_request() -> None:
    text = " ".join(f"user{i}@mail{i % 7}.org" for i in range(10_000))
    redaction = asyncio.run(redact([PII], body_of(text, text)))
    assert redaction is not None
    first, second = contents(redaction.body)
    assert first == second == " ".join(f"<EMAIL_{i}>" for i in range(1, 10_001))
    assert redaction.counts["email"] == 20_000
    assert len(redaction.restorable) == 10_000


def test_keywords_give_spans_in_the_original_text() -> None:
    judge = KeywordJudge("k", keywords=["project hydra"])
    text = "the PROJECT\u200b  Hydra files"
    spans = asyncio.run(judge.spans(text))
    assert [text[s.start : s.end] for s in spans] == ["PROJECT\u200b  Hydra"]


# --- restoring streams, cut at every byte --------------------------------------------


def complete(content: str) -> Message:
    return {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"1")],
        "body": json.dumps({"content": content}).encode(),
    }


def fed(restorer: Restorer, messages: list[Message]) -> list[Message]:
    async def run() -> list[Message]:
        return [m for message in messages for m in await restorer.feed(message)]

    return asyncio.run(run())


def restored(originals: dict[str, str], answers: list[Message]) -> bytes:
    restorer = Restorer(originals, FLOWS)
    out: list[Message] = []
    for answer in answers:
        start = {k: v for k, v in answer.items() if k != "body"}
        out += fed(restorer, [start, {"type": "http.response.body", "body": answer["body"]}])
    return b"".join(m.get("body", b"") for m in out if m["type"] == "http.response.body")


def sse(pieces: list[str]) -> bytes:
    events = [
        b"data: " + json.dumps({"id": "c1", "choices": [{"delta": {"content": p}}]}).encode()
        for p in pieces
    ]
    return b"\n\n".join([*events, b"data: [DONE]"]) + b"\n\n"


def read_sse(body: bytes) -> list[str]:
    """The content of each event, as a client reads it."""
    out = []
    for event in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = event.removeprefix(b"data: ")
        if data and data != b"[DONE]":
            out.append(json.loads(data)["choices"][0]["delta"]["content"])
    return out


@settings(max_examples=300)
@given(
    before=st.text(alphabet="ab <>_EMAIL1", max_size=12),
    after=st.text(alphabet="ab <>_EMAIL1", max_size=12),
    cut=st.integers(min_value=0),
    byte=st.integers(min_value=0),
)
def test_a_streamed_placeholder_cut_anywhere_is_restored_and_nothing_more_is_held(
    before: str, after: str, cut: int, byte: int
) -> None:
    originals = {"<EMAIL_1>": EMAIL, "<EMAIL_12>": "bo@example.net", "<PHONE_1>": PHONE}
    text = f"{before}<EMAIL_1>{after}"
    cut %= len(text) + 1
    body = sse([text[:cut], text[cut:]])
    byte %= len(body) + 1
    start = {"type": "http.response.start", "status": 200, "headers": []}
    out = fed(
        Restorer(originals, FLOWS),
        [
            start,
            *(
                {"type": "http.response.body", "body": piece, "more_body": more}
                for piece, more in ((body[:byte], True), (body[byte:], False))
            ),
        ],
    )
    received = read_sse(b"".join(m.get("body", b"") for m in out[1:]))
    expected = text
    for placeholder, value in originals.items():
        expected = expected.replace(placeholder, value)
    assert "".join(received) == expected
    # The first event held back only an unfinished placeholder at its end, if any.
    first = text[:cut]
    last_open = first.rfind("<")
    tail = first[last_open:] if last_open != -1 else ""
    unfinished = any(p.startswith(tail) and p != tail for p in originals) if tail else False
    sent = first[: len(first) - len(tail)] if unfinished else first
    for placeholder, value in originals.items():
        sent = sent.replace(placeholder, value)
    assert received[0] == sent


def test_a_plain_text_stream_restores_across_chunks() -> None:
    text = b"hello <EMAIL_1>, bye <EMA"
    chunks = [
        {"type": "http.response.body", "body": text[i : i + 1], "more_body": True}
        for i in range(len(text))
    ]
    out = fed(
        Restorer({"<EMAIL_1>": EMAIL}, FLOWS),
        [
            {"type": "http.response.start", "status": 200, "headers": []},
            *chunks,
            {"type": "http.response.body", "body": b""},
        ],
    )
    assert b"".join(m.get("body", b"") for m in out[1:]) == f"hello {EMAIL}, bye <EMA".encode()


# --- redacting the answer instead of cutting it ---------------------------------------


def output_policy(mode: str = "hold_back") -> Any:
    return redaction_policy(
        extra=(
            "output:\n"
            f"  mode: {mode}\n"
            "  on_flag: redact\n"
            "  window_chars: 80\n"
            "  screens: [{judge: pii}]\n"
        )
    )


def answering_app(answer: str, *, stream: bool) -> Any:
    """Answers every request with ``answer``: whole, or one character per event."""

    async def app(scope: Message, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await receive()
        if not stream:
            body = json.dumps(
                {
                    "id": "c1",
                    "object": "chat.completion",
                    "created": 1,
                    "model": "m",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": answer},
                            "finish_reason": "stop",
                        }
                    ],
                }
            ).encode()
            headers = [(b"content-type", b"application/json")]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        start = {"type": "http.response.start", "status": 200}
        await send({**start, "headers": [(b"content-type", b"text/event-stream")]})
        for char in answer:
            chunk = {
                "id": "c1",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": "m",
                "choices": [{"index": 0, "delta": {"content": char}, "finish_reason": None}],
            }
            event = b"data: " + json.dumps(chunk).encode() + b"\n\n"
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})

    return app


@pytest.mark.parametrize("stream", [False, True])
def test_an_answer_with_personal_data_is_redacted_not_cut(stream: bool) -> None:
    answer = "Our support: (212) 555-2671, or bo@example.net, or card 4111111111111111."
    for served in serve(output_policy(), answering_app(answer, stream=stream)):
        got = ask(served.client(), "how do I reach support?", stream=stream)
        assert got == "Our support: <PHONE_1>, or <EMAIL_1>, or card <CARD_1>."
        assert served.value("guardrail_requests_total", decision="redacted") == 1
        assert served.value("guardrail_redactions_total", kind="email") == 1
        assert served.value("guardrail_streams_cut_total", reason="flag") == 0


def test_answer_placeholders_are_numbered_after_the_requests() -> None:
    for served in serve(output_policy(), answering_app("write to bo@example.net", stream=True)):
        got = ask(served.client(), f"I am {EMAIL}", stream=True)
        assert served.app.last()["messages"][0]["content"] == "I am <EMAIL_1>"
        assert got == "write to <EMAIL_2>"  # the app's value, never restored as the user's


@pytest.mark.parametrize("stream", [False, True])
def test_the_users_values_come_back_through_an_output_stage_that_redacts(stream: bool) -> None:
    for served in serve(output_policy()):
        assert ask(served.client(), f"I am {EMAIL}", stream=stream) == f"You said: I am {EMAIL}"


# --- kinds worth redacting ----------------------------------------------------------

ALL_KINDS = PIIJudge("pii", kinds=("email", "phone", "card", "secret", "iban", "ssn"))


@pytest.mark.parametrize(
    ("text", "found", "kind"),
    [
        ("pay to DE89 3704 0044 0532 0130 00 today", "DE89 3704 0044 0532 0130 00", "iban"),
        ("iban gb82west12345698765432.", "gb82west12345698765432", "iban"),
        ("ssn 536-22-1234 on file", "536-22-1234", "ssn"),
        ("write ana at example dot com", "ana at example dot com", "email"),
        ("ana [at] mail [dot] org", "ana [at] mail [dot] org", "email"),
        ("ring +49 30 901820 or 212.555.2671", "+49 30 901820", "phone"),
    ],
)
def test_new_kinds_are_found_where_they_are(text: str, found: str, kind: str) -> None:
    spans = asyncio.run(ALL_KINDS.spans(text))
    assert (text[spans[0].start : spans[0].end], spans[0].kind) == (found, kind)


@pytest.mark.parametrize(
    "text",
    [
        "DE89 3704 0044 0532 0130 02",  # one digit off: the checksum fails
        "536-00-1234",  # group 00 is never issued
        "666-12-3456",  # area 666 is never issued
        "900-12-3456",  # area 9xx is never issued
        "078-05-1120 x",  # the SSA's own example number (a phone by the trunk format)
        "user@example.com",  # a placeholder address
        "call (212) 555-0147",  # 555-01xx is for fiction
        "AKIAIOSFODNN7EXAMPLE",  # AWS's documented example key
        "look at this dot com",
    ],
)
def test_placeholders_and_invalid_numbers_are_not_findings(text: str) -> None:
    spans = asyncio.run(ALL_KINDS.spans(text))
    assert [s.kind for s in spans if s.kind != "phone" or "078" not in text] == []


def test_a_placeholder_typed_in_a_key_or_the_query_is_taken_too() -> None:
    body = json.dumps(
        {
            "model": "m",
            "metadata": {"<EMAIL_1>": "x"},
            "messages": [{"role": "user", "content": EMAIL}],
        }
    ).encode()
    redaction = asyncio.run(redact([PII], body, "q=<EMAIL_2>"))
    assert redaction is not None
    assert contents(redaction.body) == ["<EMAIL_3>"]
    assert redaction.restorable == {"<EMAIL_3>": EMAIL}


def test_redaction_out_of_time_keeps_the_request_from_the_app() -> None:
    policy = parse_policy(
        "name: test\n"
        "routes: [{path: /v1/chat/completions}]\n"
        "judges: {pii: {type: pii}}\n"
        "input: {screens: [{judge: pii, on_flag: redact, timeout_s: 0.001}]}\n"
    )
    text = " ".join(f"user{i}@mail{i % 7}.org" for i in range(10_000))
    for served in serve(policy):
        answer = served.client().chat.completions.create(
            model="m", messages=[{"role": "user", "content": text}]
        )
        assert answer.choices[0].finish_reason == "content_filter"
        refused = sum(
            served.value("guardrail_requests_total", decision=d)
            for d in ("blocked", "error_blocked")
        )
        assert refused == 1
        assert served.app.bodies == []  # the values never reached the app


@settings(max_examples=300)
@given(
    st.text(
        alphabet=st.sampled_from(
            [*"ab AZ@.\t\n09", "\u200b", "\u2060", "\u0301", "\uff21", "\u0430", "\u1e9e"]
        ),
        max_size=40,
    )
)
def test_a_mapped_reading_is_the_judges_reading_and_points_back_in_order(text: str) -> None:
    from guardrail.judges.normalize import mapped_reading, readings

    for spaced, reading in zip((False, True), asyncio.run(readings(text)), strict=False):
        form, origin = asyncio.run(mapped_reading(text, spaced=spaced))
        assert form.strip(" ") == reading.strip(" ")
        assert len(origin) == len(form)
        assert origin == sorted(origin) and all(0 <= i < len(text) for i in origin)


def test_a_streamed_placeholder_cut_at_every_byte_and_every_character() -> None:
    # Exhaustive next to the property above: every split of the text into two
    # events, and every byte where the network may cut the stream.
    text = "hi <EMAIL_1>."
    for split in range(len(text) + 1):
        body = sse([text[:split], text[split:]])
        for byte in range(len(body) + 1):
            chunks = [
                {"type": "http.response.body", "body": body[:byte], "more_body": True},
                {"type": "http.response.body", "body": body[byte:], "more_body": False},
            ]
            start = {"type": "http.response.start", "status": 200, "headers": []}
            out = fed(Restorer({"<EMAIL_1>": EMAIL}, FLOWS), [start, *chunks])
            received = read_sse(b"".join(m.get("body", b"") for m in out[1:]))
            assert "".join(received) == f"hi {EMAIL}.", (split, byte)


def test_a_chunked_request_reaches_the_app_whole_with_its_new_length(guarded: Served_) -> None:
    import httpx

    body = body_of(f"mail {EMAIL}")
    response = httpx.post(
        guarded.served.url + "/v1/chat/completions",
        content=iter([body[:10], body[10:]]),  # sent chunked: no Content-Length
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 200
    headers = guarded.app.headers[-1]
    assert b"transfer-encoding" not in headers
    assert headers[b"content-length"] == str(len(guarded.app.bodies[-1])).encode()
    assert contents(guarded.app.bodies[-1]) == ["mail <EMAIL_1>"]


_places = st.sampled_from(["content", "key", "name", "query", "tool"])


@settings(max_examples=60)
@given(st.lists(st.tuples(_places, st.sampled_from([EMAIL, CARD, PHONE, KEY])), max_size=4))
async def test_what_a_redacting_judge_finds_is_gone_or_the_app_waits(
    found: list[tuple[str, str]],
) -> None:
    guard = Guard.build(redaction_policy(), registry=CollectorRegistry())
    message: dict[str, Any] = {"role": "user", "content": "hi"}
    data: dict[str, Any] = {"model": "m", "messages": [message], "metadata": {}}
    query = ""
    for i, (place, value) in enumerate(found):
        if place == "content":
            message["content"] += f" and {value}"
        elif place == "key":
            data["metadata"][f"{value} {i}"] = "x"
        elif place == "name":
            message["name"] = value
        elif place == "query":
            query += f"\n{value}"
        else:
            data["tools"] = [{"type": "function", "function": {"name": "f", "description": value}}]
    body = json.dumps(data).encode()
    request = OpenAIChat().parse_request(body)
    outcome = await redact_request(guard, body, f"{request.text}\n{query}", query)
    given_to_app = outcome.redaction.body if outcome.redaction is not None else body
    left = json.dumps(json.loads(given_to_app), ensure_ascii=False) + query
    pii = guard.judges["pii"]
    # The app starts before the verdict only with a body no redacting judge flags.
    assert outcome.failed or not (await pii.screen(left)).flagged


@pytest.mark.parametrize(
    "file_data",
    [
        "data:text/plain;base64,"
        + base64.b64encode(f"Card {CARD}, mail {EMAIL}".encode()).decode(),
        "data:text/plain," + quote(f"Card {CARD}, mail {EMAIL}"),
    ],
    ids=["base64", "percent-encoded"],
)
def test_a_value_inside_a_text_data_url_never_reaches_the_app(
    guarded: Served_, file_data: str
) -> None:
    # Found by red-teaming: redaction leaves data URLs whole (rewriting one would break
    # it), the screens read them decoded. The app must then wait for the verdict, not
    # start with the card in hand.
    content: Any = [
        {"type": "text", "text": "summarise this file"},
        {"type": "file", "file": {"filename": "a.txt", "file_data": file_data}},
    ]
    answer = guarded.client().chat.completions.create(
        model="m", messages=[{"role": "user", "content": content}]
    )
    assert answer.choices[0].finish_reason == "content_filter"
    guarded.settled()
    assert guarded.app.bodies == []


def test_a_key_inside_an_email_address_never_comes_back(guarded: Served_) -> None:
    # A URL's credentials read as an e-mail address too; the key inside stays redacted.
    text = f"Fetch https://{KEY}@api.example.com/v1 and mail ana+{CARD.replace(' ', '')}@mail.com"
    answer = ask(guarded.client(), text, stream=False)
    assert KEY not in answer and CARD.replace(" ", "") not in answer
    assert KEY not in guarded.app.last()["messages"][0]["content"]


NEVER_BACK = PIIJudge("cards and keys", kinds=("card", "secret"))


@settings(max_examples=100)
@given(
    st.lists(
        st.sampled_from(
            [KEY, CARD.replace(" ", ""), "ana", "+", ".", "@mail.com", " ", "https://"]
        ),
        min_size=1,
        max_size=6,
    )
)
async def test_what_comes_back_holds_no_card_or_key(parts: list[str]) -> None:
    judge = PIIJudge("pii")
    redaction = await redact([Redacting(judge, restore=True)], body_of("".join(parts)))
    for original in (redaction.restorable if redaction is not None else {}).values():
        # Nothing a judge of cards and keys alone finds, inside what is restored.
        assert await NEVER_BACK.spans(original) == []
