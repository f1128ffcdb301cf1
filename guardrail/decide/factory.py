"""Judges, screens and the panel, built from a validated policy. Nothing runs at import time."""

from __future__ import annotations

import logging
import os

from guardrail.decide.panel import PanelJudge, PanelRunner
from guardrail.decide.screening import Screen
from guardrail.decide.voting import QuorumRule, Seat
from guardrail.judges.base import Askable, Judge
from guardrail.judges.categories import category_key
from guardrail.policy.checks import answerable
from guardrail.policy.errors import PolicyError
from guardrail.policy.models import (
    ClassifierJudgeSpec,
    InjectionJudgeSpec,
    JudgeSpec,
    KeywordJudgeSpec,
    LLMJudgeSpec,
    ModerationJudgeSpec,
    PIIJudgeSpec,
    Policy,
    PythonJudgeSpec,
)
from guardrail.policy.models import Screen as ScreenSpec

log = logging.getLogger("guardrail")


def build_judge(name: str, spec: JudgeSpec, *, temperature: float | None = None) -> Judge:
    """One judge from its policy entry (``temperature`` overrides an LLM judge's)."""
    from guardrail.judges import local

    try:
        if isinstance(spec, KeywordJudgeSpec):
            return local.KeywordJudge(
                name,
                keywords=spec.keywords,
                patterns=spec.patterns,
                category=category_key(spec.category),
            )
        if isinstance(spec, PIIJudgeSpec):
            return local.PIIJudge(name, kinds=spec.kinds)
        if isinstance(spec, InjectionJudgeSpec):
            return local.InjectionJudge(name, extra_patterns=spec.extra_patterns)
        if isinstance(spec, ClassifierJudgeSpec):
            # Imported here: onnxruntime is an optional extra. The model loads
            # now, so a missing or broken one stops the policy, not a request.
            from guardrail.judges.classifier import ClassifierJudge

            return ClassifierJudge.from_spec(name, spec)
        if isinstance(spec, PythonJudgeSpec):
            from guardrail.judges.user import PythonJudge

            return PythonJudge(
                name,
                path=spec.judge,
                settings=spec.settings,
                categories=spec.categories,
                max_workers=spec.max_workers,
            )
    except ValueError as exc:  # a pattern the policy check let through, an unusable model
        raise PolicyError.single("<policy>", 0, f"judges.{name}", str(exc)) from None
    if isinstance(spec, ModerationJudgeSpec):
        return _moderation_judge(name, spec)
    assert isinstance(spec, LLMJudgeSpec)
    # Imported here: the LLM client stack costs import time only when a policy uses it.
    from guardrail.judges.llm import LLMJudge, load_litellm

    judge = LLMJudge(
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
        max_connections=spec.max_connections,
        format=spec.format,
        codes=spec.codes,
        threshold=spec.threshold,
        # A guard model's answer is a few tokens: its format's default, unless set.
        guard_max_tokens=spec.max_tokens if "max_tokens" in spec.model_fields_set else None,
    )
    if judge.client == "litellm":
        # Now, while the guard is built: on first use it would freeze the event
        # loop for seconds, and that request's screens would run out of time.
        load_litellm()
    return judge


def _moderation_judge(name: str, spec: ModerationJudgeSpec) -> Judge:
    from guardrail.judges.llm import load_litellm
    from guardrail.judges.moderation import ModerationJudge

    judge = ModerationJudge(
        name=name,
        model=spec.model,
        rules=spec.rules(),
        api_base=spec.api_base,
        api_key=os.environ.get(spec.api_key_env) if spec.api_key_env else None,
        timeout_s=3600.0,  # the stage bounds every call, as for LLM judges
        client=spec.client,
        max_connections=spec.max_connections,
    )
    if judge.client == "litellm":
        load_litellm()  # now, off the event loop, as for LLM judges
    return judge


def unset_api_keys(policy: Policy) -> list[str]:
    """A warning for each LLM judge whose ``api_key_env`` is not set; each is also logged."""
    found = []
    for name, spec in policy.judges.items():
        if (
            isinstance(spec, LLMJudgeSpec | ModerationJudgeSpec)
            and spec.api_key_env
            and not os.environ.get(spec.api_key_env)
        ):
            found.append(
                f"judge '{name}': environment variable {spec.api_key_env} is not set; "
                "its calls will fail and the policy's fail mode will decide"
            )
    for warning in found:
        log.warning("%s", warning)
    return found


def build_screens(
    policy: Policy, specs: tuple[ScreenSpec, ...], judges: dict[str, Judge]
) -> tuple[Screen, ...]:
    """Each screen's judge, asked what the screen asks; its flag final unless overturnable."""
    overturnable: frozenset[str] = frozenset()
    if policy.on_flag == "vote" and policy.panel is not None:
        overturnable = policy.panel.may_overturn(policy.judges)
    screens = []
    for s in specs:
        spec, judge = policy.judges[s.judge], judges[s.judge]
        asks = s.categories or answerable(spec)
        if s.categories is not None:
            judge = _narrowed(s.judge, spec, judge, s.categories)
        screens.append(Screen(judge, s.timeout_s, asks, s.judge not in overturnable))
    return tuple(screens)


def _narrowed(name: str, spec: JudgeSpec, judge: Judge, categories: tuple[str, ...]) -> Judge:
    # The screen asks about fewer categories than the judge knows. A chat judge
    # is asked only those; a PII judge looks only for those kinds. Keyword and
    # injection judges know one category, which the policy check made sure is it.
    if isinstance(spec, PIIJudgeSpec):
        kinds = tuple(k for k in spec.kinds if f"pii_{k}" in categories)
        return build_judge(name, spec.model_copy(update={"kinds": kinds}))
    if isinstance(judge, Askable):
        return judge.asking(categories)
    return judge


def build_panel(policy: Policy, judges: dict[str, Judge]) -> PanelRunner | None:
    """The panel runner, one seat per sample; samples get their own judge and temperature."""
    panel = policy.panel
    if panel is None:
        return None
    seats = []
    for entry in panel.judges:
        judge = judges[entry.judge]
        if entry.temperature is not None:
            from guardrail.judges.llm import LLMJudge

            assert isinstance(judge, LLMJudge)  # policy-checked: seats are llm judges
            judge = judge.variant(temperature=entry.temperature)
        # Every sample is the same judge: the runner asks each seat separately,
        # and the seats share the judge's connection pool.
        seats += [PanelJudge(judge, Seat(entry.judge, entry.weight))] * entry.samples
    rule = QuorumRule(panel.quorum, panel.k, panel.tie, panel.min_votes)
    return PanelRunner(seats, rule, deadline_s=panel.deadline_s)
