"""A stub OpenAI-compatible chat server on 127.0.0.1, for tests and benchmarks.

It runs a real uvicorn server in a background thread with its own event loop,
so sync and async tests can both talk to it over real HTTP. Behaviour is set
through plain attributes, read afresh on every request:

    with StubLLM(latency_s=0.2) as stub:
        stub.reply = '{"flagged": true, "categories": ["violence"], "reason": "x"}'
        ...  # point a client at stub.base_url
        assert stub.wait_for(lambda: stub.completed == 1)

``held=True`` holds every answer until ``release()``: a test that needs
requests in flight waits on the stub's counters, never on the clock. Each
request's body is kept in ``requests`` (the prompts a judge was sent).

It also answers as the vendors' other endpoints do:

- ``POST /v1/moderations`` in OpenAI's moderation shape: ``scores`` (a dict,
  or a function of the input text) sets category scores, every other one of
  omni-moderation's categories scores near zero; a category's boolean is its
  score >= 0.5 and ``flagged`` is any of them (as OpenAI's own thresholds do);
- ``logprobs``: the first answer token's alternatives (token -> logprob), sent
  as ``choices[0].logprobs`` when a chat request asks for logprobs, as vLLM does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
import string
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import uvicorn

_BASE62 = string.ascii_letters + string.digits
DEFAULT_REPLY = '{"flagged": false, "categories": [], "reason": "ok"}'

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class StubLLM:
    """Serves ``POST /v1/chat/completions`` (and ``/chat/completions``) on a free port."""

    def __init__(
        self,
        *,
        latency_s: float = 0.0,
        reply: str | Callable[[dict[str, Any]], str] = DEFAULT_REPLY,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        raw_body: bytes | None = None,
        hang: bool = False,
        chunk_delay_s: float = 0.0,
        stream_chunks: int = 4,
        held: bool = False,
        scores: Mapping[str, float] | Callable[[str], Mapping[str, float]] | None = None,
        logprobs: Mapping[str, float] | None = None,
        latency_per_kchar_s: float = 0.0,
    ) -> None:
        self.latency_s = latency_s
        self.scores = scores
        self.logprobs = logprobs
        # A model reads its input before it answers: this much more per 1,000
        # characters of message content (benchmarks of long inputs).
        self.latency_per_kchar_s = latency_per_kchar_s
        self.reply = reply
        self.status = status
        self.headers: dict[str, str] = dict(headers or {})
        self.raw_body = raw_body
        self.hang = hang
        self.chunk_delay_s = chunk_delay_s
        self.stream_chunks = stream_chunks
        self.held = held
        self._gate: asyncio.Event | None = None  # lives in the server's loop
        self._server_loop: asyncio.AbstractEventLoop | None = None
        # Records. Only the server thread writes them; tests read them.
        self.requests: list[dict[str, Any]] = []
        self.count = 0
        self.completed = 0
        self.cancelled = 0
        self.in_flight = 0  # requests received and not yet answered
        self.chars = 0  # characters of message content received, over all requests
        self.peak = 0  # the most requests ever in flight at once
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._port = 0
        self._stopping = False

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``, for OpenAI-style clients."""
        if not self._port:
            raise RuntimeError("StubLLM is not started")
        return f"http://127.0.0.1:{self._port}/v1"

    def release(self) -> None:
        """Answer every held request, and stop holding new ones."""
        self.held = False
        # A fresh gate for the next hold; requests already waiting keep this one.
        gate, loop, self._gate = self._gate, self._server_loop, None
        if gate is not None and loop is not None:
            loop.call_soon_threadsafe(gate.set)

    def reset(self) -> None:
        """Forget recorded requests and counters (behaviour settings are kept)."""
        self.requests = []
        self.count = self.completed = self.cancelled = self.peak = 0

    def start(self) -> StubLLM:
        """Start serving in a background thread; return once the server accepts."""
        if self._server is not None:
            return self
        # IPPROTO_TCP, so asyncio sets TCP_NODELAY: without it a response's body
        # waits ~40 ms for the client's delayed ACK (Nagle).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app,
            interface="asgi3",
            lifespan="off",
            log_level="warning",
            access_log=False,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="stub-llm", daemon=True
        )
        self._thread.start()
        if not self.wait_for(lambda: self._server is not None and self._server.started, 10.0):
            self.stop()
            raise RuntimeError("StubLLM did not start within 10 s")
        return self

    def stop(self) -> None:
        """Stop the server; hanging requests are cancelled rather than awaited."""
        if self._server is None:
            return
        self._stopping = True
        self._server.should_exit = True
        # force_exit: do not wait for hung connections to finish gracefully.
        self._server.force_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10.0)
        self._server = None
        self._thread = None
        self._stopping = False

    def __enter__(self) -> StubLLM:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @staticmethod
    def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
        """Poll ``predicate`` until it is true or ``timeout`` passes; return its last value."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

    # --- the ASGI app (runs in the server thread) ---

    async def _app(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            await self._serve(scope, receive, send)
        except asyncio.CancelledError:
            # stop() cancels requests still hanging: answer 503 so uvicorn logs no error.
            if not self._stopping:
                raise
            with contextlib.suppress(Exception):
                await _send(send, 503, b'{"error": {"message": "stub stopped"}}')

    async def _serve(self, scope: Message, receive: Receive, send: Send) -> None:
        body = await _read_body(receive)
        endpoint = scope["path"].rsplit("/", 2)[-2:]
        if scope["method"] != "POST" or endpoint not in (
            ["chat", "completions"],
            ["v1", "moderations"],
        ):
            await _send(send, 404, b'{"error": {"message": "not found"}}')
            return
        try:
            request = json.loads(body)
        except ValueError:
            await _send(send, 400, b'{"error": {"message": "request body is not JSON"}}')
            return
        self.requests.append(request)
        self.count += 1
        self.chars += _content_chars(request)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await self._answer(request, receive, send)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: dict[str, Any], receive: Receive, send: Send) -> None:
        if self.held and await self._held_until_released(receive):
            self.cancelled += 1
            return
        delay = None if self.hang else self.latency_s
        if delay is not None and self.latency_per_kchar_s:
            delay += self.latency_per_kchar_s * _content_chars(request) / 1000
        if (delay is None or delay > 0) and await _disconnected_within(receive, delay):
            self.cancelled += 1
            return
        if request.get("stream") and self.status == 200 and self.raw_body is None:
            await self._stream(request, receive, send)
            return
        if self.raw_body is not None:
            payload = self.raw_body
        elif self.status >= 400:
            error = {"message": f"stub error {self.status}", "type": "stub", "code": self.status}
            payload = json.dumps({"error": error}).encode()
        elif "input" in request and "messages" not in request:
            payload = json.dumps(_moderation(request, self._scores_for(request))).encode()
        else:
            completion = _completion(request, self._reply_for(request))
            if self.logprobs is not None and request.get("logprobs"):
                completion["choices"][0]["logprobs"] = _logprobs(self.logprobs)
            payload = json.dumps(completion).encode()
        await _send(send, self.status, payload, self.headers)
        self.completed += 1

    async def _held_until_released(self, receive: Receive) -> bool:
        """Wait for ``release()``; True if the client hung up first."""
        gate = self._gate
        if gate is None:
            gate = self._gate = asyncio.Event()
            self._server_loop = asyncio.get_running_loop()
        if not self.held:  # released while the gate was being made
            return False
        listener = asyncio.ensure_future(receive())
        released = asyncio.ensure_future(gate.wait())
        try:
            done, _ = await asyncio.wait({listener, released}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (listener, released):
                if not waiter.done():
                    waiter.cancel()
        return released not in done and listener.result()["type"] == "http.disconnect"

    def _scores_for(self, request: dict[str, Any]) -> Mapping[str, float]:
        scores = self.scores
        if callable(scores):
            text = request["input"]
            return scores(text if isinstance(text, str) else json.dumps(text))
        return scores or {}

    def _reply_for(self, request: dict[str, Any]) -> str:
        reply = self.reply
        return reply(request) if callable(reply) else reply

    async def _stream(self, request: dict[str, Any], receive: Receive, send: Send) -> None:
        headers = {"content-type": "text/event-stream", "cache-control": "no-cache"}
        headers.update(self.headers)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
            }
        )
        text = self._reply_for(request)
        size = max(1, -(-len(text) // self.stream_chunks))  # about stream_chunks chunks
        pieces = [text[i : i + size] for i in range(0, len(text), size)] or [""]
        ident, created, model = _ids(request)
        for index, piece in enumerate(pieces):
            if index and self.chunk_delay_s > 0:
                if await _disconnected_within(receive, self.chunk_delay_s):
                    self.cancelled += 1
                    return
            delta = {"role": "assistant", "content": piece} if index == 0 else {"content": piece}
            await _sse(send, _chunk(ident, created, model, delta, None))
        await _sse(send, _chunk(ident, created, model, {}, "stop"))
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
        self.completed += 1


def _content_chars(request: dict[str, Any]) -> int:
    messages = request.get("messages")
    if not isinstance(messages, list):
        return 0
    return sum(
        len(m["content"])
        for m in messages
        if isinstance(m, dict) and isinstance(m.get("content"), str)
    )


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


async def _disconnected_within(receive: Receive, delay: float | None) -> bool:
    """Wait ``delay`` seconds (forever if None); True if the client hung up first."""
    # With the body read, receive() only returns once the client disconnects.
    listener = asyncio.ensure_future(receive())
    try:
        done, _ = await asyncio.wait({listener}, timeout=delay)
    finally:
        if not listener.done():
            listener.cancel()
    return listener in done and listener.result()["type"] == "http.disconnect"


async def _send(
    send: Send, status: int, body: bytes, headers: Mapping[str, str] | None = None
) -> None:
    raw_headers = [(b"content-type", b"application/json")]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


async def _sse(send: Send, event: dict[str, Any]) -> None:
    data = b"data: " + json.dumps(event).encode() + b"\n\n"
    await send({"type": "http.response.body", "body": data, "more_body": True})


def _ids(request: dict[str, Any]) -> tuple[str, int, str]:
    return (
        # Base62 like real ids: a long decimal id would be a Luhn-valid "card" one time in ten
        # for an answer screen (ids are text the client receives, so they are screened).
        "chatcmpl-stub-" + "".join(secrets.choice(_BASE62) for _ in range(24)),
        int(time.time()),
        str(request.get("model", "stub")),
    )


def _completion(request: dict[str, Any], content: str) -> dict[str, Any]:
    ident, created, model = _ids(request)
    prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in request.get("messages", []))
    completion_tokens = len(content.split())
    return {
        "id": ident,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _chunk(
    ident: str, created: int, model: str, delta: dict[str, str], finish_reason: str | None
) -> dict[str, Any]:
    return {
        "id": ident,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


# omni-moderation-latest's categories, as its API reference lists them.
MODERATION_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)


def _moderation(request: dict[str, Any], scores: Mapping[str, float]) -> dict[str, Any]:
    every = {c: 1.2e-6 for c in MODERATION_CATEGORIES} | dict(scores)
    booleans = {c: s >= 0.5 for c, s in every.items()}
    return {
        "id": "modr-" + "".join(secrets.choice(_BASE62) for _ in range(24)),
        "model": str(request.get("model", "omni-moderation-latest")),
        "results": [
            {
                "flagged": any(booleans.values()),
                "categories": booleans,
                "category_scores": every,
                "category_applied_input_types": {c: ["text"] for c in every},
            }
        ],
    }


def _logprobs(alternatives: Mapping[str, float]) -> dict[str, Any]:
    ranked = sorted(alternatives.items(), key=lambda item: -item[1])
    top = [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in ranked]
    return {"content": [{**top[0], "top_logprobs": top}]} if top else {"content": []}
