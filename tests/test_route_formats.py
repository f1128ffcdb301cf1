"""A format per route: default paths, the adapter each route's requests get, the summary."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from guardrail import PolicyError, parse_policy
from guardrail.adapters import OpenAIChat, OpenAICompletions, OpenAIResponses
from guardrail.cli.main import summary
from guardrail.decide.guard import Guard

JUDGES = "judges: {injection: {type: injection}}\ninput: {screens: [{judge: injection}]}\n"


def test_a_policy_without_routes_guards_its_formats_default_route() -> None:
    policy = parse_policy(f"name: p\nformat: openai_responses\n{JUDGES}")
    assert [r.path for r in policy.routes] == ["/v1/responses"]
    assert policy.format_of(policy.routes[0]) == "openai_responses"


def test_a_route_naming_only_its_format_gets_that_formats_path() -> None:
    policy = parse_policy(
        "name: p\nroutes:\n  - path: /chat\n  - format: openai_completions\n"
        "  - {format: openai_responses, path: /api/respond}\n" + JUDGES
    )
    assert [(r.path, policy.format_of(r)) for r in policy.routes] == [
        ("/chat", "openai_chat"),
        ("/v1/completions", "openai_completions"),
        ("/api/respond", "openai_responses"),
    ]
    guard = Guard.build(policy, registry=CollectorRegistry())
    assert isinstance(guard.adapter_for("POST", "/chat"), OpenAIChat)
    assert isinstance(guard.adapter_for("POST", "/v1/completions"), OpenAICompletions)
    assert isinstance(guard.adapter_for("POST", "/API/respond"), OpenAIResponses)
    text = summary(policy)
    assert "POST /v1/completions (openai_completions): prompt" in text
    assert "POST /api/respond (openai_responses): input" in text


def test_an_unknown_format_is_an_error_naming_the_route() -> None:
    with pytest.raises(PolicyError) as error:
        parse_policy("name: p\nroutes:\n  - {path: /x, format: openai_chats}\n" + JUDGES)
    assert "<policy>:3: routes[0].format" in str(error.value)
