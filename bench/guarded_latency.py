"""Measure what guarding costs: the example chat app bare vs guarded, over real HTTP.

    .venv/bin/python bench/guarded_latency.py [--requests N] [--quick]

Everything runs on 127.0.0.1, each part in its own process so none shares a
GIL with the app under test:

- two StubLLM processes: the app's model and the screen's LLM judge;
- the example app (``examples.chat_app.create_app``) served by uvicorn in a
  subprocess, asking the app stub through its ``upstream`` AsyncOpenAI client;
  bare (no middleware) or guarded (``harness.example_app`` reads ``BENCH_*``);
- this process: an aiohttp client posting benign chat requests.

Scenarios: (a) app 200 ms, screen 150 ms (one LLM judge plus the local
injection and pii judges), concurrency 1 and 32; (b) the same with zero-latency
stubs at concurrency 32; (a) and (b) run bare, guarded with the app started in
parallel with the screens (``start_app: parallel``, the default: ``max(app,
screen)`` expected) and with it started after the verdict (``after_verdict``:
``screen + app`` expected); (c) zero-latency app guarded by the default,
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
import math
import os
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field

from harness import (
    ADDED,
    ANSWER,
    CHAT_PATH,
    GUARDED_POLICY,
    Column,
    CpuMeter,
    Server,
    Stub,
    Table,
    ask,
    client_session,
    closed_loop,
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

APP_LATENCY_S = 0.200
SCREEN_LATENCY_S = 0.150


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
    vs_sum_ratio: float | None = None


async def run_scenario(server: Server, row: Row, guarded: bool, stub_pids: list[int]) -> Row:
    url = server.url + CHAT_PATH
    async with client_session(row.concurrency) as session:
        # Warm-up, not measured: opens the connections and the judge's session.
        warm_up = max(5, 2 * row.concurrency, row.requests // 5)
        await closed_loop(lambda: ask(session, url), warm_up, row.concurrency, warm_up=True)
        before = await scrape(session, server.url) if guarded else {}
        meter = CpuMeter(app=[server.pid], stubs=stub_pids)
        load = await closed_loop(lambda: ask(session, url), row.requests, row.concurrency)
        cpu = meter.stop(load.wall_s)
        if guarded:
            await asyncio.sleep(0.05)  # the last record is written after the last byte
            after = await scrape(session, server.url)
            total, count, buckets = histogram_delta(before, after, ADDED)
            if count:
                row.added_mean_ms = total / count * 1000
                row.added_p99_ms = histogram_quantile(0.99, buckets) * 1000
            row.decisions = decisions_delta(before, after)
    row.failures, row.failure_examples = load.failures, load.examples
    row.p50_ms = percentile(load.latencies, 50) * 1000
    row.p99_ms = percentile(load.latencies, 99) * 1000
    row.rps = load.rps
    row.cpu_ms = cpu.per_request_ms("app", row.requests)
    row.stubs_cpu_ms = cpu.per_request_ms("stubs", row.requests)
    row.client_cpu_ms = cpu.own_s / row.requests * 1000
    row.others_pct = cpu.others_pct()
    print(
        f"  {row.scenario:<22} {row.variant:<14} c={row.concurrency:<3} n={row.requests:<5}"
        f" p50 {row.p50_ms:7.1f} ms  p99 {row.p99_ms:7.1f} ms  {row.rps:7.0f} req/s"
        f"  cpu app {row.cpu_ms:5.2f} stubs {row.stubs_cpu_ms:5.2f}"
        f" client {row.client_cpu_ms:5.2f} ms/req  others {row.others_pct:3.0f}%"
        f"  failures {row.failures}",
        flush=True,
    )
    return row


def print_table(rows: list[Row]) -> None:
    table = Table(
        [
            Column("scenario", 22),
            Column("variant", 14),
            Column("c", 3, "d"),
            Column("n", 5, "d"),
            Column("p50 ms", 8, ".1f"),
            Column("p99 ms", 8, ".1f"),
            Column("req/s", 7, ".0f"),
            Column("cpu app", 7, ".2f"),
            Column("stubs", 5, ".2f"),
            Column("client", 6, ".2f"),
            Column("others", 6, ">"),
            Column("fail", 4, "d"),
            Column("p50/max", 7, ".3f"),
            Column("p50/sum", 7, ".3f"),
            Column("p50-bare", 8, "+.1f"),
            Column("added mean", 10, ".2f"),
            Column("added p99", 9, ".2f"),
        ]
    )
    for r in rows:
        table.add(
            r.scenario,
            r.variant,
            r.concurrency,
            r.requests,
            r.p50_ms,
            r.p99_ms,
            r.rps,
            r.cpu_ms,
            r.stubs_cpu_ms,
            r.client_cpu_ms,
            f"{r.others_pct:.0f}%",
            r.failures,
            r.vs_max_ratio,
            r.vs_sum_ratio,
            r.vs_bare_ms,
            r.added_mean_ms,
            r.added_p99_ms,
        )
    table.print(
        "p50/max: guarded p50 / max(app 200 ms, screen 150 ms); p50/sum: guarded p50 /"
        " (app 200 ms + screen 150 ms), what after_verdict should cost. p50-bare: guarded"
        " p50 minus the bare p50 of the same stubs and concurrency (ms). added mean/p99 (ms): the"
        " middleware's own guardrail_added_latency_seconds (sum/count; p99 interpolated in"
        " its buckets). cpu app / stubs / client: CPU ms per request (utime+stime) of the app"
        " server process, of both stub processes together, and of this load client. others:"
        " CPU used by processes outside this benchmark during the run, % of all cores."
    )


async def bench(args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    with ExitStack() as stack:
        app_stub = Stub("app", reply=ANSWER)
        stack.callback(app_stub.stop)
        judge_stub = Stub("judge")  # its default reply: not flagged
        stack.callback(judge_stub.stop)
        guarded_policy = stack.enter_context(
            policy_file(GUARDED_POLICY.format(judge_url=judge_stub.base_url))
        )
        # The same policy, the app started only once the verdict allows the request.
        serial_policy = stack.enter_context(
            policy_file(
                GUARDED_POLICY.format(judge_url=judge_stub.base_url).replace(
                    "input:\n", "input:\n  start_app: after_verdict\n"
                )
            )
        )
        servers = {
            name: Server(name, policy=policy, upstream_url=app_stub.base_url)
            for name, policy in (
                ("bare", "bare"),
                ("guarded", guarded_policy),
                ("after-verdict", serial_policy),
                ("local-only", "default"),
            )
        }
        for server in servers.values():
            stack.callback(server.stop)
        async with client_session(4) as session:
            for server in servers.values():
                await server.ready(session)

        stub_pids = [app_stub.pid, judge_stub.pid]
        n_zero = args.requests
        n_lat = max(64, n_zero // 5)
        n_serial = max(10, n_zero // 75)

        async def pair(scenario: str, concurrency: int, n: int, with_ratio: bool) -> None:
            b = await run_scenario(
                servers["bare"], Row(scenario, "bare", concurrency, n), False, stub_pids
            )
            g = await run_scenario(
                servers["guarded"], Row(scenario, "guarded+llm", concurrency, n), True, stub_pids
            )
            s = await run_scenario(
                servers["after-verdict"],
                Row(scenario, "after_verdict", concurrency, n),
                True,
                stub_pids,
            )
            for guarded in (g, s):
                guarded.vs_bare_ms = guarded.p50_ms - b.p50_ms
                if with_ratio:
                    both = (APP_LATENCY_S, SCREEN_LATENCY_S)
                    guarded.vs_max_ratio = ratio(guarded.p50_ms, max(both) * 1000)
                    guarded.vs_sum_ratio = ratio(guarded.p50_ms, sum(both) * 1000)
            rows.extend([b, g, s])

        app_stub.set_latency(APP_LATENCY_S)
        judge_stub.set_latency(SCREEN_LATENCY_S)
        print("(a) app 200 ms, screen 150 ms")
        await pair("a: app200/screen150", 1, n_serial, True)
        await pair("a: app200/screen150", 32, n_lat, True)

        app_stub.set_latency(0.0)
        judge_stub.set_latency(0.0)
        print("(b) zero-latency stubs")
        await pair("b: app0/screen0", 32, n_zero, False)
        bare_zero = rows[-3]

        print("(c) zero-latency app, default local-only policy")
        c = await run_scenario(
            servers["local-only"],
            Row("c: app0/local-only", "guarded-local", 32, n_zero),
            True,
            stub_pids,
        )
        c.vs_bare_ms = c.p50_ms - bare_zero.p50_ms
        rows.append(c)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--requests",
        type=int,
        default=3000,
        help="requests per zero-latency run (default 3000); the 200/150 ms runs use"
        " N/5 at concurrency 32 and N/75 at concurrency 1",
    )
    parser.add_argument("--quick", action="store_true", help="--requests 300 (a few seconds)")
    args = parser.parse_args()
    if args.quick:
        args.requests = 300
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
    for r in rows:
        odd = {d: n for d, n in r.decisions.items() if d != "allowed"}
        if odd:
            print(f"note {r.scenario} {r.variant}: decisions other than allowed: {odd}")
    return report_failures(
        {
            f"{r.scenario} {r.variant} c={r.concurrency}: {r.failures} failures": (
                r.failure_examples
            )
            for r in rows
            if r.failures
        }
    )


if __name__ == "__main__":
    sys.exit(main())
