"""The allow path of each API format: guarded p50 / max(app, screen), per route.

    .venv/bin/python bench/format_latency.py [--requests N] [--quick]

One app serves the three OpenAI routes (chat completions, Responses, legacy
completions), each answering after ``APP_LATENCY_S`` in its own shape; it runs
in a uvicorn subprocess, bare or guarded by one policy whose routes speak the
three formats (an LLM judge on a StubLLM with ``SCREEN_LATENCY_S``, plus the
local injection and pii judges). Each format gets benign requests at
concurrency 1 and 32; every answer must be a 200 with the app's text, or the
run fails. ``p50/max`` near 1.0 means the guard costs ``max(app, screen)``,
the parallel promise, whatever the format's adapter reads.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from harness import (
    ANSWER,
    GUARDED_POLICY,
    QUESTION,
    Column,
    Refused,
    Server,
    Stub,
    Table,
    client_session,
    closed_loop,
    machine_line,
    percentile,
    policy_file,
    ratio,
    report_failures,
)

APP_LATENCY_S = 0.200
SCREEN_LATENCY_S = 0.150
ROUTES = """routes:
  - path: /v1/chat/completions
  - format: openai_responses
  - format: openai_completions
"""


@dataclass(frozen=True)
class Format:
    """One API: its route, a benign request, and the text of its answer."""

    name: str
    path: str
    body: dict[str, Any]
    text_of: Callable[[dict[str, Any]], str]


FORMATS = [
    Format(
        "openai_chat",
        "/v1/chat/completions",
        {"model": "m", "messages": [{"role": "user", "content": QUESTION}]},
        lambda a: str(a["choices"][0]["message"]["content"]),
    ),
    Format(
        "openai_responses",
        "/v1/responses",
        {
            "model": "m",
            "instructions": "Be brief.",
            "input": [{"role": "user", "content": QUESTION}],
        },
        lambda a: str(a["output"][0]["content"][0]["text"]),
    ),
    Format(
        "openai_completions",
        "/v1/completions",
        {"model": "m", "prompt": QUESTION},
        lambda a: str(a["choices"][0]["text"]),
    ),
]


def format_app() -> Any:
    """uvicorn factory: the three routes, each answering after APP_LATENCY_S (``BENCH_POLICY``)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from guardrail import GuardrailMiddleware

    answers = {
        "/v1/chat/completions": {
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": ANSWER},
                    "finish_reason": "stop",
                }
            ],
        },
        "/v1/responses": {
            "object": "response",
            "status": "completed",
            "output": [
                {
                    "type": "message",
                    "id": "msg_1",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": ANSWER, "annotations": []}],
                }
            ],
        },
        "/v1/completions": {
            "object": "text_completion",
            "choices": [{"index": 0, "text": ANSWER, "finish_reason": "stop"}],
        },
    }

    async def answer(request: Request) -> Response:
        await request.body()
        await asyncio.sleep(float(os.environ.get("BENCH_APP_LATENCY_S", "0")))
        return JSONResponse({"id": "x", "model": "m", **answers[request.url.path]})

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True})

    app: Any = Starlette(
        routes=[
            *(Route(path, answer, methods=["POST"]) for path in answers),
            Route("/health", health),
        ]
    )
    policy = os.environ.get("BENCH_POLICY", "bare")
    return app if policy == "bare" else GuardrailMiddleware(app, policy=policy)


async def ask(session: Any, url: str, fmt: Format) -> None:
    body = json.dumps(fmt.body).encode()
    async with session.post(url, data=body, headers={"content-type": "application/json"}) as r:
        raw, status = await r.read(), r.status
    if status != 200 or fmt.text_of(json.loads(raw)) != ANSWER:
        raise Refused(f"HTTP {status}: {raw[:200]!r}")


@dataclass
class Row:
    fmt: str
    variant: str
    concurrency: int
    requests: int
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    rps: float = math.nan
    failures: int = 0
    examples: tuple[str, ...] = ()
    vs_max: float | None = None
    vs_bare: float | None = None


