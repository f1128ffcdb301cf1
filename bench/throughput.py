"""The middleware's own ceiling: a near-free chat app, bare vs guarded, over real HTTP.

    .venv/bin/python bench/throughput.py [--requests N] [--serial M] [--max-clients K] [--quick]
    .venv/bin/python bench/throughput.py --profile N   # in this process, no HTTP: cProfile

``guarded_latency.py`` serves the example app, whose ``openai`` SDK costs
~2.5 ms of CPU per request and so caps its throughput. Here the app costs
almost nothing: ``chat_app`` below is raw ASGI that reads the body and answers
``POST /v1/chat/completions`` with one fixed OpenAI chat completion, no
upstream. Three variants, each its own uvicorn server in a subprocess (one
worker, ``--no-access-log``, ``--log-level warning``; ``harness.Server``):

- ``bare``: the app alone;
- ``guarded-local``: ``GuardrailMiddleware(app, policy="default",
  registry=CollectorRegistry())``, the embedded local-only policy;
- ``guarded-llm``: ``harness.GUARDED_POLICY`` (an LLM judge plus the
  local injection and pii judges), its judge a zero-latency StubLLM in a child
  process (``harness.Stub``): adds the judge's HTTP call.

Each under uvicorn's ``--loop asyncio --http h11`` and, when ``uvloop`` and
``httptools`` can be imported (they are not dependencies of the project:
``pip install --target DIR uvloop httptools`` and put DIR on ``PYTHONPATH``),
``--loop uvloop --http httptools``. Both are named explicitly, because
uvicorn's ``auto`` picks uvloop and httptools whenever they are installed.

Load: aiohttp clients with keep-alive in child processes, posting the benign
request after a warm-up: N requests (default 10000) at concurrency 32 from one
process, then from one more (the concurrency split between them) while the last
run's processes were each >= 90% of a core, up to ``--max-clients`` (default 2);
then M requests (default 500) at concurrency 1, where nothing queues, for the
latency the middleware adds to one request. Every response must be a 200
whose body is byte for byte the app's completion, and each guarded server must
count every measured request ``allowed`` on its ``/metrics``; anything else is
printed and exits 1.

Per run: req/s, p50/p99, server CPU ms per request and % of one core (the
server process's utime+stime from /proc), each load process's CPU % of one core,
the judge stub's CPU per request, CPU of processes outside the benchmark, the
guarded/bare ratios of req/s and of server CPU per request, and the
middleware's own ``guardrail_added_latency_seconds`` (scraped before and after:
mean from sum/count, p99 interpolated in its buckets).

``--profile N`` instead drives the app bare and guarded-local in this process
with no server (an ASGI driver that answers ``receive`` as uvicorn does): CPU
per request of each, then a cProfile of the guarded run, by area and by function.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import importlib.util
import json
import linecache
import math
import os
import pstats
import sys
import time
from collections.abc import MutableMapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import (
    ADDED,
    ANSWER,
    CHAT_PATH,
    GUARDED_POLICY,
    Column,
    CpuMeter,
    LoadProcesses,
    Server,
    Stub,
    Table,
    chat_request,
    decisions_delta,
    histogram_delta,
    histogram_quantile,
    machine_line,
    percentile,
    policy_file,
    ratio,
    report_failures,
    scrape,
)

REQUEST = chat_request()
COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": ANSWER},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 8, "completion_tokens": 8, "total_tokens": 16},
    }
).encode()
LOOPS = {
    "asyncio+h11": ("--loop", "asyncio", "--http", "h11"),
    "uvloop+httptools": ("--loop", "uvloop", "--http", "httptools"),
}
VARIANTS = ("bare", "guarded-local", "guarded-llm")
BUSY = 90.0  # % of one core from which a process counts as the limit


# --- the app under test (in the uvicorn subprocess) --------------------------


async def chat_app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    """Raw ASGI: a fixed chat completion for POST /v1/chat/completions; /health; else 404."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    if scope["path"] == CHAT_PATH and scope["method"] == "POST":
        more = True
        while more:  # the body is read, as a real app would
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            more = message.get("more_body", False)
        status, body = 200, COMPLETION
    elif scope["path"] == "/health":
        status, body = 200, b'{"ok":true}'
    else:
        status, body = 404, b""
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def build_app() -> Any:
    """uvicorn factory: ``BENCH_POLICY`` is ``bare``, ``default`` or a policy file."""
    from prometheus_client import CollectorRegistry

    from guardrail import GuardrailMiddleware

    policy = os.environ.get("BENCH_POLICY", "bare")
    if policy == "bare":
        return chat_app
    return GuardrailMiddleware(chat_app, policy=policy, registry=CollectorRegistry())


