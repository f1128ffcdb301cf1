"""Measure time to first byte of a streamed answer: bare, guarded, and with output screens.

    .venv/bin/python bench/streaming_ttfb.py [--requests N] [--quick]

Everything runs on 127.0.0.1, each part in its own process (``harness``:
``Stub`` children, ``Server`` subprocesses):

- the app's model: a StubLLM that streams (``"stream": true``) an 800-char
  reply in 8 chunks of 100 chars, the first after 200 ms, then one every 50 ms
  (the last at ~550 ms);
- the input screen's LLM judge: a StubLLM answering after 150 ms (with the
  local injection and pii judges: ``harness.GUARDED_POLICY``);
- the output screen's LLM judge: a third StubLLM answering after 100 ms;
- the example app (``examples/chat_app.py``) under uvicorn, one server per
  variant: bare; guarded, input screens only; guarded with output screens in
  ``hold_back`` mode, local pii judge (``hold-back local``) or pii plus the LLM
  judge (``hold-back llm``); the same two in ``optimistic`` mode. Output windows
  are 200 chars with a 64-char overlap, so each answer is screened in 4 windows.
- this process: an aiohttp client posting streamed chat requests, at
  concurrency 1 and 8.

Per request: time to the response headers, to the first non-empty body read
(TTFB), to the first SSE event carrying content text, to ``data: [DONE]``, and
to the end of the body (total). Every response must be a 200 SSE stream whose
content deltas join to the full reply, whose last chunk has finish_reason
``stop`` and which ends with ``data: [DONE]``; the guarded servers'
``/metrics`` must count every request ``allowed``. Any failure exits 1.

The model column is what the stub timings predict for TTFB and total:
max(app first byte 200 ms, input screen 150 ms), plus, in hold-back mode, the
time for the first window to fill (200 chars = 2 chunks: +50 ms) and its
screen (LLM judge: +100 ms); a stream ends once its last window (closed by the
last chunk at 550 ms) passed its screen, in both output modes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from harness import (
    CHAT_PATH,
    GUARDED_POLICY,
    Column,
    CpuMeter,
    Refused,
    Server,
    Stub,
    Table,
    chat_request,
    client_session,
    closed_loop,
    decisions_delta,
    histogram_delta,
    machine_line,
    percentile,
    policy_file,
    ratio,
    report_failures,
    scrape,
)

APP_FIRST_S = 0.200  # the upstream's first chunk
CHUNK_DELAY_S = 0.050  # between its chunks
CHUNKS = 8
INPUT_SCREEN_S = 0.150
OUTPUT_JUDGE_S = 0.100
WINDOW_CHARS = 200
OVERLAP_CHARS = 64  # the least the pii judge allows (issue 9: a card is 37 chars)
REPLY = (
    "Paris is the capital of France and its largest city. It lies on the Seine, in the north"
    " of the country, at the heart of the Ile-de-France region. The city has been the seat of"
    " French government for most of the last thousand years, and today it hosts the President"
    " at the Elysee Palace, the National Assembly at the Palais Bourbon and the Senate at the"
    " Luxembourg Palace. Paris is also the economic and cultural centre of France: its museums,"
    " such as the Louvre and the Orsay, draw visitors from all over the world, and its"
    " universities, theatres and publishers have shaped French life for centuries. Its people"
    " are called Parisians. The city is divided into twenty districts, the arrondissements,"
    " which spiral outwards from the centre like a snail shell. Marseille and Lyon are the next"
    " largest ones."
)
assert len(REPLY) == 800, len(REPLY)
CHUNK_CHARS = -(-len(REPLY) // CHUNKS)  # how StubLLM cuts it
STREAM_REQUEST = chat_request(stream=True)
FIRST_BYTE = "guardrail_time_to_first_byte_seconds"
WINDOWS = "guardrail_output_windows_total"


@dataclass(frozen=True)
class Variant:
    name: str
    mode: str | None  # output mode; None: no output section
    llm: bool = False  # the output screens include the LLM judge
    guarded: bool = True

    def model_ms(self) -> tuple[float, float]:
        """(TTFB, total) that the stub timings predict, in ms."""
        first = max(APP_FIRST_S, INPUT_SCREEN_S if self.guarded else 0.0)
        last_chunk = APP_FIRST_S + (CHUNKS - 1) * CHUNK_DELAY_S
        screen = OUTPUT_JUDGE_S if self.llm else 0.0
        if self.mode is None:
            return first * 1000, last_chunk * 1000
        fill = (-(-WINDOW_CHARS // CHUNK_CHARS) - 1) * CHUNK_DELAY_S  # chunks after the first
        ttfb = first + fill + screen if self.mode == "hold_back" else first
        return ttfb * 1000, (last_chunk + screen) * 1000


VARIANTS = (
    Variant("bare", None, guarded=False),
    Variant("guarded (input only)", None),
    Variant("hold-back local", "hold_back"),
    Variant("hold-back llm", "hold_back", llm=True),
    Variant("optimistic local", "optimistic"),
    Variant("optimistic llm", "optimistic", llm=True),
)


def policy_text(judge_url: str, out_judge_url: str, variant: Variant) -> str:
    """``GUARDED_POLICY`` (the input screens), plus the variant's output section."""
    import yaml

    policy = yaml.safe_load(GUARDED_POLICY.format(judge_url=judge_url))
    if variant.mode is not None:
        policy["judges"]["out_guard"] = {
            "type": "llm",
            "model": "openai/stub-out-judge",
            "api_base": out_judge_url,
        }
        screens: list[dict[str, Any]] = [{"judge": "pii", "timeout_s": 0.5}]
        if variant.llm:
            screens.append({"judge": "out_guard", "timeout_s": 2.0})
        policy["output"] = {
            "screens": screens,
            "mode": variant.mode,
            "window_chars": WINDOW_CHARS,
            "overlap_chars": OVERLAP_CHARS,
        }
    return str(yaml.safe_dump(policy, sort_keys=False))


