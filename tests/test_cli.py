"""The ``guardrail`` command, run as a user runs it: a subprocess, real HTTP, its output read.

Servers start on port 0 and the test reads the port from uvicorn's own
"Uvicorn running on" line, so nothing races for a port. Every wait is on a
line appearing (with a generous timeout only as a safety net), never a sleep.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import openai
import pytest
from guarded import BENIGN, INJECTION
from hypothesis import given, settings
from hypothesis import strategies as st
from served import wait_for
from stub_llm import StubLLM
from test_operations import free_port

from guardrail.cli import main as cli

REPO = Path(__file__).resolve().parent.parent
RUNNING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")
MULTIPROC_DIR = re.compile(r"metrics summed in PROMETHEUS_MULTIPROC_DIR=(\S+)$")
STARTUP_S = 60.0  # a loaded 2-core machine may take long to import litellm
POLICY = """\
name: {name}
routes: [{{path: /v1/chat/completions}}]
judges:
  injection: {{type: injection}}
input: {{screens: [{{judge: injection}}]}}
"""


def guardrail(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed ``guardrail`` command to completion."""
    command = [sys.executable, "-m", "guardrail.cli", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)


class Running:
    """A ``guardrail`` server in a subprocess; its stdout and stderr kept as lines."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._changed = threading.Condition()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "guardrail.cli", *args],
            cwd=REPO,
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # Both pipes are drained all the time: a full pipe would stall the server.
        for name, pipe in (("stdout", self.proc.stdout), ("stderr", self.proc.stderr)):
            threading.Thread(target=self._read, args=(name, pipe), daemon=True).start()
        if "--port" in args and args[args.index("--port") + 1] != "0":
            # uvicorn says where it listens only at log level info: ask the server instead.
            self.port = int(args[args.index("--port") + 1])
            assert wait_for(self._healthy, timeout=STARTUP_S), self.lines
        else:
            self.port = int(self.wait_for_line("stderr", RUNNING, STARTUP_S).group(1))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _healthy(self) -> bool:
        assert self.proc.poll() is None, self.lines
        try:
            return httpx.get(self.url + "/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def _read(self, name: str, pipe: IO[str] | None) -> None:
        assert pipe is not None
        for line in pipe:
            with self._changed:
                self.lines[name].append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for_line(self, stream: str, pattern: re.Pattern[str], timeout: float = 30.0) -> Any:
        """The first match of ``pattern`` in a line of ``stream``, once it appears."""

        def found() -> re.Match[str] | None:
            return next(filter(None, map(pattern.search, self.lines[stream])), None)

        with self._changed:
            ok = self._changed.wait_for(
                lambda: found() is not None or self.proc.poll() is not None, timeout
            )
            match = found()
        assert ok and match is not None, f"no {pattern.pattern!r} in {stream}: {self.lines}"
        return match

    def audit_records(self) -> list[dict[str, Any]]:
        """The audit records printed so far (the ``guardrail.audit`` logger's lines)."""
        marker = "guardrail.audit: "
        return [
            json.loads(line.split(marker, 1)[1])
            for line in list(self.lines["stderr"])
            if marker in line
        ]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)


@pytest.fixture
def running() -> Iterator[Any]:
    """Start ``guardrail`` servers: ``running("demo", "--port", "0")``; stopped after the test."""
    started: list[Running] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Running:
        server = Running(*args, env=env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def ask(url: str, text: str) -> Any:
    client = openai.OpenAI(base_url=url + "/v1", api_key="test", max_retries=0, timeout=30)
    return client.chat.completions.create(model="m", messages=[{"role": "user", "content": text}])


# --- the command line --------------------------------------------------------------


def test_version_is_the_installed_one() -> None:
    done = guardrail("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"guardrail {importlib.metadata.version('guardrail')}"


def test_help_names_every_command_in_plain_words() -> None:
    done = guardrail("--help")
    assert done.returncode == 0, done.stderr
    assert "``" not in done.stdout  # no raw reStructuredText
    for command in ("check", "demo", "proxy"):
        assert re.search(rf"\b{command}\b.*\n?.*\w", done.stdout)
    assert "'proxy' guards any HTTP chat service" in " ".join(done.stdout.split())


def test_proxy_help_shows_every_option_with_its_default() -> None:
    done = guardrail("proxy", "--help")
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())  # argparse wraps lines where it likes
    for option, default in (
        ("--host", "127.0.0.1"),
        ("--port", "8000"),
        ("--policy", "default"),
        ("--log-level", "info"),
        ("--workers", "1"),
    ):
        assert re.search(rf"{option} \S+ .*?\(default: {re.escape(default)}\)", text), option
    assert "--upstream UPSTREAM the service's base URL" in text
    assert "(default: None)" not in text


@pytest.mark.parametrize("workers", ["0", "-1", "two"])
def test_proxy_refuses_a_worker_count_below_one(workers: str) -> None:
    done = guardrail("proxy", "--upstream", "http://127.0.0.1:9", "--workers", workers)
    assert done.returncode == 2
    assert "--workers" in done.stderr


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=-(10**6), max_value=10**6), st.sampled_from(cli.LOG_LEVELS))
def test_proxy_options_parse_to_what_was_given(workers: int, level: str) -> None:
    args = ["proxy", "--upstream", "http://127.0.0.1:9", "--workers", str(workers)]
    parser = cli._parser()
    if workers < 1:
        with pytest.raises(SystemExit):
            parser.parse_args(args)
        return
    parsed = parser.parse_args([*args, "--log-level", level])
    assert (parsed.workers, parsed.log_level, parsed.port) == (workers, level, 8000)
    assert cli.log_config(level)["loggers"]["guardrail"]["level"] == level.upper()


