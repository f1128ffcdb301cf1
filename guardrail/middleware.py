"""The pure-ASGI middleware: guarded routes go through ``GuardedExchange``, the rest pass.

Which policy guards a request: the tenant's, when a tenant header names a
known tenant; else the first policy whose routes match. Each policy file is
watched and reloaded live (``guardrail.reload``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from guardrail.exchange import GuardedExchange
from guardrail.guard import Guard
from guardrail.metrics import multiprocess_registry
from guardrail.policy import Policy, load_policy
from guardrail.reload import PolicyReloader

log = logging.getLogger("guardrail")

PolicySource = str | Path | Policy | None


class _Fixed:
    """A policy that is not a file on disk (embedded, or a Policy object): never reloaded."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard

    def start(self) -> None:
        """Nothing to watch."""

    async def stop(self) -> None:
        """Nothing to stop."""


class GuardrailMiddleware:
    """Screens chat requests in parallel with the app; holds each answer until the verdict."""

    def __init__(
        self,
        app: ASGIApp,
        policy: PolicySource | Sequence[PolicySource] = None,
        *,
        registry: CollectorRegistry | None = None,
        tenants: Mapping[str, PolicySource] | None = None,
        tenant_header: str = "x-tenant",
        watch: bool = True,
        watch_interval_s: float = 1.0,
    ) -> None:
        self.app = app
        self._registry = registry
        self._watch, self._interval = watch, watch_interval_s
        # Built and validated now: a bad policy stops startup, never a request.
        sources: list[PolicySource] = (
            list(policy) if isinstance(policy, list | tuple) else [policy]  # type: ignore[list-item]
        )
        self._by_route = [self._slot(source) for source in sources]
        self._tenants = {name: self._slot(source) for name, source in (tenants or {}).items()}
        self._tenant_header = tenant_header.lower().encode()
        self._started = False

    @property
    def guard(self) -> Guard:
        """The guard of the first (default) policy."""
        return self._by_route[0].guard

    def _slot(self, source: PolicySource) -> PolicyReloader | _Fixed:
        guard = Guard.build(load_policy(source), registry=self._registry)
        guard.announce()
        path = Path(source) if isinstance(source, str | Path) else None
        if not self._watch or path is None or not path.is_file():
            return _Fixed(guard)
        return PolicyReloader(
            path, guard, registry=self._registry, interval_s=self._interval, on_swap=Guard.announce
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._started:
            self._started = True
            for slot in self._slots():
                slot.start()  # needs the server's running loop: started on first use
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
            return
        guard = self._guard_for(scope, method, path)
        if guard is None:
            await self.app(scope, receive, send)
        else:
            await GuardedExchange(self.app, guard, scope, receive, send).run()

    def _guard_for(self, scope: Scope, method: str, path: str) -> Guard | None:
        if self._tenants:
            tenant = next((v for k, v in scope["headers"] if k == self._tenant_header), None)
            if tenant is not None:
                slot = self._tenants.get(tenant.decode("latin-1"))
                if slot is not None:
                    guard = slot.guard
                    return guard if guard.policy.guards(method, path) else None
                # Never unscreened: an unknown tenant gets the default policies.
                self.guard.metrics.unknown_tenants.labels(self.guard.policy.name).inc()
        for slot in self._by_route:
            if slot.guard.policy.guards(method, path):
                return slot.guard
        return None

    def _slots(self) -> list[PolicyReloader | _Fixed]:
        return [*self._by_route, *self._tenants.values()]

    async def _serve_metrics(self, send: Send) -> None:
        registry = self.guard.metrics.registry
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if directory:
            # Several worker processes: sum what every live worker wrote to the shared directory.
            registry = multiprocess_registry(directory)
        body = generate_latest(registry)
        headers = [
            (b"content-type", CONTENT_TYPE_LATEST.encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _closing_on_shutdown(self, send: Send) -> Send:
        async def lifespan_send(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                for slot in self._slots():
                    await slot.stop()
                    await slot.guard.aclose()  # judges' sessions, the audit trail's queue
            await send(message)

        return lifespan_send
