"""Measure what the screening call's client costs, in CPU per call.

    .venv/bin/python bench/client_cost.py [--calls 2000] [--concurrency 32] [--litellm-calls 1000]
    .venv/bin/python bench/client_cost.py --quick

A zero-latency StubLLM answers on 127.0.0.1. It runs in a child process, so
``time.process_time()`` in this process counts the client's work only (every
thread of it, including LiteLLM's logging workers), not the server's. Each
variant is warmed up once, then timed; the table gives CPU ms per call and the
median wall time per call at the given concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from harness import Column, CpuMeter, Stub, Table, closed_loop, machine_line, percentile

# Before anything imports litellm: no price-map download (there is no network).
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

Call = Callable[[], Awaitable[Any]]
CATEGORIES = ("violence", "self_harm", "hate")
TEXT = "What is the capital of France?"


async def measure(call: Call, calls: int, concurrency: int) -> tuple[float, float, int]:
    """Run ``calls`` calls, ``concurrency`` at a time; (CPU ms/call, wall p50 ms, failures)."""
    meter = CpuMeter()  # this process only: the stub is another one
    load = await closed_loop(call, calls, concurrency)
    await asyncio.sleep(0.2)  # let deferred client work (logging callbacks) land in this row
    cpu = meter.stop()
    return cpu.own_s / calls * 1000, percentile(load.latencies, 50) * 1000, load.failures


async def variants(base_url: str) -> list[tuple[str, Call | None, Callable[[], Awaitable[None]]]]:
    """(name, call or None if unavailable, close) for every client under test."""
    import aiohttp
    import httpx
    import litellm
    import openai

    from guardrail.judges.llm import LLMJudge
    from guardrail.judges.prompt import VERDICT_SCHEMA, build_messages

    url = base_url + "/chat/completions"
    request: dict[str, Any] = {
        "model": "stub",
        "messages": build_messages(TEXT, CATEGORIES),
        "temperature": 0.0,
        "max_tokens": 200,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "verdict", "strict": True, "schema": VERDICT_SCHEMA},
        },
    }
    body = json.dumps(request).encode()
    headers = {"content-type": "application/json", "authorization": "Bearer x"}
    sdk_args = {k: v for k, v in request.items() if k != "model"}

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))

    async def raw_aiohttp() -> str:
        async with session.post(url, data=body, headers=headers) as resp:
            data = json.loads(await resp.read())
        return str(data["choices"][0]["message"]["content"])

    hx = httpx.AsyncClient(limits=httpx.Limits(max_connections=100))

    async def raw_httpx() -> str:
        resp = await hx.post(url, content=body, headers=headers)
        return str(resp.json()["choices"][0]["message"]["content"])

    sdk = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)

    async def openai_httpx() -> object:
        return await sdk.chat.completions.create(model="stub", **sdk_args)

    sdk_aio: openai.AsyncOpenAI | None = None
    try:
        sdk_aio = openai.AsyncOpenAI(
            base_url=base_url,
            api_key="x",
            max_retries=0,
            http_client=openai.DefaultAioHttpClient(),
        )
    except (AttributeError, RuntimeError, ImportError):
        pass  # this openai has no aiohttp backend, or httpx_aiohttp is not installed

    async def openai_aiohttp() -> object:
        assert sdk_aio is not None
        return await sdk_aio.chat.completions.create(model="stub", **sdk_args)

    async def litellm_call() -> object:
        return await litellm.acompletion(
            model="openai/stub", api_base=base_url, api_key="x", max_retries=0, **sdk_args
        )

    def judge(client: str) -> LLMJudge:
        return LLMJudge(
            name="bench",
            model="openai/stub",
            categories=CATEGORIES,
            api_base=base_url,
            api_key="x",
            client=client,  # type: ignore[arg-type]
        )

    lean, via_litellm = judge("openai"), judge("litellm")

    async def nothing() -> None:
        return None

    return [
        ("raw aiohttp", raw_aiohttp, session.close),
        ("raw httpx AsyncClient", raw_httpx, hx.aclose),
        ("openai SDK (httpx)", openai_httpx, sdk.close),
        (
            "openai SDK (aiohttp)",
            openai_aiohttp if sdk_aio else None,
            sdk_aio.close if sdk_aio else nothing,
        ),
        ("litellm.acompletion", litellm_call, nothing),
        ("LLMJudge lean (aiohttp)", lambda: lean.screen(TEXT), lean.aclose),
        ("LLMJudge litellm", lambda: via_litellm.screen(TEXT), via_litellm.aclose),
    ]


async def run(base_url: str, calls: int, litellm_calls: int, concurrency: int) -> int:
    table = Table(
        [
            Column("variant", 26),
            Column("calls", 6, "d"),
            Column("CPU ms/call", 12, ".3f"),
            Column("wall p50 ms", 12, ".2f"),
            Column("fail", 4, "d"),
        ]
    )
    failed = 0
    for name, call, close in await variants(base_url):
        if call is None:
            table.add(name, None, None, None, None)
            continue
        n = litellm_calls if "litellm" in name else calls
        await closed_loop(call, max(concurrency, n // 5), concurrency, warm_up=True)
        cpu_ms, p50_ms, failures = await measure(call, n, concurrency)
        print(f"  {name:<26} {n:>6} calls  {cpu_ms:7.3f} CPU ms/call  {p50_ms:6.2f} ms p50")
        table.add(name, n, cpu_ms, p50_ms, failures)
        failed += failures
        await close()
    table.print(
        f"concurrency {concurrency}. CPU ms/call: this process's CPU (every thread) per call;"
        " the stub runs in a child process. '-': that client is not installed."
    )
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--litellm-calls", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--quick", action="store_true", help="200 calls per client (100 through litellm)"
    )
    args = parser.parse_args()
    if args.quick:
        args.calls, args.litellm_calls = 200, 100
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    stub = Stub("stub")  # zero latency, in a child process
    try:
        failed = asyncio.run(run(stub.base_url, args.calls, args.litellm_calls, args.concurrency))
    finally:
        stub.stop()
    print(machine_line(load_before, started, "the stub in a child process, the clients here."))
    if failed:
        print(f"FAILED: {failed} calls failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
