"""A receiver that acts on anything and records what it got: the app or upstream under test.

It answers every request, whatever its method or path, with a chat completion,
as a careless method- and path-agnostic service would; each request's method,
raw path, headers and body are recorded, so a test can check the receiver got
exactly what the guard screened. ``raw`` sends a request target byte for byte
(HTTP clients normalise paths; an attacker's does not).
"""

from __future__ import annotations

import asyncio
import http.client
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

ANSWER = "From the receiver."
HOLD = "hold on"  # a body containing this is answered only when the caller leaves


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it."""

    method: str
    path: str
    raw_path: bytes
    root_path: str
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


@dataclass
class Recorder:
    """An ASGI app answering any request with a chat completion, recording each one."""

    received: list[Received] = field(default_factory=list)
    closed: int = 0  # held requests whose caller went away

    def probe(self, tag: str) -> list[Received]:
        """The requests that carried ``x-probe: tag``."""
        return [r for r in self.received if r.header("x-probe") == tag]

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        self.received.append(
            Received(
                scope["method"],
                scope["path"],
                scope.get("raw_path", b""),
                scope.get("root_path", ""),
                headers,
                body,
            )
        )
        if HOLD.encode() in body:
            while (await receive())["type"] != "http.disconnect":
                pass
            self.closed += 1
            return
        payload = json.dumps(
            {
                "id": "r",
                "object": "chat.completion",
                "created": 0,
                "model": "m",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": ANSWER},
                        "finish_reason": "stop",
                    }
                ],
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})
        await asyncio.sleep(0)


@dataclass(frozen=True)
class Answer:
    """A raw HTTP answer: status, every header line (repeats kept), JSON body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def count(self, name: str) -> int:
        return sum(1 for k, _ in self.headers if k.lower() == name)

    @property
    def refused(self) -> bool:
        """A refusal in the completion shape (the guard's, not the receiver's)."""
        return self.status == 200 and self.json()["choices"][0]["finish_reason"] == "content_filter"

    @property
    def answered(self) -> bool:
        """The receiver's own answer reached the client."""
        return self.status == 200 and ANSWER in self.body.decode()


def raw(
    port: int,
    method: str,
    target: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    timeout: float = 30.0,
) -> Answer:
    """Send one request with this exact method and target; no client-side normalisation."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        sent = {"content-type": "application/json", **(headers or {})}
        if body:
            sent["content-length"] = str(len(body))
        for key, value in sent.items():
            conn.putheader(key, value)
        conn.endheaders(body or None)
        response = conn.getresponse()
        return Answer(response.status, response.getheaders(), response.read())
    finally:
        conn.close()


def chat(text: str) -> bytes:
    """A chat request body with one user message."""
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": text}]}).encode()
