"""Checks across the fields of a policy: references to judges, what each screen asks, and the
panel: its arithmetic, its seats and which flags it may overturn."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from guardrail.decide.voting import QuorumRule, Seat, validate
from guardrail.judges.categories import category_key
from guardrail.judges.reach import overlap_problems

if TYPE_CHECKING:
    from guardrail.policy.models import JudgeSpec, Panel, Policy, Screen

Loc = tuple[str | int, ...]


def problems(policy: Policy) -> Iterator[tuple[Loc, str]]:
    """Every cross-field problem, with the location of the field to fix."""
    known = ", ".join(sorted(policy.judges))
    stages = [("input", policy.input.screens)]
    if policy.output is not None:
        stages.append(("output", policy.output.screens))
    for stage, screens in stages:
        for i, screen in enumerate(screens):
            spec = policy.judges.get(screen.judge)
            if spec is None:
                loc = (stage, "screens", i, "judge")
                yield loc, f"unknown judge '{screen.judge}'; the policy defines: {known}"
            elif screen.categories is not None:
                loc = (stage, "screens", i, "categories")
                yield from ((loc, m) for m in _asking_problems(screen, spec))
            yield from _redaction_problems(stage, i, screen, spec)
    if policy.output is not None:
        if policy.output.overlap_chars >= policy.output.window_chars:
            yield ("output", "overlap_chars"), "the overlap must be smaller than window_chars"
        yield from overlap_problems(policy)
    if policy.json_api is not None and "json" not in policy.formats():
        why = "json_api describes a generic JSON app: set 'format: json' (on the policy or a route)"
        yield ("json_api",), why
    uses_panel = policy.on_flag == "vote" or policy.on_error == "vote"
    if uses_panel and policy.panel is None:
        field = "on_flag" if policy.on_flag == "vote" else "on_error"
        yield (field,), "'vote' needs a panel: add a 'panel' section with the judges that vote"
    if policy.panel is not None:
        yield from _panel_problems(policy, policy.panel, known)


def _redaction_problems(
    stage: str, i: int, screen: Screen, spec: JudgeSpec | None
) -> Iterator[tuple[Loc, str]]:
    if screen.on_flag == "redact":
        if stage != "input":
            yield (stage, "screens", i, "on_flag"), "on_flag: redact is for input screens"
        elif spec is not None and spec.type not in ("pii", "keywords"):
            yield (
                (stage, "screens", i, "on_flag"),
                f"on_flag: redact needs a pii or keywords judge, not {spec.type}: "
                "only they say where their findings are",
            )
    elif screen.restore:
        yield (stage, "screens", i, "restore"), "restore is used only with on_flag: redact"


def answerable(spec: JudgeSpec) -> tuple[str, ...]:
    """Every category a judge can be asked about (and flag)."""
    if spec.type == "llm":
        return spec.guard_categories()
    if spec.type == "moderation":
        return spec.guard_categories()
    if spec.type == "python":
        return spec.categories
    if spec.type == "pii":
        return tuple(f"pii_{kind}" for kind in spec.kinds)
    if spec.type == "injection":
        return ("prompt_injection",)
    if spec.type == "classifier":
        return spec.categories()
    return (category_key(spec.category),)


def _asking_problems(screen: Screen, spec: JudgeSpec) -> Iterator[str]:
    # A screen narrows what its judge is asked; it cannot ask what the judge
    # does not know (a typo would silently ask about nothing).
    can = answerable(spec)
    for category in screen.categories or ():
        if category not in can:
            yield (
                f"judge '{screen.judge}' is not asked about '{category}'; "
                f"its categories: {', '.join(can)}"
            )


def _panel_problems(policy: Policy, panel: Panel, known: str) -> Iterator[tuple[Loc, str]]:
    models: dict[str, str] = {}
    for i, seat in enumerate(panel.judges):
        loc: Loc = ("panel", "judges", i, "judge")
        spec = policy.judges.get(seat.judge)
        if spec is None:
            yield loc, f"unknown judge '{seat.judge}'; the policy defines: {known}"
            continue
        if any(s.judge == seat.judge for s in panel.judges[:i]):
            yield loc, f"judge '{seat.judge}' is listed twice; use samples: N to ask it N times"
            continue
        model = getattr(spec, "model", None)
        if model is not None:
            # Two seats on one model are one vendor voting twice: say so explicitly.
            if model in models:
                yield (
                    loc,
                    (
                        f"judges '{models[model]}' and '{seat.judge}' are the same model "
                        f"'{model}'; list it once with samples: N"
                    ),
                )
            models[model] = seat.judge
        if spec.type != "llm":
            # A seat is asked what the flagging screen asked; a local judge can
            # only answer its own question, so its vote would be on another one.
            why = "it answers the same every time, " if seat.samples > 1 else ""
            field = "samples" if seat.samples > 1 else "judge"
            yield (
                ("panel", "judges", i, field),
                (
                    f"judge '{seat.judge}' is a {spec.type} judge: {why}it can answer only "
                    "its own question; panel seats are llm judges"
                ),
            )
    yield from _overturn_problems(policy, panel)
    slowest = max(s.timeout_s for s in policy.input.screens)
    if panel.deadline_s < slowest:
        yield (
            ("panel", "deadline_s"),
            (
                f"the panel's deadline ({panel.deadline_s}s) is shorter than the slowest input "
                f"screen's timeout ({slowest}s); a careful panel needs at least as long"
            ),
        )
    if panel.quorum != "at_least" and panel.k is not None:
        yield ("panel", "k"), f"k is used only by quorum: at_least, not {panel.quorum}"
    elif panel.quorum == "at_least" and panel.k is None:
        yield ("panel", "k"), "quorum: at_least needs k, the block weight that blocks"
    else:
        seats = seats_of(panel)
        rule = QuorumRule(panel.quorum, panel.k, panel.tie, panel.min_votes)
        for message in validate(rule, seats):
            field = (
                "k"
                if message.startswith("k ")
                else "min_votes"
                if "min_votes" in message
                else "judges"
            )
            yield ("panel", field), message


def _overturn_problems(policy: Policy, panel: Panel) -> Iterator[tuple[Loc, str]]:
    screened = {s.judge for s in policy.input.screens}
    screened |= {s.judge for s in policy.output.screens} if policy.output else set()
    if policy.on_flag == "vote" and not panel.may_overturn(policy.judges) & screened:
        yield (
            ("on_flag",),
            (
                "on_flag: vote, but no screen's flag may go to the panel (pii and keywords "
                "flags are final unless listed in panel.overturns): list the judges the panel "
                "may overturn there, or use on_flag: block"
            ),
        )
    if panel.overturns is None:
        return
    if policy.on_flag != "vote":
        yield ("panel", "overturns"), "overturns is used only with on_flag: vote"
    for i, name in enumerate(panel.overturns):
        if name not in screened:
            used = ", ".join(sorted(screened))
            yield ("panel", "overturns", i), f"'{name}' is not the judge of any screen: {used}"


def seats_of(panel: Panel) -> list[Seat]:
    """One seat per sample of each panel judge."""
    return [Seat(s.judge, s.weight) for s in panel.judges for _ in range(s.samples)]
