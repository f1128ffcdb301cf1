"""The pure-ASGI middleware: guarded routes go through ``GuardedExchange``, the rest pass."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from guardrail.exchange import GuardedExchange
from guardrail.guard import Guard
from guardrail.policy import Policy, load_policy


class GuardrailMiddleware:
    """Screens chat requests in parallel with the app; holds each answer until the verdict."""

    def __init__(
        self,
        app: ASGIApp,
        policy: str | Path | Policy | None = None,
        *,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.app = app
        # Built and validated now: a bad policy stops startup, never a request.
        self.guard = Guard.build(load_policy(policy), registry=registry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._closing_on_shutdown(send))
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        metrics_path = self.guard.policy.metrics.path
        if metrics_path is not None and path == metrics_path and method == "GET":
            await self._serve_metrics(send)
        elif self.guard.policy.guards(method, path):
            await GuardedExchange(self.app, self.guard, scope, receive, send).run()
        else:
            await self.app(scope, receive, send)

    async def _serve_metrics(self, send: Send) -> None:
        body = generate_latest(self.guard.metrics.registry)
        headers = [
            (b"content-type", CONTENT_TYPE_LATEST.encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _closing_on_shutdown(self, send: Send) -> Send:
        async def lifespan_send(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await self.guard.aclose()  # judges' HTTP sessions die with the app
            await send(message)

        return lifespan_send
