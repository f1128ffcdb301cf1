"""Escalation to a panel over real HTTP: stub judges with chosen latencies and answers."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from guarded import BENIGN, INJECTION, guarded_app, panel_policy
from served import wait_for
from stub_llm import StubLLM
from test_guarded_path import ask

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
    policy = panel_policy(a.base_url, limited.base_url, quorum="unanimous_block", deadline_s=0.8)
    with guarded_app(policy) as app:
        assert ask(app.client(), INJECTION).choices[0].finish_reason == "content_filter"
        assert limited.count > 1  # backed off and asked again
        assert (
            app.sample(
                "guardrail_panel_abstentions_total", {"judge": "b", "reason": "rate_limited"}
            )
            == 1
        )


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
