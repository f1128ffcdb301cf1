"""What every benchmark shares: servers, stub LLMs, load, CPU, percentiles, the report.

A benchmark script is a short list of scenarios over these parts:

- ``Server``: a uvicorn subprocess serving a ``module:factory`` from ``bench/``
  (``example_app`` below: the example chat app, bare or guarded);
- ``Stub``: a ``tests.stub_llm.StubLLM`` (an OpenAI-compatible server) in a
  spawned child process, driven over a pipe;
- ``closed_loop``: ``n`` calls, ``concurrency`` at a time, each caller issuing
  its next call when the last one ended; failures are counted, not raised;
  ``LoadProcesses``: the same loop split over child processes, for a server
  faster than one Python client;
- ``CpuMeter``: CPU seconds (utime+stime from /proc) of named processes, of
  this one and of the whole machine over a run;
- ``percentile``, ``scrape`` and the histogram helpers for a server's ``/metrics``;
- ``Table``: a fixed-width report whose ratios come from rows of the same run;
  ``machine_line``: the closing line saying what the machine was doing.

Everything listens on 127.0.0.1. Nothing here runs at import time.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Generic, TypeVar

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"

QUESTION = "What is the capital of France?"
ANSWER = "The capital of France is Paris."
CHAT_PATH = "/v1/chat/completions"
ADDED = "guardrail_added_latency_seconds"

# One LLM judge (a StubLLM: ``judge_url``) plus the local injection and pii judges.
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

T = TypeVar("T")


# --- processes: CPU and the machine ------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int) -> float:
    """CPU time of a process's live threads, to the nanosecond (/proc/<pid>/task/*/schedstat).

    ``cpu_seconds`` counts in clock ticks (10 ms), too coarse for one request;
    this misses threads that have exited, so measure processes that keep theirs.
    """
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended between the listing and the read
    return total / 1e9


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy since boot (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    busy = sum(ticks[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuUse:
    """CPU seconds spent during one run: per named process group, this process, the machine."""

    by_name: dict[str, float]
    own_s: float
    machine_s: float
    wall_s: float

    def per_request_ms(self, name: str, n: int) -> float:
        return self.by_name[name] / n * 1000

    def others_pct(self) -> float:
        """CPU of processes outside the benchmark, as a share of all the machine's cores."""
        others = self.machine_s - sum(self.by_name.values()) - self.own_s
        return max(0.0, others) / (self.wall_s * (os.cpu_count() or 1)) * 100

    def machine_pct(self) -> float:
        return self.machine_s / (self.wall_s * (os.cpu_count() or 1)) * 100


class CpuMeter:
    """Measure CPU over a run: ``meter = CpuMeter(server=[pid]); ...; use = meter.stop()``."""

    def __init__(self, **pids: Sequence[int]) -> None:
        self._pids = {name: list(group) for name, group in pids.items()}
        self._start = self._read()

    def _read(self) -> tuple[dict[str, float], float, float, float]:
        groups = {name: sum(map(cpu_seconds, pids)) for name, pids in self._pids.items()}
        return groups, time.process_time(), machine_busy_s(), time.perf_counter()

    def stop(self, wall_s: float | None = None) -> CpuUse:
        """The CPU since the meter started; ``wall_s`` overrides the run's wall time."""
        groups, own, machine, now = self._read()
        start_groups, start_own, start_machine, started = self._start
        return CpuUse(
            by_name={name: groups[name] - start_groups[name] for name in groups},
            own_s=own - start_own,
            machine_s=machine - start_machine,
            wall_s=wall_s if wall_s is not None else now - started,
        )


def machine_line(load_before: float, started: float, sharing: str) -> str:
    """The closing line every bench prints: the machine, its load, who shared it, the time."""
    return (
        f"machine: {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), Python"
        f" {sys.version.split()[0]}, load average {load_before:.2f} before,"
        f" {os.getloadavg()[0]:.2f} after; {sharing}"
        f" Total {time.perf_counter() - started:.0f} s."
    )


# --- servers -----------------------------------------------------------------------


