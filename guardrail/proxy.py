"""Proxy mode: guard any HTTP chat service, whatever it is written in.

``guardrail proxy --upstream http://127.0.0.1:9000`` serves an ASGI app that
forwards every request to the upstream and streams its answer back, wrapped in
``GuardrailMiddleware``. Because the forwarding runs as the guarded "app", a
refusal cancels it, which closes the upstream connection: the service stops
generating, exactly as an in-process app's model call would.
"""

from __future__ import annotations

import httpx
from starlette.types import Message, Receive, Scope, Send

# Hop-by-hop headers describe one connection, not the message: never forwarded.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
    }
)
# Not asked of the upstream: a compressed answer could not be screened.
_NOT_FORWARDED = _HOP_BY_HOP | {b"accept-encoding"}


class Upstream:
    """An ASGI app that forwards HTTP requests to one upstream service."""

    def __init__(self, base_url: str, *, timeout_s: float = 300.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = httpx.Timeout(timeout_s, connect=10.0)
        self._client: httpx.AsyncClient | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # websockets are not proxied
        if self._client is None:  # created in the server's loop, on first use
            self._client = httpx.AsyncClient(timeout=self._timeout)
        request = self._client.build_request(
            scope["method"],
            self.base_url + scope["path"],
            params=scope.get("query_string", b"").decode("latin-1") or None,
            headers=[(k, v) for k, v in scope["headers"] if k.lower() not in _NOT_FORWARDED],
            # Whole: a guarded body was read (and screened) already, and a
            # Content-Length suits more upstreams than a chunked request.
            content=await _body(receive),
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            await _bad_gateway(send, f"upstream unreachable: {type(exc).__name__}")
            return
        try:
            headers = [
                (k.lower(), v)
                for k, v in response.headers.raw
                if k.lower() not in _HOP_BY_HOP or k.lower() == b"content-length"
            ]
            start = {"type": "http.response.start", "status": response.status_code}
            await send({**start, "headers": headers})
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            # Also when cancelled (a refusal, a client gone): an unread response
            # closes its connection, so the upstream stops generating.
            await response.aclose()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._client is not None:
                    await self._client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _body(receive: Receive) -> bytes:
    chunks, more = [], True
    while more:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


async def _bad_gateway(send: Send, why: str) -> None:
    body = f'{{"error": {{"message": "{why}", "type": "bad_gateway"}}}}'.encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 502, "headers": headers})
    await send({"type": "http.response.body", "body": body})
