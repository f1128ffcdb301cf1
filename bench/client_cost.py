"""Measure what the screening call's client costs, in CPU per call.

    python bench/client_cost.py [--calls 2000] [--concurrency 32] [--litellm-calls 1000]

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
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# Before anything imports litellm: no price-map download (there is no network).
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

Call = Callable[[], Awaitable[Any]]
CATEGORIES = ("violence", "self_harm", "hate")
TEXT = "What is the capital of France?"


def serve_stub(conn: Connection) -> None:
    """Child process: run the stub until the parent says stop."""
    from tests.stub_llm import StubLLM

    with StubLLM() as stub:
        conn.send(stub.base_url)
        conn.recv()


async def measure(call: Call, calls: int, concurrency: int) -> tuple[float, float]:
    """Run ``calls`` calls, ``concurrency`` at a time; return (CPU ms/call, wall p50 ms)."""
    walls: list[float] = []
    remaining = calls

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            await call()
            walls.append(time.perf_counter() - started)

    cpu = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await asyncio.sleep(0.2)  # let deferred client work (logging callbacks) land in this row
    cpu = time.process_time() - cpu
    return cpu / calls * 1000, statistics.median(walls) * 1000


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


async def run(base_url: str, calls: int, litellm_calls: int, concurrency: int) -> None:
    rows = await variants(base_url)
    print(f"{'variant':<26} {'calls':>6} {'CPU ms/call':>12} {'wall p50 ms':>12}")
    for name, call, close in rows:
        if call is None:
            print(f"{name:<26} {'-':>6} {'unavailable':>12} {'-':>12}")
            continue
        n = litellm_calls if "litellm" in name else calls
        await measure(call, max(concurrency, n // 5), concurrency)  # warm-up
        cpu_ms, p50_ms = await measure(call, n, concurrency)
        print(f"{name:<26} {n:>6} {cpu_ms:>12.3f} {p50_ms:>12.2f}", flush=True)
        await close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--litellm-calls", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()

    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    server = context.Process(target=serve_stub, args=(child,), daemon=True)
    server.start()
    try:
        base_url = parent.recv()
        started = time.perf_counter()
        asyncio.run(run(base_url, args.calls, args.litellm_calls, args.concurrency))
        print(
            f"(concurrency {args.concurrency}, stub in a child process, "
            f"total {time.perf_counter() - started:.0f} s)"
        )
    finally:
        parent.send("stop")
        server.join(timeout=10)


if __name__ == "__main__":
    main()
