"""The allow path for each API shape: an app of each format bare vs guarded, over real HTTP.

    .venv/bin/python bench/api_formats.py [--requests N] [--quick]

For each of ``openai_chat``, ``anthropic_messages`` and ``json`` (generic, with
JSON paths), an app that answers in that API's own shape after ``APP_LATENCY_S``
(``format_app`` below, in a uvicorn subprocess) is measured bare and guarded:
one LLM judge (a StubLLM child process answering after ``SCREEN_LATENCY_S``)
plus the local injection and pii judges on the way in; the pii judge on the
answer. The client posts benign requests, complete and streamed, and checks
every answer (a 200 with the app's text). The ratio is the allow path's:
guarded p50 / max(app, screen), 1.0 being the ideal of a guard that adds nothing.
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
from typing import Any

from harness import (
    CHAT_PATH,
    GUARDED_POLICY,
    Column,
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
ANSWER = "The capital of France is Paris, a city on the Seine."
PATHS = {
    "openai_chat": "/v1/chat/completions",
    "anthropic_messages": "/v1/messages",
    "json": "/chat",
}
JSON_API = """\
json_api:
  text: ['$.message']
  not_text: ['$.session_id']
  stream_flag: $.stream
  answer_text: ['$.reply']
  stream: {framing: ndjson, text: ['$.delta']}
"""
# The guarded latency bench's policy, on each format's route, screening answers too.
OUTPUT = "output: {screens: [{judge: pii}]}\n"


def policy_text(format: str, path: str, judge_url: str) -> str:
    text = GUARDED_POLICY.format(judge_url=judge_url).replace(CHAT_PATH, path)
    text = text.replace("format: openai_chat", f"format: {format}")
    return text + OUTPUT + (JSON_API if format == "json" else "")


# --- the app of each format (a uvicorn factory) ------------------------------------------


def format_app() -> Any:
    """uvicorn factory: ``BENCH_FORMAT``'s app, bare or guarded by the ``BENCH_POLICY`` file."""
    from guardrail import GuardrailMiddleware

    answer = {
        "openai_chat": _openai_answer,
        "anthropic_messages": _anthropic_answer,
        "json": _json_answer,
    }[os.environ["BENCH_FORMAT"]]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/health":
            await _send(send, 200, b"application/json", b"{}")
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        stream = json.loads(body).get("stream") is True
        await asyncio.sleep(APP_LATENCY_S)  # the app's model
        kind, events = answer(stream)
        if not stream:
            await _send(send, 200, kind, events[0])
            return
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", kind)]}
        )
        for event in events:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    policy = os.environ["BENCH_POLICY"]
    return app if policy == "bare" else GuardrailMiddleware(app, policy=policy)


async def _send(send: Any, status: int, kind: bytes, body: bytes) -> None:
    headers = [(b"content-type", kind), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _words() -> list[str]:
    words = ANSWER.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _openai_answer(stream: bool) -> tuple[bytes, list[bytes]]:
    if not stream:
        message = {"role": "assistant", "content": ANSWER}
        body = {"id": "c", "object": "chat.completion", "model": "m", "created": 1}
        body["choices"] = [{"index": 0, "message": message, "finish_reason": "stop"}]
        return b"application/json", [json.dumps(body).encode()]
    chunks = [{"index": 0, "delta": {"content": w}, "finish_reason": None} for w in _words()]
    chunks.append({"index": 0, "delta": {}, "finish_reason": "stop"})
    events = [
        f"data: {json.dumps({'id': 'c', 'object': 'chat.completion.chunk', 'choices': [c]})}\n\n"
        for c in chunks
    ]
    return b"text/event-stream", [e.encode() for e in [*events, "data: [DONE]\n\n"]]


def _anthropic_answer(stream: bool) -> tuple[bytes, list[bytes]]:
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m"}
    usage = {"input_tokens": 1, "output_tokens": 1}
    if not stream:
        done = {"stop_reason": "end_turn", "stop_sequence": None, "usage": usage}
        body = {**message, "content": [{"type": "text", "text": ANSWER}], **done}
        return b"application/json", [json.dumps(body).encode()]

    def event(kind: str, **fields: Any) -> bytes:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}\n\n".encode()

    start = {**message, "content": [], "stop_reason": None, "usage": usage}
    events = [event("message_start", message=start)]
    events.append(event("content_block_start", index=0, content_block={"type": "text", "text": ""}))
    events += [
        event("content_block_delta", index=0, delta={"type": "text_delta", "text": w})
        for w in _words()
    ]
    events += [event("content_block_stop", index=0)]
    events += [event("message_delta", delta={"stop_reason": "end_turn"}, usage=usage)]
    return b"text/event-stream", [*events, event("message_stop")]


