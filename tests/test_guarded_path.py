"""The guarded request path end to end: real uvicorn, real openai client, stub LLMs."""

from __future__ import annotations

import threading

import httpx
import openai
import pytest
from guarded import BENIGN, CARD, INJECTION, guarded_app, policy
from served import wait_for
from stub_llm import StubLLM

FLAG = '{"flagged": true, "categories": ["violence"], "reason": "threat"}'


def ask(client: openai.OpenAI, text: str) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": text}]
    )


def test_benign_request_gets_the_apps_answer(stub_llm: StubLLM) -> None:
    stub_llm.reply = "Paris."
    with guarded_app(policy(), upstream_url=stub_llm.base_url) as app:
        answer = ask(app.client(), BENIGN)
        assert answer.choices[0].message.content == "Paris."
        assert answer.choices[0].finish_reason == "stop"
        assert app.decisions("allowed") == 1
        assert app.sample("guardrail_added_latency_seconds_count", {}) == 1


@pytest.mark.parametrize(
    ("text", "category"), [(INJECTION, "prompt_injection"), (CARD, "pii_card")]
)
def test_unsafe_request_is_refused_in_the_apis_shape(text: str, category: str) -> None:
    with guarded_app(policy()) as app:
        answer = ask(app.client(), text)
        assert answer.choices[0].finish_reason == "content_filter"
        assert "can't help" in (answer.choices[0].message.content or "")
        assert app.decisions("blocked") == 1
        assert app.decisions("allowed") == 0
        flags = app.sample(
            "guardrail_flags_total",
            {
                "stage": "input",
                "judge": "pii" if text is CARD else "injection",
                "category": category,
            },
        )
        assert flags == 1


def test_block_cancels_the_apps_upstream_call(stub_llm_factory) -> None:  # type: ignore[no-untyped-def]
    upstream = stub_llm_factory(latency_s=5.0)  # the app's model is slow
    # The judge flags once the app's call to its model is under way.
    judge = stub_llm_factory(reply=lambda _: wait_for(lambda: upstream.count == 1) and FLAG)
    with guarded_app(policy(judge.base_url), upstream_url=upstream.base_url) as app:
        answer = ask(app.client(), BENIGN)
        assert answer.choices[0].finish_reason == "content_filter"
        # The app's HTTP request to its model was closed, not left running.
        assert wait_for(lambda: upstream.cancelled == 1)
        assert upstream.completed == 0
        assert app.sample("guardrail_app_cancelled_total", {"reason": "blocked"}) == 1


def test_app_and_screen_run_at_the_same_time(stub_llm_factory) -> None:  # type: ignore[no-untyped-def]
    upstream = stub_llm_factory()
    judge = stub_llm_factory()
    # Each stub answers only once the other has received its request: run in
    # sequence, the first would wait for the second forever (here: 5 s) and
    # answer that it was alone.
    upstream.reply = lambda _: "together" if wait_for(lambda: judge.count == 1) else "alone"
    judge.reply = lambda _: (
        '{"flagged": false, "categories": [], "reason": "ok"}'
        if wait_for(lambda: upstream.count == 1)
        else "alone"
    )
    with guarded_app(policy(judge.base_url, timeout_s=10), upstream.base_url) as app:
        answer = ask(app.client(), BENIGN)
        assert answer.choices[0].message.content == "together"
        assert app.decisions("allowed") == 1


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        ({"latency_s": 3.0}, "timeout"),
        ({"hang": True}, "timeout"),
        ({"status": 500}, "http"),
        ({"reply": "I think this message is fine."}, "parse"),
        ({"raw_body": b"<html>oops</html>"}, "parse"),
    ],
)
@pytest.mark.parametrize("on_error", ["block", "allow"])
def test_failing_judge_decides_by_fail_mode(
    stub_llm_factory,
    failure: dict[str, object],
    reason: str,
    on_error: str,  # type: ignore[no-untyped-def]
) -> None:
    judge = stub_llm_factory(**failure)
    with guarded_app(policy(judge.base_url, on_error=on_error, timeout_s=0.3)) as app:
        answer = ask(app.client(), BENIGN)
        if on_error == "block":
            assert answer.choices[0].finish_reason == "content_filter"
            assert app.decisions("error_blocked") == 1
        else:
            assert answer.choices[0].message.content == f"You said: {BENIGN}"
            assert app.decisions("error_allowed") == 1
        errors = {"judge": "llm", "stage": "input", "reason": reason}
        assert app.sample("guardrail_judge_errors_total", errors) == 1