def example_app() -> Any:
    """uvicorn factory: the example chat app as the ``BENCH_*`` environment says.

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


class Server:
    """``python -m uvicorn --factory MODULE:FUNCTION`` (a module in ``bench/``) on a free port.

    ``policy`` and ``upstream_url`` reach the factory as ``BENCH_POLICY`` and
    ``BENCH_UPSTREAM_URL``; ``uvicorn_args`` are added to the command line
    (e.g. ``--loop uvloop --http httptools``). One worker, no access log.
    """

    def __init__(
        self,
        name: str,
        *,
        policy: str = "bare",
        upstream_url: str = "",
        factory: str = "harness:example_app",
        uvicorn_args: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.port = free_port()
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
                str(BENCH),
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

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def ready(self, session: Any, timeout_s: float = 30.0) -> None:
        """Return once ``/health`` answers 200 (the server is up and its app built)."""
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
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


# --- stub LLMs in child processes --------------------------------------------------


# What ``Stub.configure`` may set on the child's StubLLM (read afresh per request).
STUB_SETTINGS = frozenset(
    {
        "latency_s",
        "chunk_delay_s",
        "stream_chunks",
        "reply",
        "scores",
        "logprobs",
        "latency_per_kchar_s",
    }
)


def serve_stub(conn: Connection, reply: str | None) -> None:
    """Child process: a StubLLM the parent drives over the pipe.

    A dict sets the named settings (``STUB_SETTINGS``, echoed back);
    ``"counters"`` answers with its request counters; ``None`` stops it.
    """
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # tests.stub_llm lives in the checkout, not the package
    from tests.stub_llm import StubLLM

    stub = StubLLM(reply=reply) if reply is not None else StubLLM()
    with stub:
        conn.send(stub.base_url)
        while (command := conn.recv()) is not None:
            if command == "counters":
                conn.send(
                    {
                        "count": stub.count,
                        "completed": stub.completed,
                        "cancelled": stub.cancelled,
                        "chars": stub.chars,  # message content received
                    }
                )
            else:
                for name, value in command.items():
                    if name not in STUB_SETTINGS:
                        raise ValueError(f"not a StubLLM setting: {name}")
                    setattr(stub, name, value)
                conn.send(command)


class Stub:
    """A StubLLM in a child process (spawned: no state, no GIL shared with this one)."""

    def __init__(self, name: str, reply: str | None = None, **settings: Any) -> None:
        context = multiprocessing.get_context("spawn")
        self.name = name
        self.conn, child = context.Pipe()
        self.proc = context.Process(target=serve_stub, args=(child, reply), daemon=True)
        self.proc.start()
        if not self.conn.poll(30):
            raise RuntimeError(f"{name} stub did not start")
        self.base_url: str = self.conn.recv()
        self.pid = int(self.proc.pid or 0)
        if settings:
            self.configure(**settings)

    def set_latency(self, latency_s: float) -> None:
        self.configure(latency_s=latency_s)

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


@contextmanager
def policy_file(text: str, prefix: str = "bench-policy-") -> Iterator[str]:
    """A temporary policy file holding ``text``; its path, removed afterwards."""
    with tempfile.NamedTemporaryFile("w", prefix=prefix, suffix=".yaml", delete=False) as f:
        f.write(text)
    try:
        yield f.name
    finally:
        os.unlink(f.name)


# --- load --------------------------------------------------------------------------


class Refused(Exception):
    """A response that is not what the scenario expects (wrong status, body, stream)."""


@dataclass
class Load(Generic[T]):
    """What a closed loop measured: per-call seconds, results, failures, wall time."""

    latencies: list[float] = field(default_factory=list)
    results: list[T] = field(default_factory=list)
    failures: int = 0
    examples: list[str] = field(default_factory=list)
    wall_s: float = math.nan

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.wall_s


def failure_types() -> tuple[type[BaseException], ...]:
    """What a call may raise that counts as a failed request rather than a bench bug."""
    import aiohttp

    return (Refused, aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError)


async def closed_loop(
    call: Callable[[], Awaitable[T]], n: int, concurrency: int, *, warm_up: bool = False
) -> Load[T]:
    """``n`` calls, ``concurrency`` callers each starting its next call when one ends.

    A failure (``failure_types``) is counted with a few examples kept; in a
    ``warm_up`` loop it raises instead, since nothing measured would mean anything.
    """
    load: Load[T] = Load()
    remaining = n
    failures = failure_types()

    async def caller() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            try:
                result = await call()
            except failures as exc:
                problem = f"{type(exc).__name__}: {exc}"
                if warm_up:
                    raise RuntimeError(f"warm-up request failed: {problem}") from exc
                load.failures += 1
                if len(load.examples) < 3:
                    load.examples.append(problem)
            else:
                load.results.append(result)
            load.latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    load.wall_s = time.perf_counter() - started
    return load


def serve_load(conn: Connection) -> None:
    """Child process: runs the load jobs the parent sends (``LoadProcesses``)."""
    while (job := conn.recv()) is not None:
        conn.send(asyncio.run(_load_job(conn, job)))


async def _load_job(conn: Connection, job: dict[str, Any]) -> dict[str, Any]:
    async with client_session(job["concurrency"]) as session:

        async def one() -> None:
            body = await post_json(session, job["url"], job["body"])
            if job["expect"] is not None and body != job["expect"]:
                raise Refused(f"not the expected answer: {body[:200]!r}")

        try:
            await closed_loop(one, job["warm_up"], job["concurrency"], warm_up=True)
        except RuntimeError as exc:
            conn.send({"error": str(exc)})
            return {}
        conn.send("ready")
        if conn.recv() != "go":
            return {}
        cpu, start = time.process_time(), time.monotonic()
        load: Load[None] = await closed_loop(one, job["n"], job["concurrency"])
        end, cpu = time.monotonic(), time.process_time() - cpu
    return {
        "latencies": load.latencies,
        "failures": load.failures,
        "examples": load.examples,
        "cpu_s": cpu,
        "start": start,  # CLOCK_MONOTONIC: comparable between processes
        "end": end,
    }


class LoadProcesses:
    """``count`` spawned load processes (aiohttp, keep-alive), reused from run to run.

    For a server faster than one Python client: the first ``k`` share a closed
    loop's requests and concurrency. ``prepare`` hands out the job and waits for
    every warm-up, ``go`` starts them together and returns each one's
    ``latencies``, ``failures``, ``examples``, ``cpu_s``, ``start`` and ``end``
    (CLOCK_MONOTONIC).
    """

    def __init__(self, count: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        for _ in range(count):
            conn, child = context.Pipe()
            proc = context.Process(target=serve_load, args=(child,), daemon=True)
            proc.start()
            self.conns.append(conn)
            self.procs.append(proc)

    def pids(self, k: int) -> list[int]:
        return [int(p.pid or 0) for p in self.procs[:k]]

    def prepare(
        self,
        k: int,
        url: str,
        n: int,
        concurrency: int,
        warm_up: int,
        body: bytes,
        expect: bytes | None = None,
    ) -> None:
        """Send the first ``k`` their share of the job; return once all have warmed up.

        Each POSTs ``body``; a response other than a 200 (whose body is
        ``expect``, when given) is a failure.
        """
        for i, conn in enumerate(self.conns[:k]):
            conn.send(
                {
                    "url": url,
                    "n": _share(n, k, i),
                    "concurrency": _share(concurrency, k, i),
                    "warm_up": _share(warm_up, k, i),
                    "body": body,
                    "expect": expect,
                }
            )
        for conn in self.conns[:k]:
            if not conn.poll(120):
                raise RuntimeError("a load process did not finish its warm-up")
            reply = conn.recv()
            if reply != "ready":
                raise RuntimeError(reply["error"])

    def go(self, k: int) -> list[dict[str, Any]]:
        for conn in self.conns[:k]:
            conn.send("go")
        results = []
        for conn in self.conns[:k]:
            if not conn.poll(300):
                raise RuntimeError("a load process did not finish its run")
            results.append(conn.recv())
        return results

    def stop(self) -> None:
        for conn, proc in zip(self.conns, self.procs, strict=True):
            if proc.is_alive():
                try:
                    conn.send(None)
                except OSError:
                    pass
                proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)


def _share(total: int, parts: int, i: int) -> int:
    return total // parts + (1 if i < total % parts else 0)


def client_session(concurrency: int, timeout_s: float = 30.0) -> Any:
    """An aiohttp session with keep-alive and at most ``concurrency`` connections."""
    import aiohttp

    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency),
        timeout=aiohttp.ClientTimeout(total=timeout_s),
    )


async def post_json(session: Any, url: str, body: bytes) -> bytes:
    """POST a JSON body; the whole response body, or ``Refused`` unless it is a 200."""
    async with session.post(url, data=body, headers={"content-type": "application/json"}) as resp:
        raw: bytes = await resp.read()
        status = resp.status
    if status != 200:
        raise Refused(f"HTTP {status}: {raw[:200]!r}")
    return raw


async def ask(session: Any, url: str, body: bytes | None = None, answer: str = ANSWER) -> None:
    """One chat request (the benign question by default); ``Refused`` unless it is a 200
    whose answer is ``answer`` with ``finish_reason: stop``."""
    import json

    raw = await post_json(session, url, body or chat_request())
    choice = json.loads(raw)["choices"][0]
    if choice.get("finish_reason") != "stop" or choice["message"]["content"] != answer:
        raise Refused(f"unexpected answer: {raw[:200]!r}")


def chat_request(text: str = QUESTION, *, stream: bool = False) -> bytes:
    """The JSON body of a one-message chat request."""
    import json

    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": text}]}
    if stream:
        body = {"model": "m", "stream": True, "messages": body["messages"]}
    return json.dumps(body).encode()


# --- percentiles and metrics -------------------------------------------------------


def percentile(values: Sequence[float], p: int) -> float:
    """The p-th percentile (inclusive method; p50 is the median); NaN with no values."""
    if not values:
        return math.nan
    if p == 50:
        return statistics.median(values)
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(session: Any, url: str) -> Samples:
    """A server's ``/metrics`` as {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    async with session.get(url + "/metrics") as resp:
        text = await resp.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def histogram_delta(
    before: Samples, after: Samples, name: str
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


def counter_delta(before: Samples, after: Samples, name: str, label: str) -> dict[str, float]:
    """How much a counter grew, by one label's value (zero growth left out)."""
    out: dict[str, float] = {}
    for key, value in after.items():
        sample, labels = key
        if sample == name:
            delta = value - before.get(key, 0.0)
            if delta:
                value_of = dict(labels)[label]
                out[value_of] = out.get(value_of, 0.0) + delta
    return out


def decisions_delta(before: Samples, after: Samples) -> dict[str, float]:
    """Requests the middleware decided between two scrapes, by decision."""
    return counter_delta(before, after, "guardrail_requests_total", "decision")


# --- the report --------------------------------------------------------------------


def fmt(value: float | None, spec: str) -> str:
    """``value`` formatted, or ``-`` where there is none (None or NaN)."""
    return "-" if value is None or math.isnan(value) else format(value, spec)


def ratio(numerator: float, denominator: float | None) -> float | None:
    """``numerator / denominator``, both measured in this run; None without a denominator."""
    if denominator is None or denominator == 0 or math.isnan(denominator):
        return None
    return numerator / denominator


@dataclass(frozen=True)
class Column:
    """One column: its header, width, and the format of its numbers (text is left-aligned)."""

    header: str
    width: int
    spec: str = ""


class Table:
    """A fixed-width table: ``Table(columns).add(values...)``, then ``print(note)``."""

    def __init__(self, columns: Sequence[Column]) -> None:
        self.columns = list(columns)
        self.rows: list[Sequence[object]] = []

    def add(self, *values: object) -> None:
        if len(values) != len(self.columns):
            raise ValueError(f"{len(values)} values for {len(self.columns)} columns")
        self.rows.append(values)

    def _cell(self, column: Column, value: object) -> str:
        if isinstance(value, str):
            return f"{value:<{column.width}}" if not column.spec else f"{value:>{column.width}}"
        if value is None or isinstance(value, float):
            return f"{fmt(value, column.spec):>{column.width}}"
        return f"{value:>{column.width}{column.spec}}"

    def render(self, note: str = "") -> str:
        header = " ".join(
            f"{c.header:<{c.width}}" if not c.spec else f"{c.header:>{c.width}}"
            for c in self.columns
        )
        lines = ["", header, "-" * len(header)]
        lines += [
            " ".join(self._cell(c, v) for c, v in zip(self.columns, row, strict=True))
            for row in self.rows
        ]
        if note:
            lines.append(note)
        return "\n".join(lines)

    def print(self, note: str = "") -> None:
        print(self.render(note), flush=True)


def report_failures(failed: Mapping[str, Sequence[str]]) -> int:
    """Print each failed row with its examples; the exit status (1 if any failed)."""
    for what, examples in failed.items():
        print(f"FAILED {what}")
        for example in examples:
            print(f"    {example}")
    return 1 if failed else 0
