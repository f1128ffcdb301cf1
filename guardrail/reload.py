"""Live policy reload: on a file change or SIGHUP, validate, then swap atomically.

Requests in flight keep the ``Guard`` they started with (each exchange holds
its own reference); new requests get the new one. A file that fails to read
or validate (garbage, truncated mid-write, deleted, unreadable) leaves the old
policy serving; the error is logged with file, line and field, and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry

from guardrail.guard import Guard
from guardrail.policy import load_policy
from guardrail.policy_errors import PolicyError

log = logging.getLogger("guardrail")

# Old guards are closed only after requests that started under them are done;
# no stage runs longer than this in practice (timeouts and deadlines are shorter).
_RETIRE_AFTER_S = 120.0


class PolicyReloader:
    """Keeps a guard current with its policy file."""

    def __init__(
        self,
        path: Path,
        guard: Guard,
        *,
        registry: CollectorRegistry | None,
        interval_s: float,
        on_swap: Callable[[Guard], None],
    ) -> None:
        self.path, self.guard, self.registry = path, guard, registry
        self.interval_s = interval_s
        self._on_swap = on_swap
        self._seen = _stamp(path)
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def start(self) -> None:
        """Start watching (inside the server's event loop); idempotent."""
        if self._task is not None:
            return
        self._task = asyncio.ensure_future(self._watch())
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError, AttributeError):
            # Only the main thread may handle signals; elsewhere the file watch suffices.
            asyncio.get_running_loop().add_signal_handler(
                signal.SIGHUP, lambda: asyncio.ensure_future(self.reload("sighup"))
            )

    async def stop(self) -> None:
        """Stop watching."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def reload(self, why: str = "manual") -> bool:
        """Load the file now; swap it in if valid. Returns whether it was swapped."""
        async with self._lock:
            metrics, name = self.guard.metrics, self.guard.policy.name
            try:
                policy = load_policy(self.path)
                # Off the loop: building may import LiteLLM, which takes seconds.
                fresh = await asyncio.to_thread(Guard.build, policy, registry=self.registry)
            except PolicyError as exc:
                metrics.reloads.labels(name, "failure").inc()
                log.error("policy reload (%s) rejected; still serving %s: %s", why, name, exc)
                return False
            old, self.guard = self.guard, fresh
            self._on_swap(fresh)
            metrics.reloads.labels(fresh.policy.name, "success").inc()
            log.info("policy reloaded (%s): %s %s", why, fresh.policy.name, fresh.version)
            asyncio.get_running_loop().call_later(
                _RETIRE_AFTER_S, lambda: asyncio.ensure_future(old.aclose())
            )
            return True

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            stamp = _stamp(self.path)
            if stamp != self._seen:
                self._seen = stamp
                await self.reload("file changed")


def _stamp(path: Path) -> tuple[float, int, int] | None:
    """What changes when the file does (None: it is gone or unreadable)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime, st.st_size, st.st_ino)
