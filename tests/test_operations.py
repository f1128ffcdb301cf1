"""Running it in production: live policy reload, policies per route and tenant, several workers."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from guarded import BENIGN, INJECTION
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from served import Served, wait_for
from stub_llm import StubLLM

from examples.chat_app import create_app
from guardrail import GuardrailMiddleware, PolicyError, load_policy, parse_policy
from guardrail.decide.guard import Guard
from guardrail.observe.reload import PolicyReloader

REPO = Path(__file__).resolve().parents[1]
URL = "/v1/chat/completions"

POLICY = """\
name: live
routes: [{{path: /v1/chat/completions}}]
judges:
  injection: {{type: injection}}
  words: {{type: keywords, keywords: [{word}]}}
input: {{screens: [{{judge: injection}}, {{judge: words}}]}}
refusal: {{message: "{message}"}}
"""


def write_policy(path: Path, *, word: str = "pineapple", message: str = "Refused A.") -> None:
    path.write_text(POLICY.format(word=word, message=message))


def refusal_of(
    url: str, text: str, headers: dict[str, str] | None = None, *, timeout: float = 30
) -> str | None:
    """The refusal text, or None when the app answered."""
    body = {"model": "m", "messages": [{"role": "user", "content": text}]}
    answer = httpx.post(url + URL, json=body, headers=headers, timeout=timeout)
    choice = answer.json()["choices"][0]
    return choice["message"]["content"] if choice["finish_reason"] == "content_filter" else None


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """A metric's value once no request is in flight (a request is counted just after it ends)."""

    def idle() -> bool:
        return all(
            s.value == 0
            for m in registry.collect()
            if m.name == "guardrail_requests_in_flight"
            for s in m.samples
        )

    assert wait_for(idle)
    return registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[Path, str, CollectorRegistry]]:
    path = tmp_path / "live.yaml"
    write_policy(path)
    registry = CollectorRegistry()
    app = GuardrailMiddleware(
        create_app(None), policy=path, registry=registry, watch_interval_s=0.05
    )
    with Served(app) as served:
        yield path, served.url, registry


def test_policy_edit_takes_effect_without_restart(live) -> None:  # type: ignore[no-untyped-def]
    path, url, registry = live
    assert refusal_of(url, "I love pineapple") == "Refused A."
    assert refusal_of(url, "I love mango") is None
    write_policy(path, word="mango", message="Refused B.")
    assert wait_for(lambda: refusal_of(url, "I love mango") == "Refused B.")
    assert refusal_of(url, "I love pineapple") is None
    assert sample(registry, "guardrail_policy_reloads_total", policy="live", result="success") == 1
    versions = {
        s.labels["version"]: s.value
        for m in registry.collect()
        if m.name == "guardrail_policy_info"
        for s in m.samples
    }
    assert sorted(versions.values()) == [0.0, 1.0]  # the old version retired, the new one serving


@pytest.mark.parametrize(
    "break_it",
    [
        lambda p: p.write_text("name: [unclosed\n  garbage: {"),
        lambda p: p.write_text(POLICY.format(word="x", message="y")[:60]),  # truncated mid-write
        lambda p: p.unlink(),
        lambda p: (p.unlink(), p.mkdir()),  # unreadable: no longer a file
        lambda p: p.write_text(
            POLICY.format(word="x", message="y").replace("judge: words", "judge: nope")
        ),
    ],
    ids=["garbage", "truncated", "deleted", "unreadable", "unknown-judge"],
)
def test_broken_edit_keeps_the_old_policy_serving(live, break_it: Callable[[Path], object]) -> None:  # type: ignore[no-untyped-def]
    path, url, registry = live
    break_it(path)
    assert wait_for(
        lambda: (
            sample(registry, "guardrail_policy_reloads_total", policy="live", result="failure") >= 1
        )
    )
    assert refusal_of(url, "I love pineapple") == "Refused A."
    assert refusal_of(url, INJECTION) == "Refused A."


