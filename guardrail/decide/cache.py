"""Verdicts already given: a piece screened under this policy is not sent to a judge again.

Only passes are kept, and only definite ones: a judge's "not flagged" verdict.
A failure, a timeout or a cancelled call leaves nothing behind, and a flag is
screened again every time it comes back (so a flagged history piece keeps
blocking, and a panel gets to rule on it again). A key names the policy
version, the screen and a hash of the piece's normalised text with the
normalised context before it (``decide.pieces``): an entry written under
another policy never matches, and invisible-character variants of one piece
are one entry.

A cache that fails (Redis down, slow, answering garbage) is a miss: the piece
is screened. It is never an error and never a pass.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Protocol

log = logging.getLogger("guardrail")

# A shared cache that does not answer within this long is a miss: screening
# must not wait on it longer than a local judge takes.
LOOKUP_TIMEOUT_S = 0.05


class VerdictCache(Protocol):
    """Remembers which keys passed; ``passed`` answers for many keys at once."""

    async def passed(self, keys: Sequence[str]) -> list[bool]: ...

    async def remember(self, keys: Sequence[str]) -> None: ...

    async def aclose(self) -> None: ...


class Counted:
    """What a cache reports: hits, misses and evictions (metrics are injected)."""

    def __init__(
        self,
        on_lookup: Callable[[int, int], None] | None = None,
        on_evicted: Callable[[int], None] | None = None,
    ) -> None:
        self._on_lookup, self._on_evicted = on_lookup, on_evicted

    def looked_up(self, hits: int, misses: int) -> None:
        if self._on_lookup is not None:
            self._on_lookup(hits, misses)

    def evicted(self, n: int) -> None:
        if self._on_evicted is not None and n:
            self._on_evicted(n)


class MemoryCache:
    """A bounded in-process LRU of passed keys."""

    def __init__(self, entries: int, counted: Counted | None = None) -> None:
        self._entries = entries
        self._keys: OrderedDict[str, None] = OrderedDict()
        self._counted = counted or Counted()

    def __len__(self) -> int:
        return len(self._keys)

    async def passed(self, keys: Sequence[str]) -> list[bool]:
        found = []
        for key in keys:
            hit = key in self._keys
            if hit:
                self._keys.move_to_end(key)
            found.append(hit)
        self._counted.looked_up(sum(found), len(found) - sum(found))
        return found

    async def remember(self, keys: Sequence[str]) -> None:
        for key in keys:
            self._keys[key] = None
            self._keys.move_to_end(key)
        evicted = 0
        while len(self._keys) > self._entries:
            self._keys.popitem(last=False)
            evicted += 1
        self._counted.evicted(evicted)

    async def aclose(self) -> None:
        self._keys.clear()


class RedisCache:
    """Passed keys in Redis, shared by replicas; every failure of Redis is a miss.

    The ``redis`` client (the ``redis`` extra) is imported when the first lookup
    needs it, never at import time.
    """

    @staticmethod
    def _mark(key: str) -> bytes:
        # The value written is derived from its key, so a server that answers the
        # same thing to everything (garbage, a stub, a wrong database) is a miss.
        return hashlib.sha256(b"guardrail-pass\x00" + key.encode()).hexdigest()[:16].encode()

    def __init__(
        self,
        url: str,
        *,
        ttl_s: int,
        counted: Counted | None = None,
        timeout_s: float = LOOKUP_TIMEOUT_S,
    ) -> None:
        self._url, self._ttl, self._timeout = url, ttl_s, timeout_s
        self._counted = counted or Counted()
        self._client: Any = None

    def _redis(self) -> Any:
        if self._client is None:
            import redis.asyncio as redis  # the optional extra

            self._client = redis.Redis.from_url(
                self._url, socket_timeout=self._timeout, socket_connect_timeout=self._timeout
            )
        return self._client

    async def passed(self, keys: Sequence[str]) -> list[bool]:
        if not keys:
            return []
        try:
            async with asyncio.timeout(self._timeout):
                values = await self._redis().mget(list(keys))
            if not isinstance(values, list) or len(values) != len(keys):
                raise ValueError("not one value per key")
            found = [value == self._mark(key) for key, value in zip(keys, values, strict=True)]
        except Exception as exc:  # down, slow or garbage: screened, never passed
            log.debug("verdict cache lookup failed: %s", type(exc).__name__)
            found = [False] * len(keys)
        self._counted.looked_up(sum(found), len(found) - sum(found))
        return found

    async def remember(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        try:
            async with asyncio.timeout(self._timeout):
                pipe = self._redis().pipeline(transaction=False)
                for key in keys:
                    pipe.set(key, self._mark(key), ex=self._ttl)
                await pipe.execute()
        except Exception as exc:  # not remembered: screened again next time
            log.debug("verdict cache write failed: %s", type(exc).__name__)

    async def aclose(self) -> None:
        if self._client is not None:
            try:
                await self._client.aclose()
            except Exception:  # a dead connection closes as well as it can
                log.debug("verdict cache close failed", exc_info=True)
            self._client = None