# --- one streamed request ----------------------------------------------------------


@dataclass
class Timing:
    headers: float
    first_byte: float
    first_content: float
    done: float
    total: float


def check_events(raw: bytes) -> str | None:
    """Why the body is not a complete, clean stream of the reply; None if it is."""
    events = [e for e in raw.replace(b"\r\n", b"\n").split(b"\n\n") if e.strip()]
    if not events or events[-1].strip() != b"data: [DONE]":
        return f"does not end with data: [DONE]: {raw[-120:]!r}"
    text, finish = [], None
    for event in events[:-1]:
        data = event_data(event)
        if data.strip() == b"[DONE]":
            return "data: [DONE] before the end"
        choice = json.loads(data)["choices"][0]
        text.append(choice.get("delta", {}).get("content") or "")
        finish = choice.get("finish_reason") or finish
    if finish != "stop":
        return f"finish_reason {finish!r}"
    if "".join(text) != REPLY:
        return f"reply differs: {''.join(text)[:120]!r}..."
    return None


def event_data(event: bytes) -> bytes:
    """The data of one SSE event (its ``data:`` lines joined)."""
    lines = event.replace(b"\r\n", b"\n").split(b"\n")
    return b"\n".join(line[5:].lstrip() for line in lines if line.startswith(b"data:"))


def has_content(data: bytes) -> bool:
    """True if this event's data is a chunk with content text."""
    if not data or data.strip() == b"[DONE]":
        return False
    try:
        choices = json.loads(data).get("choices") or [{}]
    except ValueError:
        return False
    return bool((choices[0].get("delta") or {}).get("content"))


async def stream_one(session: Any, url: str) -> Timing:
    """POST one streamed request; raise ``Refused`` if the stream is not whole."""
    started = time.perf_counter()
    first_byte = first_content = done = math.nan
    body = pending = b""
    async with session.post(
        url, data=STREAM_REQUEST, headers={"content-type": "application/json"}
    ) as resp:
        headers = time.perf_counter() - started
        async for chunk in resp.content.iter_any():
            if not chunk:
                continue
            now = time.perf_counter() - started
            if math.isnan(first_byte):
                first_byte = now
            body += chunk
            pending += chunk
            *events, pending = pending.replace(b"\r\n", b"\n").split(b"\n\n")
            for event in events:
                data = event_data(event)
                if math.isnan(first_content) and has_content(data):
                    first_content = now
                if math.isnan(done) and data.strip() == b"[DONE]":
                    done = now
        total = time.perf_counter() - started
        status, ctype = resp.status, resp.headers.get("content-type", "")
    if status != 200 or not ctype.startswith("text/event-stream"):
        raise Refused(f"HTTP {status} {ctype}: {body[:200]!r}")
    problem = check_events(body)
    if problem is not None:
        raise Refused(problem)
    return Timing(headers, first_byte, first_content, done, total)


