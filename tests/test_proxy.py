"""Proxy mode: any HTTP chat service behind the guard, over real HTTP end to end."""

from __future__ import annotations

import sys
from collections.abc import Callable

import httpx
import openai
from guarded import BENIGN, INJECTION, policy
from prometheus_client import CollectorRegistry
from served import Served, wait_for
from stub_llm import StubLLM
from test_operations import free_port, start

from guardrail import GuardrailMiddleware
from guardrail.proxy import Upstream

Factory = Callable[..., StubLLM]
FLAG = '{"flagged": true, "categories": ["violence"], "reason": "x"}'


def service_url(stub: StubLLM) -> str:
    """The service's own base (the stub serves the OpenAI paths under /v1)."""
    return stub.base_url.removesuffix("/v1")


def proxied(stub: StubLLM, pol: object = None) -> Served:
    guard = GuardrailMiddleware(
        Upstream(service_url(stub)), policy=pol or policy(), registry=CollectorRegistry()
    )
    return Served(guard, name="proxy")


def client(served: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.url + "/v1", api_key="test", max_retries=0)


def ask(served: Served, text: str, **options: object) -> object:
    return client(served).chat.completions.create(
        model="m", messages=[{"role": "user", "content": text}], **options
    )


def test_benign_requests_reach_the_service_and_unsafe_ones_do_not(stub_llm: StubLLM) -> None:
    stub_llm.reply = "From the service."
    with proxied(stub_llm) as served:
        answer = ask(served, BENIGN)
        assert answer.choices[0].message.content == "From the service."  # type: ignore[attr-defined]
        refused = ask(served, INJECTION)
        # The service may have answered already (it runs in parallel, with no
        # latency here): its answer was held, and never reached the client.
        assert refused.choices[0].finish_reason == "content_filter"  # type: ignore[attr-defined]


def test_a_block_closes_the_upstream_request(stub_llm_factory: Factory) -> None:
    service = stub_llm_factory(latency_s=5.0)
    judge = stub_llm_factory(reply=lambda _: wait_for(lambda: service.count == 1) and FLAG)
    with proxied(service, policy(judge.base_url)) as served:
        refused = ask(served, BENIGN)
        assert refused.choices[0].finish_reason == "content_filter"  # type: ignore[attr-defined]
        assert wait_for(lambda: service.cancelled == 1)  # the service stopped generating


def test_streams_pass_through(stub_llm_factory: Factory) -> None:
    service = stub_llm_factory(reply="one two three four", stream_chunks=4, chunk_delay_s=0.05)
    with proxied(service) as served:
        stream = ask(served, BENIGN, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)  # type: ignore[attr-defined]
        assert text == "one two three four"


def test_unreachable_service_is_a_502_not_a_crash() -> None:
    guard = GuardrailMiddleware(
        Upstream(f"http://127.0.0.1:{free_port()}"), policy=policy(), registry=CollectorRegistry()
    )
    with Served(guard) as served:
        body = {"model": "m", "messages": [{"role": "user", "content": BENIGN}]}
        response = httpx.post(served.url + "/v1/chat/completions", json=body)
        assert response.status_code == 502
        assert "upstream unreachable" in response.json()["error"]["message"]


def test_the_proxy_command(stub_llm: StubLLM) -> None:
    stub_llm.reply = "From the service."
    port = free_port()
    args = [sys.executable, "-m", "guardrail.cli", "proxy", "--upstream", service_url(stub_llm)]
    proc = start([*args, "--port", str(port)], {}, port, health="/v1/models")
    try:
        url = f"http://127.0.0.1:{port}"
        body = {"model": "m", "messages": [{"role": "user", "content": BENIGN}]}
        answer = httpx.post(url + "/v1/chat/completions", json=body).json()
        assert answer["choices"][0]["message"]["content"] == "From the service."
        body["messages"][0]["content"] = INJECTION  # type: ignore[index]
        refused = httpx.post(url + "/v1/chat/completions", json=body).json()
        assert refused["choices"][0]["finish_reason"] == "content_filter"
        assert "guardrail_requests_total" in httpx.get(url + "/metrics").text
    finally:
        proc.terminate()
        proc.wait(timeout=10)
