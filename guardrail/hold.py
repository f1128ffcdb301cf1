"""Holding the app's response until the verdict, then releasing it in order."""

from __future__ import annotations

import time
from collections import deque

from starlette.types import Message, Send


def _is_last(message: Message) -> bool:
    return message["type"] == "http.response.body" and not message.get("more_body", False)


class Hold:
    """The ``send`` the app gets: keeps its messages until ``release``, then passes them on."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._held: deque[Message] = deque()
        self._open = False
        self.completed_at: float | None = None  # the app sent its last body message
        self.released_at: float | None = None  # that message reached the server

    async def __call__(self, message: Message) -> None:
        if _is_last(message):
            self.completed_at = time.perf_counter()
        if self._open:
            await self._forward(message)
        else:
            self._held.append(message)

    async def release(self) -> None:
        """Send what was held, then let later messages straight through."""
        # The app may send more while we await here; drain until empty, then
        # open with no await in between so nothing overtakes what was held.
        while self._held:
            await self._forward(self._held.popleft())
        self._open = True

    @property
    def added_latency_s(self) -> float | None:
        """How long the complete response waited for us: the guard's cost to the user."""
        if self.completed_at is None or self.released_at is None:
            return None
        return max(0.0, self.released_at - self.completed_at)

    async def _forward(self, message: Message) -> None:
        await self._send(message)
        if _is_last(message):
            self.released_at = time.perf_counter()
