"""Quorum logic for the judge panel: seat states in, a ruling out. Pure: no I/O.

A panel is a fixed list of seats; a seat is one judge sample with a weight (the
same judge may hold several seats). A seat is ``pending`` until its judge
answers, then ``block`` (the judge flagged the text), ``allow``, or ``abstain``
(it failed, timed out or was cancelled). An abstention is not a vote either way.

Once no seat is pending, the outcome is:

- ``no_quorum`` if fewer than ``min_votes`` seats voted (block or allow); the
  caller resolves it with the policy's fail mode. ``min_votes`` counts seats.
- ``majority``: the side holding more than half of the weight that *voted*
  wins. Abstentions shrink the panel rather than count as allow, so one block
  and two abstentions block unless ``min_votes`` asks for more answers. Equal
  weight on both sides is a tie, settled by ``tie`` (block, allow or no_quorum).
- ``unanimous_block``: block only if every seat that voted said block.
- ``any_block``: a single block vote blocks.
- ``at_least``: block if the weight voting block is at least ``k``.

``unanimous_block`` and ``any_block`` count votes; weights matter only to
``majority`` and ``at_least``. Weights are read as the decimals the operator
wrote (0.1 + 0.2 ties 0.3) and summed exactly, so a tie is a tie and the
early stop below is never wrong by a rounding error.

Early stop: ``decide`` returns a ruling as soon as no way the pending seats
could still end (each may block, allow or abstain) would change the outcome,
so the runner can cancel the stragglers. It needs no enumeration: every rule
moves only one way as a vote turns from allow to block, and ``min_votes`` can
fail only through abstentions, so three completions bound all the others:
every pending seat blocks, every one allows, every one abstains. When those
three agree, every completion agrees.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Literal, get_args

from guardrail.judges.base import JudgeResult, Verdict

RuleKind = Literal["majority", "unanimous_block", "any_block", "at_least"]
SeatState = Literal["pending", "block", "allow", "abstain"]
Outcome = Literal["block", "allow", "no_quorum"]
# Why the vote ended; a closed set, so it can be a metric label.
Reason = Literal[
    "early",  # settled with seats still pending: the runner cancels them
    "all_voted",  # every seat was in and the rule decided on the votes
    "tie",  # every seat was in, the majority was tied, the tie rule decided
    "too_few_votes",  # fewer than min_votes seats voted, or too few are left to get there
]


@dataclass(frozen=True, slots=True)
class Seat:
    """One judge sample on the panel."""

    judge: str
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class QuorumRule:
    """How the panel's votes become an outcome; defined in the module docstring."""

    kind: RuleKind = "majority"
    k: float | None = None
    tie: Outcome = "block"
    min_votes: int = 1


@dataclass(frozen=True, slots=True)
class Ruling:
    """A settled vote: its outcome and why the vote ended."""

    outcome: Outcome
    reason: Reason


def state_of(result: JudgeResult | None) -> SeatState:
    """The seat state for a judge's result; ``None`` means it has not answered."""
    if result is None:
        return "pending"
    if isinstance(result, Verdict):
        return "block" if result.flagged else "allow"
    return "abstain"


def decide(rule: QuorumRule, seats: Sequence[Seat], states: Sequence[SeatState]) -> Ruling | None:
    """The ruling if no way the pending seats could end would change it, else None."""
    tally = _Tally.of(seats, states)
    ends = {_outcome(rule, tally.completed(end)) for end in ("block", "allow", "abstain")}
    if len(ends) > 1:
        return None
    return Ruling(ends.pop(), _reason(rule, tally))


def final_ruling(rule: QuorumRule, seats: Sequence[Seat], states: Sequence[SeatState]) -> Ruling:
    """The ruling once every seat is in; a pending seat is a ValueError."""
    tally = _Tally.of(seats, states)
    if tally.pending:
        raise ValueError(f"{tally.pending} seat(s) still pending; mark them abstain first")
    return Ruling(_outcome(rule, tally), _reason(rule, tally))


