"""What redaction adds to a request: on the allow path (nothing to redact) and when it redacts.

    .venv/bin/python bench/redaction.py [--requests N] [--quick]

Two parts:

1. In this process, the redaction step alone (``decide.redaction.redact_request``),
   as the exchange calls it before the app starts: for a benign request (the
   allow path: the redacting judge screens the text once, finds nothing, and
   the body is not touched) and for requests with 1, 10 and 1,000 values
   (each string read for spans, the body rewritten). Median microseconds.
2. Over real HTTP: the example app (its model a zero-latency StubLLM, all in
   their own processes) guarded by a local pii screen that blocks, then by the
   same screen with ``on_flag: redact, restore: true``, benign requests at
   concurrency 1 and 32. Median latency and the app server's CPU per request:
   the difference between the two rows is what redaction costs on the allow
   path, where the target is under 1 ms.

Every HTTP response must be a 200 with the app stub's answer; a failure is
counted and printed, and makes the script exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from harness import (
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
    machine_line,
    percentile,
    policy_file,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from guardrail import Guard, parse_policy  # noqa: E402
from guardrail.decide.redaction import redact_request  # noqa: E402

POLICY = """\
name: bench
routes: [{{path: /v1/chat/completions, methods: [POST]}}]
judges:
  pii: {{type: pii, kinds: [email, phone, card, secret]}}
input:
  screens:
    - {{judge: pii, timeout_s: 0.5{redact}}}
metrics: {{path: /metrics}}
"""
REDACT = ", on_flag: redact, restore: true"
BENIGN = (
    "Could you summarise the quarterly figures for the northern warehouse and say "
    "whether it should open before the winter? Keep it under a hundred words."
)


def body(text: str) -> bytes:
    messages = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": text},
    ]
    return json.dumps({"model": "m", "messages": messages}).encode()


def step_us(guard: Guard, payload: bytes, repeats: int) -> tuple[float, int]:
    """Median microseconds of one redaction step, and the values it replaced."""
    text = json.loads(payload)["messages"][1]["content"]

    async def run() -> tuple[list[float], int]:
        times, values = [], 0
        for i in range(repeats):
            # A different text each time: the normalisation cache never answers.
            varied = payload.replace(b"Could", f"Could {i}".encode(), 1)
            started = time.perf_counter()
            redaction = (await redact_request(guard, varied, f"{i} {text}")).redaction
            times.append(time.perf_counter() - started)
            values = sum(redaction.counts.values()) if redaction else 0
        return times, values

    times, values = asyncio.run(run())
    return statistics.median(times) * 1e6, values


def in_process(repeats: int) -> Table:
    guard = Guard.build(parse_policy(POLICY.format(redact=REDACT)))
    table = Table([Column("request", 34), Column("values", 7, "d"), Column("median us", 10, ".1f")])
    cases = {
        "benign (the allow path)": BENIGN,
        "1 e-mail": BENIGN + " Reply to ana@example.org.",
        "10 values": BENIGN
        + " ".join(f"user{i}@mail.org, +44 20 7946 09{i:02d}" for i in range(5)),
        "1,000 e-mails": " ".join(f"user{i}@mail{i % 7}.org" for i in range(1000)),
    }
    for name, text in cases.items():
        us, values = step_us(
            guard, body(text), repeats if "1,000" not in name else max(3, repeats // 50)
        )
        table.add(name, values, us)
    return table


async def over_http(requests: int, stack: ExitStack) -> tuple[Table, int]:
    app_stub = Stub("app", reply=ANSWER)
    stack.callback(app_stub.stop)
    table = Table(
        [
            Column("policy", 28),
            Column("conc", 5, "d"),
            Column("p50 ms", 8, ".2f"),
            Column("p99 ms", 8, ".2f"),
            Column("app CPU ms/req", 15, ".3f"),
        ]
    )
    failures = 0
    for name, redact in (("pii screen blocks", ""), ("pii screen redacts+restores", REDACT)):
        path = stack.enter_context(policy_file(POLICY.format(redact=redact)))
        server = Server(name, policy=path, upstream_url=app_stub.base_url)
        stack.callback(server.stop)
        for concurrency in (1, 32):
            async with client_session(concurrency) as session:
                await server.ready(session)
                url = server.url + CHAT_PATH

                async def one(url: str = url, session: object = session) -> None:
                    await ask(session, url, body(BENIGN))

                await closed_loop(one, 50, concurrency, warm_up=True)
                meter = CpuMeter(app=[server.pid])
                load = await closed_loop(one, requests, concurrency)
                use = meter.stop(load.wall_s)
            failures += load.failures
            for example in load.examples:
                print(f"  failure ({name}, concurrency {concurrency}): {example}")
            ms = [s * 1000 for s in load.latencies]
            cpu = use.per_request_ms("app", requests)
            table.add(name, concurrency, percentile(ms, 50), percentile(ms, 99), cpu)
        server.stop()
    return table, failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per HTTP run")
    parser.add_argument("--repeats", type=int, default=2000, help="redaction steps timed per case")
    parser.add_argument("--quick", action="store_true", help="--requests 300 --repeats 300")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.repeats = 300, 300
    load_before, started = os.getloadavg()[0], time.perf_counter()
    print("The redaction step alone, in this process (before the app starts):")
    print(in_process(args.repeats).render())
    print()
    print(f"Over HTTP, benign requests ({args.requests} per row), the app's model a 0 ms stub:")
    with ExitStack() as stack:
        table, failures = asyncio.run(over_http(args.requests, stack))
    print(table.render("the difference between the rows is redaction's cost on the allow path"))
    print(machine_line(load_before, started, "shared with other sessions' work."))
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
