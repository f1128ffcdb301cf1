"""Proxy mode: guard any HTTP chat service, whatever it is written in.

``guardrail proxy --upstream http://127.0.0.1:9000`` serves an ASGI app that
forwards every request to the upstream and streams its answer back, wrapped in
``GuardrailMiddleware``. Because the forwarding runs as the guarded "app", a
refusal cancels it, which closes the upstream connection: the service stops
generating, exactly as an in-process app's model call would.

The upstream gets exactly the path the guard matched: only canonical paths
are forwarded (``guardrail.flow.routing``), and the URL is handed to the HTTP client
as already encoded, so it does not normalise it again. Forwarding uses aiohttp,
as the LLM judges do: it is the lean client, and a cancelled request closes
its connection without leaking a pool slot.
"""

from __future__ import annotations

import json
from collections.abc import MutableMapping

import aiohttp
from multidict import CIMultiDict
from starlette.types import Message, Receive, Scope, Send
from yarl import URL

from guardrail.flow.exchange import REPORT_EXTENSION
from guardrail.flow.routing import is_canonical, route_path

# Hop-by-hop headers describe one connection, not the message: never forwarded.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
# Asked of the upstream as identity: a compressed answer could not be screened.
# Expect: the server answered the client's 100-continue; the body is read whole.
_NOT_FORWARDED = _HOP_BY_HOP | {"accept-encoding", "expect"}
# The server in front of the proxy writes its own: one of each reaches the client.
_NOT_RETURNED = (_HOP_BY_HOP - {"content-length"}) | {"date", "server"}


class Upstream:
    """An ASGI app that forwards HTTP requests to one upstream service."""

    def __init__(
        self, base_url: str, *, timeout_s: float = 300.0, max_connections: int = 1000
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # No total: a streamed answer may be long; each read may wait timeout_s.
        self._timeout = aiohttp.ClientTimeout(total=None, connect=10.0, sock_read=timeout_s)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # websockets are not proxied
        if not is_canonical(scope):
            # The upstream could route it elsewhere than the guard matched it.
            await _error(send, 400, "the request path is not canonical", "non_canonical_path")
            return
        body = await _body(receive)  # whole: a guarded body was read and screened already
        query = scope.get("query_string", b"").decode("latin-1")
        url = self.base_url + route_path(scope) + (f"?{query}" if query else "")
        headers = CIMultiDict(
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in scope["headers"]
            if k.decode("latin-1").lower() not in _NOT_FORWARDED
        )
        headers["Accept-Encoding"] = "identity"
        try:
            response = await self._client().request(
                scope["method"],
                URL(url, encoded=True),  # as matched: no second normalisation
                headers=headers,
                data=body,
                allow_redirects=False,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            _report_app_error(scope)
            await _error(send, 502, f"upstream unreachable: {type(exc).__name__}", "bad_gateway")
            return
        finished = False
        try:
            returned = [
                (k.lower(), v)
                for k, v in response.raw_headers
                if k.decode("latin-1").lower() not in _NOT_RETURNED
            ]
            await send(
                {"type": "http.response.start", "status": response.status, "headers": returned}
            )
            try:
                async for chunk in response.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except (aiohttp.ClientError, TimeoutError):
                _report_app_error(scope)
                raise  # the server aborts the response: a cut answer must not look whole
            await send({"type": "http.response.body", "body": b""})
            finished = True
        finally:
            if finished:
                response.release()
            else:
                # Cancelled (a refusal, a client gone) or broken: close the
                # connection, so the upstream stops generating.
                response.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # created in the server's loop, on first use
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                timeout=self._timeout,
                auto_decompress=False,  # the bytes go to the client as they came
                skip_auto_headers=("User-Agent",),  # the client's own is forwarded
            )
        return self._session

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._session is not None:
                    await self._session.close()
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


def _report_app_error(scope: Scope) -> None:
    """Tell the guard (when it is the caller) that the upstream failed to answer."""
    report: MutableMapping[str, str] | None = scope.get("extensions", {}).get(REPORT_EXTENSION)
    if report is not None:
        report["outcome"] = "app_error"


async def _error(send: Send, status: int, why: str, code: str) -> None:
    error = {"message": why, "type": code, "code": code}
    body = json.dumps({"error": error}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