def validate(rule: QuorumRule, seats: Sequence[Seat]) -> list[str]:
    """Human-readable problems with a rule on this panel; empty when it is usable."""
    errors: list[str] = []
    if rule.kind not in get_args(RuleKind):
        errors.append(f"unknown quorum rule {rule.kind!r}; use one of {get_args(RuleKind)}")
    if rule.tie not in get_args(Outcome):
        errors.append(f"tie must be one of {get_args(Outcome)}, got {rule.tie!r}")
    if not seats:
        errors.append("the panel has no seats")
    bad_weights = [s for s in seats if not (math.isfinite(s.weight) and s.weight > 0)]
    errors += [f"seat {s.judge!r}: weight must be positive, got {s.weight!r}" for s in bad_weights]
    # min_votes 0 would let a panel where every judge failed rule on no votes at all.
    if rule.min_votes < 1:
        errors.append(f"min_votes must be at least 1, got {rule.min_votes}")
    elif seats and rule.min_votes > len(seats):
        errors.append(
            f"min_votes {rule.min_votes} is more than the {len(seats)} seat(s) on the panel: "
            "every vote would end in no_quorum"
        )
    if rule.kind != "at_least":
        if rule.k is not None:
            errors.append(f"k is used only by the at_least rule, not {rule.kind!r}")
    elif rule.k is None:
        errors.append("the at_least rule needs k, the block weight that blocks")
    elif not (math.isfinite(rule.k) and rule.k > 0):
        errors.append(f"k must be positive, got {rule.k!r}")
    elif seats and not bad_weights:
        total = sum((_exact(s.weight) for s in seats), Fraction(0))
        if _exact(rule.k) > total:
            errors.append(
                f"k {rule.k} is more than the panel's total weight {float(total):g}: "
                "the panel could never block"
            )
    return errors


def _exact(weight: float) -> Fraction:
    # repr gives the shortest decimal that reads back as this float: what the operator wrote.
    return Fraction(repr(weight))


@dataclass(frozen=True, slots=True)
class _Tally:
    blocks: int
    allows: int
    pending: int
    block_weight: Fraction
    allow_weight: Fraction
    pending_weight: Fraction

    @classmethod
    def of(cls, seats: Sequence[Seat], states: Sequence[SeatState]) -> _Tally:
        weights: dict[SeatState, Fraction] = dict.fromkeys(get_args(SeatState), Fraction(0))
        counts: dict[SeatState, int] = dict.fromkeys(get_args(SeatState), 0)
        for seat, state in zip(seats, states, strict=True):
            if state not in counts:
                raise ValueError(f"unknown seat state {state!r} for {seat.judge!r}")
            weights[state] += _exact(seat.weight)
            counts[state] += 1
        return cls(
            counts["block"],
            counts["allow"],
            counts["pending"],
            weights["block"],
            weights["allow"],
            weights["pending"],
        )

    def completed(self, end: Literal["block", "allow", "abstain"]) -> _Tally:
        """This tally with every pending seat ended the same way."""
        done = replace(self, pending=0, pending_weight=Fraction(0))
        if end == "block":
            return replace(
                done,
                blocks=self.blocks + self.pending,
                block_weight=self.block_weight + self.pending_weight,
            )
        if end == "allow":
            return replace(
                done,
                allows=self.allows + self.pending,
                allow_weight=self.allow_weight + self.pending_weight,
            )
        return done


def _outcome(rule: QuorumRule, tally: _Tally) -> Outcome:
    """The outcome of a tally, ignoring any pending seats."""
    if tally.blocks + tally.allows < rule.min_votes:
        return "no_quorum"
    if rule.kind == "majority":
        if tally.block_weight == tally.allow_weight:
            return rule.tie
        blocked = tally.block_weight > tally.allow_weight
    elif rule.kind == "unanimous_block":
        blocked = tally.blocks > 0 and tally.allows == 0
    elif rule.kind == "any_block":
        blocked = tally.blocks > 0
    elif rule.k is None:
        raise ValueError("the at_least rule needs k")
    else:
        blocked = tally.block_weight >= _exact(rule.k)
    return "block" if blocked else "allow"


def _reason(rule: QuorumRule, tally: _Tally) -> Reason:
    if tally.blocks + tally.allows + tally.pending < rule.min_votes:
        return "too_few_votes"
    if tally.pending:
        return "early"
    if rule.kind == "majority" and tally.block_weight == tally.allow_weight:
        return "tie"
    return "all_voted"
