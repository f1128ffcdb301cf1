"""Escalation to a panel over real HTTP: stub judges with chosen latencies and answers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from guarded import BENIGN, CARD, INJECTION, guarded_app, panel_policy
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from served import wait_for
from stub_llm import StubLLM
from test_guarded_path import ask

from guardrail import Policy, PolicyError, load_policy, parse_policy
from guardrail.decide.guard import Guard
from guardrail.decide.panel import MAX_RETRIES, RETRY_FLOOR_S, retry_pause

SAFE = '{"flagged": false, "categories": [], "reason": "fine"}'
UNSAFE = '{"flagged": true, "categories": ["prompt_injection"], "reason": "injection"}'

Factory = Callable[..., StubLLM]


def test_all_safe_overturns_the_flag_and_releases_the_answer(stub_llm_factory: Factory) -> None:
    judges = [stub_llm_factory(reply=SAFE) for _ in range(3)]
    with guarded_app(panel_policy(*(j.base_url for j in judges))) as app:
        answer = ask(app.client(), INJECTION)
        assert answer.choices[0].message.content == f"You said: {INJECTION}"
        assert app.decisions("flagged_allowed") == 1
        assert app.sample("guardrail_escalations_total", {"stage": "input", "trigger": "flag"}) == 1
        # No output screens: no output-stage series.
        output = {"policy": "test", "stage": "output", "trigger": "flag"}
        assert app.registry.get_sample_value("guardrail_escalations_total", output) is None
        assert app.sample("guardrail_flags_overturned_total", {}) == 1
        votes = {
            vote: sum(
                app.sample("guardrail_panel_votes_total", {"judge": name, "vote": vote})
                for name in "abc"
            )
            for vote in ("allow", "abstain", "block")
        }
        # Two allows settle a majority of three; a third still out is cut off.
        assert votes["allow"] >= 2
        assert votes["allow"] + votes["abstain"] == 3
        assert votes["block"] == 0


def test_two_of_three_unsafe_refuse_before_the_third_answers(stub_llm_factory: Factory) -> None:
    a = stub_llm_factory(reply=UNSAFE, latency_s=0.05)
    b = stub_llm_factory(reply=UNSAFE, latency_s=0.05)
    c = stub_llm_factory(reply=SAFE, latency_s=30.0)  # the straggler
    with guarded_app(panel_policy(a.base_url, b.base_url, c.base_url, deadline_s=60)) as app:
        answer = ask(app.client(), INJECTION)
        assert answer.choices[0].finish_reason == "content_filter"
        # The straggler's HTTP request was closed on its server's side.
        assert wait_for(lambda: c.cancelled == 1)
        assert c.completed == 0
        assert app.decisions("blocked") == 1
        assert app.sample("guardrail_panel_stragglers_cancelled_total", {"judge": "c"}) == 1
        assert (
            app.sample(
                "guardrail_panel_rulings_total",
                {"stage": "input", "trigger": "flag", "outcome": "block"},
            )
            == 1
        )
        assert app.sample("guardrail_panel_duration_seconds_count", {"ended": "quorum"}) == 1


def test_unflagged_requests_never_reach_the_panel(stub_llm_factory: Factory) -> None:
    judge = stub_llm_factory(reply=UNSAFE)
    with guarded_app(panel_policy(judge.base_url)) as app:
        assert ask(app.client(), BENIGN).choices[0].finish_reason == "stop"
        assert judge.count == 0
        assert app.decisions("allowed") == 1


def test_while_the_panel_votes_the_app_keeps_generating(stub_llm_factory: Factory) -> None:
    upstream = stub_llm_factory()
    # The panel judge answers only once the app's model call has arrived.
    judge = stub_llm_factory(
        reply=lambda _: SAFE if wait_for(lambda: upstream.count == 1) else "no"
    )
    with guarded_app(panel_policy(judge.base_url), upstream.base_url) as app:
        answer = ask(app.client(), INJECTION)
        assert answer.choices[0].finish_reason == "stop"
        assert app.decisions("flagged_allowed") == 1


@pytest.mark.parametrize(
    "broken",
    [{"reply": "Looks fine to me."}, {"status": 500}, {"hang": True}, {"status": 429}],
    ids=["garbage", "http-500", "hangs", "429"],
)
def test_a_failing_judge_abstains_and_the_rest_decide(
    stub_llm_factory: Factory, broken: dict[str, object]
) -> None:
    a = stub_llm_factory(reply=UNSAFE)
    b = stub_llm_factory(reply=UNSAFE)
    c = stub_llm_factory(**broken)
    policy = panel_policy(a.base_url, b.base_url, c.base_url, quorum="majority", deadline_s=1.0)
    with guarded_app(policy) as app:
        # Two unsafe votes settle a 3-seat majority whatever c does: c fails
        # or is cut off, and either way abstains.
        assert ask(app.client(), INJECTION).choices[0].finish_reason == "content_filter"
        assert app.decisions("blocked") == 1
        c_votes = app.sample("guardrail_panel_votes_total", {"judge": "c", "vote": "abstain"})
        assert c_votes == 1


@pytest.mark.parametrize(
    ("broken", "abstained"),
    [
        ({"reply": "Looks fine to me."}, "parse"),
        ({"reply": '{"flagged": "yes"}'}, "parse"),
        ({"status": 500}, "http"),
        ({"hang": True}, "deadline"),
        ({"status": 429, "headers": {"Retry-After": "30"}}, "rate_limited"),
    ],
    ids=["prose", "wrong-type", "http-500", "hangs", "429-retry-after-past-deadline"],
)
def test_abstention_is_recorded_with_its_reason(
    stub_llm_factory: Factory, broken: dict[str, object], abstained: str
) -> None:
    a = stub_llm_factory(reply=UNSAFE)
    c = stub_llm_factory(**broken)
    # unanimous_block needs every vote in: c's failure is waited for, not cut off.
    policy = panel_policy(a.base_url, c.base_url, quorum="unanimous_block", deadline_s=0.6)
    with guarded_app(policy) as app:
        assert ask(app.client(), INJECTION).choices[0].finish_reason == "content_filter"
        assert (
            app.sample("guardrail_panel_abstentions_total", {"judge": "b", "reason": abstained})
            == 1
        )


def test_429_without_retry_after_is_retried_until_the_deadline(stub_llm_factory: Factory) -> None:
    a = stub_llm_factory(reply=UNSAFE)
    limited = stub_llm_factory(status=429)
    policy = panel_policy(a.base_url, limited.base_url, quorum="unanimous_block", deadline_s=5.0)
    with guarded_app(policy) as app:
        assert ask(app.client(), INJECTION).choices[0].finish_reason == "content_filter"
        assert limited.count > 1  # backed off and asked again
        assert (
            app.sample(
                "guardrail_panel_abstentions_total", {"judge": "b", "reason": "rate_limited"}
            )
            == 1
        )


def test_429_with_retry_after_zero_is_not_retried_in_a_tight_loop(
    stub_llm_factory: Factory,
) -> None:
    # Regression: Retry-After: 0 was taken at its word, 1,300 calls a second.
    a = stub_llm_factory(reply=UNSAFE)
    limited = stub_llm_factory(status=429, headers={"Retry-After": "0"})
    policy = panel_policy(a.base_url, limited.base_url, quorum="unanimous_block", deadline_s=3.0)
    with guarded_app(policy) as app:
        assert ask(app.client(), INJECTION).choices[0].finish_reason == "content_filter"
        reason = {"judge": "b", "reason": "rate_limited"}
        assert app.sample("guardrail_panel_abstentions_total", reason) == 1
        assert 1 <= limited.count <= 1 + MAX_RETRIES


@settings(max_examples=100, deadline=None)
@given(
    attempt=st.integers(1, MAX_RETRIES),
    retry_after=st.none() | st.floats(0, 10, allow_nan=False),
)
def test_a_retry_waits_at_least_the_floor_and_the_vendors_word(
    attempt: int, retry_after: float | None
) -> None:
    pause = retry_pause(attempt, retry_after)
    assert pause >= RETRY_FLOOR_S * 2 ** (attempt - 1)
    assert pause >= (retry_after or 0.0)


def test_429_with_a_short_retry_after_is_retried_and_counts(stub_llm_factory: Factory) -> None:
    limited = stub_llm_factory(status=429, headers={"Retry-After": "0.2"}, reply=SAFE)
    with guarded_app(panel_policy(limited.base_url, deadline_s=3.0)) as app:
        # Lift the rate limit once the first request has been refused.
        lifter = threading.Thread(
            target=lambda: wait_for(lambda: limited.count >= 1) and setattr(limited, "status", 200)
        )
        lifter.start()
        answer = ask(app.client(), INJECTION)
        lifter.join()
        assert answer.choices[0].finish_reason == "stop"  # the retry's vote overturned the flag
        assert limited.count == 2
        assert app.decisions("flagged_allowed") == 1


@pytest.mark.parametrize(
    ("on_no_quorum", "decision"), [("block", "error_blocked"), ("allow", "error_allowed")]
)
def test_all_judges_failing_is_no_quorum_and_the_fail_mode_decides(
    stub_llm_factory: Factory, on_no_quorum: str, decision: str
) -> None:
    judges = [stub_llm_factory(status=500) for _ in range(3)]
    policy = panel_policy(*(j.base_url for j in judges), extra=f"  on_no_quorum: {on_no_quorum}\n")
    with guarded_app(policy) as app:
        ask(app.client(), INJECTION)
        assert app.decisions(decision) == 1
        assert app.sample("guardrail_panel_duration_seconds_count", {"ended": "no_quorum"}) == 1


def test_panel_of_one(stub_llm_factory: Factory) -> None:
    judge = stub_llm_factory(reply=UNSAFE)
    with guarded_app(panel_policy(judge.base_url)) as app:
        assert ask(app.client(), INJECTION).choices[0].finish_reason == "content_filter"
        assert app.decisions("blocked") == 1


def test_unknown_category_still_counts_as_a_block_vote(stub_llm_factory: Factory) -> None:
    judge = stub_llm_factory(reply='{"flagged": true, "categories": ["sorcery"], "reason": "x"}')
    with guarded_app(panel_policy(judge.base_url)) as app:
        assert ask(app.client(), INJECTION).choices[0].finish_reason == "content_filter"


def test_samples_ask_one_judge_several_times(stub_llm_factory: Factory) -> None:
    # The samples go out together, so all three arrive before the first answer.
    judge = stub_llm_factory(reply=SAFE, latency_s=0.5)
    policy = panel_policy(judge.base_url, quorum="unanimous_block")
    policy = policy.model_copy(
        update={
            "panel": policy.panel.model_copy(  # type: ignore[union-attr]
                update={
                    "judges": (
                        policy.panel.judges[0].model_copy(
                            update={"samples": 3, "temperature": 0.8}
                        ),
                    )
                }  # type: ignore[union-attr]
            )
        }
    )
    with guarded_app(policy) as app:
        assert ask(app.client(), INJECTION).choices[0].finish_reason == "stop"
        assert judge.count == 3
        assert all(r.get("temperature") == 0.8 for r in judge.requests)
        # Every sample was asked at once; the first allow settles a unanimous_block
        # vote, so the others were cut off: votes and cancellations add up to 3.
        votes = app.sample("guardrail_panel_votes_total", {"judge": "a", "vote": "allow"})
        abstained = app.sample("guardrail_panel_votes_total", {"judge": "a", "vote": "abstain"})
        assert votes >= 1
        assert votes + abstained == 3


def test_judge_failure_escalates_when_on_error_is_vote(stub_llm_factory: Factory) -> None:
    screen = stub_llm_factory(status=500)
    panel = stub_llm_factory(reply=SAFE)
    policy = panel_policy(panel.base_url, on_error="vote", screen_url=screen.base_url)
    with guarded_app(policy) as app:
        assert ask(app.client(), BENIGN).choices[0].finish_reason == "stop"
        assert app.decisions("allowed") == 1
        assert (
            app.sample("guardrail_escalations_total", {"stage": "input", "trigger": "error"}) == 1
        )


def test_a_cleared_flag_does_not_release_what_a_failed_screen_never_saw(
    stub_llm_factory: Factory,
) -> None:
    # The flagger's flag goes to the panel, which clears it; the failing screen
    # (final: not listed in overturns) is awaited, and it failed: under
    # on_error: block the text was never fully screened.
    failing = stub_llm_factory(status=500)
    flagger = stub_llm_factory(reply=UNSAFE)
    seat = stub_llm_factory(reply=SAFE)
    llm = "{{type: llm, model: openai/{0}, api_base: '{1}'}}"
    policy = parse_policy(
        "name: test\n"
        "routes: [{path: /v1/chat/completions}]\n"
        "judges:\n"
        f"  failing: {llm.format('f', failing.base_url)}\n"
        f"  flagger: {llm.format('g', flagger.base_url)}\n"
        f"  a: {llm.format('a', seat.base_url)}\n"
        "input: {screens: [{judge: failing}, {judge: flagger}]}\n"
        "on_flag: vote\n"
        "on_error: block\n"
        "panel: {judges: [{judge: a}], overturns: [flagger]}\n"
    )
    with guarded_app(policy) as app:
        assert ask(app.client(), BENIGN).choices[0].finish_reason == "content_filter"
        assert app.decisions("error_blocked") == 1
        assert seat.count == 1  # the flag was put to the panel, and cleared


def test_a_screen_the_panel_may_overturn_is_cut_off_and_its_question_handed_over(
    stub_llm_factory: Factory,
) -> None:
    screen = stub_llm_factory(held=True)  # would never answer
    seat = stub_llm_factory(reply=SAFE)
    policy = panel_policy(seat.base_url, screen_url=screen.base_url)
    with guarded_app(policy) as app:
        assert ask(app.client(), INJECTION).choices[0].finish_reason == "stop"
        assert app.decisions("flagged_allowed") == 1
        (question,) = asked(seat)
        assert question[0].startswith("prompt_injection (")
        assert "violence" in [q.split(" ")[0] for q in question[1:]]
    assert screen.count <= 1 and screen.completed == 0  # cut off, never answered


def test_with_on_error_vote_the_panel_is_also_asked_what_failed_screens_ask(
    stub_llm_factory: Factory,
) -> None:
    screen = stub_llm_factory(status=500)
    seat = stub_llm_factory(reply=SAFE)
    policy = panel_policy(seat.base_url, on_error="vote", screen_url=screen.base_url)
    with guarded_app(policy) as app:
        assert ask(app.client(), INJECTION).choices[0].finish_reason == "stop"
        assert app.decisions("flagged_allowed") == 1
        (question,) = asked(seat)
        # The injection screen's question, then the failed LLM screen's categories.
        assert question[0].startswith("prompt_injection (")
        assert [q.split(" ")[0] for q in question[1:]] == [
            "violence",
            "self_harm",
            "sexual_minors",
            "hate",
            "weapons",
            "illegal_drugs",
        ]


# --- the panel is asked what was flagged ---

POLICIES = Path(__file__).parent.parent / "policies"
CARD_QUESTION = "pii_card (a payment card number)"


def truthful(request: dict[str, Any]) -> str:
    """A seat that flags a card when it is asked about cards, and clears everything else."""
    system, user = (m["content"] for m in request["messages"])
    return UNSAFE if CARD_QUESTION in system and "4111" in user else SAFE


def asked(stub: StubLLM) -> list[list[str]]:
    """The categories each request to ``stub`` listed in its prompt."""
    return [
        [line[2:] for line in r["messages"][0]["content"].splitlines() if line.startswith("- ")]
        for r in stub.requests
    ]


def shipped_panel(*urls: str, overturns: str | None = None) -> Policy:
    """``policies/panel.yaml``, its three seats on stubs, optionally with ``overturns``."""
    text = (POLICIES / "panel.yaml").read_text()
    for name, url in zip(("gpt", "claude", "gemini"), urls, strict=True):
        start = text.index(f"  {name}:\n")
        end = text.index("api_key_env", start)
        text = (
            text[:start]
            + f"  {name}:\n    type: llm\n    model: openai/{name}\n"
            + (f"    api_base: '{url}'\n    " + text[end:])
        )
    assert "  overturns: [injection]\n" in text
    text = text.replace(
        "  overturns: [injection]\n", f"  overturns: {overturns}\n" if overturns else ""
    )
    return parse_policy(text.replace("name: panel", "name: test"))


def test_the_shipped_panel_policy_loads() -> None:
    policy = load_policy(POLICIES / "panel.yaml")
    assert policy.panel is not None
    assert policy.panel.overturns == ("injection",)
    # Left out, the default is the same for this policy: pii flags are final.
    assert policy.panel.model_copy(update={"overturns": None}).may_overturn(policy.judges) & {
        "injection",
        "pii",
    } == {"injection"}


def test_a_card_flag_is_final_and_never_put_to_a_panel(stub_llm_factory: Factory) -> None:
    # Regression: the card went to seats asked about violence, hate, ...; they
    # voted allow and the card was released (flagged_allowed).
    seats = [stub_llm_factory(reply=SAFE) for _ in range(3)]
    with guarded_app(shipped_panel(*(s.base_url for s in seats))) as app:
        assert ask(app.client(), CARD).choices[0].finish_reason == "content_filter"
        assert app.decisions("blocked") == 1
        assert app.decisions("flagged_allowed") == 0
        assert sum(s.count for s in seats) == 0


def test_a_card_hidden_behind_an_overturnable_flag_is_still_caught(
    stub_llm_factory: Factory,
) -> None:
    # The injection flag goes to the panel, which would clear it; the card in
    # the same text is still screened, and its flag is final.
    seats = [stub_llm_factory(reply=SAFE) for _ in range(3)]
    with guarded_app(shipped_panel(*(s.base_url for s in seats))) as app:
        answer = ask(app.client(), f"{INJECTION} {CARD}")
        assert answer.choices[0].finish_reason == "content_filter"
        assert app.decisions("blocked") == 1
        assert sum(s.count for s in seats) == 0


def test_an_escalated_card_is_put_to_the_panel_as_a_card(stub_llm_factory: Factory) -> None:
    seats = [stub_llm_factory(reply=truthful) for _ in range(3)]
    policy = shipped_panel(*(s.base_url for s in seats), overturns="[injection, pii]")
    with guarded_app(policy) as app:
        assert ask(app.client(), CARD).choices[0].finish_reason == "content_filter"
        assert app.decisions("blocked") == 1
        questions = [q for s in seats for q in asked(s)]
        assert len(questions) >= 2  # a majority of three was asked
        for question in questions:
            assert CARD_QUESTION in question
            assert not any(q.startswith(("violence", "hate", "prompt_injection")) for q in question)


def test_an_escalated_injection_is_put_to_the_panel_as_an_injection(
    stub_llm_factory: Factory,
) -> None:
    seats = [stub_llm_factory(reply=SAFE) for _ in range(3)]
    with guarded_app(shipped_panel(*(s.base_url for s in seats))) as app:
        assert ask(app.client(), INJECTION).choices[0].finish_reason == "stop"
        assert app.decisions("flagged_allowed") == 1
        for question in (q for s in seats for q in asked(s)):
            assert len(question) == 1 and question[0].startswith("prompt_injection (")


def test_a_flag_outside_the_screens_categories_blocks(stub_llm_factory: Factory) -> None:
    # Regression: the screen listed self_harm, the judge said "self-harm": dropped, allowed.
    judge = stub_llm_factory()
    policy = parse_policy(
        "name: test\n"
        "routes: [{path: /v1/chat/completions}]\n"
        f"judges: {{guard: {{type: llm, model: openai/g, api_base: '{judge.base_url}'}}}}\n"
        "input: {screens: [{judge: guard, timeout_s: 10, categories: [violence, Self-Harm]}]}\n"
    )
    with guarded_app(policy) as app:
        for reply in (
            '{"flagged": true, "categories": ["self-harm"], "reason": "x"}',
            '{"flagged": true}',
            '{"flagged": true, "categories": ["sorcery"], "reason": "x"}',
        ):
            judge.reply = reply
            assert ask(app.client(), BENIGN).choices[0].finish_reason == "content_filter"
        assert app.decisions("blocked") == 3
        flags = {"stage": "input", "judge": "guard"}
        assert app.sample("guardrail_flags_total", {**flags, "category": "self_harm"}) == 1
        assert app.sample("guardrail_flags_total", {**flags, "category": "other"}) == 2
        for question in asked(judge):
            assert [q.split(" ")[0] for q in question] == ["violence", "self_harm"]


# --- property: a card is never released by a panel asked another question ---

PIECES = {
    "injection": INJECTION,
    "card": "card 4111 1111 1111 1111",
    "email": "mail me at jane.doe@example.com",
    "benign": BENIGN,
}
OVERTURNS = (None, "[injection]", "[pii]", "[injection, pii]")


@pytest.fixture(scope="module")
def honest_seats() -> Iterator[list[StubLLM]]:
    """Seats that clear everything except a card they were asked about."""
    seats = [StubLLM(reply=truthful).start() for _ in range(3)]
    yield seats
    for seat in seats:
        seat.stop()


@settings(max_examples=60, deadline=None)
@given(
    pieces=st.lists(st.sampled_from(sorted(PIECES)), min_size=1, max_size=4),
    overturns=st.sampled_from(OVERTURNS),
)
def test_a_card_is_never_released_by_the_panel(
    honest_seats: list[StubLLM], pieces: list[str], overturns: str | None
) -> None:
    text = " ".join(PIECES[p] for p in pieces)
    policy = shipped_panel(*(s.base_url for s in honest_seats), overturns=overturns)
    decision = asyncio.run(_assess(policy, text))
    flagged = {"injection"} & set(pieces) | ({"pii"} if {"card", "email"} & set(pieces) else set())
    overturnable = {"injection"} if overturns is None else set(overturns[1:-1].split(", "))
    if "card" in pieces:
        assert decision == "blocked"  # a final flag, or the panel asked about cards
    elif flagged - overturnable:
        assert decision == "blocked"  # a final flag
    elif flagged:
        assert decision == "flagged_allowed"  # the panel was asked, and cleared it
    else:
        assert decision == "allowed"


async def _assess(policy: Policy, text: str) -> str:
    guard = Guard.build(policy, registry=CollectorRegistry())
    try:
        return (await guard.assess(text)).decision
    finally:
        await guard.aclose()


# --- what a policy may say about the panel and the screens ---

CHECKED = """\
name: checked
routes: [{path: /v1/chat/completions}]
judges:
  pii: {type: pii, kinds: [email, card]}
  words: {type: keywords, keywords: [plugh], category: Bad Words}
  guard: {type: llm, model: openai/g, categories: [violence, self_harm]}
  a: {type: llm, model: openai/a}
