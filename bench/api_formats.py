"""The allow path of each API format: guarded p50 / max(app, screen), complete and streamed.

    .venv/bin/python bench/api_formats.py [--requests N] [--quick]

One app (``format_app`` below, in a uvicorn subprocess) serves a route of each
API format the guard reads: ``openai_chat``, ``openai_responses``,
``openai_completions``, ``anthropic_messages`` and ``json`` (an in-house API,
read through JSON paths). Each route answers after ``APP_LATENCY_S`` in its
API's own shape, complete or streamed as the request asks. The app runs bare,
and guarded by one policy whose routes speak the five formats (per-route
``format``): one LLM judge (a StubLLM child process answering after
``SCREEN_LATENCY_S``) plus the local injection and pii judges on the way in,
the pii judge on the answer. Each format gets benign requests, complete and
streamed, at concurrency 1 and 32; every answer must be a 200 with the app's
text (streams: their deltas joined), or the run fails and exits 1.
``p50/max`` near 1.0 means the guard costs ``max(app, screen)``, the parallel
promise, whatever the format's adapter reads.
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
    GUARDED_POLICY,
    QUESTION,
    Column,
    Server,
    Stub,
    Table,
    client_session,
    closed_loop,
    machine_line,
    percentile,
    policy_file,
    post_json,
    ratio,
    report_failures,
)

APP_LATENCY_S = 0.200
SCREEN_LATENCY_S = 0.150
ANSWER = "The capital of France is Paris, a city on the Seine."

# The guarded latency bench's policy with a route of each format, screening answers too.
ROUTES = """\
routes:
  - path: /v1/chat/completions
  - format: openai_responses
  - format: openai_completions
  - format: anthropic_messages
  - {path: /chat, format: json}
"""
OUTPUT = "output: {screens: [{judge: pii}]}\n"
JSON_API = """\
json_api:
  text: ['$.message']
  not_text: ['$.session_id']
  stream_flag: $.stream
  answer_text: ['$.reply']
  stream: {framing: ndjson, text: ['$.delta']}
"""


def policy_text(judge_url: str) -> str:
    text = GUARDED_POLICY.format(judge_url=judge_url)
    text = text.replace("routes: [{path: /v1/chat/completions, methods: [POST]}]\n", ROUTES)
    return text + OUTPUT + JSON_API


# --- each format: its request, its answer (complete and streamed), the text read back ----

Answer = tuple[bytes, list[bytes]]  # content type, body (one piece, or the stream's events)


@dataclass(frozen=True)
class Format:
    """One API: its route, a benign request, the app's answer, the text a client reads."""

    name: str
    path: str
    request: Callable[[bool], dict[str, Any]]
    answer: Callable[[bool], Answer]
    text_of: Callable[[dict[str, Any]], str]  # of a complete answer
    delta_of: Callable[[dict[str, Any]], str]  # of one streamed event's data


def _words() -> list[str]:
    words = ANSWER.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _sse(data: dict[str, Any], event: str | None = None) -> bytes:
    named = f"event: {event}\n" if event else ""
    return f"{named}data: {json.dumps(data)}\n\n".encode()


def _complete(body: dict[str, Any]) -> Answer:
    return b"application/json", [json.dumps(body).encode()]


def _stream(events: list[bytes]) -> Answer:
    return b"text/event-stream", events


def _chat_answer(stream: bool) -> Answer:
    head = {"id": "c", "model": "m", "created": 1}
    if not stream:
        message = {"role": "assistant", "content": ANSWER}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        return _complete({**head, "object": "chat.completion", "choices": [choice]})
    choices: list[dict[str, Any]] = [
        {"index": 0, "delta": {"content": w}, "finish_reason": None} for w in _words()
    ]
    choices.append({"index": 0, "delta": {}, "finish_reason": "stop"})
    chunks = [_sse({**head, "object": "chat.completion.chunk", "choices": [c]}) for c in choices]
    return _stream([*chunks, b"data: [DONE]\n\n"])


def _responses_answer(stream: bool) -> Answer:
    part = {"type": "output_text", "text": ANSWER, "annotations": []}
    item = {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant"}
    done = {**item, "content": [part]}

    def response(status: str, output: list[Any]) -> dict[str, Any]:
        return {"id": "resp_1", "object": "response", "created_at": 1, "model": "m"} | {
            "status": status,
            "output": output,
        }

    if not stream:
        return _complete(response("completed", [done]))
    events: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": response("in_progress", [])}),
        (
            "response.output_item.added",
            {"output_index": 0, "item": {**item, "status": "in_progress", "content": []}},
        ),
    ]
    where = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    events.append(("response.content_part.added", {**where, "part": {**part, "text": ""}}))
    events += [("response.output_text.delta", {**where, "delta": w}) for w in _words()]
    events += [
        ("response.output_text.done", {**where, "text": ANSWER}),
        ("response.content_part.done", {**where, "part": part}),
        ("response.output_item.done", {"output_index": 0, "item": done}),
        ("response.completed", {"response": response("completed", [done])}),
    ]
    return _stream(
        [
            _sse({"type": kind, "sequence_number": i, **fields}, kind)
            for i, (kind, fields) in enumerate(events)
        ]
    )


