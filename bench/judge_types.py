"""What each judge type costs: CPU per call, and latency added to a guarded app, at concurrency 32.

    .venv/bin/python bench/judge_types.py [--calls 2000] [--requests 2000] [--quick]

One zero-latency stub (``tests.stub_llm.StubLLM`` in a child process) answers
as each type's vendor does: OpenAI's moderation shape, a chat endpoint
answering ``safe`` (Llama Guard) or ``No`` (ShieldGemma, Granite Guardian), or
our JSON verdict. Every text is benign, so every call is a full screen.

(a) the judge alone, in this process: ``screen`` called ``--calls`` times, 32
at a time. CPU ms/call is this process's CPU (every thread) per call: the
judge's own cost, its client included. ShieldGemma asks one request per harm
(4), Granite Guardian one per risk (2 by default): their rows say so.

(b) the example app guarded by a policy of that one judge (uvicorn in a
subprocess; a second stub as the app's model), ``--requests`` benign chat
requests, 32 at a time, against the bare app on the same stubs, measured just
before: p50 minus the bare p50, the app server's CPU per request minus the
bare server's, and the middleware's own added-latency histogram (mean).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from harness import (
    ADDED,
    ANSWER,
    CHAT_PATH,
    Column,
    CpuMeter,
    Server,
    Stub,
    Table,
    ask,
    client_session,
    closed_loop,
    histogram_delta,
    machine_line,
    percentile,
    policy_file,
    report_failures,
    scrape,
)

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
CONCURRENCY = 32
TEXT = "What is the capital of France?"


class WordJudge:
    """A user's python judge (sync, so it runs in the judge's thread pool)."""

    def __init__(self, words: list[str]) -> None:
        self.words = tuple(words)

    def screen(self, text: str) -> bool:
        lowered = text.lower()
        return any(w in lowered for w in self.words)


class AsyncWordJudge(WordJudge):
    """The same, ``async``: it runs on the event loop."""

    async def screen(self, text: str) -> bool:  # type: ignore[override]
        return WordJudge.screen(self, text)


@dataclass
class Kind:
    """One judge type: its policy entry (``{url}``: the judge stub), and the stub's answer."""

    name: str
    entry: str
    reply: str | None = None  # the chat answer; None: moderation (scores) or a local judge
    requests_per_screen: int = 1
    litellm: bool = False


KINDS = [
    Kind("injection (local regex)", "{{type: injection}}", requests_per_screen=0),
    Kind(
        "llm json (lean)",
        "{{type: llm, model: openai/stub, api_base: '{url}'}}",
        '{"flagged": false, "categories": [], "reason": "ok"}',
    ),
    Kind(
        "llm json (litellm)",
        "{{type: llm, model: openai/stub, client: litellm, api_base: '{url}',"
        " api_key_env: BENCH_KEY}}",
        '{"flagged": false, "categories": [], "reason": "ok"}',
        litellm=True,
    ),
    Kind(
        "llama_guard",
        "{{type: llm, model: openai/llama-guard, format: llama_guard, api_base: '{url}'}}",
        "safe",
    ),
    Kind(
        "shieldgemma (4 harms)",
        "{{type: llm, model: openai/shieldgemma, format: shieldgemma, api_base: '{url}'}}",
        "No",
        requests_per_screen=4,
    ),
    Kind(
        "granite_guardian (2 risks)",
        "{{type: llm, model: openai/granite, format: granite_guardian, api_base: '{url}'}}",
        "No",
        requests_per_screen=2,
    ),
    Kind("moderation (lean)", "{{type: moderation, api_base: '{url}'}}"),
    Kind(
        "moderation (litellm)",
        "{{type: moderation, client: litellm, model: openai/omni-moderation-latest,"
        " api_base: '{url}', api_key_env: BENCH_KEY}}",
        litellm=True,
    ),
    Kind(
        "python (sync, threads)",
        "{{type: python, judge: 'judge_types:WordJudge', settings: {{words: [darn]}}}}",
        requests_per_screen=0,
    ),
    Kind(
        "python (async)",
        "{{type: python, judge: 'judge_types:AsyncWordJudge', settings: {{words: [darn]}}}}",
        requests_per_screen=0,
    ),
]

POLICY = """\
name: bench
routes: [{{path: /v1/chat/completions}}]
judges:
  j: {entry}
input:
  screens: [{{judge: j, timeout_s: 10.0}}]
on_error: block
metrics: {{path: /metrics}}
"""


@dataclass
class Row:
    kind: Kind
    cpu_ms: float = float("nan")
    p50_ms: float = float("nan")
    added_p50_ms: float = float("nan")
    added_cpu_ms: float = float("nan")
    middleware_ms: float | None = None
    failures: int = 0
    examples: list[str] | None = None


