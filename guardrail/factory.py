"""Judges and the panel, built from a validated policy. Nothing here runs at import time."""

from __future__ import annotations

import os

from guardrail.judges.base import Judge
from guardrail.panel import PanelJudge, PanelRunner
from guardrail.policy import (
    InjectionJudgeSpec,
    JudgeSpec,
    KeywordJudgeSpec,
    LLMJudgeSpec,
    PIIJudgeSpec,
    Policy,
)
from guardrail.policy_errors import PolicyError
from guardrail.voting import QuorumRule, Seat


def build_judge(name: str, spec: JudgeSpec, *, temperature: float | None = None) -> Judge:
    """One judge from its policy entry (``temperature`` overrides an LLM judge's)."""
    from guardrail.judges import local

    try:
        if isinstance(spec, KeywordJudgeSpec):
            return local.KeywordJudge(
                name, keywords=spec.keywords, patterns=spec.patterns, category=spec.category
            )
        if isinstance(spec, PIIJudgeSpec):
            return local.PIIJudge(name, kinds=spec.kinds)
        if isinstance(spec, InjectionJudgeSpec):
            return local.InjectionJudge(name, extra_patterns=spec.extra_patterns)
    except ValueError as exc:  # a pattern the policy check let through, say
        raise PolicyError.single("<policy>", 0, f"judges.{name}", str(exc)) from None
    assert isinstance(spec, LLMJudgeSpec)
    # Imported here: the LLM client stack costs import time only when a policy uses it.
    from guardrail.judges.llm import LLMJudge

    return LLMJudge(
        name=name,
        model=spec.model,
        categories=spec.categories,
        api_base=spec.api_base,
        api_key=os.environ.get(spec.api_key_env) if spec.api_key_env else None,
        # The stage bounds every call (a screen's timeout, the panel's deadline);
        # the judge's own limit is only a backstop and must not cut them short.
        timeout_s=3600.0,
        temperature=spec.temperature if temperature is None else temperature,
        max_tokens=spec.max_tokens,
        json_schema=spec.json_schema,
        client=spec.client,
    )


def build_panel(policy: Policy, judges: dict[str, Judge]) -> PanelRunner | None:
    """The panel runner, one seat per sample; samples get their own judge and temperature."""
    panel = policy.panel
    if panel is None:
        return None
    seats = []
    for entry in panel.judges:
        spec = policy.judges[entry.judge]
        for sample in range(entry.samples):
            judge = judges[entry.judge]
            if sample or entry.temperature is not None:
                judge = build_judge(entry.judge, spec, temperature=entry.temperature)
            seats.append(PanelJudge(judge, Seat(entry.judge, entry.weight)))
    rule = QuorumRule(panel.quorum, panel.k, panel.tie, panel.min_votes)
    return PanelRunner(seats, rule, deadline_s=panel.deadline_s)
