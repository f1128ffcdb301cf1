"""Hostile answers for output-screening tests: raw ASGI apps, SSE bytes, and a reader of them.

The reader here is written from the SSE spec, independently of
``guardrail.flow.framing``, so a test does not check our framing with itself.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from guardrail import GuardrailMiddleware, Policy

Headers = list[tuple[bytes, bytes]]
SSE = [(b"content-type", b"text/event-stream")]


def chunk_event(content: str, *, ident: str = "chatcmpl-app-1", ascii_only: bool = True) -> str:
    """One OpenAI chat chunk carrying ``content``, as the text of a ``data:`` field."""
    chunk = {
        "id": ident,
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "app-model",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
    }
    return json.dumps(chunk, ensure_ascii=ascii_only)


def sse(data: str, end: str = "\n\n") -> bytes:
    """``data: ...`` then the line ending and blank line in ``end``."""
    return f"data: {data}{end}".encode()


@dataclass
class Answer:
    """What the client got: status, headers, body."""

    status: int
    headers: Headers
    body: bytes

    def events(self) -> list[dict[str, str]]:
        """The events a spec-following client reads: field name -> value (data joined)."""
        body = self.body.removeprefix(b"\xef\xbb\xbf").decode("utf-8", "replace")
        events, current = [], {}  # type: ignore[var-annotated]
        for line in re.split(r"\r\n|\r|\n", body):
            if not line:
                if current:
                    events.append(current)
                current = {}
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data" and "data" in current:
                current["data"] += "\n" + value
            else:
                current[name] = value
        if current:
            events.append(current)
        return events

    def chunks(self) -> list[dict[str, Any]]:
        """Every JSON chunk (``[DONE]`` and comments left out)."""
        return [
            json.loads(e["data"]) for e in self.events() if "data" in e and e["data"] != "[DONE]"
        ]

    def content(self) -> str:
        """The streamed content, joined as the openai client joins it."""
        return "".join(
            choice["delta"].get("content") or ""
            for chunk in self.chunks()
            for choice in chunk.get("choices", [])
        )


def raw_app(
    chunks: Sequence[bytes],
    *,
    headers: Headers | None = None,
    gate: asyncio.Event | None = None,
    state: dict[str, Any] | None = None,
) -> Any:
    """An app that sends ``chunks`` as body messages (waiting on ``gate`` after the first)."""
    seen = state if state is not None else {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await receive()
        start = {"type": "http.response.start", "status": 200, "headers": headers or SSE}
        await send(start)
        try:
            for i, chunk in enumerate(chunks):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if i == 0 and gate is not None:
                    await gate.wait()
            await send({"type": "http.response.body", "body": b""})
        except asyncio.CancelledError:
            seen["cancelled"] = True
            raise

    return app


def request_body(stream: bool = True) -> bytes:
    """A chat request the input screens pass."""
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    return json.dumps({"model": "m", "messages": messages, "stream": stream}).encode()


async def call(app: Any, policy: Policy, body: bytes | None = None) -> Answer:
    """Drive the guarded app in-process (no server): one POST, the whole answer."""
    guarded = GuardrailMiddleware(app, policy=policy, registry=CollectorRegistry(), watch=False)
    sent: list[dict[str, Any]] = []
    delivered = False
    never = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body or request_body(), "more_body": False}
        await never.wait()  # the client stays until the answer ends
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [(b"content-type", b"application/json")],
        "query_string": b"",
    }
    await guarded(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body_out = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return Answer(start["status"], list(start.get("headers", [])), body_out)