async def run(server: Server, fmt: Format, row: Row) -> Row:
    url = server.url + fmt.path
    async with client_session(row.concurrency) as session:
        warm = max(5, 2 * row.concurrency)
        await closed_loop(lambda: ask(session, url, fmt), warm, row.concurrency, warm_up=True)
        load = await closed_loop(lambda: ask(session, url, fmt), row.requests, row.concurrency)
    row.p50_ms = percentile(load.latencies, 50) * 1000
    row.p99_ms = percentile(load.latencies, 99) * 1000
    row.rps, row.failures, row.examples = load.rps, load.failures, tuple(load.examples)
    print(
        f"  {row.fmt:<19} {row.variant:<8} c={row.concurrency:<3} n={row.requests:<5}"
        f" p50 {row.p50_ms:7.1f} ms  p99 {row.p99_ms:7.1f} ms  {row.rps:6.0f} req/s"
        f"  failures {row.failures}",
        flush=True,
    )
    return row


async def bench(requests: int) -> list[Row]:
    rows: list[Row] = []
    with ExitStack() as stack:
        judge = Stub("judge")  # its default reply: not flagged
        stack.callback(judge.stop)
        judge.set_latency(SCREEN_LATENCY_S)
        text = GUARDED_POLICY.format(judge_url=judge.base_url)
        text = text.replace("routes: [{path: /v1/chat/completions, methods: [POST]}]\n", ROUTES)
        policy = stack.enter_context(policy_file(text))
        os.environ["BENCH_APP_LATENCY_S"] = str(APP_LATENCY_S)
        servers = {
            name: Server(name, policy=p, factory="format_latency:format_app")
            for name, p in (("bare", "bare"), ("guarded", policy))
        }
        for server in servers.values():
            stack.callback(server.stop)
        async with client_session(2) as session:
            for server in servers.values():
                await server.ready(session)
        for fmt in FORMATS:
            for concurrency, n in ((1, max(10, requests // 10)), (32, requests)):
                bare = await run(servers["bare"], fmt, Row(fmt.name, "bare", concurrency, n))
                row = await run(servers["guarded"], fmt, Row(fmt.name, "guarded", concurrency, n))
                row.vs_max = ratio(row.p50_ms, max(APP_LATENCY_S, SCREEN_LATENCY_S) * 1000)
                row.vs_bare = ratio(row.p50_ms, bare.p50_ms)
                rows += [bare, row]
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--requests", type=int, default=640, help="per run at concurrency 32 (N/10 at 1)"
    )
    parser.add_argument("--quick", action="store_true", help="--requests 96")
    args = parser.parse_args()
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    rows = asyncio.run(bench(96 if args.quick else args.requests))
    table = Table(
        [
            Column("format", 19),
            Column("variant", 8),
            Column("c", 3, "d"),
            Column("n", 5, "d"),
            Column("p50 ms", 8, ".1f"),
            Column("p99 ms", 8, ".1f"),
            Column("req/s", 6, ".0f"),
            Column("fail", 4, "d"),
            Column("p50/max", 7, ".3f"),
            Column("p50/bare", 8, ".3f"),
        ]
    )
    for r in rows:
        table.add(
            r.fmt,
            r.variant,
            r.concurrency,
            r.requests,
            r.p50_ms,
            r.p99_ms,
            r.rps,
            r.failures,
            r.vs_max,
            r.vs_bare,
        )
    table.print(
        f"p50/max: guarded p50 / max(app {APP_LATENCY_S * 1000:.0f} ms,"
        f" screen {SCREEN_LATENCY_S * 1000:.0f} ms); 1.0 is the parallel promise kept."
        " p50/bare: guarded p50 / the bare app's p50 on the same route and concurrency"
        " (what the machine's load adds to both cancels out)."
    )
    print(machine_line(load_before, started, "the judge stub, the app server and this client"))
    return report_failures(
        {f"{r.fmt} {r.variant} c={r.concurrency}": r.examples for r in rows if r.failures}
    )


if __name__ == "__main__":
    sys.exit(main())
