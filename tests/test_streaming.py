"""Streamed answers and output screening, on a real uvicorn with the real openai client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from guarded import BENIGN, guarded_app, policy
from prometheus_client import CollectorRegistry
from served import Served, wait_for
from stub_llm import StubLLM

from guardrail import GuardrailMiddleware, parse_policy

Factory = Callable[..., StubLLM]
CARD = "4111 1111 1111 1111"
UNSAFE = '{"flagged": true, "categories": ["pii_card"], "reason": "a card number"}'
PIECES = [
    "The weather is lovely today. ",
    "Let us talk about the garden. ",
    f"Your card {CARD} is here. ",
    "And the final words arrive. ",
]


# Clean sentences of about 60 characters: a few fill a window and its hold-back.
LONG = [f"Sentence {i} is about the garden, the weather and the trees. " for i in range(8)]


def output_policy(mode: str = "hold_back", *, window: int = 80, extra: str = "") -> Any:
    """Local input screens; the pii judge screens the answer in windows."""
    return policy(
        extra=(
            "output:\n"
            "  screens: [{judge: pii}]\n"
            f"  mode: {mode}\n"
            f"  window_chars: {window}\n"
            "  idle_timeout_s: 1.0\n"
            f"{extra}"
        )
    )


def llm_output_policy(judge: StubLLM, extra: str, output: str) -> Any:
    """An input screen, and an LLM judge on ``judge`` screening the answer in small windows."""
    return parse_policy(
        "name: test\n"
        "routes: [{path: /v1/chat/completions}]\n"
        "judges:\n"
        "  injection: {type: injection}\n"
        f"  out: {{type: llm, model: openai/out, api_base: '{judge.base_url}'}}\n"
        "input: {screens: [{judge: injection}]}\n"
        f"{extra}"
        f"output: {{{output}, window_chars: 80}}\n"
    )


def stream_text(client: openai.OpenAI) -> tuple[list[str], str | None]:
    """The content pieces a streaming client receives, and the last finish_reason."""
    pieces, finish = [], None
    stream = client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": BENIGN}], stream=True
    )
    for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            finish = choice.finish_reason or finish
    return pieces, finish


def streaming_upstream(factory: Factory, **settings: Any) -> StubLLM:
    return factory(reply="".join(PIECES), stream_chunks=len(PIECES), **settings)


def test_clean_stream_flows_through_whole(stub_llm_factory: Factory) -> None:
    upstream = stub_llm_factory(reply="".join(PIECES[:2] + PIECES[3:]), stream_chunks=3)
    with guarded_app(output_policy(), upstream.base_url) as app:
        pieces, finish = stream_text(app.client())
        assert "".join(pieces) == "".join(PIECES[:2] + PIECES[3:])
        assert finish == "stop"
        assert app.decisions("allowed") == 1
        assert app.sample("guardrail_output_windows_total", {}) >= 2
        assert app.sample("guardrail_time_to_first_byte_seconds_count", {}) == 1


def test_hold_back_cuts_before_any_digit_of_the_card_is_released(
    stub_llm_factory: Factory,
) -> None:
    reply = "".join(LONG[:3] + PIECES + LONG[3:])
    upstream = stub_llm_factory(reply=reply, stream_chunks=12, chunk_delay_s=0.2)
    with guarded_app(output_policy("hold_back"), upstream.base_url) as app:
        pieces, finish = stream_text(app.client())
        text = "".join(pieces)
        released, _, refusal = text.partition("\nSorry")
        assert finish == "content_filter"
        assert refusal, "the refusal starts on a line of its own"
        assert reply.startswith(released)
        assert LONG[0] in released  # clean text before the card flowed
        assert "4111" not in text and PIECES[3] not in text  # never reached the client
        assert app.decisions("blocked") == 1
        assert app.sample("guardrail_streams_cut_total", {"reason": "flag"}) == 1
        assert (
            app.sample(
                "guardrail_flags_total", {"stage": "output", "judge": "pii", "category": "pii_card"}
            )
            >= 1
        )
        # The app was cancelled, and with it its streaming call to its model.
        assert wait_for(lambda: upstream.cancelled == 1)


def test_optimistic_cuts_after_the_flag(stub_llm_factory: Factory) -> None:
    reply = "".join(PIECES + LONG[:4])
    upstream = stub_llm_factory(reply=reply, stream_chunks=8, chunk_delay_s=0.3)
    with guarded_app(output_policy("optimistic", window=65), upstream.base_url) as app:
        pieces, finish = stream_text(app.client())
        text = "".join(pieces)
        assert finish == "content_filter"
        assert text.startswith(PIECES[0] + PIECES[1])
        # Optimistic mode may show the flagged window (documented); never what follows.
        assert LONG[1] not in text
        assert app.decisions("blocked") == 1


def test_optimistic_screens_the_last_window_before_done(stub_llm_factory: Factory) -> None:
    # The openai client stops reading at [DONE]: it must not come before the
    # last window's verdict, or that window would never be screened.
    upstream = stub_llm_factory(reply="".join([*PIECES[:2], PIECES[3], PIECES[2]]), stream_chunks=4)
    with guarded_app(output_policy("optimistic", window=200), upstream.base_url) as app:
        _, finish = stream_text(app.client())
        assert finish == "content_filter"
        assert app.decisions("blocked") == 1


def test_client_leaving_mid_stream_cancels_the_app(stub_llm_factory: Factory) -> None:
    upstream = stub_llm_factory(reply="".join(LONG), stream_chunks=8, chunk_delay_s=0.5)
    with guarded_app(output_policy(), upstream.base_url) as app:
        stream = app.client().chat.completions.create(
            model="demo", messages=[{"role": "user", "content": BENIGN}], stream=True
        )
        next(iter(stream))
        stream.close()
        assert wait_for(lambda: upstream.cancelled == 1)
        assert app.sample("guardrail_app_cancelled_total", {"reason": "client_disconnected"}) == 1


def test_non_streamed_answer_is_screened_whole(stub_llm_factory: Factory) -> None:
    upstream = stub_llm_factory(reply=f"Sure, the number is {CARD}.")
    with guarded_app(output_policy(), upstream.base_url) as app:
        answer = app.client().chat.completions.create(
            model="demo", messages=[{"role": "user", "content": BENIGN}]
        )
        assert answer.choices[0].finish_reason == "content_filter"
        assert CARD not in (answer.choices[0].message.content or "")
        assert app.decisions("blocked") == 1


@pytest.mark.parametrize(("on_error", "finish"), [("block", "content_filter"), ("allow", "stop")])
def test_failing_window_judge_follows_the_fail_mode(
    stub_llm_factory: Factory, on_error: str, finish: str
) -> None:
    upstream = stub_llm_factory(reply="".join(PIECES[:2]), stream_chunks=2)
    judge = stub_llm_factory(status=500)  # the answer's judge fails on every window
    # A generous timeout: the judge fails at once, and a loaded machine must not
    # turn its 500 into a timeout (the test counts the failure reason).
    pol = llm_output_policy(
        judge, f"on_error: {on_error}\n", "screens: [{judge: out, timeout_s: 10}]"
    )
    with guarded_app(pol, upstream.base_url) as app:
        pieces, got = stream_text(app.client())
        assert got == finish
        assert app.decisions(f"error_{on_error}ed" if on_error == "block" else "error_allowed") == 1
        if on_error == "block":
            assert pieces == [] or "can't help" in "".join(pieces)
        # Counted as the answer's screen failing, not the request's.
        errors = {"judge": "out", "reason": "http"}
        assert app.sample("guardrail_judge_errors_total", {**errors, "stage": "output"}) >= 1
        assert app.sample("guardrail_judge_errors_total", {**errors, "stage": "input"}) == 0


def test_flagged_answer_escalates_to_the_panel_at_the_output_stage(
    stub_llm_factory: Factory,
) -> None:
    upstream = stub_llm_factory(reply=f"Sure, the number is {CARD}.")
    judge = stub_llm_factory(reply=UNSAFE)
    pol = parse_policy(
        "name: test\n"
        "routes: [{path: /v1/chat/completions}]\n"
        "judges:\n"
        "  pii: {type: pii}\n"
        f"  a: {{type: llm, model: openai/judge-a, api_base: '{judge.base_url}'}}\n"
        "input: {screens: [{judge: pii}]}\n"
        "on_flag: vote\n"
        "panel: {judges: [{judge: a}], overturns: [pii]}\n"  # pii flags are final unless listed
        "output: {screens: [{judge: pii}]}\n"
    )
    with guarded_app(pol, upstream.base_url) as app:
        answer = app.client().chat.completions.create(
            model="demo", messages=[{"role": "user", "content": BENIGN}]
        )
        assert answer.choices[0].finish_reason == "content_filter"
        assert app.decisions("blocked") == 1
        output = {"stage": "output", "trigger": "flag"}
        assert app.sample("guardrail_escalations_total", output) == 1
        assert app.sample("guardrail_escalations_total", {**output, "stage": "input"}) == 0
        assert app.sample("guardrail_panel_rulings_total", {**output, "outcome": "block"}) == 1
        # A policy with output screens has its output series from the start, at zero.
        prepared = {"policy": "test", "judge": "pii", "stage": "output", "reason": "timeout"}
        assert app.registry.get_sample_value("guardrail_judge_errors_total", prepared) == 0


# --- hostile apps: raw ASGI, so every byte is chosen ------------------------------------


def raw_app(
    chunks: list[bytes], *, content_type: bytes, hang: bool = False, raise_at_end: bool = False
):  # type: ignore[no-untyped-def]
    """An app that streams ``chunks`` as separate body messages."""
    state: dict[str, Any] = {"cancelled": False}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await receive()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", content_type)],
            }
        )
        try:
            for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await asyncio.sleep(0.01)
            if raise_at_end:
                raise RuntimeError("the app broke mid-stream")
            if hang:
                await asyncio.sleep(3600)
            await send({"type": "http.response.body", "body": b""})
        except asyncio.CancelledError:
            state["cancelled"] = True
            raise

    return app, state


def serve_raw(app: Any, pol: Any) -> Served:
    return Served(GuardrailMiddleware(app, policy=pol, registry=CollectorRegistry()))


def event(text: str) -> bytes:
    chunk = {
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": text}}],
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def post(served: Served) -> httpx.Response:
    body = {"model": "m", "messages": [{"role": "user", "content": BENIGN}], "stream": True}
    return httpx.post(served.url + "/v1/chat/completions", json=body, timeout=10)


@pytest.mark.parametrize(
    "chunks",
    [
        # an event split across network reads in the middle of a line, and of the card number
        [
            event("hello ")[:30],
            event("hello ")[30:] + event("my card 4111 1111")[:25],
            event("my card 4111 1111")[25:] + event(" 1111 1111 ok"),
        ],
        # one enormous event (over max_event_bytes) with the card deep inside
        [event("x " * 40_000 + CARD + " y" * 10)],
        # malformed SSE: not JSON, screened as raw text
        [b"data: {broken json " + CARD.encode() + b"\n\n"],
        # binary junk with the card inside
        [b"\x00\xff\xfe junk " + CARD.encode() + b" \x01\x02\n\n"],
    ],
    ids=["split-mid-line", "enormous-event", "malformed-sse", "binary-junk"],
)
def test_hostile_streams_are_still_screened(chunks: list[bytes]) -> None:
    app, _ = raw_app(chunks, content_type=b"text/event-stream")
    with serve_raw(app, output_policy(window=200)) as served:
        response = post(served)
        assert CARD.encode() not in response.content
        assert b'"finish_reason": "content_filter"' in response.content
        assert response.content.rstrip().endswith(b"data: [DONE]")


def test_stream_that_never_ends_is_ended_by_the_idle_timeout() -> None:
    app, state = raw_app([event("hello there")], content_type=b"text/event-stream", hang=True)
    with serve_raw(app, output_policy()) as served:
        response = post(served)
        assert b"hello there" in response.content  # screened and released before the idle cut
        assert b'"finish_reason": "content_filter"' in response.content
        assert wait_for(lambda: state["cancelled"])


def test_app_whose_stream_breaks_off_has_its_tail_screened() -> None:
    app, _ = raw_app(
        [event("fine words "), event(f"then {CARD}")],
        content_type=b"text/event-stream",
        raise_at_end=True,
    )
    with serve_raw(app, output_policy(window=500)) as served:
        response = post(served)
        # What arrived was screened (the card is caught) and the stream ended
        # well-formed; the app's exception still reaches the server's log.
        assert CARD.encode() not in response.content
        assert b'"finish_reason": "content_filter"' in response.content


@pytest.mark.parametrize(
    ("text", "passes"), [("plain and harmless text " * 5, True), (f"card {CARD} " * 3, False)]
)
def test_chunked_plain_text_is_screened_per_window(text: str, passes: bool) -> None:
    chunks = [text[i : i + 15].encode() for i in range(0, len(text), 15)]
    app, _ = raw_app(chunks, content_type=b"text/plain")
    with serve_raw(app, output_policy()) as served:
        response = post(served)
        if passes:
            assert response.text == text
        else:
            assert CARD not in response.text
            assert "can't help" in response.text


def test_app_that_returns_without_answering_does_not_hang_the_guard() -> None:
    async def silent(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await receive()

    with serve_raw(silent, output_policy()) as served:
        response = post(served)
        # Nothing to screen, and the policy fails closed: the client gets the refusal
        # (as a stream: it asked for one).
        assert b'"finish_reason": "content_filter"' in response.content
        assert response.content.rstrip().endswith(b"data: [DONE]")


def test_chunked_plain_text_can_be_screened_whole() -> None:
    text = f"card {CARD} in pieces"
    chunks = [text[i : i + 4].encode() for i in range(0, len(text), 4)]
    app, _ = raw_app(chunks, content_type=b"text/plain")
    with serve_raw(app, output_policy(extra="  plain_text: whole\n")) as served:
        response = post(served)
        assert CARD not in response.text
        assert '"finish_reason": "content_filter"' in response.text  # the client asked to stream


@pytest.mark.parametrize("mode", ["input-only", "hold_back", "optimistic"])
def test_chunks_flow_while_the_app_is_still_generating(
    stub_llm_factory: Factory, mode: str
) -> None:
    # Clean text, four chunks 0.3 s apart: the first must reach the client while
    # the app's model is still streaming, not after it finished.
    upstream = stub_llm_factory(reply="".join(LONG), stream_chunks=8, chunk_delay_s=0.3)
    pol = policy() if mode == "input-only" else output_policy(mode)
    with guarded_app(pol, upstream.base_url) as app:
        stream = app.client().chat.completions.create(
            model="demo", messages=[{"role": "user", "content": BENIGN}], stream=True
        )
        first = next(c for c in stream if c.choices and c.choices[0].delta.content)
        assert first.choices[0].delta.content
        assert upstream.completed == 0  # the model has not finished its answer yet
        rest = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert (first.choices[0].delta.content + rest).endswith(LONG[-1])


def test_client_leaving_mid_stream_cancels_the_window_judge(stub_llm_factory: Factory) -> None:
    upstream = streaming_upstream(stub_llm_factory, chunk_delay_s=0.2)
    judge = stub_llm_factory(latency_s=30.0)  # the answer's judge is still thinking
    pol = llm_output_policy(judge, "", "screens: [{judge: out, timeout_s: 60}], mode: optimistic")
    with guarded_app(pol, upstream.base_url) as app:
        stream = app.client().chat.completions.create(
            model="demo", messages=[{"role": "user", "content": BENIGN}], stream=True
        )
        next(c for c in stream if c.choices and c.choices[0].delta.content)
        assert wait_for(lambda: judge.count >= 1)
        stream.close()
        # The app, its model call and the window judge's call are all stopped.
        assert wait_for(lambda: upstream.cancelled == 1)
        assert wait_for(lambda: judge.cancelled == judge.count)
        assert app.sample("guardrail_requests_in_flight", {}) == 0