def test_requests_in_flight_finish_under_the_policy_they_started_with(
    tmp_path: Path, stub_llm_factory: Callable[..., StubLLM]
) -> None:
    judge = stub_llm_factory(
        latency_s=1.0, reply='{"flagged": true, "categories": ["violence"], "reason": "x"}'
    )
    path = tmp_path / "live.yaml"
    text = (
        "name: live\nroutes: [{path: /v1/chat/completions}]\n"
        f"judges: {{slow: {{type: llm, model: openai/slow, api_base: '{judge.base_url}'}}}}\n"
        "input: {screens: [{judge: slow, timeout_s: 5}]}\n"
        'refusal: {message: "Refused A."}\n'
    )
    path.write_text(text)
    app = GuardrailMiddleware(
        create_app(None), policy=path, registry=CollectorRegistry(), watch_interval_s=0.05
    )
    with Served(app) as served:
        first: list[str | None] = []
        in_flight = threading.Thread(target=lambda: first.append(refusal_of(served.url, BENIGN)))
        in_flight.start()
        assert wait_for(lambda: judge.count == 1)
        path.write_text(text.replace("Refused A.", "Refused B."))
        assert wait_for(lambda: refusal_of(served.url, BENIGN) == "Refused B.", timeout=10)
        in_flight.join()
        assert first == ["Refused A."]


def test_tenants_get_their_own_policy(tmp_path: Path) -> None:
    acme = tmp_path / "acme.yaml"
    write_policy(acme, word="pineapple", message="Acme refuses.")
    default = tmp_path / "default.yaml"
    default.write_text(
        POLICY.format(word="durian", message="Default refuses.").replace("name: live", "name: main")
    )
    registry = CollectorRegistry()
    app = GuardrailMiddleware(
        create_app(None), policy=default, tenants={"acme": acme}, registry=registry
    )
    with Served(app) as served:
        assert refusal_of(served.url, "pineapple", {"x-tenant": "acme"}) == "Acme refuses."
        assert refusal_of(served.url, "pineapple") is None
        assert refusal_of(served.url, "durian") == "Default refuses."
        # An unknown tenant is never unscreened: the default policy applies, and it is counted.
        assert refusal_of(served.url, "durian", {"x-tenant": "nobody"}) == "Default refuses."
        assert sample(registry, "guardrail_unknown_tenants_total", policy="main") == 1
        assert sample(registry, "guardrail_requests_total", policy="live", decision="blocked") == 1
        assert sample(registry, "guardrail_requests_total", policy="main", decision="blocked") == 2


def test_routes_select_policies(tmp_path: Path) -> None:
    chat = tmp_path / "chat.yaml"
    write_policy(chat, word="pineapple", message="Chat refuses.")
    other = tmp_path / "other.yaml"
    other.write_text(
        POLICY.format(word="mango", message="Other refuses.")
        .replace("name: live", "name: other")
        .replace("/v1/chat/completions", "/v2/*")
    )
    app = GuardrailMiddleware(create_app(None), policy=[chat, other], registry=CollectorRegistry())
    with Served(app) as served:
        assert refusal_of(served.url, "pineapple") == "Chat refuses."
        body = {"model": "m", "messages": [{"role": "user", "content": "mango"}]}
        response = httpx.post(served.url + "/v2/anything", json=body)
        assert response.json()["choices"][0]["message"]["content"] == "Other refuses."


def test_a_bad_tenant_policy_stops_startup(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\n")
    with pytest.raises(PolicyError):
        GuardrailMiddleware(create_app(None), tenants={"acme": bad}, registry=CollectorRegistry())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(
    args: list[str], env: dict[str, str], port: int, *, health: str = "/health"
) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        args, cwd=REPO, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )

    def up() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}{health}").status_code < 500
        except httpx.HTTPError:
            return False

    assert wait_for(up, timeout=30), (
        proc.stderr.read().decode() if proc.poll() is not None else "not up"
    )  # type: ignore[union-attr]
    return proc


