"""Live policy reload: on a file change or SIGHUP, validate, then swap atomically.

Requests in flight keep the ``Guard`` they started with (each exchange holds
its own reference); new requests get the new one. A file that fails to read
or validate (garbage, truncated mid-write, deleted, unreadable) leaves the old
policy serving; the error is logged with file, line and field, counted, and
``guardrail_policy_reload_failing`` stays 1 until a reload succeeds.

The watch takes a changed file only once it has stopped changing: the same
size, mtime, inode and content hash at two polls in a row, and (on Linux) no
process holding it open for writing. A policy rewritten in place in several
writes (an editor, ``cat > file``) may be valid YAML half way through, with a
screen fewer; it is never served. What is parsed is the very bytes that were
hashed. Writing the file atomically (write a temporary file, then rename it
over the policy) is still best: nothing half-written ever exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry

from guardrail.decide.guard import Guard
from guardrail.policy.errors import PolicyError
from guardrail.policy.models import Policy, parse_policy

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
        self._seen = _stamp(path)  # the file as last taken (loaded, or failed to)
        self._changed: Stamp | None = None  # a changed file seen at the last poll
        self.polls = 0  # file checks so far (tests wait on it, not on the clock)
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
            return await self._take(_stamp(self.path), why)

    async def _take(self, stamp: Stamp | None, why: str) -> bool:
        self._seen, self._changed = stamp, None
        metrics, name = self.guard.metrics, self.guard.policy.name
        try:
            policy = _load(self.path, stamp)
            # Off the loop: building may import LiteLLM, which takes seconds.
            fresh = await asyncio.to_thread(Guard.build, policy, registry=self.registry)
        except PolicyError as exc:
            metrics.reloads.labels(name, "failure").inc()
            metrics.reload_failing.labels(name).set(1)
            log.error("policy reload (%s) rejected; still serving %s: %s", why, name, exc)
            return False
        old, self.guard = self.guard, fresh
        self._on_swap(fresh)
        metrics.reloads.labels(fresh.policy.name, "success").inc()
        for serving in {name, fresh.policy.name}:
            metrics.reload_failing.labels(serving).set(0)
        log.info("policy reloaded (%s): %s %s", why, fresh.policy.name, fresh.version)
        asyncio.get_running_loop().call_later(
            _RETIRE_AFTER_S, lambda: asyncio.ensure_future(old.aclose())
        )
        return True

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            async with self._lock:
                await self.poll()
                self.polls += 1

    async def poll(self) -> None:
        """Look at the file once; take it if it has stopped changing (the watch calls this)."""
        stamp = _stamp(self.path)
        if stamp == self._seen:
            self._changed = None  # changed and changed back: nothing to take
        elif stamp != self._changed:
            self._changed = stamp  # changed since the last poll: maybe still being written
        elif not _open_for_writing(self.path):
            await self._take(stamp, "file changed")  # the same at two polls, and no writer holds it


Stamp = tuple[int, int, int, str]


def _stamp(path: Path) -> Stamp | None:
    """What changes when the file does: mtime, size, inode, content hash (None: unreadable)."""
    try:
        st = os.stat(path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino, digest)


def _open_for_writing(path: Path) -> bool:
    """Whether some process holds the file open for writing (Linux; elsewhere: False).

    A writer that pauses between two writes (``cat > file`` between reads) leaves
    a file that looks finished at two polls. Linux refuses a read lease on a file
    open for writing anywhere, which tells such a writer apart. The lease is
    dropped at once: a writer opening the file meanwhile waits only that long.
    Where leases are unavailable (other systems and file systems, a file owned by
    another user), two equal polls decide alone.
    """
    set_lease = getattr(fcntl, "F_SETLEASE", None)
    if set_lease is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.fcntl(fd, set_lease, fcntl.F_RDLCK)
    except BlockingIOError:
        return True  # EAGAIN: open for writing somewhere
    except OSError:
        return False  # no leases here: unknown
    else:
        fcntl.fcntl(fd, set_lease, fcntl.F_UNLCK)
        return False
    finally:
        os.close(fd)


def _load(path: Path, stamp: Stamp | None) -> Policy:
    """The policy in the file, if it still holds the bytes ``stamp`` hashed."""
    try:
        data = path.read_bytes()
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError.single(str(path), 0, "", f"cannot read policy file: {exc}") from None
    if stamp is not None and hashlib.sha256(data).hexdigest() != stamp[3]:
        # Changed again since it was stamped: the next polls will take it.
        raise PolicyError.single(str(path), 0, "", "the file changed while it was read")
    return parse_policy(text, source=str(path))
