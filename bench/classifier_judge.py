"""What a local classifier judge costs, batched across requests and not (batch size 1).

    .venv/bin/python bench/classifier_judge.py [--requests N] [--quick] [--layers L --hidden H]
    .venv/bin/python bench/classifier_judge.py --model DIR --labels '{JAILBREAK: prompt_injection}'

The model is synthetic (``tests/tiny_classifier.py``): a word-level tokenizer,
and ``layers`` dense layers of width ``hidden`` on every token, so a run costs
CPU in proportion to the tokens it scores, like a transformer, only less.
Real models cost far more per token (Prompt Guard 86M: tens of milliseconds
per short text on one core); what batching saves is the per-run overhead
(a thread hop, a session.run call, Python around it), which this shows.
``--model`` measures a real model directory instead (none is downloaded).

(1) Over real HTTP: the example app on a zero-latency app stub, served by
uvicorn in its own process, bare and guarded by the classifier judge alone
with ``batch_size`` 1 and 32; concurrency 32, the benign question. CPU per
request is the app server's (all its threads: the event loop, the judge's
worker, ONNX Runtime's); ``added`` is the middleware's own
``guardrail_added_latency_seconds``; ``judge`` the mean of
``guardrail_judge_duration_seconds`` (queued and scored).

(2) In this process: 32 callers screening directly on the judge, counting
model runs and the texts they scored (the batcher's own counters) and CPU
per screen.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from harness import (
    ADDED,
    ANSWER,
    CHAT_PATH,
    ROOT,
    Column,
    CpuMeter,
    Server,
    Stub,
    Table,
    ask,
    client_session,
    closed_loop,
    histogram_delta,
    histogram_quantile,
    machine_line,
    percentile,
    policy_file,
    report_failures,
    scrape,
)

sys.path.insert(0, str(ROOT / "tests"))

from tiny_classifier import build

JUDGE = "guardrail_judge_duration_seconds"
CONCURRENCY = 32
POLICY = """\
name: bench
routes: [{{path: /v1/chat/completions, methods: [POST]}}]
judges:
  classifier:
    type: classifier
    model: '{model}'
    labels: {labels}
    batch_size: {batch_size}
input:
  screens: [{{judge: classifier, timeout_s: 10}}]
