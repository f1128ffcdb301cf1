"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from stub_llm import StubLLM

# CI is a loaded 2-core machine: an example's wall time says nothing about the
# code, so no property test may fail on hypothesis's per-example deadline or its
# too-slow health check. A test's own settings still set its example count.
settings.register_profile("loaded", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("loaded")


@pytest.fixture
def stub_llm() -> Iterator[StubLLM]:
    """A started stub OpenAI-compatible server on 127.0.0.1, stopped after the test."""
    with StubLLM() as stub:
        yield stub


@pytest.fixture
def stub_llm_factory() -> Iterator[Callable[..., StubLLM]]:
    """Start as many stubs as a test needs: ``stub_llm_factory(latency_s=0.1)``."""
    started: list[StubLLM] = []

    def start(**settings: Any) -> StubLLM:
        stub = StubLLM(**settings).start()
        started.append(stub)
        return stub

    yield start
    for stub in started:
        stub.stop()