input:
  screens:
    - {judge: pii}
    - {judge: words}
    - {judge: guard}
on_flag: vote
panel:
  judges: [{judge: a}]
"""


@pytest.mark.parametrize(
    ("change", "field", "says"),
    [
        (("{judge: guard}", "{judge: guard, categories: [hate]}"), "categories", "'hate'"),
        (("{judge: pii}", "{judge: pii, categories: [pii_phone]}"), "categories", "pii_phone"),
        (("{judge: words}", "{judge: words, categories: [other]}"), "categories", "bad_words"),
        (("[{judge: a}]", "[{judge: a}]\n  overturns: [guard, nobody]"), "overturns", "'nobody'"),
        (("on_flag: vote", "on_flag: block"), "overturns", "only with on_flag: vote"),
        (("[{judge: a}]", "[{judge: a}, {judge: pii}]"), "judge", "panel seats are llm"),
        (("    - {judge: guard}\n", ""), "on_flag", "no screen's flag may go to the panel"),
    ],
    ids=[
        "llm-not-asked",
        "pii-kind-not-looked-for",
        "keyword-category",
        "unknown",
        "no-vote",
        "seat",
        "vote-on-final-flags-only",
    ],
)
def test_policy_checks_what_screens_ask_and_the_panel_may_do(
    change: tuple[str, str], field: str, says: str
) -> None:
    text = CHECKED.replace(*change)
    if change[0] == "on_flag: vote":
        text = text.replace("[{judge: a}]", "[{judge: a}]\n  overturns: [pii]")
    with pytest.raises(PolicyError) as caught:
        parse_policy(text)
    (issue,) = caught.value.issues
    assert issue.field.endswith(field) or f".{field}" in issue.field
    assert says in issue.message


def test_screen_categories_are_spelled_one_way() -> None:
    text = CHECKED.replace("{judge: guard}", "{judge: guard, categories: [Self-Harm, VIOLENCE]}")
    policy = parse_policy(text.replace("{judge: words}", "{judge: words, categories: [bad-words]}"))
    assert policy.input.screens[2].categories == ("self_harm", "violence")
    assert policy.judges["guard"].categories == ("violence", "self_harm")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "decision"),
    [("card 4111 1111 1111 1111", "blocked"), ("mail jane.doe@example.com", "allowed")],
)
def test_a_screen_narrows_what_a_local_judge_looks_for(text: str, decision: str) -> None:
    policy = parse_policy(
        CHECKED.replace("{judge: pii}", "{judge: pii, categories: [PII-Card]}")
        .replace("    - {judge: words}\n", "")
        .replace("    - {judge: guard}\n", "")
        .replace("on_flag: vote\npanel:\n  judges: [{judge: a}]\n", "")
    )
    assert asyncio.run(_assess(policy, text)) == decision


def test_seats_waiting_for_a_connection_abstain_as_pool(stub_llm_factory: Factory) -> None:
    seat = stub_llm_factory(held=True)  # holds the one connection until the deadline
    policy = parse_policy(
        "name: test\n"
        "routes: [{path: /v1/chat/completions}]\n"
        "judges:\n"
        "  injection: {type: injection}\n"
        f"  a: {{type: llm, model: openai/a, api_base: '{seat.base_url}', max_connections: 1}}\n"
        "input: {screens: [{judge: injection, timeout_s: 0.5}]}\n"
        "on_flag: vote\n"
        "panel: {judges: [{judge: a, samples: 3}], deadline_s: 1.0}\n"
    )
    with guarded_app(policy) as app:
        assert ask(app.client(), INJECTION).choices[0].finish_reason == "content_filter"
        assert app.decisions("error_blocked") == 1
        abstained = {"judge": "a", "reason": "pool"}
        assert app.sample("guardrail_panel_abstentions_total", abstained) == 2
        pool_waits = {"judge": "a", "stage": "panel"}
        assert app.sample("guardrail_judge_pool_wait_seconds_count", pool_waits) == 2
        seat.release()
    assert seat.count <= 1