def test_sighup_reloads_the_policy(tmp_path: Path) -> None:
    path = tmp_path / "live.yaml"
    write_policy(path, message="Refused A.")
    stamp = path.stat()
    port = free_port()
    proc = start(
        [sys.executable, "-m", "guardrail.cli", "demo", "--port", str(port), "--policy", str(path)],
        {},
        port,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        assert refusal_of(url, "pineapple") == "Refused A."
        # Same size, same mtime, same inode: only the signal can tell it changed.
        with path.open("r+") as f:
            f.write(POLICY.format(word="pineapple", message="Refused Z."))
        os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
        assert refusal_of(url, "pineapple") == "Refused A."
        proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: refusal_of(url, "pineapple") == "Refused Z.")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_metrics_add_up_across_two_worker_processes(tmp_path: Path) -> None:
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "examples.chat_app:create_app",
        "--workers",
        "2",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    proc = start(args, {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}, port)
    try:
        url = f"http://127.0.0.1:{port}"
        for i in range(20):  # a new connection each: the kernel spreads them over the workers
            refusal_of(url, INJECTION if i % 4 == 0 else BENIGN)
        scrapes = [httpx.get(url + "/metrics").text for _ in range(6)]
        for text in scrapes:  # whichever worker answers the scrape, the totals are whole
            assert 'guardrail_requests_total{decision="allowed",policy="default"} 15.0' in text
            assert 'guardrail_requests_total{decision="blocked",policy="default"} 5.0' in text
            assert 'guardrail_requests_in_flight{policy="default"} 0.0' in text
        assert len(list(metrics_dir.glob("counter_*.db"))) == 2  # both workers wrote metrics
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _in_flight(url: str) -> float | None:
    """``guardrail_requests_in_flight`` as a scrape of the server reads it (None: no answer)."""
    try:
        text = httpx.get(url + "/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    found = re.search(r'^guardrail_requests_in_flight\{policy="default"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else None


def _worker_in_flight(metrics_dir: Path, pid: int, scratch: Path) -> float:
    """What one worker's own file says it holds in flight."""
    scratch.mkdir(exist_ok=True)
    for old in scratch.iterdir():
        old.unlink()
    shutil.copy(metrics_dir / f"gauge_livesum_{pid}.db", scratch)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, str(scratch))  # type: ignore[no-untyped-call]
    return registry.get_sample_value("guardrail_requests_in_flight", {"policy": "default"}) or 0.0