async def judge_alone(kind: Kind, url: str, calls: int, row: Row) -> None:
    """(a): the judge built from its policy entry, screening in this process."""
    from guardrail import parse_policy
    from guardrail.decide.factory import build_judge

    policy = parse_policy(POLICY.format(entry=kind.entry.format(url=url)))
    judge = build_judge("j", policy.judges["j"])
    call: Callable[[], Awaitable[object]] = lambda: judge.screen(TEXT)  # noqa: E731
    try:
        await closed_loop(call, max(CONCURRENCY, calls // 5), CONCURRENCY, warm_up=True)
        meter = CpuMeter()
        load = await closed_loop(call, calls, CONCURRENCY)
        await asyncio.sleep(0.1)  # deferred client work (LiteLLM's logging) lands in this row
        cpu = meter.stop()
    finally:
        await judge.aclose()
    row.cpu_ms = cpu.own_s / calls * 1000
    row.p50_ms = percentile(load.latencies, 50) * 1000
    row.failures += load.failures
    row.examples = load.examples


@dataclass
class Run:
    """One closed loop against one app server."""

    p50_ms: float
    cpu_ms: float  # the server's CPU per request
    added_ms: float | None  # the middleware's own guardrail_added_latency_seconds, mean
    failures: int
    examples: list[str]


async def serve(server: Server, requests: int, guarded: bool) -> Run:
    """(b): ``requests`` benign chat requests, 32 at a time, after a warm-up."""
    url = server.url + CHAT_PATH
    async with client_session(CONCURRENCY) as session:
        await server.ready(session, timeout_s=120.0)
        call = lambda: ask(session, url)  # noqa: E731
        await closed_loop(call, max(2 * CONCURRENCY, requests // 5), CONCURRENCY, warm_up=True)
        before = await scrape(session, server.url) if guarded else {}
        meter = CpuMeter(app=[server.pid])
        load = await closed_loop(call, requests, CONCURRENCY)
        cpu = meter.stop(load.wall_s)
        added = None
        if guarded:
            await asyncio.sleep(0.05)  # the last record is written after the last byte
            total, count, _ = histogram_delta(before, await scrape(session, server.url), ADDED)
            added = total / count * 1000 if count else None
    return Run(
        percentile(load.latencies, 50) * 1000,
        cpu.per_request_ms("app", requests),
        added,
        load.failures,
        load.examples,
    )


async def bench(args: argparse.Namespace) -> list[Row]:
    app_stub = Stub("app", reply=ANSWER)
    judge_stub = Stub("judge")
    rows = []
    # The bare app is measured again right before each guarded one: on a shared,
    # loaded machine only runs side by side in time compare.
    bare = Server("bare", upstream_url=app_stub.base_url)
    try:
        for kind in KINDS:
            if kind.litellm and args.no_litellm:
                continue
            row = Row(kind)
            if kind.reply is not None:
                judge_stub.configure(reply=kind.reply)
            await judge_alone(kind, judge_stub.base_url, args.calls, row)
            text = POLICY.format(entry=kind.entry.format(url=judge_stub.base_url))
            with policy_file(text) as path:
                server = Server(kind.name, policy=path, upstream_url=app_stub.base_url)
                try:
                    base = await serve(bare, args.requests, guarded=False)
                    run = await serve(server, args.requests, guarded=True)
                finally:
                    server.stop()
            row.added_p50_ms, row.added_cpu_ms = run.p50_ms - base.p50_ms, run.cpu_ms - base.cpu_ms
            row.middleware_ms = run.added_ms
            row.failures += run.failures + base.failures
            row.examples = (row.examples or []) + run.examples + base.examples
            print(
                f"  {kind.name:<27} judge {row.cpu_ms:6.3f} CPU ms/call, p50 {row.p50_ms:6.2f} ms;"
                f" guarded p50 {run.p50_ms:6.2f} ms vs bare {base.p50_ms:6.2f} ms,"
                f" {row.added_cpu_ms:+5.2f} CPU ms/req",
                flush=True,
            )
            rows.append(row)
    finally:
        bare.stop()
        app_stub.stop()
        judge_stub.stop()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="judge calls per type, in (a)")
    parser.add_argument("--requests", type=int, default=2000, help="guarded requests, in (b)")
    parser.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM rows")
    parser.add_argument("--quick", action="store_true", help="300 calls and 300 requests")
    args = parser.parse_args()
    if args.quick:
        args.calls = args.requests = 300
    os.environ.setdefault("BENCH_KEY", "bench")
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    rows = asyncio.run(bench(args))
    table = Table(
        [
            Column("judge type", 27),
            Column("req/screen", 10, "d"),
            Column("CPU ms/call", 11, ".3f"),
            Column("p50 ms", 7, ".2f"),
            Column("+p50 ms", 8, ".2f"),
            Column("+CPU ms/req", 11, ".2f"),
            Column("added mean", 10, ".2f"),
            Column("fail", 4, "d"),
        ]
    )
    for r in rows:
        table.add(
            r.kind.name,
            r.kind.requests_per_screen,
            r.cpu_ms,
            r.p50_ms,
            r.added_p50_ms,
            r.added_cpu_ms,
            r.middleware_ms,
            r.failures,
        )
    table.print(
        f"concurrency {CONCURRENCY}, zero-latency stubs, benign text. CPU ms/call and p50: the"
        " judge alone in this process (client included; the stub is another process)."
        " +p50 / +CPU ms/req: the example app guarded by that judge alone, minus the bare app"
        " measured just before it (p50 of the request; the app server's CPU per request)."
        " added mean: the middleware's own guardrail_added_latency_seconds (ms; the wait"
        " for the verdict after the app's answer was complete)."
    )
    print(
        machine_line(
            load_before,
            started,
            "the stubs each in a child process, one app server at a time in another, the"
            " load client and the judges of (a) in this one.",
        )
    )
    return report_failures(
        {f"{r.kind.name}: {r.failures} failures": r.examples or [] for r in rows if r.failures}
    )


if __name__ == "__main__":
    sys.exit(main())
