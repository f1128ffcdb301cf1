"""Attacks on routing found after the routing rework, each closed and kept closed.

Through real HTTP: a guarded recorder in-process, and the same recorder as the
upstream of ``guardrail proxy`` wiring (``GuardrailMiddleware(Upstream(url))``).
The recorder acts on any method and path, as a careless service would, so a
request it answered with an injection in it went around the guard.
"""

from __future__ import annotations

import itertools
import posixpath
from collections.abc import Iterator

import pytest
from guarded import BENIGN, INJECTION, policy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from recorder import Recorder, chat, raw
from served import Served

from guardrail import GuardrailMiddleware, parse_policy
from guardrail.flow.proxy import Upstream

CHAT = "/v1/chat/completions"
Receiver = tuple[Served, Recorder]


@pytest.fixture(scope="module", params=["in-process", "proxy"])
def receiver(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    recorder = Recorder()
    if request.param == "in-process":
        guard = GuardrailMiddleware(recorder, policy=policy(), registry=CollectorRegistry())
        with Served(guard, name="guarded-recorder") as served:
            yield served, recorder
        return
    with Served(recorder, name="upstream") as upstream:
        guard = GuardrailMiddleware(
            Upstream(upstream.url), policy=policy(), registry=CollectorRegistry()
        )
        with Served(guard, name="proxy") as served:
            yield served, recorder


_probes = itertools.count()


def send(receiver: Receiver, target: str, text: str = INJECTION, **headers: str) -> object:
    served, _ = receiver
    return raw(served.port, "POST", target, chat(text), headers)


# Each reads as the guarded route to an RFC 9112 server (absolute form) or to
# an old decoder that accepts overlong UTF-8 or IIS's %u escapes.
LENIENT = [
    "http://evil/v1/chat/completions",
    "HTTP://evil:80/v1/chat/completions",
    "/v1/chat%c0%afcompletions",
    "/v1/x/%c0%ae%c0%ae/chat/completions",
    "/v1/x/%e0%80%ae%e0%80%ae/chat/completions",
    "/v1/chat%u002fcompletions",
    "/v1/chat/completions.json",  # Rails' format suffix, Spring's suffix patterns
    "/v1/chat/completions.x.y",
    "/v1/chat/complet%C4%B1ons",  # dotless i: "I" to Java's equalsIgnoreCase
    "/v1/chat/%EF%BD%83ompletions",  # fullwidth c: "c" to Windows' best fit, NFKC
]


@pytest.mark.parametrize("target", LENIENT)
def test_a_path_a_lenient_receiver_routes_to_the_guarded_route_is_refused(
    receiver: Receiver, target: str
) -> None:
    answer = send(receiver, target, **{"x-probe": target})
    assert answer.status == 400, target  # type: ignore[attr-defined]
    assert answer.json()["error"]["code"] == "non_canonical_path"  # type: ignore[attr-defined]
    assert receiver[1].probe(target) == []


def test_a_tenant_named_twice_is_refused() -> None:
    lax = parse_policy(
        "name: lax\n"
        "routes: [{path: /v1/chat/completions}]\n"
        "judges: {pii: {type: pii}}\n"
        "input: {screens: [{judge: pii}]}\n"
        "on_flag: log_only\n"
        "metrics: {path: null}\n"
    )
    strict = policy()
    recorder = Recorder()
    app = GuardrailMiddleware(
        recorder,
        policy=strict,
        tenants={"lax": lax, "strict": strict},
        registry=CollectorRegistry(),
    )
    with Served(app) as served:
        # http.client sends both lines as given: the app may read either one.
        headers = [("x-tenant", "lax"), ("x-tenant", "strict"), ("x-probe", "two")]
        answer = _raw_lines(served.port, CHAT, chat(INJECTION), headers)
        assert answer.status == 400
        assert answer.json()["error"]["code"] == "ambiguous_tenant"
        assert recorder.probe("two") == []
        # One tenant, said twice alike, is not ambiguous; off guarded routes it is not refused.
        same = [("x-tenant", "strict"), ("x-tenant", "strict")]
        assert _raw_lines(served.port, CHAT, chat(INJECTION), same).refused
        assert _raw_lines(served.port, "/health", b"", headers).answered


def _raw_lines(port: int, target: str, body: bytes, headers: list[tuple[str, str]]) -> object:
    import http.client

    from recorder import Answer

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest("POST", target, skip_accept_encoding=True)
        for key, value in [("content-type", "application/json"), *headers]:
            conn.putheader(key, value)
        conn.putheader("content-length", str(len(body)))
        conn.endheaders(body or None)
        response = conn.getresponse()
        return Answer(response.status, response.getheaders(), response.read())
    finally:
        conn.close()


# --- generated: tokens whose lenient meaning is known ---------------------------

# (as sent, as the most lenient receiver reads it)
TOKENS = [
    ("%c0%af", "/"),
    ("%C0%AF", "/"),
    ("%c0%ae", "."),
    ("%e0%80%ae", "."),
    ("%u002f", "/"),
    ("%u002e", "."),
    ("%252f", "/"),
    ("%2e", "."),
    ("x", "x"),
]


@st.composite
def lenient_paths(draw: st.DrawFn) -> tuple[str, str]:
    """A path built of the guarded route's segments and tokens, with what it means."""
    sent, meant = [], []
    for segment in ["v1", "chat", "completions"]:
        for _ in range(draw(st.integers(0, 2))):
            token, meaning = draw(st.sampled_from(TOKENS))
            joiner = draw(st.sampled_from(["/", ""])) if sent else "/"  # not in the host
            sent.append(joiner + token)
            meant.append(joiner + meaning)
        sent.append("/" + segment)
        meant.append("/" + segment)
    prefix = draw(st.sampled_from(["", "http://h", "https://h:1"]))
    return prefix + "".join(sent), "".join(meant)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=lenient_paths(), text=st.sampled_from([INJECTION, BENIGN]))
def test_a_lenient_reading_of_the_guarded_route_is_never_answered_unscreened(
    receiver: Receiver, path: tuple[str, str], text: str
) -> None:
    sent, meant = path
    answer = send(receiver, sent, text)
    lenient = posixpath.normpath(meant.replace("//", "/"))
    if text == INJECTION and lenient.casefold() == CHAT:
        assert not answer.answered, sent  # type: ignore[attr-defined]


# --- websockets ------------------------------------------------------------------


def test_a_websocket_on_a_guarded_path_is_closed_before_the_app_sees_it() -> None:
    """Socket messages are never screened: a socket on a guarded route would pass unscreened.

    Driven as bare ASGI: the uvicorn here has no websocket library, so it
    answers an upgrade as plain HTTP (which is guarded).
    """
    import asyncio

    reached: list[str] = []

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        reached.append(str(scope["path"]))

    guard = GuardrailMiddleware(app, policy=policy(), registry=CollectorRegistry())  # type: ignore[arg-type]

    async def connect(path: str) -> list[dict[str, object]]:
        sent: list[dict[str, object]] = []

        async def receive() -> dict[str, object]:
            return {"type": "websocket.connect"}

        async def send(message: dict[str, object]) -> None:
            sent.append(message)

        scope = {"type": "websocket", "path": path, "raw_path": path.encode(), "headers": []}
        await guard(scope, receive, send)
        return sent

    for path in (CHAT, "/V1/chat/completions", "/v1/x/../chat/completions"):
        assert asyncio.run(connect(path)) == [{"type": "websocket.close", "code": 1008}]
    assert reached == []
    asyncio.run(connect("/ws"))
    assert reached == ["/ws"]