on_flag: block
on_error: block
metrics: {{path: /metrics}}
"""


@dataclass
class Row:
    variant: str
    requests: int
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    rps: float = math.nan
    cpu_ms: float = math.nan
    added_mean_ms: float | None = None
    added_p99_ms: float | None = None
    judge_mean_ms: float | None = None
    failures: int = 0
    examples: list[str] = field(default_factory=list)


async def over_http(server: Server, row: Row, guarded: bool) -> Row:
    url = server.url + CHAT_PATH
    async with client_session(CONCURRENCY) as session:
        warm_up = max(2 * CONCURRENCY, row.requests // 5)
        await closed_loop(lambda: ask(session, url), warm_up, CONCURRENCY, warm_up=True)
        before = await scrape(session, server.url) if guarded else {}
        meter = CpuMeter(app=[server.pid])
        load = await closed_loop(lambda: ask(session, url), row.requests, CONCURRENCY)
        cpu = meter.stop(load.wall_s)
        if guarded:
            await asyncio.sleep(0.05)  # the last record is written after the last byte
            after = await scrape(session, server.url)
            total, count, buckets = histogram_delta(before, after, ADDED)
            if count:
                row.added_mean_ms = total / count * 1000
                row.added_p99_ms = histogram_quantile(0.99, buckets) * 1000
            total, count, _ = histogram_delta(before, after, JUDGE)
            if count:
                row.judge_mean_ms = total / count * 1000
    row.failures, row.examples = load.failures, load.examples
    row.p50_ms = percentile(load.latencies, 50) * 1000
    row.p99_ms = percentile(load.latencies, 99) * 1000
    row.rps = load.rps
    row.cpu_ms = cpu.per_request_ms("app", row.requests)
    print(
        f"  {row.variant:<16} p50 {row.p50_ms:6.2f} ms  p99 {row.p99_ms:6.2f} ms"
        f"  {row.rps:6.0f} req/s  cpu {row.cpu_ms:5.2f} ms/req  failures {row.failures}",
        flush=True,
    )
    return row


async def in_process(
    model: Path, labels: str, batch_size: int, n: int
) -> tuple[int, int, float, float]:
    """(model runs, texts scored, CPU ms per screen, p50 ms) of n screens, 32 at a time."""
    from guardrail import parse_policy
    from guardrail.decide.factory import build_judge
    from guardrail.judges.classifier import ClassifierJudge

    policy = parse_policy(POLICY.format(model=model, labels=labels, batch_size=batch_size))
    judge = build_judge("classifier", policy.judges["classifier"])
    assert isinstance(judge, ClassifierJudge)
    try:
        await closed_loop(lambda: judge.screen("warm up"), CONCURRENCY, CONCURRENCY, warm_up=True)
        runs, items = judge.batcher.runs, judge.batcher.items_run
        cpu = time.process_time()
        load = await closed_loop(lambda: judge.screen(QUESTION_TEXT), n, CONCURRENCY)
        cpu_ms = (time.process_time() - cpu) / n * 1000
        if load.failures:
            raise RuntimeError(f"screens failed: {load.examples}")
        return (
            judge.batcher.runs - runs,
            judge.batcher.items_run - items,
            cpu_ms,
            percentile(load.latencies, 50) * 1000,
        )
    finally:
        await judge.aclose()


QUESTION_TEXT = "What is the capital of France? Please answer in one short sentence."


Direct = tuple[str, int, int, float, float, float]


async def bench(args: argparse.Namespace, model: Path) -> tuple[list[Row], list[Direct]]:
    rows: list[Row] = []
    with ExitStack() as stack:
        app_stub = Stub("app", reply=ANSWER)
        stack.callback(app_stub.stop)
        servers = {"bare": Server("bare", upstream_url=app_stub.base_url)}
        for size in (1, 32):
            path = stack.enter_context(
                policy_file(POLICY.format(model=model, labels=args.labels, batch_size=size))
            )
            servers[f"batch_size {size}"] = Server(
                f"batch{size}", policy=path, upstream_url=app_stub.base_url
            )
        for server in servers.values():
            stack.callback(server.stop)
        async with client_session(4) as session:
            for server in servers.values():
                await server.ready(session, timeout_s=120)
        print(f"(1) over HTTP, concurrency {CONCURRENCY}, zero-latency app stub")
        for name, server in servers.items():
            rows.append(await over_http(server, Row(name, args.requests), name != "bare"))
    print(f"(2) in this process, {CONCURRENCY} callers on the judge")
    direct: list[Direct] = []
    for size in (1, 32):
        runs, items, cpu_ms, p50 = await in_process(model, args.labels, size, args.requests)
        print(f"  batch_size {size:<3} {runs} runs for {items} texts, cpu {cpu_ms:.3f} ms/screen")
        direct.append((f"batch_size {size}", args.requests, runs, items / runs, cpu_ms, p50))
    return rows, direct


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per run")
    parser.add_argument("--quick", action="store_true", help="--requests 300")
    parser.add_argument("--layers", type=int, default=4, help="dense layers per token")
    parser.add_argument("--hidden", type=int, default=256, help="their width")
    parser.add_argument(
        "--model", type=Path, help="a real model directory to measure instead (type: classifier)"
    )
    parser.add_argument(
        "--labels",
        default="{INJECTION: prompt_injection, JAILBREAK: prompt_injection}",
        help="the judge's labels map, as YAML (for --model: that model's labels)",
    )
    args = parser.parse_args()
    if args.quick:
        args.requests = 300
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-classifier-") as tmp:
        model = args.model or build(Path(tmp) / "model", hidden=args.hidden, layers=args.layers)
        rows, direct = asyncio.run(bench(args, model))
    described = (
        f"{args.model}"
        if args.model
        else f"{args.layers} dense layers of {args.hidden} per token (synthetic)"
    )
    bare = rows[0]
    table = Table(
        [
            Column("variant", 16),
            Column("n", 5, "d"),
            Column("p50 ms", 7, ".2f"),
            Column("p99 ms", 7, ".2f"),
            Column("req/s", 6, ".0f"),
            Column("cpu ms/req", 10, ".3f"),
            Column("cpu-bare", 8, "+.3f"),
            Column("added mean", 10, ".2f"),
            Column("added p99", 9, ".2f"),
            Column("judge mean", 10, ".2f"),
            Column("fail", 4, "d"),
        ]
    )
    for r in rows:
        table.add(
            r.variant,
            r.requests,
            r.p50_ms,
            r.p99_ms,
            r.rps,
            r.cpu_ms,
            None if r is bare else r.cpu_ms - bare.cpu_ms,
            r.added_mean_ms,
            r.added_p99_ms,
            r.judge_mean_ms,
            r.failures,
        )
    table.print(
        f"(1) concurrency {CONCURRENCY}. cpu ms/req: the app server process (utime+stime, all"
        " threads); cpu-bare: that minus the bare app's, what the classifier judge costs per"
        " call. added mean/p99: guardrail_added_latency_seconds; judge mean: the judge's own"
        f" duration, queued and scored. Model: {described}."
    )
    second = Table(
        [
            Column("variant", 16),
            Column("n", 5, "d"),
            Column("runs", 5, "d"),
            Column("texts/run", 9, ".1f"),
            Column("cpu ms/screen", 13, ".3f"),
            Column("p50 ms", 7, ".2f"),
        ]
    )
    for values in direct:
        second.add(*values)
    second.print(
        f"(2) {CONCURRENCY} callers screening on the judge in this process; runs and texts"
        " from the batcher's counters; cpu: this process's CPU per screen."
    )
    print(
        machine_line(
            load_before,
            started,
            "the app stub runs in its own process, each app server in another and the load"
            " client in this one, all on the same cores.",
        )
    )
    return report_failures(
        {f"{r.variant}: {r.failures} failures": r.examples for r in rows if r.failures}
    )


if __name__ == "__main__":
    sys.exit(main())