# --- one variant at one concurrency --------------------------------------------------


@dataclass
class Row:
    variant: Variant
    concurrency: int
    requests: int
    timings: list[Timing] = field(default_factory=list)
    failures: int = 0
    failure_examples: list[str] = field(default_factory=list)
    cpu_ms: float = math.nan
    mw_ttfb_ms: float | None = None
    windows_per_request: float | None = None
    decisions: dict[str, float] = field(default_factory=dict)

    def q(self, attr: str, p: int) -> float:
        return percentile([getattr(t, attr) * 1000 for t in self.timings], p)


async def run_variant(server: Server, row: Row) -> Row:
    url = server.url + CHAT_PATH
    guarded = row.variant.guarded
    async with client_session(row.concurrency) as session:

        async def one() -> Timing:
            return await stream_one(session, url)

        # Warm-up, not measured: connections, the judges' sessions.
        await closed_loop(one, max(3, row.concurrency), row.concurrency, warm_up=True)
        # A request is counted a few loop turns after its last byte: let the last one land.
        await asyncio.sleep(0.05)
        before = await scrape(session, server.url) if guarded else {}
        meter = CpuMeter(app=[server.pid])
        load = await closed_loop(one, row.requests, row.concurrency)
        row.cpu_ms = meter.stop().per_request_ms("app", row.requests)
        row.timings = load.results
        row.failures, row.failure_examples = load.failures, load.examples
        if guarded:
            await asyncio.sleep(0.05)  # the last record is written after the last byte
            after = await scrape(session, server.url)
            total, count, _ = histogram_delta(before, after, FIRST_BYTE)
            if count:
                row.mw_ttfb_ms = total / count * 1000
            windows = sum(
                value - before.get(key, 0.0) for key, value in after.items() if key[0] == WINDOWS
            )
            row.windows_per_request = windows / row.requests
            row.decisions = decisions_delta(before, after)
            if row.decisions != {"allowed": float(row.requests)}:
                row.failures += 1
                row.failure_examples.append(f"decisions {row.decisions}, not all allowed")
    print(
        f"  {row.variant.name:<21} c={row.concurrency:<2} n={row.requests:<3}"
        f" ttfb p50 {row.q('first_byte', 50):6.1f} p99 {row.q('first_byte', 99):6.1f} ms"
        f"  total p50 {row.q('total', 50):6.1f} ms  failures {row.failures}",
        flush=True,
    )
    return row


# --- report ----------------------------------------------------------------------------


