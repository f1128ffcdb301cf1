"""The pure-ASGI middleware: guarded routes go through ``GuardedExchange``, the rest pass.

Which policy guards a request: the tenant's, when a tenant header names a
known tenant and its policy guards the route; else the first policy whose
routes match (a tenant never makes a route less guarded). Routes match the
path the app routes on (``guardrail.flow.routing``), methods in any case. Refused
with a clear 4xx, never passed unscreened: a path that is not canonical and
could reach a guarded route (400), a body or query string sent with a
method the guarded route does not list (405). A guarded request's query
string is screened with its body (``routing.query_text``). Each policy
file is watched and reloaded live (``guardrail.observe.reload``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from guardrail.adapters import BadRequest
from guardrail.decide.guard import Guard, Record
from guardrail.flow.exchange import GuardedExchange
from guardrail.flow.routing import is_canonical, loosest_readings, route_path
from guardrail.observe.metrics import multiprocess_registry
from guardrail.observe.reload import PolicyReloader
from guardrail.policy.models import Policy, load_policy

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
        self._tenant_header = tenant_header.lower().encode()
        self._started = False
        self._broken: str | None = None  # why this middleware cannot serve (see below)
        # Built and validated now: a bad policy stops startup, never a request.
        sources: list[PolicySource] = (
            list(policy) if isinstance(policy, list | tuple) else [policy]  # type: ignore[list-item]
        )
        try:
            self._by_route = [self._slot(source) for source in sources]
            self._tenants = {name: self._slot(source) for name, source in (tenants or {}).items()}
        except Exception as exc:
            if not _loop_running():
                raise  # built by the user's code: the error surfaces there, at once
            # Built by the server (Starlette's add_middleware builds its stack at
            # the first lifespan or request call): raising here would read as
            # "lifespan unsupported" and every request would answer a 500. Fail
            # the lifespan startup with the message instead; without a lifespan,
            # answer 503. Never pass a request unscreened.
            self._broken = str(exc)
            self._by_route, self._tenants = [], {}
            log.error("guardrail cannot start: %s", exc)

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
        if self._broken is not None:
            await _not_serving(self._broken, scope, receive, send)
            return
        if not self._started:
            self._started = True
            for slot in self._slots():
                slot.start()  # needs the server's running loop: started on first use
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._closing_on_shutdown(send))
            return
        if scope["type"] == "websocket" and self._covered(scope):
            # Messages on a socket are never screened: not on a guarded path.
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"].upper(), route_path(scope)
        metrics_path = self.guard.policy.metrics.path
        if metrics_path is not None and path == metrics_path and method == "GET":
            await self._serve_metrics(send)
            return
        candidates = self._candidates(scope)
        if candidates is None:
            # Two tenants named: we could pick one policy and the app the other.
            near = _first(self._all_guards(), lambda p: p.route_for(path))
            if near is not None:
                why = "the request names more than one tenant: send one tenant header"
                error = BadRequest("ambiguous_tenant", why)
                await _refuse(near, send, error, method=method, path=path)
                return
            candidates = [slot.guard for slot in self._by_route]
        guard = _first(candidates, lambda p: p.guards(method, path))
        readings = loosest_readings(scope)
        if not is_canonical(scope):
            # A receiver could read this path otherwise than we match it: refuse
            # it if any reading reaches a guarded route.
            near = guard or _first(
                candidates, lambda p: any(p.route_for(r) for r in {path, *readings})
            )
        elif guard is None:
            # Canonical, but a receiver may drop a ".json" suffix (Rails'
            # formats, Spring's suffix patterns) and reach a guarded route.
            near = _first(
                candidates,
                lambda p: not p.route_for(path) and any(p.route_for(r) for r in readings),
            )
        else:
            near = None
        if near is not None:
            why = "the request path is not canonical (dot segments, encoded or doubled"
            why += " separators, backslashes, ';' or a suffix): send the plain path"
            await _refuse(
                near, send, BadRequest("non_canonical_path", why), method=method, path=path
            )
            return
        if guard is None:
            covering = _first(candidates, lambda p: p.route_for(path))
            if covering is not None and _carries_text(scope):
                # The app might act on this body or query (a method-agnostic
                # app or upstream, ``GET ?prompt=``): it would be unscreened.
                # List the method to guard it.
                await self._refuse_method(covering, send, path)
                return
            await self.app(scope, receive, send)
        else:
            await GuardedExchange(self.app, guard, scope, receive, send).run()

    def _candidates(self, scope: Scope) -> list[Guard] | None:
        """The guards that may take this request, in order: its tenant's first.

        None when the tenant is ambiguous: the header given twice with different
        values (receivers disagree on which one counts, or join them).
        """
        by_route = [slot.guard for slot in self._by_route]
        if not self._tenants:
            return by_route
        named = {v for k, v in scope["headers"] if k == self._tenant_header}
        if len(named) > 1:
            return None
        tenant = next(iter(named), None)
        if tenant is None:
            return by_route
        slot = self._tenants.get(tenant.decode("latin-1"))
        if slot is None:
            # Never unscreened: an unknown tenant gets the default policies.
            self.guard.metrics.unknown_tenants.labels(self.guard.policy.name).inc()
            return by_route
        # The route policies still guard what the tenant's policy does not.
        return [slot.guard, *by_route]

    async def _refuse_method(self, guard: Guard, send: Send, path: str) -> None:
        route = guard.policy.route_for(path)
        assert route is not None
        allowed = ", ".join(route.methods)
        why = f"this path takes a body or query string only with {allowed}"
        await _refuse(
            guard,
            send,
            BadRequest("method_not_allowed", why, status=405),
            [(b"allow", allowed.encode())],
            path=path,
        )

    def _covered(self, scope: Scope) -> bool:
        """Whether any reading of this request's path falls under a guarded route."""
        readings = {route_path(scope), *loosest_readings(scope)}
        return any(g.policy.route_for(r) for g in self._all_guards() for r in readings)

    def _all_guards(self) -> list[Guard]:
        return [slot.guard for slot in self._slots()]

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


def _first(guards: list[Guard], accepts: Callable[[Policy], object]) -> Guard | None:
    return next((guard for guard in guards if accepts(guard.policy)), None)


def _carries_text(scope: Scope) -> bool:
    """Whether the request has a body or a query string: text the receiver could act on."""
    if scope.get("query_string"):
        return True
    for key, value in scope["headers"]:
        if key == b"transfer-encoding" or (key == b"content-length" and value.strip() != b"0"):
            return True
    return False


async def _refuse(
    guard: Guard,
    send: Send,
    error: BadRequest,
    headers: Sequence[tuple[bytes, bytes]] = (),
    *,
    method: str = "POST",
    path: str = "",
) -> None:
    """Refuse a request the guard cannot screen as the receiver would read it; count it."""
    reply = (guard.adapter_for(method, path) if path else guard.adapter).error(error)
    reply.headers.extend(headers)
    guard.observe(Record("rejected", 0.0, rejected=error.code))
    for message in reply.messages():
        await send(message)


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def _not_serving(why: str, scope: Scope, receive: Receive, send: Send) -> None:
    """A middleware whose policy failed to load: stop the server, or refuse every request."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.failed", "message": why})
                return  # the server stops: no shutdown follows
            if message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    elif scope["type"] == "http":
        error = {
            "message": "guardrail is not serving: its policy failed to load",
            "type": "server_error",
            "code": "policy_error",
        }
        body = json.dumps({"error": error}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    elif scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1011})