def test_a_broken_policy_stops_the_proxy_before_it_serves(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\ninput: {screens: [{judge: nobody}]}\n")
    for workers in ("1", "2"):
        done = guardrail(
            "proxy", "--upstream", "http://127.0.0.1:9", "--port", "0", "--policy", str(broken),
            "--workers", workers,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert "broken.yaml" in done.stderr
        assert "Uvicorn running" not in done.stderr


# --- logging: what an operator sees ------------------------------------------------------


def test_the_demo_prints_its_decisions_by_default(running: Any) -> None:
    demo = running("demo", "--port", "0")
    demo.wait_for_line("stdout", re.compile(r"^guardrail demo: .*/v1/chat/completions"))
    refused = ask(demo.url, INJECTION)
    assert refused.choices[0].finish_reason == "content_filter"
    line = demo.wait_for_line("stderr", re.compile(r'guardrail\.audit: .*"decision": "blocked"'))
    assert line.string.startswith("INFO:")
    (record,) = demo.audit_records()
    assert record["policy"] == "default"
    assert record["input"]["screens"][0]["judge"] == "injection"
    assert INJECTION not in line.string  # the audit trail keeps a hash, not the text


def test_the_demo_prints_reloads_and_rejected_policies(running: Any, tmp_path: Path) -> None:
    path = tmp_path / "live.yaml"
    path.write_text(POLICY.format(name="first"))
    demo = running("demo", "--port", "0", "--policy", str(path))
    path.write_text(POLICY.format(name="second"))
    demo.proc.send_signal(signal.SIGHUP)
    demo.wait_for_line("stderr", re.compile(r"INFO: .*guardrail: policy reloaded .*second"))
    path.write_text("name: third\ninput: {screens: [{judge: nobody}]}\n")
    demo.proc.send_signal(signal.SIGHUP)
    rejected = demo.wait_for_line("stderr", re.compile(r"guardrail: policy reload .* rejected"))
    assert rejected.string.startswith("ERROR:")
    assert "still serving second" in rejected.string


def test_log_level_warning_keeps_decisions_out_but_errors_in(running: Any, tmp_path: Path) -> None:
    path = tmp_path / "live.yaml"
    path.write_text(POLICY.format(name="quiet"))
    port = str(free_port())  # uvicorn does not say which port it took at level warning
    demo = running("demo", "--port", port, "--policy", str(path), "--log-level", "warning")
    assert ask(demo.url, INJECTION).choices[0].finish_reason == "content_filter"
    # An error logged after the decision: once it is out, the decision's line would be too.
    path.write_text("name: broken\ninput: {screens: [{judge: nobody}]}\n")
    demo.proc.send_signal(signal.SIGHUP)
    demo.wait_for_line("stderr", re.compile(r"^ERROR: .*policy reload .* rejected"))
    assert demo.audit_records() == []
    assert not any(line.startswith("INFO:") for line in demo.lines["stderr"])


# --- proxy workers ----------------------------------------------------------------------


def test_proxy_workers_share_metrics_and_print_decisions(
    running: Any, stub_llm: StubLLM, tmp_path: Path
) -> None:
    stub_llm.reply = "From the service."
    upstream = stub_llm.base_url.removesuffix("/v1")
    proxy = running(
        "proxy", "--upstream", upstream, "--port", "0", "--workers", "2",
        env={"PROMETHEUS_MULTIPROC_DIR": ""},
    )  # fmt: skip
    proxy.wait_for_line("stdout", re.compile(r"^guardrail proxy: .* -> " + re.escape(upstream)))
    # Both workers are up once each said so (uvicorn's "Started server process [pid]").
    started = re.compile(r"Started server process \[(\d+)\]")

    def workers() -> int:
        return len({m.group(1) for m in map(started.search, proxy.lines["stderr"]) if m})

    assert wait_for(lambda: workers() >= 2, timeout=STARTUP_S), proxy.lines
    requests = 6
    for _ in range(requests):
        assert ask(proxy.url, BENIGN).choices[0].message.content == "From the service."
        assert ask(proxy.url, INJECTION).choices[0].finish_reason == "content_filter"

    def counted(decision: str) -> float:
        text = httpx.get(proxy.url + "/metrics", timeout=10).text
        pattern = rf'^guardrail_requests_total{{[^}}]*decision="{decision}"[^}}]*}} (\S+)$'
        return sum(float(m) for m in re.findall(pattern, text, re.MULTILINE))

    # Whichever worker answers the scrape, it reports both workers' requests.
    for _ in range(4):
        assert wait_for(lambda: counted("allowed") == requests, timeout=30)
        assert wait_for(lambda: counted("blocked") == requests, timeout=30)
    assert wait_for(lambda: len(proxy.audit_records()) == 2 * requests, timeout=30)
    decisions = sorted(r["decision"] for r in proxy.audit_records())
    assert decisions == ["allowed"] * requests + ["blocked"] * requests
    # (The service may have answered an injection too: the forward runs in parallel
    # with the screen, and a zero-latency stub can finish before the refusal lands.)
    # The workers counted in the directory the command made for them, removed at exit.
    shared = Path(proxy.wait_for_line("stdout", MULTIPROC_DIR).group(1))
    assert shared.is_dir() and any(shared.glob("counter_*.db"))
    proxy.stop()
    assert not shared.exists()
