"""Measure time to first byte of a streamed answer: bare, guarded, and with output screens.

    .venv/bin/python bench/streaming_ttfb.py [--requests N]

Everything runs on 127.0.0.1, each part in its own process (the helpers of
``guarded_latency``: ``Stub`` children, ``AppServer`` subprocesses):

- the app's model: a StubLLM that streams (``"stream": true``) an 800-char
  reply in 8 chunks of 100 chars, the first after 200 ms, then one every 50 ms
  (the last at ~550 ms);
- the input screen's LLM judge: a StubLLM answering after 150 ms (with the
  local injection and pii judges: ``guarded_latency.GUARDED_POLICY``);
- the output screen's LLM judge: a third StubLLM answering after 100 ms;
- the example app (``examples/chat_app.py``) under uvicorn, one server per
  variant: bare; guarded, input screens only; guarded with output screens in
  ``hold_back`` mode, local pii judge (``hold-back local``) or pii plus the LLM
  judge (``hold-back llm``); the same two in ``optimistic`` mode. Output windows
  are 200 chars with a 20-char overlap, so each answer is screened in 4 windows.
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
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from guarded_latency import (  # noqa: E402
    GUARDED_POLICY,
    QUESTION,
    AppServer,
    Stub,
    _fmt,
    decisions_delta,
    histogram_delta,
    machine_line,
    scrape,
)

APP_FIRST_S = 0.200  # the upstream's first chunk
CHUNK_DELAY_S = 0.050  # between its chunks
CHUNKS = 8
INPUT_SCREEN_S = 0.150
OUTPUT_JUDGE_S = 0.100
WINDOW_CHARS = 200
OVERLAP_CHARS = 20
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
STREAM_REQUEST = json.dumps(
    {"model": "m", "stream": True, "messages": [{"role": "user", "content": QUESTION}]}
).encode()
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
    """POST one streamed request; raise ``ValueError`` if the stream is not whole."""
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
        raise ValueError(f"HTTP {status} {ctype}: {body[:200]!r}")
    problem = check_events(body)
    if problem is not None:
        raise ValueError(problem)
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
        values: list[float] = [getattr(t, attr) * 1000 for t in self.timings]
        if not values:
            return math.nan
        if p == 50:
            return statistics.median(values)
        return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


async def post_streams(
    session: Any, url: str, n: int, concurrency: int, row: Row | None
) -> list[Timing]:
    """``n`` streamed requests, ``concurrency`` at a time; failures go to ``row``."""
    import aiohttp

    timings: list[Timing] = []
    remaining = n

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            try:
                timings.append(await stream_one(session, url))
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
                if row is None:
                    raise RuntimeError(f"warm-up request failed: {problem}") from exc
                row.failures += 1
                if len(row.failure_examples) < 3:
                    row.failure_examples.append(problem)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return timings


async def run_variant(session_factory: Any, server: AppServer, row: Row) -> Row:
    url = server.url + "/v1/chat/completions"
    guarded = row.variant.guarded
    async with session_factory(row.concurrency) as session:
        # Warm-up, not measured: connections, the judges' sessions.
        await post_streams(session, url, max(3, row.concurrency), row.concurrency, None)
        # A request is counted a few loop turns after its last byte: let the last one land.
        await asyncio.sleep(0.05)
        before = await scrape(session, server) if guarded else {}
        cpu = server.cpu_s()
        row.timings = await post_streams(session, url, row.requests, row.concurrency, row)
        row.cpu_ms = (server.cpu_s() - cpu) / row.requests * 1000
        if guarded:
            await asyncio.sleep(0.05)  # the last record is written after the last byte
            after = await scrape(session, server)
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
    header = (
        f"{'variant':<21} {'c':>2} {'n':>3} {'hdrs p50':>8} {'TTFB p50':>8} {'p99':>6}"
        f" {'content p50':>11} {'p99':>6} {'DONE p50':>8} {'total p50':>9} {'p99':>6}"
        f" {'model ttfb/total':>16} {'ttfb/max':>8} {'hb ttfb':>7} {'hb total':>8}"
        f" {'mw ttfb':>7} {'win/req':>7} {'cpu ms':>6} {'fail':>4}"
    )
    print()
    print(header)
    print("-" * len(header))
    guarded_by_c = {r.concurrency: r for r in rows if r.variant.guarded and r.variant.mode is None}
    for r in rows:
        model_ttfb, model_total = r.variant.model_ms()
        ratio = r.q("first_byte", 50) / base_ms if r.variant.guarded else None
        hb_ttfb = hb_total = None
        ref = guarded_by_c.get(r.concurrency)
        if r.variant.mode is not None and ref is not None:
            hb_ttfb = r.q("first_byte", 50) - ref.q("first_byte", 50)
            hb_total = r.q("total", 50) - ref.q("total", 50)
        print(
            f"{r.variant.name:<21} {r.concurrency:>2} {r.requests:>3}"
            f" {r.q('headers', 50):>8.1f} {r.q('first_byte', 50):>8.1f}"
            f" {r.q('first_byte', 99):>6.1f} {r.q('first_content', 50):>11.1f}"
            f" {r.q('first_content', 99):>6.1f} {r.q('done', 50):>8.1f}"
            f" {r.q('total', 50):>9.1f} {r.q('total', 99):>6.1f}"
            f" {f'{model_ttfb:.0f}/{model_total:.0f}':>16} {_fmt(ratio, '.3f'):>8}"
            f" {_fmt(hb_ttfb, '+.1f'):>7} {_fmt(hb_total, '+.1f'):>8}"
            f" {_fmt(r.mw_ttfb_ms, '.1f'):>7} {_fmt(r.windows_per_request, '.2f'):>7}"
            f" {r.cpu_ms:>6.2f} {r.failures:>4}"
        )
    print(
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
    import aiohttp

    def session_factory(concurrency: int) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency),
            timeout=aiohttp.ClientTimeout(total=30),
        )

    rows: list[Row] = []
    stubs: list[Stub] = []
    servers: dict[Variant, AppServer] = {}
    policy_files: list[str] = []
    try:
        app_stub = Stub("app", reply=REPLY)
        stubs.append(app_stub)
        judge_stub = Stub("input judge")  # default reply: not flagged
        stubs.append(judge_stub)
        out_stub = Stub("output judge")
        stubs.append(out_stub)
        app_stub.configure(latency_s=APP_FIRST_S, chunk_delay_s=CHUNK_DELAY_S, stream_chunks=CHUNKS)
        judge_stub.configure(latency_s=INPUT_SCREEN_S)
        out_stub.configure(latency_s=OUTPUT_JUDGE_S)
        for variant in VARIANTS:
            policy = "bare"
            if variant.guarded:
                with tempfile.NamedTemporaryFile(
                    "w", prefix="bench-stream-", suffix=".yaml", delete=False
                ) as f:
                    f.write(policy_text(judge_stub.base_url, out_stub.base_url, variant))
                policy = f.name
                policy_files.append(policy)
            servers[variant] = AppServer(variant.name, app_stub.base_url, policy)
        async with session_factory(4) as session:
            for server in servers.values():
                await server.ready(session)

        n1, n8 = args.requests, 2 * args.requests
        for concurrency, n in ((1, n1), (8, n8)):
            print(f"concurrency {concurrency}, {n} requests per variant")
            for variant in VARIANTS:
                row = Row(variant, concurrency, n)
                rows.append(await run_variant(session_factory, servers[variant], row))
        for stub in stubs:
            counters = stub.counters()
            if counters["cancelled"]:
                print(f"note: the {stub.name} stub saw {counters['cancelled']} requests cancelled")
    finally:
        for server in servers.values():
            server.stop()
        for stub in stubs:
            stub.stop()
        for name in policy_files:
            os.unlink(name)
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
    args = parser.parse_args()
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
    failed = [r for r in rows if r.failures]
    for r in failed:
        print(f"FAILED {r.variant.name} c={r.concurrency}: {r.failures} failures")
        for example in r.failure_examples:
            print(f"    {example}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
