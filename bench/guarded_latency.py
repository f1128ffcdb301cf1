"""Measure what guarding costs: the example chat app bare vs guarded, over real HTTP.

    .venv/bin/python bench/guarded_latency.py [--requests N]

Everything runs on 127.0.0.1, each part in its own process so none shares a
GIL with the app under test:

- two StubLLM processes: the app's model and the screen's LLM judge;
- the example app (``examples.chat_app.create_app``) served by uvicorn in a
  subprocess, asking the app stub through its ``upstream`` AsyncOpenAI client;
  bare (no middleware) or guarded (``build_app`` below reads ``BENCH_*``);
- this process: an aiohttp client posting benign chat requests.

Scenarios: (a) app 200 ms, screen 150 ms (one LLM judge plus the local
injection and pii judges), concurrency 1 and 32; (b) the same with zero-latency
stubs at concurrency 32; (c) zero-latency app guarded by the default,
local-only policy at concurrency 32: the middleware's own overhead.

Every response must be a 200 with the app stub's answer; any failure is
counted, printed, and makes the script exit 1. CPU per request is the app
server process's utime+stime delta (all its threads) from /proc. The guarded
server's ``/metrics`` is scraped before and after each run for the added
latency the middleware measured itself (mean from sum/count, p99 estimated
from the histogram buckets).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

APP_LATENCY_S = 0.200
SCREEN_LATENCY_S = 0.150
ANSWER = "The capital of France is Paris."
QUESTION = "What is the capital of France?"
REQUEST = json.dumps({"model": "m", "messages": [{"role": "user", "content": QUESTION}]}).encode()
ADDED = "guardrail_added_latency_seconds"

GUARDED_POLICY = """\
name: bench
routes: [{{path: /v1/chat/completions, methods: [POST]}}]
format: openai_chat
max_body_bytes: 1048576
judges:
  guard: {{type: llm, model: openai/stub-judge, api_base: '{judge_url}'}}
  injection: {{type: injection}}
  pii: {{type: pii, kinds: [email, phone, card, secret]}}
input:
  screens:
    - {{judge: guard, timeout_s: 2.0}}
    - {{judge: injection, timeout_s: 0.5}}
    - {{judge: pii, timeout_s: 0.5}}
