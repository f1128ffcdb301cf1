"""A real Prometheus for tests: the ``prometheus`` binary on a free port, and its HTTP API.

    with Prometheus(binary, tmp, targets=["127.0.0.1:8000"], rule_files=[rules]) as prom:
        prom.query("up")

The binary comes from the Debian package ``prometheus`` (``./scripts/test``
installs it when run as root). Tests that need it skip when it is missing,
except in CI (``CI`` set), where a missing binary fails them.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

Labels = frozenset[tuple[str, str]]


def find_binary(name: str) -> str | None:
    """``name`` on PATH, or in /usr/bin where the Debian package puts it."""
    found = shutil.which(name)
    if found:
        return found
    fallback = Path("/usr/bin") / name
    return str(fallback) if os.access(fallback, os.X_OK) else None


def require_binary(name: str) -> str:
    """The path of ``name``; skip the test if it is missing, or fail it in CI."""
    path = find_binary(name)
    if path is None:
        reason = (
            f"{name} is not installed (Debian package: prometheus; "
            "./scripts/test installs it when run as root)"
        )
        if os.environ.get("CI"):
            pytest.fail(f"{reason}, and CI must run the Prometheus tests", pytrace=False)
        pytest.skip(reason)
    return path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PromQLError(Exception):
    """Prometheus answered a query with an error."""


class Prometheus:
    """A Prometheus server that scrapes ``targets`` and evaluates ``rule_files``."""

    def __init__(
        self,
        binary: str,
        workdir: Path,
        *,
        targets: Sequence[str],
        rule_files: Iterable[Path] = (),
        interval: str = "1s",
        job: str = "guardrail",
    ) -> None:
        self.binary, self.workdir = binary, workdir
        self.targets, self.rule_files = list(targets), [str(p) for p in rule_files]
        self.interval, self.job = interval, job
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._http = httpx.Client(timeout=10.0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        """Where the server's output goes."""
        return self.workdir / "prometheus.log"

    def config(self) -> dict[str, Any]:
        """The configuration the server runs with."""
        return {
            "global": {"scrape_interval": self.interval, "evaluation_interval": self.interval},
            "rule_files": self.rule_files,
            "scrape_configs": [
                {
                    "job_name": self.job,
                    "scrape_interval": self.interval,
                    "scrape_timeout": self.interval,
                    "static_configs": [{"targets": self.targets}],
                }
            ],
        }

    def start(self) -> Prometheus:
        """Start the server; return once it is ready to answer queries."""
        config = self.workdir / "prometheus.yml"
        config.write_text(json.dumps(self.config(), indent=2))  # JSON is YAML
        self.port = free_port()
        with self.log.open("wb") as log:
            self._process = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if not self.wait_until(self._ready, timeout=30.0):
            self.stop()
            raise RuntimeError(f"prometheus did not become ready:\n{self.log_tail()}")
        return self

    def stop(self) -> None:
        """Stop the server: SIGTERM, then SIGKILL after 10 s."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._http.close()

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's output, for failure messages."""
        if not self.log.exists():
            return "(no log)"
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def api(self, path: str, **params: Any) -> Any:
        """``GET /api/v1/<path>``: the answer's ``data``; a PromQLError if it reports one."""
        response = self._http.get(f"{self.url}/api/v1/{path}", params=params)
        try:
            body = response.json()
        except ValueError:
            raise PromQLError(f"{path}: HTTP {response.status_code}: {response.text}") from None
        if body.get("status") != "success":
            raise PromQLError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> dict[str, Any]:
        """An instant query (at ``at``, Unix seconds; now by default): its ``data``."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data: dict[str, Any] = self.api("query", **params)
        return data

    def vector(self, expr: str, at: float | None = None) -> dict[Labels, float]:
        """An instant query that must give a vector: each series' labels and value."""
        data = self.query(expr, at)
        if data["resultType"] != "vector":
            raise PromQLError(f"{expr}: a {data['resultType']}, not a vector")
        return {frozenset(s["metric"].items()): float(s["value"][1]) for s in data["result"]}

    def value(self, expr: str, at: float | None = None) -> float:
        """An instant query that must give one sample; NaN if it gives none."""
        found = self.vector(expr, at)
        if len(found) > 1:
            raise PromQLError(f"{expr}: {len(found)} series, not one")
        return next(iter(found.values()), math.nan)

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
        """Poll ``predicate`` every 50 ms until it is true or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline or not self._running():
                return False
            time.sleep(0.05)
        return True

    def _running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _ready(self) -> bool:
        try:
            return self._http.get(f"{self.url}/-/ready").status_code == 200
        except httpx.HTTPError:
            return False
