"""The factory: build every part a policy names, once, and the record each request leaves.

Nothing is built at import time. ``Guard.build`` turns a validated policy into
judges, screens, an adapter and metrics; the middleware only runs them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from guardrail.adapters import ADAPTERS, Adapter
from guardrail.decision import Decision
from guardrail.judges.base import Judge, JudgeFailure, Verdict
from guardrail.metrics import GuardrailMetrics, metrics_for
from guardrail.policy import (
    InjectionJudgeSpec,
    JudgeSpec,
    KeywordJudgeSpec,
    LLMJudgeSpec,
    PIIJudgeSpec,
    Policy,
)
from guardrail.policy_errors import PolicyError
from guardrail.screening import Screen, Screening


@dataclass(slots=True)
class Record:
    """What happened to one guarded request: the source of its metrics and audit line."""

    decision: Decision
    duration_s: float
    screening: Screening | None = None
    added_latency_s: float | None = None
    app_cancelled: str | None = None  # why the app's generation was cancelled
    rejected: str | None = None  # why the request could not be screened


@dataclass(frozen=True, slots=True)
class Guard:
    """A policy with its parts built: what the middleware runs for each request."""

    policy: Policy
    adapter: Adapter
    screens: tuple[Screen, ...]
    judges: dict[str, Judge]
    metrics: GuardrailMetrics

    @classmethod
    def build(cls, policy: Policy, *, registry: CollectorRegistry | None = None) -> Guard:
        """Build judges, screens, adapter and metrics for a policy."""
        judges = {name: build_judge(name, spec) for name, spec in policy.judges.items()}
        screens = tuple(
            Screen(
                judges[s.judge],
                s.timeout_s,
                frozenset(s.categories) if s.categories is not None else None,
            )
            for s in policy.input.screens
        )
        metrics = metrics_for(registry)
        metrics.prepare(policy.name, list(judges))
        return cls(policy, ADAPTERS[policy.format](), screens, judges, metrics)

    def decide(self, screening: Screening) -> Decision:
        """The decision the policy takes on what the input screens said."""
        if screening.flag is not None:
            return "flagged_allowed" if self.policy.on_flag == "log_only" else "blocked"
        if screening.failures:
            return "error_allowed" if self.policy.on_error == "allow" else "error_blocked"
        return "allowed"

    def observe(self, record: Record) -> None:
        """Count one finished request."""
        m, policy = self.metrics, self.policy.name
        m.requests.labels(policy, record.decision).inc()
        m.request_duration.labels(policy, record.decision).observe(record.duration_s)
        if record.added_latency_s is not None:
            m.added_latency.labels(policy).observe(record.added_latency_s)
        if record.app_cancelled:
            m.app_cancelled.labels(policy, record.app_cancelled).inc()
        if record.rejected:
            m.rejected.labels(policy, record.rejected).inc()
        if record.screening is not None:
            for result in record.screening.results:
                m.judge_duration.labels(policy, result.judge, "input").observe(result.latency_s)
                if isinstance(result, JudgeFailure):
                    m.judge_errors.labels(policy, result.judge, result.reason).inc()
                elif isinstance(result, Verdict) and result.flagged:
                    for category in result.categories or ("other",):
                        m.flags.labels(policy, "input", result.judge, category).inc()

    async def aclose(self) -> None:
        """Close the judges' clients."""
        for judge in self.judges.values():
            await judge.aclose()


def build_judge(name: str, spec: JudgeSpec) -> Judge:
    """One judge from its policy entry."""
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
    except ValueError as exc:  # a pattern that does not compile, say
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
        temperature=spec.temperature,
        max_tokens=spec.max_tokens,
        json_schema=spec.json_schema,
        client=spec.client,
    )