on_flag: block
on_error: block
metrics: {{path: /metrics}}
"""


# --- the app server subprocess -----------------------------------------------


def build_app() -> Any:
    """uvicorn factory: the example app as the ``BENCH_*`` environment says.

    ``BENCH_UPSTREAM_URL``: the app stub's base URL. ``BENCH_POLICY``: ``bare``
    (no middleware), ``default`` (the embedded local-only policy) or a policy file.
    """
    from openai import AsyncOpenAI

    from examples.chat_app import create_app

    upstream = AsyncOpenAI(
        base_url=os.environ["BENCH_UPSTREAM_URL"], api_key="bench", max_retries=0
    )
    policy = os.environ.get("BENCH_POLICY", "bare")
    return create_app(None if policy == "bare" else policy, upstream=upstream)


class AppServer:
    """``python -m uvicorn --factory guarded_latency:build_app`` on a free port.

    ``factory`` names another ``module:function`` in ``bench/``; ``uvicorn_args``
    are added to the command line (e.g. ``--loop uvloop --http httptools``).
    """

    def __init__(
        self,
        name: str,
        upstream_url: str,
        policy: str,
        *,
        factory: str = "guarded_latency:build_app",
        uvicorn_args: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.port = _free_port()
        env = {
            **os.environ,
            "BENCH_UPSTREAM_URL": upstream_url,
            "BENCH_POLICY": policy,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        env.pop("OPENAI_API_KEY", None)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                factory,
                "--app-dir",
                str(ROOT / "bench"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                "--no-access-log",
                *uvicorn_args,
            ],
            cwd=ROOT,
            env=env,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def ready(self, session: Any, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} server exited with {self.proc.returncode}")
            try:
                async with session.get(self.url + "/health") as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} server did not answer within {timeout_s:g} s")

    def cpu_s(self) -> float:
        return _cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


# --- stub processes ----------------------------------------------------------


# What ``Stub.configure`` may set on the child's StubLLM (read afresh per request).
STUB_SETTINGS = frozenset({"latency_s", "chunk_delay_s", "stream_chunks", "reply"})


def serve_stub(conn: Connection, reply: str | None) -> None:
    """Child process: a StubLLM the parent drives over the pipe.

    A number sets its latency (echoed back); a dict sets the named settings
    (``STUB_SETTINGS``, echoed back; ``Stub.configure``); ``"counters"`` answers
    with its request counters (``Stub.counters``); ``None`` stops it.
    """
    from tests.stub_llm import StubLLM

    stub = StubLLM(reply=reply) if reply is not None else StubLLM()
    with stub:
        conn.send(stub.base_url)
        while (command := conn.recv()) is not None:
            if command == "counters":
                conn.send(
                    {"count": stub.count, "completed": stub.completed, "cancelled": stub.cancelled}
                )
            elif isinstance(command, dict):
                for name, value in command.items():
                    if name not in STUB_SETTINGS:
                        raise ValueError(f"not a StubLLM setting: {name}")
                    setattr(stub, name, value)
                conn.send(command)
            else:
                stub.latency_s = command
                conn.send(command)


class Stub:
    """A StubLLM in a child process (spawned: no state shared with this one)."""

    def __init__(self, name: str, reply: str | None = None) -> None:
        context = multiprocessing.get_context("spawn")
        self.name = name
        self.conn, child = context.Pipe()
        self.proc = context.Process(target=serve_stub, args=(child, reply), daemon=True)
        self.proc.start()
        if not self.conn.poll(30):
            raise RuntimeError(f"{name} stub did not start")
        self.base_url: str = self.conn.recv()
        self.pid = int(self.proc.pid or 0)

    def set_latency(self, latency_s: float) -> None:
        self.conn.send(latency_s)
        self.conn.recv()

    def configure(self, **settings: Any) -> None:
        """Set StubLLM settings (``STUB_SETTINGS``), e.g. ``stream_chunks``, ``chunk_delay_s``."""
        unknown = set(settings) - STUB_SETTINGS
        if unknown:
            raise ValueError(f"not StubLLM settings: {sorted(unknown)}")
        self.conn.send(settings)
        self.conn.recv()

    def counters(self) -> dict[str, int]:
        """The stub's requests so far: ``count`` received, ``completed``, ``cancelled``
        (the client hung up before the answer)."""
        self.conn.send("counters")
        counters: dict[str, int] = self.conn.recv()
        return counters

    def stop(self) -> None:
        if self.proc.is_alive():
            try:
                self.conn.send(None)
            except OSError:
                pass
            self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout=5)


# --- measuring ---------------------------------------------------------------


@dataclass
class Row:
    scenario: str
    variant: str
    concurrency: int
    requests: int
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    rps: float = math.nan
    cpu_ms: float = math.nan
    stubs_cpu_ms: float = math.nan
    client_cpu_ms: float = math.nan
    others_pct: float = math.nan
    failures: int = 0
    failure_examples: list[str] = field(default_factory=list)
    added_mean_ms: float | None = None
    added_p99_ms: float | None = None
    decisions: dict[str, float] = field(default_factory=dict)
    vs_bare_ms: float | None = None
    vs_max_ratio: float | None = None


async def post_all(
    session: Any, url: str, n: int, concurrency: int, row: Row | None
) -> tuple[list[float], float]:
    """POST ``n`` chat requests, ``concurrency`` at a time; return (latencies s, wall s)."""
    import aiohttp

    latencies: list[float] = []
    remaining = n

    async def one() -> None:
        started = time.perf_counter()
        problem = None
        try:
            async with session.post(
                url, data=REQUEST, headers={"content-type": "application/json"}
            ) as resp:
                body = await resp.read()
                status = resp.status
            elapsed = time.perf_counter() - started
            if status != 200:
                problem = f"HTTP {status}: {body[:200]!r}"
            else:
                choice = json.loads(body)["choices"][0]
                if choice.get("finish_reason") != "stop" or choice["message"]["content"] != ANSWER:
                    problem = f"unexpected answer: {body[:200]!r}"
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError) as exc:
            elapsed = time.perf_counter() - started
            problem = f"{type(exc).__name__}: {exc}"
        latencies.append(elapsed)
        if problem is not None:
            if row is None:
                raise RuntimeError(f"warm-up request failed: {problem}")
            row.failures += 1
            if len(row.failure_examples) < 3:
                row.failure_examples.append(problem)

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await one()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started


async def scrape(
    session: Any, server: AppServer
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The guarded server's metrics: {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    async with session.get(server.url + "/metrics") as resp:
        text = await resp.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def histogram_delta(
    before: dict[Any, float], after: dict[Any, float], name: str
) -> tuple[float, float, list[tuple[float, float]]]:
    """(sum, count, cumulative [(le, count)]) of a histogram's change, over all label sets."""
    total = count = 0.0
    buckets: dict[float, float] = {}
    for key, value in after.items():
        sample, labels = key
        delta = value - before.get(key, 0.0)
        if sample == name + "_sum":
            total += delta
        elif sample == name + "_count":
            count += delta
        elif sample == name + "_bucket":
            le = float(dict(labels)["le"])
            buckets[le] = buckets.get(le, 0.0) + delta
    return total, count, sorted(buckets.items())


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus-style: linear interpolation inside the bucket holding the q-th sample."""
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    rank = q * buckets[-1][1]
    lower_le, lower_count = 0.0, 0.0
    for le, cumulative in buckets:
        if cumulative >= rank:
            if math.isinf(le):
                return lower_le  # beyond the last finite bucket: its bound is all we know
            span = cumulative - lower_count
            return lower_le + (le - lower_le) * ((rank - lower_count) / span if span else 1.0)
        lower_le, lower_count = le, cumulative
    return math.nan


def decisions_delta(before: dict[Any, float], after: dict[Any, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in after.items():
        sample, labels = key
        if sample == "guardrail_requests_total":
            delta = value - before.get(key, 0.0)
            if delta:
                decision = dict(labels)["decision"]
                out[decision] = out.get(decision, 0.0) + delta
    return out


async def run_scenario(
    session_factory: Any,
    server: AppServer,
    row: Row,
    guarded: bool,
    stub_pids: list[int],
) -> Row:
    url = server.url + "/v1/chat/completions"
    async with session_factory(row.concurrency) as session:
        # Warm-up, not measured: opens the connections and the judge's session.
        warm_up = max(5, 2 * row.concurrency, row.requests // 5)
        await post_all(session, url, warm_up, row.concurrency, None)
        before = await scrape(session, server) if guarded else {}
        cpu, stubs_cpu = server.cpu_s(), sum(map(_cpu_seconds, stub_pids))
        client_cpu, machine = time.process_time(), _machine_busy_s()
        latencies, wall = await post_all(session, url, row.requests, row.concurrency, row)
        client_cpu, machine = time.process_time() - client_cpu, _machine_busy_s() - machine
        cpu, stubs_cpu = server.cpu_s() - cpu, sum(map(_cpu_seconds, stub_pids)) - stubs_cpu
        if guarded:
            await asyncio.sleep(0.05)  # the last record is written after the last byte
            after = await scrape(session, server)
            total, count, buckets = histogram_delta(before, after, ADDED)
            if count:
                row.added_mean_ms = total / count * 1000
                row.added_p99_ms = histogram_quantile(0.99, buckets) * 1000
            row.decisions = decisions_delta(before, after)
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    row.p50_ms = statistics.median(latencies) * 1000
    row.p99_ms = cuts[98] * 1000
    row.rps = row.requests / wall
    row.cpu_ms = cpu / row.requests * 1000
    row.stubs_cpu_ms = stubs_cpu / row.requests * 1000
    row.client_cpu_ms = client_cpu / row.requests * 1000
    # CPU the machine spent on processes other than ours, as a share of all its cores.
    others = machine - cpu - stubs_cpu - client_cpu
    row.others_pct = max(0.0, others) / (wall * (os.cpu_count() or 1)) * 100
    print(
        f"  {row.scenario:<22} {row.variant:<14} c={row.concurrency:<3} n={row.requests:<5}"
        f" p50 {row.p50_ms:7.1f} ms  p99 {row.p99_ms:7.1f} ms  {row.rps:7.0f} req/s"
        f"  cpu app {row.cpu_ms:5.2f} stubs {row.stubs_cpu_ms:5.2f}"
        f" client {row.client_cpu_ms:5.2f} ms/req  others {row.others_pct:3.0f}%"
        f"  failures {row.failures}",
        flush=True,
    )
    return row


# --- main --------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy since boot (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    busy = sum(ticks[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or math.isnan(value) else format(value, spec)


def print_table(rows: list[Row]) -> None:
    header = (
        f"{'scenario':<22} {'variant':<14} {'c':>3} {'n':>5} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'req/s':>7} {'cpu app':>7} {'stubs':>5} {'client':>6} {'others':>6}"
        f" {'fail':>4}"
        f" {'p50/max':>7} {'p50-bare':>8}"
        f" {'added mean':>10} {'added p99':>9}"
    )
    print()
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r.scenario:<22} {r.variant:<14} {r.concurrency:>3} {r.requests:>5}"
            f" {r.p50_ms:>8.1f} {r.p99_ms:>8.1f} {r.rps:>7.0f} {r.cpu_ms:>7.2f}"
            f" {r.stubs_cpu_ms:>5.2f} {r.client_cpu_ms:>6.2f} {r.others_pct:>5.0f}%"
            f" {r.failures:>4} {_fmt(r.vs_max_ratio, '.3f'):>7} {_fmt(r.vs_bare_ms, '+.1f'):>8}"
            f" {_fmt(r.added_mean_ms, '.2f'):>10} {_fmt(r.added_p99_ms, '.2f'):>9}"
        )
    print(
        "p50/max: guarded p50 / max(app 200 ms, screen 150 ms). p50-bare: guarded p50 minus"
        " the bare p50 of the same stubs and concurrency (ms). added mean/p99 (ms): the"
        " middleware's own guardrail_added_latency_seconds (sum/count; p99 interpolated in"
        " its buckets). cpu app / stubs / client: CPU ms per request (utime+stime) of the app"
        " server process, of both stub processes together, and of this load client. others:"
        " CPU used by processes outside this benchmark during the run, % of all cores."
    )


async def bench(args: argparse.Namespace) -> list[Row]:
    import aiohttp

    def session_factory(concurrency: int) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency),
            timeout=aiohttp.ClientTimeout(total=30),
        )

    rows: list[Row] = []
    app_stub = judge_stub = None
    servers: list[AppServer] = []
    policy_file = tempfile.NamedTemporaryFile(
        "w", prefix="bench-policy-", suffix=".yaml", delete=False
    )
    try:
        app_stub = Stub("app", reply=ANSWER)
        judge_stub = Stub("judge")  # its default reply: not flagged
        policy_file.write(GUARDED_POLICY.format(judge_url=judge_stub.base_url))
        policy_file.close()
        bare = AppServer("bare", app_stub.base_url, "bare")
        servers.append(bare)
        guarded = AppServer("guarded", app_stub.base_url, policy_file.name)
        servers.append(guarded)
        local = AppServer("local-only", app_stub.base_url, "default")
        servers.append(local)
        async with session_factory(4) as session:
            for server in servers:
                await server.ready(session)

        stub_pids = [app_stub.pid, judge_stub.pid]
        n_zero = args.requests
        n_lat = max(64, n_zero // 5)
        n_serial = max(10, n_zero // 75)

        async def pair(scenario: str, concurrency: int, n: int, with_ratio: bool) -> None:
            b = await run_scenario(
                session_factory, bare, Row(scenario, "bare", concurrency, n), False, stub_pids
            )
            g = await run_scenario(
                session_factory,
                guarded,
                Row(scenario, "guarded+llm", concurrency, n),
                True,
                stub_pids,
            )
            g.vs_bare_ms = g.p50_ms - b.p50_ms
            if with_ratio:
                g.vs_max_ratio = g.p50_ms / (max(APP_LATENCY_S, SCREEN_LATENCY_S) * 1000)
            rows.extend([b, g])

        app_stub.set_latency(APP_LATENCY_S)
        judge_stub.set_latency(SCREEN_LATENCY_S)
        print("(a) app 200 ms, screen 150 ms")
        await pair("a: app200/screen150", 1, n_serial, True)
        await pair("a: app200/screen150", 32, n_lat, True)

        app_stub.set_latency(0.0)
        judge_stub.set_latency(0.0)
        print("(b) zero-latency stubs")
        await pair("b: app0/screen0", 32, n_zero, False)
        bare_zero = rows[-2]

        print("(c) zero-latency app, default local-only policy")
        c = await run_scenario(
            session_factory,
            local,
            Row("c: app0/local-only", "guarded-local", 32, n_zero),
            True,
            stub_pids,
        )
        c.vs_bare_ms = c.p50_ms - bare_zero.p50_ms
        rows.append(c)
    finally:
        for server in servers:
            server.stop()
        for stub in (app_stub, judge_stub):
            if stub is not None:
                stub.stop()
        os.unlink(policy_file.name)
    return rows


def machine_line(load_before: float, started: float, sharing: str) -> str:
    """The closing line every bench prints: the machine, its load, who shared it, the time."""
    return (
        f"machine: {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), Python"
        f" {sys.version.split()[0]}, load average {load_before:.2f} before,"
        f" {os.getloadavg()[0]:.2f} after; {sharing}"
        f" Total {time.perf_counter() - started:.0f} s."
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--requests",
        type=int,
        default=3000,
        help="requests per zero-latency run (default 3000); the 200/150 ms runs use"
        " N/5 at concurrency 32 and N/75 at concurrency 1",
    )
    args = parser.parse_args()
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    rows = asyncio.run(bench(args))
    print_table(rows)
    print(
        machine_line(
            load_before,
            started,
            "the app stub and the judge stub each run in their own process, the app server in"
            " another and the load client in this one, all on the same cores.",
        )
    )
    failed = [r for r in rows if r.failures]
    for r in failed:
        print(f"FAILED {r.scenario} {r.variant} c={r.concurrency}: {r.failures} failures")
        for example in r.failure_examples:
            print(f"    {example}")
    for r in rows:
        odd = {d: n for d, n in r.decisions.items() if d != "allowed"}
        if odd:
            print(f"note {r.scenario} {r.variant}: decisions other than allowed: {odd}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
