"""A growing conversation: what each turn costs the judges, before and after pieces.

    .venv/bin/python bench/conversation.py [--turns 30] [--quick]

A chat client resends the whole conversation every turn. Each turn here is
one user message of 300 to 800 characters (seeded), plus the app's answer;
one turn pastes a 100 KB document. Everything runs on 127.0.0.1: the example
app guarded by a policy with an LLM judge (a StubLLM in its own process that
counts the characters of message content it receives and, like a model,
takes longer to read more: 0.1 s + 0.01 s per 1,000 characters) and the local
injection and pii judges; the app's own model is a zero-latency stub.

Scenarios, each a fresh server and conversation:

- ``bare``: the app alone, no guard: its own CPU per turn (parsing the
  request, calling its model), so the table can show the guard's share;
- ``before``: the whole request as one text every turn, no cache (as the
  guard screened before pieces: ``window_chars`` past any request, ``cache:
  none``);
- ``after``: pieces, windows of 4,000 characters with 512 of context, the
  in-process verdict cache (the defaults);
- ``redis``: two replicas of ``after`` sharing a Redis cache, turns sent to
  them in turn (round robin): the cache hit rate per turn. Needs ``redis-server``
  on the PATH; skipped (and said so) without it.

Per turn: the judge's characters received, the request's latency (the app
answers at once, so it is the screen's), the guard's CPU (the guarded
server's CPU, read to the nanosecond, minus the bare app's on the same turn:
local judges, normalisation, windowing, judge calls), and for ``redis`` the
share of cache lookups that hit. Every turn must be answered by the app
(allowed). After the table: the long turn's latency against one judge call's
(the stub's latency for the mean call of that turn), and what its calls would
take one after another.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import time
from contextlib import ExitStack
from typing import Any

from harness import (
    ANSWER,
    CHAT_PATH,
    Column,
    Server,
    Stub,
    Table,
    client_session,
    counter_delta,
    free_port,
    machine_line,
    policy_file,
    report_failures,
    scrape,
    thread_cpu_seconds,
)

POLICY = """\
name: bench
routes: [{{path: /v1/chat/completions}}]
max_body_bytes: 4194304
judges:
  guard: {{type: llm, model: openai/stub-judge, api_base: '{judge_url}'}}
  injection: {{type: injection}}
  pii: {{type: pii}}