def _completions_answer(stream: bool) -> Answer:
    def completion(text: str, finish: str | None) -> dict[str, Any]:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m"} | {
            "choices": [choice]
        }

    if not stream:
        return _complete(completion(ANSWER, "stop"))
    chunks = [_sse(completion(w, None)) for w in _words()]
    return _stream([*chunks, _sse(completion("", "stop")), b"data: [DONE]\n\n"])


def _anthropic_answer(stream: bool) -> Answer:
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m"}
    usage = {"input_tokens": 1, "output_tokens": 1}
    if not stream:
        done = {"stop_reason": "end_turn", "stop_sequence": None, "usage": usage}
        return _complete({**message, "content": [{"type": "text", "text": ANSWER}], **done})

    def event(kind: str, **fields: Any) -> bytes:
        return _sse({"type": kind, **fields}, kind)

    start: dict[str, Any] = {**message, "content": [], "stop_reason": None, "usage": usage}
    events = [event("message_start", message=start)]
    events.append(event("content_block_start", index=0, content_block={"type": "text", "text": ""}))
    events += [
        event("content_block_delta", index=0, delta={"type": "text_delta", "text": w})
        for w in _words()
    ]
    events += [event("content_block_stop", index=0)]
    events += [event("message_delta", delta={"stop_reason": "end_turn"}, usage=usage)]
    return _stream([*events, event("message_stop")])


def _json_answer(stream: bool) -> Answer:
    if not stream:
        return _complete({"reply": ANSWER})
    lines = [json.dumps({"delta": w}) + "\n" for w in _words()] + ['{"done": true}\n']
    return b"application/x-ndjson", [line.encode() for line in lines]


def _messages(stream: bool) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": QUESTION}], "stream": stream}


FORMATS = [
    Format(
        "openai_chat",
        "/v1/chat/completions",
        _messages,
        _chat_answer,
        lambda a: str(a["choices"][0]["message"]["content"]),
        lambda e: str(e["choices"][0]["delta"].get("content") or ""),
    ),
    Format(
        "openai_responses",
        "/v1/responses",
        lambda stream: {
            "model": "m",
            "instructions": "Be brief.",
            "input": [{"role": "user", "content": QUESTION}],
            "stream": stream,
        },
        _responses_answer,
        lambda a: str(a["output"][0]["content"][0]["text"]),
        lambda e: str(e["delta"]) if e["type"] == "response.output_text.delta" else "",
    ),
    Format(
        "openai_completions",
        "/v1/completions",
        lambda stream: {"model": "m", "prompt": QUESTION, "stream": stream},
        _completions_answer,
        lambda a: str(a["choices"][0]["text"]),
        lambda e: str(e["choices"][0]["text"]),
    ),
    Format(
        "anthropic_messages",
        "/v1/messages",
        lambda stream: {**_messages(stream), "max_tokens": 64},
        _anthropic_answer,
        lambda a: "".join(block["text"] for block in a["content"]),
        lambda e: str(e["delta"]["text"]) if e["type"] == "content_block_delta" else "",
    ),
    Format(
        "json",
        "/chat",
        lambda stream: {"message": QUESTION, "session_id": "s1", "stream": stream},
        _json_answer,
        lambda a: str(a["reply"]),
        lambda e: str(e.get("delta", "")),
    ),
]


def answer_text(fmt: Format, raw: bytes, stream: bool) -> str:
    """The text a client of the format reads (a stream: its deltas joined)."""
    if not stream:
        return fmt.text_of(json.loads(raw))
    if fmt.name == "json":  # JSON lines
        return "".join(fmt.delta_of(json.loads(line)) for line in raw.splitlines() if line)
    data = (line[6:] for line in raw.decode().splitlines() if line.startswith("data: "))
    return "".join(fmt.delta_of(json.loads(d)) for d in data if d != "[DONE]")


# --- the app (a uvicorn factory) ---------------------------------------------------------


def format_app() -> Any:
    """uvicorn factory: a route of each format, bare or guarded by the ``BENCH_POLICY`` file."""
    from guardrail import GuardrailMiddleware

    answers = {fmt.path: fmt.answer for fmt in FORMATS}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] not in answers:  # /health, and nothing else is asked
            await _send(send, b"application/json", b"{}")
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        stream = json.loads(body).get("stream") is True
        await asyncio.sleep(APP_LATENCY_S)  # the app's model
        kind, events = answers[scope["path"]](stream)
        if not stream:
            await _send(send, kind, events[0])
            return
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", kind)]}
        )
        for event in events:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    policy = os.environ.get("BENCH_POLICY", "bare")
    return app if policy == "bare" else GuardrailMiddleware(app, policy=policy)


