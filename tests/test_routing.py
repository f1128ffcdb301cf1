"""Routing: the guard matches what the app routes, refuses what it could read otherwise.

Through real HTTP (uvicorn), with a receiver that acts on any method and path
and records what it got (``recorder``): a request either reaches it screened,
or is refused and never reaches it.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from guarded import BENIGN, INJECTION, policy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from recorder import Recorder, chat, raw
from served import Served, wait_for
from starlette.applications import Starlette
from starlette.routing import Mount, Route
from test_operations import free_port

from guardrail import GuardrailMiddleware, PolicyError, parse_policy
from guardrail.cli.main import main
from guardrail.flow.routing import is_canonical, loosest_reading, route_path

CHAT = "/v1/chat/completions"
# Each reads as the guarded route to some receiver; none matches it as sent.
NON_CANONICAL = [
    "/v1/x/../chat/completions",
    "/v1/./chat/completions",
    "/v1/chat/completions/.",
    "/v1/chat/completions/",
    "/v1/chat/completions%3Fx",
    "/v1/chat/completions%23x",
    "/v1/chat%2Fcompletions",
    "/v1//chat/completions",
    "/v1/%2e/chat/completions",
    "/v1/x/%2E%2E/chat/completions",
    "/v1/x/%252e%252e/chat/completions",
    "/v1\\chat\\completions",
    "/v1/chat/completions;x=1",
    "/v1/chat/completions%20",
]


def guarded(app: object, **options: object) -> GuardrailMiddleware:
    return GuardrailMiddleware(app, policy=policy(), registry=CollectorRegistry(), **options)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Served, Recorder]]:
    """One guarded recorder for the module: the app acts on anything it is given."""
    recorder = Recorder()
    with Served(guarded(recorder), name="guarded-recorder") as server:
        yield server, recorder


# --- the policy -------------------------------------------------------------


def test_an_unknown_method_is_a_load_error_with_its_line(tmp_path: Path) -> None:
    text = (
        "name: t\n"
        "routes:\n"
        "  - path: /v1/chat/completions\n"
        "    methods: [post, PSOT]\n"
        "judges: {injection: {type: injection}}\n"
        "input: {screens: [{judge: injection}]}\n"
    )
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, source="p.yaml")
    assert "p.yaml:4: routes[0].methods" in str(caught.value)
    assert "PSOT" in str(caught.value)
    file = tmp_path / "p.yaml"
    file.write_text(text)
    assert main(["check", str(file)]) == 2  # guardrail check fails on it
    ok = parse_policy(text.replace(", PSOT", ""))
    assert ok.routes[0].methods == ("POST",)


def test_route_path_is_the_path_minus_root_path() -> None:
    assert route_path({"path": "/api/v1/x", "root_path": "/api"}) == "/v1/x"
    assert route_path({"path": "/apix/v1", "root_path": "/api"}) == "/apix/v1"
    assert route_path({"path": "/v1/x", "root_path": ""}) == "/v1/x"


def test_canonical_paths_and_their_loosest_readings() -> None:
    for path in NON_CANONICAL:
        assert not is_canonical({"path": path}), path
    assert is_canonical({"path": CHAT, "raw_path": CHAT.encode()})
    assert is_canonical({"path": "/"})
    # The server decoded the raw bytes otherwise than we would.
    assert not is_canonical({"path": CHAT, "raw_path": b"/v1/chat%2Fcompletions"})
    readings = {loosest_reading(p).casefold() for p in NON_CANONICAL}
    assert readings == {CHAT}


# --- the middleware, through real HTTP ------------------------------------------


def test_methods_match_in_any_case(served: tuple[Served, Recorder]) -> None:
    server, recorder = served
    for method in ("post", "Post"):
        answer = raw(server.port, method, CHAT, chat(INJECTION))
        assert answer.refused, method  # screened: the app would have acted on it
        answer = raw(server.port, method, CHAT, chat(BENIGN), {"x-probe": f"ok-{method}"})
        assert answer.answered
        assert recorder.probe(f"ok-{method}")[0].body == chat(BENIGN)


def test_paths_match_in_any_case(served: tuple[Served, Recorder]) -> None:
    server, _ = served
    assert raw(server.port, "POST", "/V1/Chat/Completions", chat(INJECTION)).refused


@pytest.mark.parametrize("path", NON_CANONICAL)
def test_non_canonical_paths_near_a_guarded_route_are_refused(
    served: tuple[Served, Recorder], path: str
) -> None:
    server, recorder = served
    answer = raw(server.port, "POST", path, chat(INJECTION), {"x-probe": path})
    assert answer.status == 400
    assert answer.json()["error"]["code"] == "non_canonical_path"
    assert recorder.probe(path) == []  # the app never saw it


def test_non_canonical_paths_elsewhere_pass(served: tuple[Served, Recorder]) -> None:
    server, recorder = served
    answer = raw(server.port, "POST", "/static/./a//b", chat(BENIGN), {"x-probe": "static"})
    assert answer.answered  # no reading of it reaches a guarded route: the app decides
    assert recorder.probe("static")[0].path == "/static/./a//b"


@pytest.mark.parametrize("method", ["PUT", "PATCH", "patch", "DELETE", "GET"])
def test_a_body_with_an_unlisted_method_is_refused(
    served: tuple[Served, Recorder], method: str
) -> None:
    server, recorder = served
    answer = raw(server.port, method, CHAT, chat(INJECTION), {"x-probe": f"m-{method}"})
    assert answer.status == 405
    assert dict((k.lower(), v) for k, v in answer.headers)["allow"] == "POST"
    assert answer.json()["error"]["code"] == "method_not_allowed"
    assert recorder.probe(f"m-{method}") == []


def test_an_unlisted_method_without_a_body_passes(served: tuple[Served, Recorder]) -> None:
    server, recorder = served
    assert raw(server.port, "GET", CHAT, headers={"x-probe": "get"}).answered
    assert recorder.probe("get")[0].body == b""


def test_refusals_are_counted_as_rejected() -> None:
    registry = CollectorRegistry()
    app = GuardrailMiddleware(Recorder(), policy=policy(), registry=registry)
    with Served(app) as server:
        raw(server.port, "POST", "/v1/./chat/completions", chat(BENIGN))
        raw(server.port, "PUT", CHAT, chat(BENIGN))

    def count(reason: str) -> float | None:
        return registry.get_sample_value(
            "guardrail_rejected_total", {"policy": "test", "reason": reason}
        )

    assert count("non_canonical_path") == 1
    assert count("method_not_allowed") == 1
    decisions = {"policy": "test", "decision": "rejected"}
    assert registry.get_sample_value("guardrail_requests_total", decisions) == 2


# --- mounting and root_path -------------------------------------------------------


def chat_app(recorder: Recorder) -> Starlette:
    """A Starlette app routing only its chat path to the recorder (an ASGI endpoint)."""
    return Starlette(routes=[Route(CHAT, recorder, methods=["POST"])])


def test_uvicorn_root_path() -> None:
    recorder = Recorder()
    with Served(guarded(chat_app(recorder)), root_path="/api") as server:
        # Behind a proxy that strips /api: uvicorn puts it back in path and root_path.
        # Screened (the app runs in parallel, so it may have started: its answer is held).
        assert raw(server.port, "POST", CHAT, chat(INJECTION)).refused
        assert raw(server.port, "POST", CHAT, chat(BENIGN)).answered
        assert recorder.received[-1].path == "/api" + CHAT  # the app did route it


def test_mounted_under_a_prefix() -> None:
    recorder = Recorder()
    outer = Starlette(routes=[Mount("/api", guarded(chat_app(recorder)))])
    with Served(outer) as server:
        assert raw(server.port, "POST", "/api" + CHAT, chat(INJECTION)).refused
        assert raw(server.port, "POST", "/api" + CHAT, chat(BENIGN)).answered
        assert recorder.received[-1].root_path == "/api"
        assert raw(server.port, "POST", "/api/v1/./chat/completions", chat(BENIGN)).status == 400


# --- tenants --------------------------------------------------------------------


def test_a_tenant_policy_never_guards_less_than_the_route_policies() -> None:
    other = parse_policy(
        "name: tenant\n"
        "routes: [{path: /v1/embeddings}]\n"
        "judges: {pii: {type: pii}}\n"
        "input: {screens: [{judge: pii}]}\n"
        "metrics: {path: null}\n"
    )
    recorder = Recorder()
    app = GuardrailMiddleware(
        recorder, policy=policy(), tenants={"acme": other}, registry=CollectorRegistry()
    )
    with Served(app) as server:
        tenant = {"x-tenant": "acme", "x-probe": "tenant"}
        assert raw(server.port, "POST", CHAT, chat(INJECTION), tenant).refused
        # The tenant's own route is guarded by the tenant's policy.
        card = chat("my card is 4111 1111 1111 1111")
        assert raw(server.port, "POST", "/v1/embeddings", card, tenant).refused


# --- a bad policy under a real server ---------------------------------------------------

BAD = "name: bad\nroutes:\n  - path: /v1/chat/completions\n    methods: [PSOT]\n"
APP = """
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from guardrail import GuardrailMiddleware