def print_table(rows: list[Row]) -> None:
    base_ms = max(APP_FIRST_S, INPUT_SCREEN_S) * 1000
    table = Table(
        [
            Column("variant", 21),
            Column("c", 2, "d"),
            Column("n", 3, "d"),
            Column("hdrs p50", 8, ".1f"),
            Column("TTFB p50", 8, ".1f"),
            Column("p99", 6, ".1f"),
            Column("content p50", 11, ".1f"),
            Column("p99", 6, ".1f"),
            Column("DONE p50", 8, ".1f"),
            Column("total p50", 9, ".1f"),
            Column("p99", 6, ".1f"),
            Column("model ttfb/total", 16, ">"),
            Column("ttfb/max", 8, ".3f"),
            Column("hb ttfb", 7, "+.1f"),
            Column("hb total", 8, "+.1f"),
            Column("mw ttfb", 7, ".1f"),
            Column("win/req", 7, ".2f"),
            Column("cpu ms", 6, ".2f"),
            Column("fail", 4, "d"),
        ]
    )
    guarded_by_c = {r.concurrency: r for r in rows if r.variant.guarded and r.variant.mode is None}
    for r in rows:
        model_ttfb, model_total = r.variant.model_ms()
        hb_ttfb = hb_total = None
        ref = guarded_by_c.get(r.concurrency)
        if r.variant.mode is not None and ref is not None:
            hb_ttfb = r.q("first_byte", 50) - ref.q("first_byte", 50)
            hb_total = r.q("total", 50) - ref.q("total", 50)
        table.add(
            r.variant.name,
            r.concurrency,
            r.requests,
            r.q("headers", 50),
            r.q("first_byte", 50),
            r.q("first_byte", 99),
            r.q("first_content", 50),
            r.q("first_content", 99),
            r.q("done", 50),
            r.q("total", 50),
            r.q("total", 99),
            f"{model_ttfb:.0f}/{model_total:.0f}",
            ratio(r.q("first_byte", 50), base_ms) if r.variant.guarded else None,
            hb_ttfb,
            hb_total,
            r.mw_ttfb_ms,
            r.windows_per_request,
            r.cpu_ms,
            r.failures,
        )
    table.print(
        "All times in ms from the client's POST. hdrs: response headers received. TTFB: first"
        " non-empty body read. content: first SSE event with content text complete. DONE:"
        " data: [DONE] received. total: end of the body. model: TTFB/total the stub timings"
        f" predict (app first chunk {APP_FIRST_S * 1000:.0f} ms, {CHUNKS} chunks of"
        f" {CHUNK_CHARS} chars {CHUNK_DELAY_S * 1000:.0f} ms apart, input screen"
        f" {INPUT_SCREEN_S * 1000:.0f} ms, output LLM judge {OUTPUT_JUDGE_S * 1000:.0f} ms,"
        f" window {WINDOW_CHARS} chars, overlap {OVERLAP_CHARS}). ttfb/max: TTFB p50 /"
        f" max(app first byte, input screen) = /{base_ms:.0f} ms. hb ttfb / hb total: TTFB p50"
        " and total p50 minus those of guarded (input only) at the same concurrency (the"
        " cost of the output stage). mw ttfb: the middleware's own"
        f" {FIRST_BYTE} mean (from request arrival). win/req: screened output windows per"
        " request. cpu ms: app server CPU per request. p99 of a small sample is its maximum."
    )


async def bench(args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    with ExitStack() as stack:
        app_stub = Stub(
            "app",
            reply=REPLY,
            latency_s=APP_FIRST_S,
            chunk_delay_s=CHUNK_DELAY_S,
            stream_chunks=CHUNKS,
        )
        stack.callback(app_stub.stop)
        judge_stub = Stub("input judge", latency_s=INPUT_SCREEN_S)  # default reply: not flagged
        stack.callback(judge_stub.stop)
        out_stub = Stub("output judge", latency_s=OUTPUT_JUDGE_S)
        stack.callback(out_stub.stop)
        servers: dict[Variant, Server] = {}
        for variant in VARIANTS:
            policy = "bare"
            if variant.guarded:
                text = policy_text(judge_stub.base_url, out_stub.base_url, variant)
                policy = stack.enter_context(policy_file(text, prefix="bench-stream-"))
            servers[variant] = Server(variant.name, policy=policy, upstream_url=app_stub.base_url)
            stack.callback(servers[variant].stop)
        async with client_session(4) as session:
            for server in servers.values():
                await server.ready(session)

        n1, n8 = args.requests, 2 * args.requests
        for concurrency, n in ((1, n1), (8, n8)):
            print(f"concurrency {concurrency}, {n} requests per variant")
            for variant in VARIANTS:
                rows.append(await run_variant(servers[variant], Row(variant, concurrency, n)))
        for stub in (app_stub, judge_stub, out_stub):
            counters = stub.counters()
            if counters["cancelled"]:
                print(f"note: the {stub.name} stub saw {counters['cancelled']} requests cancelled")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--requests",
        type=int,
        default=15,
        help="streamed requests per variant at concurrency 1 (default 15); twice as many"
        " at concurrency 8",
    )
    parser.add_argument("--quick", action="store_true", help="--requests 4")
    args = parser.parse_args()
    if args.quick:
        args.requests = 4
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    rows = asyncio.run(bench(args))
    print_table(rows)
    print(
        machine_line(
            load_before,
            started,
            "three stub processes, six app servers (one per variant, only one busy at a time)"
            " and this client share the cores.",
        )
    )
    return report_failures(
        {
            f"{r.variant.name} c={r.concurrency}: {r.failures} failures": r.failure_examples
            for r in rows
            if r.failures
        }
    )


if __name__ == "__main__":
    sys.exit(main())
