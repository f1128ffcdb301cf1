"""A chat app that reads JSON keys as Go's ``encoding/json`` does, and records what it read.

Keys match case-insensitively, with Unicode folding (``MESSAGES``, ``me\u017f\u017fages``
and ``messages`` are one field), and the last one wins. It keeps every body it
received and every key and string it could read from it, then answers a plain
completion; tests check that no request reaches it with text that was not screened.
"""

from __future__ import annotations

import json
import threading
import unicodedata
from dataclasses import dataclass
from typing import Any

Message = dict[str, Any]


def fold(key: str) -> str:
    """Compatibility and case folding, as a lenient receiver matches keys."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", key).casefold())


def _last_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return {fold(key): value for key, value in pairs}


def readable(value: Any, *, top: bool = True) -> list[str]:
    """Every key and string the app can read, but the top-level ``model`` (it routes on it)."""
    found: list[str] = []
    if isinstance(value, str):
        found.append(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            found.append(key)
            if not (top and fold(key) == "model"):
                found.extend(readable(item, top=False))
    elif isinstance(value, list):
        for item in value:
            found.extend(readable(item, top=False))
    return found


@dataclass(frozen=True)
class Received:
    """One request as the app got it: the raw body and what it could read."""

    body: bytes
    strings: list[str]  # keys as they were sent, and every string value
    messages: Any  # what a folding reader takes for ``messages``


class FoldingReceiver:
    """The ASGI app: records each request body, answers a completion saying "ok"."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self._lock = threading.Lock()

    async def __call__(self, scope: Message, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        raw = json.loads(body)  # keys as sent
        folded = json.loads(body, object_pairs_hook=_last_wins)
        messages = folded.get("messages") if isinstance(folded, dict) else None
        with self._lock:
            self.received.append(Received(body, readable(raw), messages))
        answer = {
            "id": "chatcmpl-folding",
            "object": "chat.completion",
            "created": 0,
            "model": "folding",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "ok"},
                    "finish_reason": "stop",
                }
            ],
        }
        payload = json.dumps(answer).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(payload)),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