def test_a_killed_worker_drops_out_of_requests_in_flight(
    tmp_path: Path, stub_llm_factory: Callable[..., StubLLM]
) -> None:
    """Two workers hold requests; one is killed: in flight falls to what the other holds."""
    upstream = stub_llm_factory(hang=True)  # the app's model never answers: requests stay held
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", "--factory", "examples.chat_app:create_app"]
    args += ["--workers", "2", "--port", str(port), "--log-level", "warning"]
    # The surviving worker still holds requests at the end: on SIGTERM it gives
    # them this long, then closes them (by default it would wait for good).
    args += ["--timeout-graceful-shutdown", "2"]
    env = {
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "OPENAI_API_KEY": "test",
        "OPENAI_BASE_URL": upstream.base_url,
    }
    proc = start(args, env, port)
    url = f"http://127.0.0.1:{port}"
    held, outcomes = 8, []

    def ask() -> None:
        try:  # a connection of its own: the kernel spreads them over the workers
            refusal_of(url, BENIGN, timeout=120)
            outcomes.append("answered")
        except httpx.HTTPError:
            outcomes.append("dropped")
        except (ValueError, KeyError):  # an error answer: the server shutting down at the end
            outcomes.append("refused")

    askers = [threading.Thread(target=ask, daemon=True) for _ in range(held)]
    try:
        for asker in askers:
            asker.start()
        assert wait_for(lambda: upstream.count == held, timeout=60)
        assert wait_for(lambda: _in_flight(url) == held, timeout=60)
        pids = [int(f.stem.rsplit("_", 1)[1]) for f in metrics_dir.glob("gauge_livesum_*.db")]
        holding = {pid: _worker_in_flight(metrics_dir, pid, tmp_path / "one") for pid in pids}
        assert sum(holding.values()) == held
        victim = max(holding, key=lambda pid: holding[pid])
        os.kill(victim, signal.SIGKILL)
        # Its clients see their connections drop; the other worker's still wait.
        assert wait_for(lambda: outcomes.count("dropped") == holding[victim], timeout=60)
        assert wait_for(lambda: _in_flight(url) == held - holding[victim], timeout=60)
        assert outcomes.count("answered") == 0
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_scrapes_during_reloads_stay_whole(live) -> None:  # type: ignore[no-untyped-def]
    path, url, registry = live

    def reloads() -> float:
        return (
            registry.get_sample_value(
                "guardrail_policy_reloads_total", {"policy": "live", "result": "success"}
            )
            or 0.0
        )

    # Each round writes a new policy, then scrapes and asks until the reload
    # of that very write has happened: scrapes and requests overlap every
    # reload, however slow the machine (no count of loop turns assumed).
    for i in range(8):
        before = reloads()
        write_policy(path, message=f"Refused {i}.")
        while reloads() == before:
            response = httpx.get(url + "/metrics", timeout=10)
            assert response.status_code == 200
            assert 'guardrail_policy_info{policy="live"' in response.text
            assert 'guardrail_requests_in_flight{policy="live"}' in response.text
            assert (refusal_of(url, "I love pineapple") or "").startswith("Refused")
        assert refusal_of(url, "I love pineapple") == f"Refused {i}."


def test_a_policy_written_in_two_parts_is_never_served_half_written(tmp_path: Path) -> None:
    """The first half is a valid policy with one screen fewer: it must never serve."""
    path = tmp_path / "live.yaml"
    write_policy(path, word="pineapple", message="Refused A.")
    one_line = "input: {screens: [{judge: injection}, {judge: words}]}"
    whole = POLICY.format(word="mango", message="Refused B.")
    assert one_line in whole
    whole = whole.replace(
        one_line, "input:\n  screens:\n    - {judge: words}\n    - {judge: injection}"
    )
    # Cut after the first screen: valid YAML, a valid policy, without the injection screen.
    half = whole[: whole.index("    - {judge: injection}")]
    assert parse_policy(half).input.screens != parse_policy(whole).input.screens
    registry = CollectorRegistry()
    app = GuardrailMiddleware(
        create_app(None), policy=path, registry=registry, watch_interval_s=0.05
    )
    [reloader] = app._by_route  # its poll count is what the test waits on
    assert isinstance(reloader, PolicyReloader)
    with Served(app) as served:
        assert refusal_of(served.url, INJECTION) == "Refused A."  # the watch has started
        with path.open("w") as f:  # rewritten in place, as an editor or `cat >` does
            f.write(half)
            f.flush()
            polled = reloader.polls
            # Two polls see the half file (unchanged between them), and more
            # after: the old policy still serves, the half one was never taken.
            assert wait_for(lambda: reloader.polls >= polled + 3, timeout=30)
            assert refusal_of(served.url, INJECTION) == "Refused A."
            assert refusal_of(served.url, "I love mango") is None
            f.write(whole[len(half) :])
        assert wait_for(lambda: refusal_of(served.url, "I love mango") == "Refused B.", 30)
        assert refusal_of(served.url, INJECTION) == "Refused B."  # both screens serve
        assert (
            sample(registry, "guardrail_policy_reloads_total", policy="live", result="success") == 1
        )
        assert (
            sample(registry, "guardrail_policy_reloads_total", policy="live", result="failure") == 0
        )


