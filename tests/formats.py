"""Building blocks for tests of the other OpenAI APIs (Responses, legacy completions).

One policy guards all three OpenAI routes, each in its own format; the example
app answers each (an offline echo), served guarded in-process or behind the
proxy, over real HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from guarded import Guarded
from openai import OpenAI
from prometheus_client import CollectorRegistry
from served import Served

from examples.chat_app import create_app
from guardrail import GuardrailMiddleware, Policy, parse_policy
from guardrail.flow.proxy import Upstream

# Benign text long enough that windows pass and are released before what follows.
PREAMBLE = (
    "Here is a long and harmless note about the weather in Paris, the river, the bridges, "
    "the museums and the cafes along the streets, written only to fill a few windows. "
)


def formats_policy(*, answers: bool = False) -> Policy:
    """Requests screened for injection (and PII unless ``answers``); answers for PII if asked."""
    input_screens = "[{judge: injection}]" if answers else "[{judge: injection}, {judge: pii}]"
    output = (
        "output: {screens: [{judge: pii}], window_chars: 65, overlap_chars: 64}\n"
        if answers
        else ""
    )
    return parse_policy(
        "name: test\n"
        "routes:\n"
        "  - path: /v1/chat/completions\n"
        "  - format: openai_responses\n"
        "  - format: openai_completions\n"
        "judges: {injection: {type: injection}, pii: {type: pii}}\n"
        f"input: {{screens: {input_screens}}}\n"
        f"{output}"
    )


def client(url: str) -> OpenAI:
    """The real openai client, pointed at ``url``."""
    return OpenAI(base_url=url + "/v1", api_key="test", max_retries=0)


@contextmanager
def served_guarded(policy: Policy) -> Iterator[Guarded]:
    """The example app, guarded in-process by ``policy``, on real uvicorn."""
    registry = CollectorRegistry()
    with Served(create_app(policy, registry=registry), name="guarded-app") as served:
        yield Guarded(served, registry)


@contextmanager
def served_proxy(policy: Policy) -> Iterator[Guarded]:
    """The example app unguarded, behind ``guardrail proxy``'s app guarded by ``policy``."""
    registry = CollectorRegistry()
    with Served(create_app(None), name="upstream") as upstream:
        proxy = GuardrailMiddleware(Upstream(upstream.url), policy=policy, registry=registry)
        with Served(proxy, name="proxy") as served:
            yield Guarded(served, registry)
