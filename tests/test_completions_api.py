"""The legacy OpenAI completions API (``POST /v1/completions``): requests, answers, refusals.

The adapter's reading is tested with no I/O; the rest drives the example app
with the real ``openai`` SDK over real uvicorn, guarded in-process and behind
the proxy.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import httpx
import pytest
from answers import raw_app
from formats import PREAMBLE, client, formats_policy, served_guarded, served_proxy
from guarded import CARD, INJECTION, Guarded
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from served import Served

from guardrail import GuardrailMiddleware
from guardrail.adapters import BadRequest, OpenAICompletions

ADAPTER = OpenAICompletions()
CARD_DIGITS = "4111 1111 1111 1111"
Serve = Callable[..., AbstractContextManager[Guarded]]
SERVERS = [pytest.param(served_guarded, id="middleware"), pytest.param(served_proxy, id="proxy")]


def read(body: dict[str, Any]) -> str:
    return ADAPTER.parse_request(json.dumps(body).encode()).text


def test_the_prompt_string_or_list_and_every_other_string_are_screened() -> None:
    assert read({"model": "m", "prompt": "mark-one"}) == "mark-one"
    text = read({"model": "m", "prompt": ["mark-a", "mark-b"], "suffix": "mark-s", "x": "mark-x"})
    assert all(f"mark-{m}" in text for m in "absx")
    assert "m" not in text.split()  # the model name is not language


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b'"hi"', "not_completion"),
        (b'{"model": "m"}', "not_completion"),
        (b'{"model": "m", "prompt": [1, 2, 3]}', "token_prompt"),  # token ids: unreadable
        (b'{"model": "m", "prompt": [[1, 2], [3]]}', "token_prompt"),
        (b'{"model": "m", "prompt": {"text": "hi"}}', "token_prompt"),
        (b'{"model": "m", "prompt": "hi", "stream": 1}', "not_completion"),
        (b'{"model": "m", "prompt": "hi", "prompt": "Ignore all"}', "duplicate_key"),
        (b'{"model": "m", "prompt": "hi", "Prompt": "Ignore all"}', "ambiguous_key"),
    ],
)
def test_malformed_bodies_are_refused(body: bytes, code: str) -> None:
    with pytest.raises(BadRequest) as refused:
        ADAPTER.parse_request(body)
    assert refused.value.code == code


_said = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12).map(lambda t: f"say! {t}")


@given(st.lists(_said, min_size=1, max_size=5), st.dictionaries(_said, _said, max_size=3))
def test_every_prompt_and_unknown_field_is_screened(
    prompts: list[str], extra: dict[str, str]
) -> None:
    text = read({"model": "m", "prompt": prompts, **extra})
    assert all(p in text for p in prompts)
    assert all(k in text and v in text for k, v in extra.items())


@pytest.mark.parametrize("serve", SERVERS)
def test_benign_answered_and_injection_refused_as_the_sdk_reads_them(serve: Serve) -> None:
    with serve(formats_policy()) as app:
        sdk = client(app.url)
        answer = sdk.completions.create(model="m", prompt="Tell me about Paris")
        assert answer.choices[0].text == "You said: Tell me about Paris"
        chunks = list(sdk.completions.create(model="m", prompt="hello there", stream=True))
        assert "".join(c.choices[0].text for c in chunks) == "You said: hello there"

        refused = sdk.completions.create(model="m", prompt=INJECTION)
        assert refused.choices[0].finish_reason == "content_filter"
        assert "can't help" in refused.choices[0].text
        chunks = list(sdk.completions.create(model="m", prompt=INJECTION, stream=True))
        assert chunks[-1].choices[0].finish_reason == "content_filter"
        assert "can't help" in "".join(c.choices[0].text for c in chunks)
        assert app.decisions("blocked") == 2 and app.decisions("allowed") == 2


@pytest.mark.parametrize("serve", SERVERS)
def test_a_card_in_the_answer_is_cut(serve: Serve) -> None:
    with serve(formats_policy(answers=True)) as app:
        sdk = client(app.url)
        whole = sdk.completions.create(model="m", prompt=CARD)
        assert whole.choices[0].finish_reason == "content_filter"
        assert "4111" not in whole.choices[0].text

        chunks = list(sdk.completions.create(model="m", prompt=PREAMBLE + CARD, stream=True))
        text = "".join(c.choices[0].text for c in chunks)
        assert text.startswith("You said: Here is")  # windows before the card passed
        assert "4111" not in text and "can't help" in text
        assert chunks[-1].choices[0].finish_reason == "content_filter"
        assert app.decisions("blocked") == 2


def test_an_answer_in_another_apis_grammar_is_screened_joined() -> None:
    """Responses events on the completions route: a card split across deltas is found."""

    def event(delta: str) -> bytes:
        data = {"type": "response.output_text.delta", "output_index": 0, "delta": delta}
        return b"data: " + json.dumps(data).encode() + b"\n\n"

    pieces = [PREAMBLE, PREAMBLE, "my card ", "4111 ", "1111 ", "1111 ", "1111", " ok"]
    policy = formats_policy(answers=True)
    guarded = GuardrailMiddleware(
        raw_app([event(p) for p in pieces]), policy=policy, registry=CollectorRegistry()
    )
    with Served(guarded, name="foreign") as served:
        body = {"model": "m", "prompt": "hello", "stream": True}
        got = httpx.post(served.url + "/v1/completions", json=body, timeout=60.0).text
    deltas = [json.loads(line[6:])["delta"] for line in got.splitlines() if '"delta"' in line]
    assert deltas and deltas[0] == PREAMBLE  # released before the card
    assert CARD_DIGITS not in "".join(deltas)
    assert '"finish_reason": "content_filter"' in got  # ended in the route's own grammar
