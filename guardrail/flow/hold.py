"""Holding the app's response until the verdict, then releasing it in order."""

from __future__ import annotations

import time
from collections import deque

from starlette.types import Message, Send

Downstream = Send  # where released messages go: the client, or the answer screen


def _is_last(message: Message) -> bool:
    return message["type"] == "http.response.body" and not message.get("more_body", False)


class Hold:
    """The ``send`` the app gets: keeps its messages until ``release``, then passes them on."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._held: deque[Message] = deque()
        self._open = False
        self.completed_at: float | None = None  # the app sent its last body message
        # When the app last sent anything (or started): the output stage's idle clock.
        self.last_message_at = time.monotonic()

    async def __call__(self, message: Message) -> None:
        self.last_message_at = time.monotonic()
        if _is_last(message):
            self.completed_at = time.perf_counter()
        if self._open:
            await self._send(message)
        else:
            self._held.append(message)

    async def release(self, to: Downstream | None = None) -> None:
        """Send what was held (to the client, or ``to``), then let later messages through."""
        if to is not None:
            self._send = to
        # The app may send more while we await here; drain until empty, then
        # open with no await in between so nothing overtakes what was held.
        while self._held:
            await self._send(self._held.popleft())
        self._open = True
