"""Measure ``guardrail eval``'s runner: items through an LLM judge at bounded concurrency.

    .venv/bin/python bench/eval_throughput.py [--items 5000] [--latency-ms 150] [--concurrency 100]
    .venv/bin/python bench/eval_throughput.py --quick   # 500 items

Everything runs on 127.0.0.1. The LLM judge is a StubLLM in a child process
(``harness.Stub``) answering "not flagged" after ``--latency-ms``; the policy is
``harness.GUARDED_POLICY`` (that judge plus the local injection and pii judges),
built with ``Guard.build`` and run by the same ``Runner`` and ``InProcess``
target ``guardrail eval`` uses, on a JSONL file streamed from disk.

The floor is ``items x latency / concurrency``: every slot busy with a judge
call all the time. The report prints the measured time over that floor (1.00
is perfect), the stub's own count of the calls it answered, the CPU the
runner (this process: guard, judges' client, file reading) and the stub spent
per item, and what the machine was doing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

from harness import (
    GUARDED_POLICY,
    Column,
    CpuMeter,
    Stub,
    Table,
    machine_line,
    report_failures,
)
from prometheus_client import CollectorRegistry

from guardrail.decide.guard import Guard
from guardrail.eval.data import read_items
from guardrail.eval.run import Runner
from guardrail.eval.summary import summarize
from guardrail.eval.targets import InProcess
from guardrail.policy.models import parse_policy


def write_items(path: Path, n: int) -> None:
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            text = f"Question {i}: what is the capital of France?"
            row = {"id": i, "label": "safe", "text": text}
            f.write(json.dumps(row) + "\n")


async def measure(judge_url: str, data: Path, concurrency: int) -> tuple[float, dict[str, object]]:
    policy = parse_policy(GUARDED_POLICY.format(judge_url=judge_url))
    guard = Guard.build(policy, registry=CollectorRegistry())
    target = InProcess(guard, "bench")
    try:
        started = time.perf_counter()
        run = await Runner(concurrency=concurrency).run(target, read_items(data))
        wall = time.perf_counter() - started
    finally:
        await target.aclose()
    return wall, summarize(run)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--latency-ms", type=float, default=150.0)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="500 items")
    args = parser.parse_args()
    items = 500 if args.quick else args.items
    latency_s = args.latency_ms / 1000
    load_before, started = os.getloadavg()[0], time.perf_counter()
    stub = Stub("judge", latency_s=latency_s)
    failed: dict[str, list[str]] = {}
    try:
        with tempfile.TemporaryDirectory() as folder:
            data = Path(folder) / "items.jsonl"
            write_items(data, items)
            meter = CpuMeter(stub=[stub.pid])
            wall, summary = asyncio.run(measure(stub.base_url, data, args.concurrency))
            cpu = meter.stop()
        counters = stub.counters()
    finally:
        stub.stop()
    floor = items * latency_s / args.concurrency
    table = Table(
        [
            Column("items", 6, "d"),
            Column("judge ms", 8, ".0f"),
            Column("concurrency", 11, "d"),
            Column("floor s", 8, ".2f"),
            Column("measured s", 10, ".2f"),
            Column("ratio", 6, ".2f"),
            Column("items/s", 8, ".0f"),
            Column("judge calls", 11, "d"),
            Column("errors", 6, "d"),
            Column("eval CPU ms/item", 16, ".2f"),
            Column("stub CPU ms/item", 16, ".2f"),
            Column("machine busy %", 14, ".0f"),
        ]
    )
    errors = len(summary["errors"])  # type: ignore[arg-type]
    table.add(
        items,
        args.latency_ms,
        args.concurrency,
        floor,
        wall,
        wall / floor,
        items / wall,
        counters["completed"],
        errors,
        cpu.own_s / items * 1000,
        cpu.per_request_ms("stub", items),
        cpu.machine_pct(),
    )
    table.print("ratio = measured / (items x judge latency / concurrency); 1.00 is the floor")
    if summary["items"] != items:
        failed["every item evaluated"] = [f"{summary['items']} of {items}"]
    if errors:
        failed["no judge errors"] = [str(e) for e in summary["errors"][:3]]  # type: ignore[index]
    if counters["completed"] < items:
        failed["one judge call per item"] = [f"stub completed {counters['completed']}"]
    print(machine_line(load_before, started, "the runner and the stub shared it with other work."))
    return report_failures(failed)


if __name__ == "__main__":
    raise SystemExit(main())