# --- measuring ---------------------------------------------------------------


@dataclass
class Row:
    loop: str
    variant: str
    clients: int
    concurrency: int
    requests: int
    rps: float = math.nan
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    server_cpu_ms: float = math.nan
    server_pct: float = math.nan
    client_pct: list[float] = field(default_factory=list)
    client_cpu_ms: float = math.nan
    stub_cpu_ms: float = math.nan
    others_pct: float = math.nan
    machine_pct: float = math.nan
    added_mean_us: float | None = None
    added_p99_us: float | None = None
    failures: int = 0
    problems: list[str] = field(default_factory=list)
    rps_ratio: float | None = None
    cpu_ratio: float | None = None
    p50_vs_bare_ms: float | None = None

    @property
    def limit(self) -> str:
        """Which process ran at (nearly) a full core: what capped this run."""
        limits = ["server"] if self.server_pct >= BUSY else []
        if any(p >= BUSY for p in self.client_pct):
            limits.append("client")
        if not limits and self.machine_pct >= BUSY:
            limits.append("machine")
        return "+".join(limits) or "-"


async def measure(
    session: Any,
    server: Server,
    clients: LoadProcesses,
    row: Row,
    stub_pid: int,
    warm_up: int,
) -> Row:
    guarded = row.variant != "bare"
    k = row.clients
    clients.prepare(
        k, server.url + CHAT_PATH, row.requests, row.concurrency, warm_up, REQUEST, COMPLETION
    )
    await asyncio.sleep(0.05)  # the warm-up's last records are counted after its last byte
    before = await scrape(session, server.url) if guarded else {}
    meter = CpuMeter(server=[server.pid], stub=[stub_pid], clients=clients.pids(k))
    results = clients.go(k)  # this process sleeps on the pipes meanwhile
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    cpu = meter.stop(wall)
    latencies = [x for r in results for x in r["latencies"]]
    row.failures = sum(r["failures"] for r in results)
    row.problems = [p for r in results for p in r["examples"]][:3]
    if guarded:
        await asyncio.sleep(0.05)
        after = await scrape(session, server.url)
        total, count, buckets = histogram_delta(before, after, ADDED)
        if count:
            row.added_mean_us = total / count * 1e6
            row.added_p99_us = histogram_quantile(0.99, buckets) * 1e6
        decisions = decisions_delta(before, after)
        if decisions != {"allowed": float(row.requests)}:
            row.failures += 1
            row.problems.append(f"decisions {decisions}, expected {row.requests} allowed")
    n = row.requests
    row.rps = n / wall
    row.p50_ms = percentile(latencies, 50) * 1000
    row.p99_ms = percentile(latencies, 99) * 1000
    row.server_cpu_ms = cpu.per_request_ms("server", n)
    row.server_pct = cpu.by_name["server"] / wall * 100
    row.client_pct = [r["cpu_s"] / (r["end"] - r["start"]) * 100 for r in results]
    row.client_cpu_ms = cpu.per_request_ms("clients", n)
    row.stub_cpu_ms = cpu.per_request_ms("stub", n)
    row.machine_pct = cpu.machine_pct()
    row.others_pct = cpu.others_pct()
    print(
        f"  {row.loop:<16} {row.variant:<13} c={row.concurrency:<2} clients {k}"
        f"  {row.rps:6.0f} req/s"
        f"  p50 {row.p50_ms:6.2f} ms  p99 {row.p99_ms:6.2f} ms  server {row.server_cpu_ms:5.3f}"
        f" ms/req ({row.server_pct:3.0f}%)  client {_pcts(row.client_pct)}"
        f"  others {row.others_pct:3.0f}%  failures {row.failures}",
        flush=True,
    )
    return row


