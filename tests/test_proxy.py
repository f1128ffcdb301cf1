"""Proxy mode: any HTTP chat service behind the guard, over real HTTP end to end."""

from __future__ import annotations

import asyncio
import itertools
import sys
from collections.abc import Callable, Iterator
from urllib.parse import unquote

import httpx
import openai
import pytest
from guarded import BENIGN, INJECTION, policy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from recorder import HOLD, Recorder, chat, raw
from served import Served, wait_for
from stub_llm import StubLLM
from test_operations import free_port, start
from test_routing import CHAT, METHODS, NON_CANONICAL, hostile_paths, reachable

from guardrail import GuardrailMiddleware
from guardrail.flow.proxy import Upstream

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


# --- what the upstream receives -------------------------------------------------


@pytest.fixture(scope="module")
def recorded() -> Iterator[tuple[Served, Recorder, CollectorRegistry]]:
    """One proxy in front of one recording upstream, shared by the module's tests."""
    upstream = Recorder()
    registry = CollectorRegistry()
    with Served(upstream, name="upstream") as service:
        guard = GuardrailMiddleware(Upstream(service.url), policy=policy(), registry=registry)
        with Served(guard, name="proxy") as proxy:
            yield proxy, upstream, registry


@pytest.mark.parametrize("path", [*NON_CANONICAL, "/static/./x", "/other//y", "/a%2Fb"])
def test_non_canonical_paths_never_reach_the_upstream(
    recorded: tuple[Served, Recorder, CollectorRegistry], path: str
) -> None:
    proxy, upstream, _ = recorded
    answer = raw(proxy.port, "POST", path, chat(INJECTION), {"x-probe": path})
    assert answer.status == 400
    assert answer.json()["error"]["code"] == "non_canonical_path"
    assert upstream.probe(path) == []


@pytest.mark.parametrize("method", ["PUT", "PATCH", "put", "DELETE"])
def test_a_body_on_a_guarded_path_with_an_unlisted_method_never_reaches_the_upstream(
    recorded: tuple[Served, Recorder, CollectorRegistry], method: str
) -> None:
    proxy, upstream, _ = recorded
    answer = raw(proxy.port, method, CHAT, chat(INJECTION), {"x-probe": f"m-{method}"})
    assert answer.status == 405
    assert upstream.probe(f"m-{method}") == []


def test_the_upstream_gets_exactly_what_was_screened(
    recorded: tuple[Served, Recorder, CollectorRegistry],
) -> None:
    proxy, upstream, _ = recorded
    assert raw(proxy.port, "post", CHAT, chat(INJECTION)).refused  # lower case is guarded
    headers = {"x-probe": "exact", "accept-encoding": "gzip, br"}
    answer = raw(proxy.port, "post", CHAT + "?x=%2F..", chat(BENIGN), headers)
    assert answer.answered
    [got] = upstream.probe("exact")
    assert (got.method, got.raw_path, got.body) == ("POST", CHAT.encode(), chat(BENIGN))
    assert got.header("accept-encoding") == "identity"  # an answer the screens can read


def test_each_date_and_server_header_appears_once(
    recorded: tuple[Served, Recorder, CollectorRegistry],
) -> None:
    proxy, _, _ = recorded
    for answer in (raw(proxy.port, "POST", CHAT, chat(BENIGN)), raw(proxy.port, "GET", "/x")):
        assert answer.answered
        assert (answer.count("date"), answer.count("server")) == (1, 1)


def test_an_unreachable_upstream_is_an_app_error() -> None:
    registry = CollectorRegistry()
    guard = GuardrailMiddleware(
        Upstream(f"http://127.0.0.1:{free_port()}"), policy=policy(), registry=registry
    )
    with Served(guard) as served:
        answer = raw(served.port, "POST", CHAT, chat(BENIGN))
        assert answer.status == 502
        assert (answer.count("date"), answer.count("server")) == (1, 1)

        def decisions(decision: str) -> float:
            labels = {"policy": "test", "decision": decision}
            return registry.get_sample_value("guardrail_requests_total", labels) or 0.0

        assert wait_for(lambda: decisions("app_error") == 1)
        assert decisions("allowed") == 0


def test_refusals_never_leak_upstream_connections() -> None:
    """Hundreds of refusals, each cancelling a forward in flight: the pool stays whole."""
    upstream = Recorder()
    total = 320
    with Served(upstream, name="upstream") as service:
        # A small pool: one leaked slot per few hundred cancels would show.
        forward = Upstream(service.url, max_connections=4)
        guard = GuardrailMiddleware(forward, policy=policy(), registry=CollectorRegistry())
        with Served(guard, name="proxy") as proxy:
            held = chat(f"{HOLD}. {INJECTION}")  # the upstream answers only when left

            async def fire() -> list[int]:
                limit = asyncio.Semaphore(32)
                async with httpx.AsyncClient(base_url=proxy.url, timeout=60) as client:

                    async def one() -> int:
                        async with limit:
                            response = await client.post(CHAT, content=held)
                            assert (
                                response.json()["choices"][0]["finish_reason"] == "content_filter"
                            )
                            return response.status_code

                    return await asyncio.gather(*(one() for _ in range(total)))

            assert asyncio.run(fire()) == [200] * total
            # Every forward that reached the upstream was closed by the refusal.
            assert wait_for(lambda: upstream.closed == len(upstream.received), timeout=30)
            answer = raw(proxy.port, "POST", CHAT, chat(BENIGN), timeout=60)
            assert answer.answered  # still forwarding


_probes = itertools.count()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    path=hostile_paths(), method=st.sampled_from(METHODS), text=st.sampled_from([INJECTION, BENIGN])
)
def test_the_upstream_gets_a_hostile_path_as_matched_or_not_at_all(
    recorded: tuple[Served, Recorder, CollectorRegistry], path: str, method: str, text: str
) -> None:
    proxy, upstream, _ = recorded
    tag = f"h{next(_probes)}"
    answer = raw(proxy.port, method, path, chat(text), {"x-probe": tag})
    matched = unquote(path)  # the path the guard matched: the server decodes it once
    guarded = policy().guards(method, matched)
    if text == INJECTION and answer.answered:
        assert not reachable(path), (method, path)  # unscreened text reached the upstream
    if answer.status in (400, 405):
        assert upstream.probe(tag) == []  # refused before any forward
    for got in upstream.probe(tag):
        # Exactly what the guard matched and screened: no second normalisation.
        assert (got.method, got.raw_path, got.body) == (
            method.upper(),
            matched.encode(),
            chat(text),
        )
        if guarded and text == INJECTION:
            assert answer.refused