WHOLE = POLICY.format(word="mango", message="Refused B.")


@settings(max_examples=60, deadline=None)
@given(cut=st.integers(min_value=0, max_value=len(WHOLE)))
def test_a_file_being_written_is_never_taken(
    tmp_path_factory: pytest.TempPathFactory, cut: int
) -> None:
    """Whatever the point a writer pauses at, the watch waits until it closes the file."""
    path = tmp_path_factory.mktemp("policy") / "live.yaml"
    write_policy(path, word="pineapple", message="Refused A.")

    async def watch() -> None:
        registry = CollectorRegistry()
        serving = Guard.build(load_policy(path), registry=registry)
        reloader = PolicyReloader(
            path, serving, registry=registry, interval_s=3600, on_swap=lambda _: None
        )
        with path.open("w") as f:  # in place: truncated, then written in two parts
            for part in (WHOLE[:cut], WHOLE[cut:]):
                f.write(part)
                f.flush()
                for _ in range(3):
                    await reloader.poll()
                assert reloader.guard is serving
        for _ in range(2):
            await reloader.poll()
        assert reloader.guard.policy == parse_policy(WHOLE, source=str(path))

    asyncio.run(watch())


def test_audit_file_keeps_every_record_across_a_reload(tmp_path: Path) -> None:
    path, audit = tmp_path / "live.yaml", tmp_path / "audit.jsonl"
    extra = f"audit: {{sink: file, path: '{audit}', max_bytes: 2000, backups: 50}}\n"
    path.write_text(POLICY.format(word="pineapple", message="Refused A.") + extra)
    app = GuardrailMiddleware(
        create_app(None), policy=path, registry=CollectorRegistry(), watch_interval_s=0.05
    )
    with Served(app) as served:
        for _ in range(10):
            refusal_of(served.url, "I love pineapple")
        path.write_text(POLICY.format(word="pineapple", message="Refused B.") + extra)
        assert wait_for(lambda: refusal_of(served.url, "I love pineapple") == "Refused B.")
        sent = 10 + 1 + 10
        for _ in range(10):
            refusal_of(served.url, "I love pineapple")

        def lines() -> list[str]:
            files = [audit, *tmp_path.glob("audit.jsonl.*")]
            return [line for f in files if f.exists() for line in f.read_text().splitlines()]

        # The writer thread lands records a moment after each answer; rotation
        # (2000 bytes) happened several times, through one shared handler.
        answered = sample(
            app.guard.metrics.registry,
            "guardrail_requests_total",
            policy="live",
            decision="blocked",
        )
        assert answered >= sent
        assert wait_for(lambda: len(lines()) == answered)
        assert len(list(tmp_path.glob("audit.jsonl.*"))) > 1
        records = [json.loads(line) for line in lines()]
        assert len({r["request_id"] for r in records}) == len(records)
        assert len({r["policy_version"] for r in records}) == 2  # both policies wrote


def test_demo_answers_with_a_model_when_a_key_is_set(stub_llm: StubLLM) -> None:
    stub_llm.reply = "From the model."
    port = free_port()
    env = {"OPENAI_API_KEY": "test-key", "OPENAI_BASE_URL": stub_llm.base_url}
    proc = start([sys.executable, "-m", "guardrail.cli", "demo", "--port", str(port)], env, port)
    try:
        url = f"http://127.0.0.1:{port}"
        body = {"model": "m", "messages": [{"role": "user", "content": BENIGN}]}
        answer = httpx.post(url + URL, json=body, timeout=10).json()
        assert answer["choices"][0]["message"]["content"] == "From the model."
        assert refusal_of(url, INJECTION) is not None  # still guarded, by the embedded default
    finally:
        proc.terminate()
        proc.wait(timeout=10)