def _pcts(values: list[float]) -> str:
    return "/".join(f"{v:.0f}%" for v in values)


def fast_io() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("uvloop", "httptools"))


async def bench(args: argparse.Namespace) -> list[Row]:
    import aiohttp

    loops = ["asyncio+h11", *(["uvloop+httptools"] if fast_io() else [])]
    rows: list[Row] = []
    with ExitStack() as stack:
        judge = Stub("judge")  # zero latency; its default reply: not flagged
        stack.callback(judge.stop)
        guarded_llm = stack.enter_context(
            policy_file(GUARDED_POLICY.format(judge_url=judge.base_url))
        )
        policies = {"bare": "bare", "guarded-local": "default", "guarded-llm": guarded_llm}
        clients = LoadProcesses(args.max_clients)
        stack.callback(clients.stop)
        async with aiohttp.ClientSession() as session:
            for loop in loops:
                for variant in VARIANTS:
                    server = Server(
                        f"{variant} {loop}",
                        policy=policies[variant],
                        factory="throughput:build_app",
                        uvicorn_args=LOOPS[loop],
                    )
                    try:
                        await server.ready(session)
                        for concurrency, n in ((args.concurrency, args.requests), (1, args.serial)):
                            warm_up = args.warm_up if concurrency > 1 else args.warm_up // 10
                            k = 1
                            while True:
                                row = Row(loop, variant, k, concurrency, n)
                                await measure(session, server, clients, row, judge.pid, warm_up)
                                rows.append(row)
                                # Another load process only where this one was the limit.
                                saturated = max(row.client_pct) >= BUSY
                                if concurrency == 1 or k >= args.max_clients or not saturated:
                                    break
                                k += 1
                    finally:
                        server.stop()
    compare_with_bare(rows)
    return rows


def compare_with_bare(rows: list[Row]) -> None:
    """Set guarded rows' ratios to the fastest bare row of the same server and concurrency."""
    bare: dict[tuple[str, int], Row] = {}
    for r in rows:
        key = (r.loop, r.concurrency)
        if r.variant == "bare" and (key not in bare or r.rps > bare[key].rps):
            bare[key] = r
    for row in rows:
        base = bare[row.loop, row.concurrency]
        if row.variant != "bare":
            row.rps_ratio = ratio(row.rps, base.rps)
            row.cpu_ratio = ratio(row.server_cpu_ms, base.server_cpu_ms)
            row.p50_vs_bare_ms = row.p50_ms - base.p50_ms


def print_table(rows: list[Row]) -> None:
    table = Table(
        [
            Column("server", 16),
            Column("variant", 13),
            Column("c", 2, "d"),
            Column("cl", 2, "d"),
            Column("req/s", 6, ".0f"),
            Column("p50 ms", 7, ".2f"),
            Column("p99 ms", 7, ".2f"),
            Column("cpu ms/req", 10, ".3f"),
            Column("srv %", 5, ">"),
            Column("client %", 9, ">"),
            Column("limit", 6, ">"),
            Column("stub ms", 7, ".3f"),
            Column("others", 6, ">"),
            Column("req/s /bare", 11, ".2f"),
            Column("cpu /bare", 9, ".2f"),
            Column("p50-bare", 8, "+.2f"),
            Column("added mean us", 13, ".0f"),
            Column("added p99 us", 12, ".0f"),
            Column("fail", 4, "d"),
        ]
    )
    for r in rows:
        table.add(
            r.loop,
            r.variant,
            r.concurrency,
            r.clients,
            r.rps,
            r.p50_ms,
            r.p99_ms,
            r.server_cpu_ms,
            f"{r.server_pct:.0f}%",
            _pcts(r.client_pct),
            r.limit,
            r.stub_cpu_ms,
            f"{r.others_pct:.0f}%",
            r.rps_ratio,
            r.cpu_ratio,
            r.p50_vs_bare_ms,
            r.added_mean_us,
            r.added_p99_us,
            r.failures,
        )
    table.print(
        "c: concurrency. cl: load client processes (the concurrency split between them)."
        " cpu ms/req: the server process's CPU per request; srv %: its CPU as % of one core."
        " client %: each load process's CPU as % of one core. limit: the processes at >= 90%"
        " of a core (machine: all cores >= 90% busy). stub ms: the LLM judge stub's CPU per"
        " request. others: CPU of processes outside the benchmark, % of all cores. /bare and"
        " -bare: guarded vs the fastest bare run of the same server and concurrency. added"
        " mean/p99: the middleware's own guardrail_added_latency_seconds (sum/count; p99"
        " interpolated in its buckets, whose lowest bound is 500 us)."
    )


