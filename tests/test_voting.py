"""The quorum rules, checked against a brute-force oracle and in named scenarios.

The oracle restates the rules from ``guardrail.decide.voting``'s docstring on its own
(no code shared with the module) and enumerates every way the pending seats
could still end, so ``decide`` is held to "settled exactly when no completion
could change the outcome".
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from fractions import Fraction
from functools import cache
from typing import get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guardrail.decide.voting import (
    Outcome,
    QuorumRule,
    RuleKind,
    Ruling,
    Seat,
    SeatState,
    decide,
    final_ruling,
    state_of,
    validate,
)
from guardrail.judges.base import JudgeFailure, Verdict

ENDS: tuple[SeatState, ...] = ("block", "allow", "abstain")
STATES: tuple[SeatState, ...] = ("pending", *ENDS)


@cache
def reference_outcome(
    rule: QuorumRule, weights: tuple[float, ...], states: tuple[SeatState, ...]
) -> Outcome:
    """The final outcome, read straight off the module docstring."""
    assert "pending" not in states
    voted = [(Fraction(str(w)), s) for w, s in zip(weights, states, strict=True) if s != "abstain"]
    if len(voted) < rule.min_votes:
        return "no_quorum"
    block = sum((w for w, s in voted if s == "block"), Fraction(0))
    allow = sum((w for w, s in voted if s == "allow"), Fraction(0))
    block_votes = sum(1 for _, s in voted if s == "block")
    if rule.kind == "majority":
        if block > (block + allow) / 2:
            return "block"
        if allow > (block + allow) / 2:
            return "allow"
        return rule.tie
    if rule.kind == "unanimous_block":
        blocked = block_votes > 0 and block_votes == len(voted)
    elif rule.kind == "any_block":
        blocked = block_votes > 0
    else:
        assert rule.k is not None
        blocked = block >= Fraction(str(rule.k))
    return "block" if blocked else "allow"


def oracle(
    rule: QuorumRule, weights: tuple[float, ...], states: tuple[SeatState, ...]
) -> Outcome | None:
    """The outcome every completion of the pending seats agrees on, or None."""
    pending = [i for i, s in enumerate(states) if s == "pending"]
    outcomes: set[Outcome] = set()
    for ending in itertools.product(ENDS, repeat=len(pending)):
        final = list(states)
        for i, end in zip(pending, ending, strict=True):
            final[i] = end
        outcomes.add(reference_outcome(rule, weights, tuple(final)))
    return outcomes.pop() if len(outcomes) == 1 else None


def panel(*weights: float) -> list[Seat]:
    return [Seat(f"judge-{i}", w) for i, w in enumerate(weights)]


def check_against_oracle(
    rule: QuorumRule, weights: tuple[float, ...], states: tuple[SeatState, ...]
) -> None:
    ruling = decide(rule, panel(*weights), states)
    expected = oracle(rule, weights, states)
    got = ruling.outcome if ruling else None
    assert got == expected, f"{rule} weights={weights} states={states}: {got} != {expected}"
    if ruling is None:
        return
    if ruling.reason == "too_few_votes":
        assert ruling.outcome == "no_quorum"
    if "pending" in states:
        assert ruling.reason in ("early", "too_few_votes")
    else:
        assert ruling == final_ruling(rule, panel(*weights), states)
        assert ruling.reason != "early"


# --- exhaustive over small panels -------------------------------------------------------------

RULES = [
    *(
        QuorumRule("majority", tie=tie, min_votes=m)
        for tie in ("block", "allow", "no_quorum")
        for m in (1, 2, 3)
    ),
    *(QuorumRule(kind, min_votes=m) for kind in ("unanimous_block", "any_block") for m in (1, 2)),
    *(QuorumRule("at_least", k=k, min_votes=m) for k in (0.5, 1, 2, 2.5, 3) for m in (1, 2)),
]
WEIGHTS = {
    "equal": (1.0, 1.0, 1.0, 1.0, 1.0),
    "one-heavy": (2.0, 1.0, 1.0, 1.0, 1.0),
    "graded": (0.5, 1.0, 1.5, 2.0, 2.5),
    "decimal": (0.1, 0.2, 0.3, 0.1, 0.2),
}


@pytest.mark.parametrize("weights", WEIGHTS.values(), ids=WEIGHTS.keys())
@pytest.mark.parametrize("rule", RULES, ids=repr)
def test_decide_matches_brute_force_on_every_small_panel(
    rule: QuorumRule, weights: tuple[float, ...]
) -> None:
    for size in range(1, 6):
        for states in itertools.product(STATES, repeat=size):
            check_against_oracle(rule, weights[:size], states)


# --- properties over random panels ------------------------------------------------------------

WEIGHT = st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.0]) | st.floats(0.01, 100.0)


@st.composite
def rules(draw: st.DrawFn, size: int) -> QuorumRule:
    kind = draw(st.sampled_from(get_args(RuleKind)))
    k = draw(st.sampled_from([0.5, 1.0, 2.0, 2.5, 4.0]) | st.floats(0.01, 150.0))
    return QuorumRule(
        kind,
        k=k if kind == "at_least" else None,
        tie=draw(st.sampled_from(get_args(Outcome))),
        min_votes=draw(st.integers(1, size)),
    )


@st.composite
def votes(draw: st.DrawFn, max_size: int) -> tuple[QuorumRule, tuple[float, ...], list[SeatState]]:
    size = draw(st.integers(1, max_size))
    weights = tuple(draw(st.lists(WEIGHT, min_size=size, max_size=size)))
    ends = draw(st.lists(st.sampled_from(ENDS), min_size=size, max_size=size))
    return draw(rules(size)), weights, ends


@settings(max_examples=500)
@given(votes(max_size=9), st.data())
def test_an_early_ruling_is_the_ruling_with_every_vote_in(
    case: tuple[QuorumRule, tuple[float, ...], list[SeatState]], data: st.DataObject
) -> None:
    rule, weights, ends = case
    seats = panel(*weights)
    final = final_ruling(rule, seats, ends)
    order = data.draw(st.permutations(range(len(seats))), label="arrival order")
    states: list[SeatState] = ["pending"] * len(seats)
    first: Ruling | None = None
    for seat in order:
        states[seat] = ends[seat]
        ruling = decide(rule, seats, states)
        if first is None:
            first = ruling
        else:  # once settled, later votes never unsettle or change it
            assert ruling is not None
            assert ruling.outcome == first.outcome
    assert first is not None
    assert first.outcome == final.outcome


@settings(max_examples=300)
@given(votes(max_size=7), st.data())
def test_decide_matches_brute_force_on_random_panels(
    case: tuple[QuorumRule, tuple[float, ...], list[SeatState]], data: st.DataObject
) -> None:
    rule, weights, _ = case
    states = data.draw(
        st.lists(st.sampled_from(STATES), min_size=len(weights), max_size=len(weights))
    )
    check_against_oracle(rule, weights, tuple(states))


# --- named scenarios --------------------------------------------------------------------------

MAJORITY = QuorumRule("majority")
THREE = panel(1, 1, 1)


def test_majority_of_three_settles_on_two_block_votes() -> None:
    assert decide(MAJORITY, THREE, ["block", "pending", "pending"]) is None
    assert decide(MAJORITY, THREE, ["block", "block", "pending"]) == Ruling("block", "early")


def test_majority_of_three_allows_on_allow_votes() -> None:
    assert decide(MAJORITY, THREE, ["allow", "allow", "pending"]) == Ruling("allow", "early")
    assert decide(MAJORITY, THREE, ["allow", "allow", "allow"]) == Ruling("allow", "all_voted")


def test_split_vote_waits_for_the_third_judge() -> None:
    assert decide(MAJORITY, THREE, ["block", "allow", "pending"]) is None
    assert decide(MAJORITY, THREE, ["block", "allow", "allow"]) == Ruling("allow", "all_voted")


def test_one_block_and_two_abstentions_blocks_unless_min_votes_asks_for_more() -> None:
    states: list[SeatState] = ["block", "abstain", "abstain"]
    assert decide(MAJORITY, THREE, states) == Ruling("block", "all_voted")
    two_answers = QuorumRule("majority", min_votes=2)
    assert decide(two_answers, THREE, states) == Ruling("no_quorum", "too_few_votes")


def test_one_block_one_abstention_settles_early_only_if_ties_block() -> None:
    # The last judge can at most tie 1-1, so the tie rule alone decides whether to wait.
    states: list[SeatState] = ["block", "abstain", "pending"]
    assert decide(QuorumRule("majority", tie="block"), THREE, states) == Ruling("block", "early")
    assert decide(QuorumRule("majority", tie="allow"), THREE, states) is None


def test_min_votes_out_of_reach_ends_the_vote_early() -> None:
    rule = QuorumRule("majority", min_votes=3)
    assert decide(rule, THREE, ["block", "abstain", "pending"]) == Ruling(
        "no_quorum", "too_few_votes"
    )


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("pending", None),
        ("block", Ruling("block", "all_voted")),
        ("allow", Ruling("allow", "all_voted")),
        ("abstain", Ruling("no_quorum", "too_few_votes")),
    ],
)
def test_panel_of_one(state: SeatState, expected: Ruling | None) -> None:
    assert decide(MAJORITY, panel(1), [state]) == expected


@pytest.mark.parametrize("tie", ["block", "allow", "no_quorum"])
def test_two_two_tie_goes_to_the_tie_rule(tie: Outcome) -> None:
    rule = QuorumRule("majority", tie=tie)
    four = panel(1, 1, 1, 1)
    # 2-1 with one judge left: it can only tie, so a tie that blocks settles it now.
    early = Ruling("block", "early") if tie == "block" else None
    assert decide(rule, four, ["block", "allow", "block", "pending"]) == early
    assert decide(rule, four, ["block", "allow", "block", "allow"]) == Ruling(tie, "tie")
    five = panel(1, 1, 1, 1, 1)
    tied_with_abstention: list[SeatState] = ["block", "allow", "abstain", "block", "allow"]
    assert decide(rule, five, tied_with_abstention) == Ruling(tie, "tie")


def test_decimal_weights_tie_as_written() -> None:
    # In binary floats 0.1 + 0.2 > 0.3; an operator who wrote these weights means a tie.
    rule = QuorumRule("majority", tie="no_quorum")
    seats = panel(0.1, 0.2, 0.3)
    assert decide(rule, seats, ["block", "block", "allow"]) == Ruling("no_quorum", "tie")


def test_a_heavy_judge_can_settle_alone() -> None:
    seats = panel(3, 1, 1)
    assert decide(MAJORITY, seats, ["block", "pending", "pending"]) == Ruling("block", "early")
    assert decide(MAJORITY, seats, ["pending", "allow", "pending"]) is None


def test_at_least_two_of_five() -> None:
    rule = QuorumRule("at_least", k=2)
    five = panel(1, 1, 1, 1, 1)
    assert decide(rule, five, ["block", "pending", "pending", "pending", "pending"]) is None
    assert decide(rule, five, ["block", "pending", "block", "pending", "pending"]) == Ruling(
        "block", "early"
    )
    # One seat left can bring at most one more block vote.
    assert decide(rule, five, ["allow", "allow", "allow", "allow", "pending"]) == Ruling(
        "allow", "early"
    )
    assert decide(rule, five, ["block", "allow", "allow", "allow", "pending"]) is None


def test_any_block_stops_at_the_first_block() -> None:
    rule = QuorumRule("any_block")
    assert decide(rule, THREE, ["pending", "block", "pending"]) == Ruling("block", "early")
    assert decide(rule, THREE, ["allow", "allow", "pending"]) is None


def test_unanimous_block_stops_at_the_first_allow() -> None:
    rule = QuorumRule("unanimous_block")
    assert decide(rule, THREE, ["pending", "allow", "pending"]) == Ruling("allow", "early")
    assert decide(rule, THREE, ["block", "block", "pending"]) is None
    assert decide(rule, THREE, ["block", "abstain", "block"]) == Ruling("block", "all_voted")


def test_a_large_panel_settles_without_enumerating_completions() -> None:
    # 3**50 completions: this only finishes because decide reasons about the extremes.
    seats = panel(*([1] * 101))
    block: list[SeatState] = ["block"]
    pending: list[SeatState] = ["pending"]
    assert decide(MAJORITY, seats, block * 51 + pending * 50) == Ruling("block", "early")
    assert decide(MAJORITY, seats, block * 50 + pending * 51) is None


def test_final_ruling_refuses_pending_seats() -> None:
    with pytest.raises(ValueError, match="pending"):
        final_ruling(MAJORITY, THREE, ["block", "block", "pending"])


def test_states_must_match_seats() -> None:
    with pytest.raises(ValueError):
        decide(MAJORITY, THREE, ["block", "block"])


def test_state_of_a_judge_result() -> None:
    assert state_of(None) == "pending"
    assert state_of(Verdict("a", flagged=True)) == "block"
    assert state_of(Verdict("a", flagged=False)) == "allow"
    assert state_of(JudgeFailure("a", "timeout")) == "abstain"


# --- validation -------------------------------------------------------------------------------


def test_a_sound_config_has_no_errors() -> None:
    assert validate(MAJORITY, THREE) == []
    assert validate(QuorumRule("at_least", k=3, min_votes=3), THREE) == []


@pytest.mark.parametrize(
    ("rule", "seats", "fragment"),
    [
        (MAJORITY, [], "no seats"),
        (MAJORITY, panel(1, 0, 1), "weight must be positive"),
        (MAJORITY, panel(1, -1), "weight must be positive"),
        (MAJORITY, panel(1, float("nan")), "weight must be positive"),
        (MAJORITY, panel(1, float("inf")), "weight must be positive"),
        (QuorumRule(min_votes=0), THREE, "min_votes must be at least 1"),
        (QuorumRule(min_votes=4), THREE, "more than the 3 seat(s)"),
        (QuorumRule("at_least"), THREE, "needs k"),
        (QuorumRule("at_least", k=0), THREE, "k must be positive"),
        (QuorumRule("at_least", k=3.5), THREE, "could never block"),
        (QuorumRule("at_least", k=0.4), panel(0.1, 0.2), "could never block"),
        (QuorumRule("majority", k=2), THREE, "only by the at_least rule"),
        (QuorumRule("most"), THREE, "unknown quorum rule"),  # type: ignore[arg-type]
        (QuorumRule(tie="maybe"), THREE, "tie must be one of"),  # type: ignore[arg-type]
    ],
)
def test_bad_config_is_reported(rule: QuorumRule, seats: Sequence[Seat], fragment: str) -> None:
    errors = validate(rule, seats)
    assert any(fragment in error for error in errors), errors