async def _send(send: Any, kind: bytes, body: bytes) -> None:
    headers = [(b"content-type", kind), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# --- the runs ----------------------------------------------------------------------------


@dataclass
class Run:
    """One closed loop on one server: a format, complete or streamed, at one concurrency."""

    p50_ms: float = math.nan
    p99_ms: float = math.nan
    rps: float = math.nan
    failures: int = 0
    examples: tuple[str, ...] = ()


async def measure(server: Server, fmt: Format, stream: bool, n: int, concurrency: int) -> Run:
    from harness import Refused

    url, body = server.url + fmt.path, json.dumps(fmt.request(stream)).encode()

    async def one(session: Any) -> None:
        raw = await post_json(session, url, body)
        if answer_text(fmt, raw, stream) != ANSWER:
            raise Refused(f"not the app's answer: {raw[:200]!r}")

    async with client_session(concurrency) as session:
        warm = max(5, 2 * concurrency)
        await closed_loop(lambda: one(session), warm, concurrency, warm_up=True)
        load = await closed_loop(lambda: one(session), n, concurrency)
    return Run(
        percentile(load.latencies, 50) * 1000,
        percentile(load.latencies, 99) * 1000,
        load.rps,
        load.failures,
        tuple(load.examples),
    )


@dataclass
class Row:
    fmt: str
    answer: str
    concurrency: int
    requests: int
    guarded: Run
    bare: Run

    @property
    def vs_max(self) -> float | None:
        return ratio(self.guarded.p50_ms, max(APP_LATENCY_S, SCREEN_LATENCY_S) * 1000)

    @property
    def vs_bare(self) -> float | None:
        return ratio(self.guarded.p50_ms, self.bare.p50_ms)


async def bench(requests: int) -> list[Row]:
    rows: list[Row] = []
    with ExitStack() as stack:
        judge = Stub("judge", latency_s=SCREEN_LATENCY_S)  # its default reply: not flagged
        stack.callback(judge.stop)
        policy = stack.enter_context(policy_file(policy_text(judge.base_url)))
        factory = "api_formats:format_app"
        bare = Server("bare", factory=factory)
        stack.callback(bare.stop)
        guarded = Server("guarded", policy=policy, factory=factory)
        stack.callback(guarded.stop)
        async with client_session(2) as session:
            await bare.ready(session)
            await guarded.ready(session)
        for fmt in FORMATS:
            for stream in (False, True):
                for c, n in ((1, max(8, requests // 10)), (32, requests)):
                    row = Row(
                        fmt.name,
                        "stream" if stream else "complete",
                        c,
                        n,
                        bare=await measure(bare, fmt, stream, n, c),
                        guarded=await measure(guarded, fmt, stream, n, c),
                    )
                    print(
                        f"  {row.fmt:<18} {row.answer:<8} c={c:<2} n={n:<4}"
                        f" bare p50 {row.bare.p50_ms:6.1f} ms  guarded p50"
                        f" {row.guarded.p50_ms:6.1f} p99 {row.guarded.p99_ms:6.1f} ms"
                        f"  failures {row.bare.failures + row.guarded.failures}",
                        flush=True,
                    )
                    rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--requests", type=int, default=640, help="per run at concurrency 32 (N/10 at 1)"
    )
    parser.add_argument("--quick", action="store_true", help="--requests 64")
    args = parser.parse_args()
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    rows = asyncio.run(bench(64 if args.quick else args.requests))
    table = Table(
        [
            Column("format", 18),
            Column("answer", 8),
            Column("c", 2, "d"),
            Column("n", 4, "d"),
            Column("p50 ms", 7, ".1f"),
            Column("p99 ms", 7, ".1f"),
            Column("req/s", 5, ".0f"),
            Column("fail", 4, "d"),
            Column("p50/max", 7, ".3f"),
            Column("bare p50", 8, ".1f"),
            Column("p50/bare", 8, ".3f"),
        ]
    )
    for r in rows:
        g = r.guarded
        table.add(
            r.fmt,
            r.answer,
            r.concurrency,
            r.requests,
            g.p50_ms,
            g.p99_ms,
            g.rps,
            g.failures + r.bare.failures,
            r.vs_max,
            r.bare.p50_ms,
            r.vs_bare,
        )
    table.print(
        f"p50, p99, req/s: guarded. fail: failed answers, guarded and bare. p50/max: guarded"
        f" p50 / max(app {APP_LATENCY_S * 1000:.0f} ms, screen {SCREEN_LATENCY_S * 1000:.0f} ms);"
        " 1.0 is the parallel promise kept. p50/bare: guarded p50 / the bare app's p50 on the"
        " same route, answer and concurrency (what the machine's load adds to both cancels out)."
    )
    print(machine_line(load_before, started, "the judge stub, two app servers, this client."))
    failed: dict[str, tuple[str, ...]] = {}
    for r in rows:
        for variant, run in (("bare", r.bare), ("guarded", r.guarded)):
            if run.failures:
                failed[f"{r.fmt} {r.answer} {variant} c={r.concurrency}"] = run.examples
    return report_failures(failed)


if __name__ == "__main__":
    sys.exit(main())