async def health(request):
    return PlainTextResponse("ok")

app = Starlette(routes=[Route("/health", health)])
app.add_middleware(GuardrailMiddleware, policy="bad.yaml")
"""


REPO = Path(__file__).resolve().parent.parent


def uvicorn_app(tmp_path: Path, *options: str) -> tuple[list[str], int]:
    """Plain ``uvicorn badapp:app``, the app adding the middleware with a bad policy."""
    (tmp_path / "bad.yaml").write_text(BAD)
    (tmp_path / "badapp.py").write_text(APP)
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", "badapp:app", "--port", str(port), *options]
    return args, port


def checkout_env() -> dict[str, str]:
    """This checkout's guardrail, whatever the virtualenv has installed."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }


@pytest.mark.parametrize("lifespan", ["auto", "on"])
def test_a_bad_policy_stops_the_server_under_any_lifespan(tmp_path: Path, lifespan: str) -> None:
    args, _ = uvicorn_app(tmp_path, "--lifespan", lifespan)
    done = subprocess.run(
        args, cwd=tmp_path, env=checkout_env(), capture_output=True, timeout=60, text=True
    )
    assert done.returncode != 0
    assert "bad.yaml:4: routes[0].methods" in done.stderr
    assert "unsupported" not in done.stderr


def test_without_lifespan_a_bad_policy_answers_503(tmp_path: Path) -> None:
    import httpx

    args, port = uvicorn_app(tmp_path, "--lifespan", "off")
    proc = subprocess.Popen(
        args, cwd=tmp_path, env=checkout_env(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL
    )
    try:

        def health() -> int:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health").status_code
            except httpx.HTTPError:
                return 0

        assert wait_for(lambda: health() != 0, timeout=30)
        answer = httpx.get(f"http://127.0.0.1:{port}/health")
        assert answer.status_code == 503  # never an unscreened pass, never a traceback
        assert answer.json()["error"]["code"] == "policy_error"
        answer = httpx.post(f"http://127.0.0.1:{port}{CHAT}", content=chat(INJECTION))
        assert answer.status_code == 503
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert "bad.yaml:4: routes[0].methods" in proc.stderr.read().decode()  # type: ignore[union-attr]


def test_a_bad_policy_built_by_the_user_raises_at_once(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(BAD)
    with pytest.raises(PolicyError, match=r"bad\.yaml:4"):
        GuardrailMiddleware(Recorder(), policy=str(tmp_path / "bad.yaml"))


# --- hostile paths, generated ------------------------------------------------------

# Tokens a receiver might read as separators, dots or nothing at all.
TOKENS = [".", "..", "", "%2e", "%2E%2e", "%2f", "%3F", "%23", "%252e", ";p", "\\", "%20", "x"]
METHODS = ["POST", "post", "Post", "pOsT", "PUT", "patch", "GET"]


@st.composite
def hostile_paths(draw: st.DrawFn) -> str:
    """The guarded path, with separators, dots and encodings slipped in, in any case."""
    segments = ["v1", "chat", "completions"]
    for _ in range(draw(st.integers(0, 3))):
        segments.insert(draw(st.integers(0, len(segments))), draw(st.sampled_from(TOKENS)))
    path = "/" + "/".join(segments)
    if draw(st.booleans()):
        path = path.upper()
    return path


def reachable(path: str) -> bool:
    """Whether any reading of the path is the guarded route."""
    return policy().route_for(loosest_reading(path)) is not None


_probes = itertools.count()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    path=hostile_paths(), method=st.sampled_from(METHODS), text=st.sampled_from([INJECTION, BENIGN])
)
def test_a_hostile_path_is_screened_or_never_acted_on(
    served: tuple[Served, Recorder], path: str, method: str, text: str
) -> None:
    server, recorder = served
    tag = f"h{next(_probes)}"
    answer = raw(server.port, method, path, chat(text), {"x-probe": tag})
    if text == INJECTION and answer.answered:
        assert not reachable(path), (method, path)  # the app acted on unscreened text
    for got in recorder.probe(tag):
        assert got.body == chat(text)
        if policy().guards(method, got.path) and text == INJECTION:
            assert answer.refused
