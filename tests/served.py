"""Serve any ASGI app with a real uvicorn on 127.0.0.1, in a background thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes; return whether it became true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


class Served:
    """A running uvicorn server for one app: ``with Served(app) as s: s.url``."""

    def __init__(
        self, app: Any, *, lifespan: str = "on", name: str = "served", **config: Any
    ) -> None:
        self.app, self.lifespan, self.name = app, lifespan, name
        self.config = config  # more uvicorn settings (root_path, ...)
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Served:
        """Start serving; return once the server accepts connections."""
        # IPPROTO_TCP, so asyncio sets TCP_NODELAY: without it a response's body
        # waits ~40 ms for the client's delayed ACK (Nagle).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app, lifespan=self.lifespan, log_level="warning", access_log=False, **self.config
        )
        server = self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=self.name, daemon=True
        )
        self._thread.start()
        if not wait_for(lambda: server.started or not self._thread_alive(), 10.0) or not (
            server.started
        ):
            self.stop()
            raise RuntimeError(f"{self.name} did not start")
        return self

    def stop(self) -> None:
        """Stop the server: gracefully (lifespan shutdown runs), forced after 3 s."""
        if self._server is None:
            return
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=3.0)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(timeout=10.0)
        self._server = self._thread = None

    def _thread_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> Served:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
