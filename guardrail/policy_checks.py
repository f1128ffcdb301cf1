"""Checks across the fields of a policy: references to judges, and the panel's arithmetic."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from guardrail.reach import overlap_problems
from guardrail.voting import QuorumRule, Seat, validate

if TYPE_CHECKING:
    from guardrail.policy import Panel, Policy

Loc = tuple[str | int, ...]


def problems(policy: Policy) -> Iterator[tuple[Loc, str]]:
    """Every cross-field problem, with the location of the field to fix."""
    known = ", ".join(sorted(policy.judges))
    for i, screen in enumerate(policy.input.screens):
        if screen.judge not in policy.judges:
            loc = ("input", "screens", i, "judge")
            yield loc, f"unknown judge '{screen.judge}'; the policy defines: {known}"
    if policy.output is not None:
        for i, screen in enumerate(policy.output.screens):
            if screen.judge not in policy.judges:
                loc = ("output", "screens", i, "judge")
                yield loc, f"unknown judge '{screen.judge}'; the policy defines: {known}"
        if policy.output.overlap_chars >= policy.output.window_chars:
            yield ("output", "overlap_chars"), "the overlap must be smaller than window_chars"
        yield from overlap_problems(policy)
    uses_panel = policy.on_flag == "vote" or policy.on_error == "vote"
    if uses_panel and policy.panel is None:
        field = "on_flag" if policy.on_flag == "vote" else "on_error"
        yield (field,), "'vote' needs a panel: add a 'panel' section with the judges that vote"
    if policy.panel is not None:
        yield from _panel_problems(policy, policy.panel, known)


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
        if seat.samples > 1 and spec.type != "llm":
            yield (
                ("panel", "judges", i, "samples"),
                (f"judge '{seat.judge}' is a {spec.type} judge: it answers the same every time"),
            )
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


def seats_of(panel: Panel) -> list[Seat]:
    """One seat per sample of each panel judge."""
    return [Seat(s.judge, s.weight) for s in panel.judges for _ in range(s.samples)]