def test_flag_from_one_screen_cancels_the_others(stub_llm_factory) -> None:  # type: ignore[no-untyped-def]
    slow = stub_llm_factory(latency_s=5.0)
    quick = stub_llm_factory(reply=lambda _: wait_for(lambda: slow.count == 1) and FLAG)
    with guarded_app(policy(quick.base_url, slow.base_url, timeout_s=10)) as app:
        answer = ask(app.client(), BENIGN)
        assert answer.choices[0].finish_reason == "content_filter"
        assert wait_for(lambda: slow.cancelled == 1)
        assert slow.completed == 0


def test_llm_judge_flag_blocks(stub_llm_factory) -> None:  # type: ignore[no-untyped-def]
    judge = stub_llm_factory(reply=FLAG)
    with guarded_app(policy(judge.base_url)) as app:
        answer = ask(app.client(), "a harmless-looking sentence")
        assert answer.choices[0].finish_reason == "content_filter"
        flags = app.sample(
            "guardrail_flags_total", {"stage": "input", "judge": "llm", "category": "violence"}
        )
        assert flags == 1


def test_log_only_policy_releases_flagged_requests() -> None:
    with guarded_app(policy(on_flag="log_only")) as app:
        answer = ask(app.client(), INJECTION)
        assert answer.choices[0].message.content == f"You said: {INJECTION}"
        assert app.decisions("flagged_allowed") == 1


def test_client_disconnect_while_held_cancels_app_and_judges(stub_llm_factory) -> None:  # type: ignore[no-untyped-def]
    upstream = stub_llm_factory(latency_s=5.0)
    judge = stub_llm_factory(latency_s=5.0)
    with guarded_app(policy(judge.base_url, timeout_s=10), upstream.base_url) as app:
        with pytest.raises(openai.APITimeoutError):
            ask(app.client(timeout=0.5), BENIGN)
        assert wait_for(lambda: upstream.cancelled == 1 and judge.cancelled == 1)
        assert wait_for(lambda: app.decisions("abandoned") == 1)
        in_flight = app.sample("guardrail_requests_in_flight", {})
        assert in_flight == 0
        assert app.sample("guardrail_app_cancelled_total", {"reason": "client_disconnected"}) == 1


def test_app_exception_is_not_swallowed(stub_llm: StubLLM) -> None:
    stub_llm.status = 500  # the app's model fails, so the app itself raises
    with guarded_app(policy(), upstream_url=stub_llm.base_url) as app:
        with pytest.raises(openai.InternalServerError):
            ask(app.client(), BENIGN)
        assert app.decisions("allowed") == 1


def test_unguarded_routes_pass_untouched() -> None:
    with guarded_app(policy()) as app:
        response = httpx.get(app.url + "/health")
        assert response.json() == {"ok": True}
        assert sum(app.decisions(d) for d in ("allowed", "blocked", "rejected")) == 0


def test_streaming_request_is_held_then_flows() -> None:
    with guarded_app(policy()) as app:
        stream = app.client().chat.completions.create(
            model="demo", messages=[{"role": "user", "content": BENIGN}], stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text == f"You said: {BENIGN}"
        assert app.decisions("allowed") == 1


def test_streaming_request_refused_with_a_content_filter_chunk() -> None:
    with guarded_app(policy()) as app:
        stream = app.client().chat.completions.create(
            model="demo", messages=[{"role": "user", "content": INJECTION}], stream=True
        )
        chunks = [c for c in stream if c.choices]
        assert chunks[-1].choices[0].finish_reason == "content_filter"
        assert "can't help" in "".join(c.choices[0].delta.content or "" for c in chunks)


def test_metrics_endpoint_shows_decisions_and_added_latency() -> None:
    with guarded_app(policy()) as app:
        client = app.client()
        ask(client, BENIGN)
        ask(client, CARD)
        text = httpx.get(app.url + "/metrics").text
        assert 'guardrail_requests_total{decision="allowed",policy="test"} 1.0' in text
        assert 'guardrail_requests_total{decision="blocked",policy="test"} 1.0' in text
        assert 'guardrail_added_latency_seconds_count{policy="test"} 1.0' in text


def test_concurrent_requests_each_get_their_own_decision() -> None:
    with guarded_app(policy()) as app:
        client = app.client()
        results: dict[int, str | None] = {}

        def one(i: int) -> None:
            text = INJECTION if i % 2 else BENIGN
            results[i] = ask(client, text).choices[0].finish_reason

        threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(results[i] == ("content_filter" if i % 2 else "stop") for i in range(20))
        assert app.decisions("allowed") == 10
        assert app.decisions("blocked") == 10