input:
  screens:
    - {{judge: guard, timeout_s: 10}}
    - {{judge: injection, timeout_s: 10}}
    - {{judge: pii, timeout_s: 10}}
{input_extra}"""
BEFORE = "  window_chars: 100000000\n  cache: {backend: none}\n"
AFTER = ""
# The judge stub, like a model, takes longer to read more.
JUDGE_LATENCY_S = 0.1
JUDGE_S_PER_KCHAR = 0.01
REDIS = "  cache: {{backend: redis, url: '{url}', timeout_s: 0.5}}\n"

WORDS = (
    "the report says our team should plan the next release with care and test each part "
    "before it ships while the customers wait for news about prices delivery dates and "
    "support hours in every region we serve"
).split()


def turn_text(rng: random.Random, n: int) -> str:
    size = rng.randint(300, 800)
    words: list[str] = [f"Turn {n}:"]
    while sum(len(w) + 1 for w in words) < size:
        words.append(rng.choice(WORDS))
    return " ".join(words) + "?"


def document(rng: random.Random, size: int) -> str:
    words: list[str] = ["Here is the document:"]
    total = 0
    while total < size:
        word = rng.choice(WORDS)
        words.append(word)
        total += len(word) + 1
    return " ".join(words)


def conversation(turns: int, doc_turn: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    texts = [turn_text(rng, n) for n in range(turns)]
    texts[doc_turn] += "\n\n" + document(rng, 100_000)
    return texts


async def run(
    servers: list[Server], judge: Stub, texts: list[str], guarded: bool
) -> tuple[list[dict[str, Any]], list[str]]:
    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    messages: list[dict[str, str]] = []
    async with client_session(4, timeout_s=120) as session:
        for server in servers:
            await server.ready(session)
            # The app's first call sets up its client: not a turn's cost.
            warm_up = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
            async with session.post(
                server.url + CHAT_PATH, data=warm_up, headers={"content-type": "application/json"}
            ) as resp:
                await resp.read()
        for n, text in enumerate(texts):
            server = servers[n % len(servers)]
            messages.append({"role": "user", "content": text})
            body = json.dumps({"model": "m", "messages": messages}).encode()
            judged = judge.counters()
            before = [await scrape(session, s.url) for s in servers if guarded]
            cpu = thread_cpu_seconds(server.pid)
            started = time.perf_counter()
            async with session.post(
                server.url + CHAT_PATH, data=body, headers={"content-type": "application/json"}
            ) as resp:
                raw = await resp.read()
            latency = time.perf_counter() - started
            cpu = thread_cpu_seconds(server.pid) - cpu
            after = [await scrape(session, s.url) for s in servers if guarded]
            answer = json.loads(raw)["choices"][0] if resp.status == 200 else None
            if answer is None or answer.get("finish_reason") != "stop":
                failures.append(f"turn {n}: HTTP {resp.status} {raw[:120]!r}")
            lookups: dict[str, float] = {}
            for b, a in zip(before, after, strict=True):
                for result, value in counter_delta(
                    b, a, "guardrail_verdict_cache_lookups_total", "result"
                ).items():
                    lookups[result] = lookups.get(result, 0.0) + value
            looked = lookups.get("hit", 0.0) + lookups.get("miss", 0.0)
            rows.append(
                {
                    "new": len(text),
                    "judge_chars": judge.counters()["chars"] - judged["chars"],
                    "judge_calls": judge.counters()["count"] - judged["count"],
                    "latency_s": latency,
                    "cpu_ms": cpu * 1000,
                    "hit_rate": lookups.get("hit", 0.0) / looked if looked else None,
                }
            )
            messages.append({"role": "assistant", "content": ANSWER})
    return rows, failures


def scenario(name: str, texts: list[str], input_extra: str | None, replicas: int = 1) -> Any:
    """Run the conversation through fresh servers; ``input_extra`` None: the bare app."""
    with ExitStack() as stack:
        app_stub = Stub("app", reply=ANSWER)
        stack.callback(app_stub.stop)
        judge = Stub("judge", latency_s=JUDGE_LATENCY_S, latency_per_kchar_s=JUDGE_S_PER_KCHAR)
        stack.callback(judge.stop)
        path = stack.enter_context(
            policy_file(POLICY.format(judge_url=judge.base_url, input_extra=input_extra or ""))
        )
        servers = []
        for i in range(replicas):
            policy = "bare" if input_extra is None else path
            server = Server(f"{name}-{i}", policy=policy, upstream_url=app_stub.base_url)
            stack.callback(server.stop)
            servers.append(server)
        return asyncio.run(run(servers, judge, texts, guarded=input_extra is not None))


def start_redis() -> tuple[subprocess.Popen[bytes], str] | None:
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)  # setup only: the servers' first lookups miss until it listens
    return proc, f"redis://127.0.0.1:{port}/0"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="10 turns")
    args = parser.parse_args()
    turns = 10 if args.quick else args.turns
    texts = conversation(turns, doc_turn=turns // 2)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    results = {
        "bare": scenario("bare", texts, None),
        "before": scenario("before", texts, BEFORE),
        "after": scenario("after", texts, AFTER),
    }
    redis = start_redis()
    if redis is not None:
        proc, url = redis
        try:
            results["redis"] = scenario("redis", texts, REDIS.format(url=url), replicas=2)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    table = Table(
        [
            Column("turn", 4, "d"),
            Column("new chars", 9, "d"),
            Column("judge chars before", 18, ",d"),
            Column("after", 7, ",d"),
            Column("latency before s", 16, ".3f"),
            Column("after s", 7, ".3f"),
            Column("guard cpu before ms", 19, ".1f"),
            Column("after ms", 8, ".1f"),
            Column("redis hits", 10, ".0%"),
        ]
    )
    bare, before, after = results["bare"][0], results["before"][0], results["after"][0]
    hits = results["redis"][0] if "redis" in results else [{"hit_rate": None}] * turns
    for n in range(turns):
        b, a, own = before[n], after[n], bare[n]["cpu_ms"]
        table.add(
            n,
            a["new"],
            b["judge_chars"],
            a["judge_chars"],
            b["latency_s"],
            a["latency_s"],
            b["cpu_ms"] - own,
            a["cpu_ms"] - own,
            hits[n]["hit_rate"],
        )
    total = [sum(r["judge_chars"] for r in rows) for rows in (before, after)]
    long = after[turns // 2]
    calls = max(1, long["judge_calls"])
    one_call = JUDGE_LATENCY_S + JUDGE_S_PER_KCHAR * long["judge_chars"] / calls / 1000
    note = (
        f"judge characters over the conversation: before {total[0]:,}, after {total[1]:,}\n"
        f"long turn ({long['new']:,} new characters): {calls} judge calls, latency "
        f"{long['latency_s']:.3f} s = {long['latency_s'] / one_call:.2f}x one call's"
        f" {one_call:.3f} s; one after another they would take {calls * one_call:.2f} s\n"
        + ("" if redis else "redis: skipped (no redis-server on the PATH)\n")
        + machine_line(load, started, "stubs, servers and this client")
    )
    table.print(note)
    failed = {name: fails for name, (_, fails) in results.items() if fails}
    return report_failures(failed)


if __name__ == "__main__":
    sys.exit(main())