# --- in-process profile (no HTTP) --------------------------------------------


async def drive(app: Any, n: int, concurrency: int) -> None:
    """Call ``app`` as an ASGI server would, ``n`` chat requests, ``concurrency`` at a time."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": CHAT_PATH,
        "raw_path": CHAT_PATH.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(REQUEST)),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8000),
    }
    remaining = n

    async def one() -> None:
        complete = asyncio.Event()
        chunks: list[bytes] = []
        read = False

        async def receive() -> dict[str, Any]:
            nonlocal read
            if not read:
                read = True
                return {"type": "http.request", "body": REQUEST, "more_body": False}
            await complete.wait()  # as uvicorn: a disconnect once the response is complete
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    complete.set()

        await app(dict(scope), receive, send)
        if b"".join(chunks) != COMPLETION:
            raise RuntimeError(f"unexpected answer: {b''.join(chunks)[:200]!r}")

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await one()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def profile(n: int, concurrency: int) -> None:
    """CPU per request in-process, bare vs guarded-local; then where the guarded CPU goes."""
    from prometheus_client import CollectorRegistry

    from guardrail import GuardrailMiddleware

    guarded = GuardrailMiddleware(chat_app, policy="default", registry=CollectorRegistry())

    async def timed(app: Any) -> float:
        await drive(app, max(200, n // 10), concurrency)  # warm-up
        cpu = time.process_time()
        await drive(app, n, concurrency)
        return (time.process_time() - cpu) / n * 1e6

    bare_us, guarded_us = asyncio.run(timed(chat_app)), asyncio.run(timed(guarded))
    print(
        f"in-process, no HTTP, concurrency {concurrency}, {n} requests: bare {bare_us:.0f} us"
        f" CPU/request, guarded-local {guarded_us:.0f} us (+{guarded_us - bare_us:.0f} us)"
    )
    profiler = cProfile.Profile()

    async def profiled() -> None:
        await drive(guarded, 200, concurrency)
        profiler.enable()
        await drive(guarded, n, concurrency)
        profiler.disable()

    asyncio.run(profiled())
    stats: dict[Any, Any] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = sum(tt for _cc, _nc, tt, _ct, _callers in stats.values())
    print(
        f"cProfile ({total / n * 1e6:.0f} us/request under the profiler, which inflates"
        " every call: read the shares):"
    )
    print("own time by area (a built-in's time goes to the areas of its callers):")
    for area, tt in sorted(_by_area(stats).items(), key=lambda a: a[1], reverse=True):
        print(f"  {tt / total * 100:5.1f}%  {area}")
    print("top own time (tottime; a coroutine's calls/req counts each of its resumptions):")
    top = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:20]
    for key, (_cc, nc, tt, _ct, _callers) in top:
        print(f"  {tt / total * 100:5.1f}%  {nc / n:6.1f} calls/req  {_where(key)}")
    print("guardrail's plain functions by cumulative time (coroutines left out: their")
    print("cumtime misses what runs between their resumptions):")
    ours = [
        (ct, nc, key)
        for key, (_cc, nc, _tt, ct, _callers) in stats.items()
        if f"{os.sep}guardrail{os.sep}" in key[0] and not _is_coroutine(key)
    ]
    for ct, nc, key in sorted(ours, key=lambda e: e[0], reverse=True)[:12]:
        print(f"  {ct / total * 100:5.1f}%  {nc / n:6.1f} calls/req  {_where(key)}")


def _by_area(stats: dict[Any, Any]) -> dict[str, float]:
    areas: dict[str, float] = {}
    for (filename, _line, _name), (_cc, _nc, tt, _ct, callers) in stats.items():
        if filename == "~" and callers:
            # A built-in (re, isinstance, json's scanner...) is charged to its callers.
            caller_tt = sum(c[2] for c in callers.values()) or 1.0
            for caller, c in callers.items():
                area = _area(caller[0])
                areas[area] = areas.get(area, 0.0) + tt * c[2] / caller_tt
        else:
            areas[_area(filename)] = areas.get(_area(filename), 0.0) + tt
    return areas


def _area(filename: str) -> str:
    parts = Path(filename).parts
    if "guardrail" in parts:
        sub = parts[parts.index("guardrail") + 1]
        return {
            "judges": "guardrail/judges (local judges: normalising, regexes)",
            "adapters": "guardrail/adapters (parsing the request)",
        }.get(sub, "guardrail (exchange, hold, screening, guard, middleware)")
    for package, area in (
        ("prometheus_client", "prometheus_client (metrics)"),
        ("asyncio", "asyncio (tasks, wait, timeouts, the event loop)"),
        ("starlette", "starlette (Headers)"),
    ):
        if package in parts:
            return area
    if filename == "~":
        return "built-ins called from nowhere profiled"
    if Path(filename).name == Path(__file__).name:
        return "this bench's driver and app"
    return f"other: {Path(filename).parent.name}/{Path(filename).name}"


def _is_coroutine(key: tuple[str, int, str]) -> bool:
    return linecache.getline(key[0], key[1]).lstrip().startswith("async def")


def _where(key: tuple[str, int, str]) -> str:
    filename, line, name = key
    if filename == "~":
        return name
    parts = Path(filename).parts
    short = "/".join(parts[-2:]) if "site-packages" not in parts else "/".join(parts[-3:])
    return f"{name} ({short}:{line})"


# --- main --------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10000, help="per run (default 10000)")
    parser.add_argument("--concurrency", type=int, default=32, help="in all (default 32)")
    parser.add_argument(
        "--warm-up", type=int, default=1000, help="per run (default 1000; a tenth at concurrency 1)"
    )
    parser.add_argument(
        "--serial", type=int, default=500, help="requests of the concurrency 1 run (default 500)"
    )
    parser.add_argument(
        "--max-clients",
        type=int,
        default=2,
        help="load processes at most (default 2); one more is added while the last run's"
        " were >= 90%% of a core",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="--requests 1000 --warm-up 200 --serial 100 --max-clients 1",
    )
    parser.add_argument(
        "--profile",
        type=int,
        metavar="N",
        help="instead: N requests in this process, no HTTP; CPU per request and cProfile",
    )
    args = parser.parse_args()
    if args.quick:
        args.requests, args.warm_up, args.serial, args.max_clients = 1000, 200, 100, 1
    if args.profile:
        profile(args.profile, args.concurrency)
        return 0
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    rows = asyncio.run(bench(args))
    print_table(rows)
    print(
        machine_line(
            load_before,
            started,
            f"uvloop+httptools {'measured' if fast_io() else 'not importable: not measured'}."
            " The server, the load clients and the judge stub share these cores.",
        )
    )
    return report_failures(
        {
            f"{r.loop} {r.variant} clients {r.clients}: {r.failures} failures": r.problems
            for r in rows
            if r.failures
        }
    )


if __name__ == "__main__":
    sys.exit(main())