def _json_answer(stream: bool) -> tuple[bytes, list[bytes]]:
    if not stream:
        return b"application/json", [json.dumps({"reply": ANSWER}).encode()]
    lines = [json.dumps({"delta": w}) + "\n" for w in _words()] + ['{"done": true}\n']
    return b"application/x-ndjson", [line.encode() for line in lines]


# --- the client: a request of each format, and the text of its answer ------------------


def request(format: str, stream: bool) -> bytes:
    question = "What is the capital of France?"
    if format == "json":
        return json.dumps({"message": question, "session_id": "s1", "stream": stream}).encode()
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": question}]}
    if format == "anthropic_messages":
        body["max_tokens"] = 64
    return json.dumps({**body, "stream": stream}).encode()


def answer_text(format: str, raw: bytes, stream: bool) -> str:
    """The text a client of the format reads (streams: its deltas joined)."""
    if not stream:
        body = json.loads(raw)
        if format == "openai_chat":
            return str(body["choices"][0]["message"]["content"])
        if format == "anthropic_messages":
            return "".join(block["text"] for block in body["content"])
        return str(body["reply"])
    if format == "json":
        return "".join(json.loads(line).get("delta", "") for line in raw.splitlines() if line)
    text = ""
    for line in raw.decode().splitlines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        data = json.loads(line[6:])
        if format == "openai_chat":
            text += data["choices"][0]["delta"].get("content") or ""
        elif data["type"] == "content_block_delta":
            text += data["delta"]["text"]
    return text


async def measure(url: str, format: str, stream: bool, n: int, concurrency: int) -> Any:
    from harness import Refused

    body = request(format, stream)

    async def one(session: Any) -> None:
        async with session.post(url, data=body, headers={"content-type": "application/json"}) as r:
            raw, status = await r.read(), r.status
        if status != 200 or answer_text(format, raw, stream) != ANSWER:
            raise Refused(f"HTTP {status}: {raw[:200]!r}")

    async with client_session(concurrency) as session:
        warm = max(4, 2 * concurrency)
        await closed_loop(lambda: one(session), warm, concurrency, warm_up=True)
        return await closed_loop(lambda: one(session), n, concurrency)


async def main(n: int, concurrencies: list[int]) -> int:
    load_before, started = os.getloadavg()[0], time.perf_counter()
    judge = Stub("judge", latency_s=SCREEN_LATENCY_S)
    table = Table(
        [
            Column("format", 18),
            Column("answer", 8),
            Column("variant", 8),
            Column("c", 3, "d"),
            Column("n", 4, "d"),
            Column("p50 ms", 8, ".1f"),
            Column("p99 ms", 8, ".1f"),
            Column("req/s", 6, ".0f"),
            Column("fail", 4, "d"),
            Column("p50/max", 7, ".3f"),
        ]
    )
    failed: dict[str, list[str]] = {}
    floor_ms = max(APP_LATENCY_S, SCREEN_LATENCY_S) * 1000
    try:
        for format, path in PATHS.items():
            with policy_file(policy_text(format, path, judge.base_url)) as policy:
                for variant in ("bare", "guarded"):
                    os.environ["BENCH_FORMAT"] = format
                    server = Server(
                        f"{format}-{variant}",
                        policy="bare" if variant == "bare" else policy,
                        factory="api_formats:format_app",
                    )
                    try:
                        async with client_session(1) as session:
                            await server.ready(session)
                        for stream in (False, True):
                            for c in concurrencies:
                                load = await measure(server.url + path, format, stream, n, c)
                                p50 = percentile(load.latencies, 50) * 1000
                                mode = "stream" if stream else "complete"
                                table.add(
                                    format,
                                    mode,
                                    variant,
                                    c,
                                    n,
                                    p50,
                                    percentile(load.latencies, 99) * 1000,
                                    load.rps,
                                    load.failures,
                                    ratio(p50, floor_ms) if variant == "guarded" else math.nan,
                                )
                                print(
                                    f"  {format} {mode} {variant} c={c}: p50 {p50:.1f} ms",
                                    flush=True,
                                )
                                if load.failures:
                                    failed[f"{format} {mode} {variant} c={c}"] = load.examples
                    finally:
                        server.stop()
    finally:
        judge.stop()
    table.print(
        f"p50/max: guarded p50 / max(app {APP_LATENCY_S * 1000:.0f} ms,"
        f" screen {SCREEN_LATENCY_S * 1000:.0f} ms); 1.0 adds nothing."
    )
    print(machine_line(load_before, started, "bench, stubs and servers on one machine"))
    return report_failures(failed)


def cli(argv: list[str] | None = None, run: Callable[..., Any] = asyncio.run) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per row")
    parser.add_argument("--quick", action="store_true", help="--requests 40, concurrency 8 only")
    args = parser.parse_args(argv)
    if args.quick:
        return int(run(main(40, [8])))
    return int(run(main(args.requests, [1, 32])))


if __name__ == "__main__":
    sys.exit(cli())
