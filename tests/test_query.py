"""The query string of a guarded request is screened with its body, or refused as ambiguous.

An app or upstream may act on ``?prompt=...`` as readily as on the body. Through
real HTTP, in-process and in proxy mode, with receivers that act on anything
and record what they got (``recorder``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from urllib.parse import quote, quote_plus, urlencode

import pytest
from guarded import BENIGN, INJECTION, policy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from recorder import Recorder, chat, raw
from served import Served

from guardrail import GuardrailMiddleware
from guardrail.adapters import BadRequest
from guardrail.flow.proxy import Upstream
from guardrail.flow.routing import query_text

CHAT = "/v1/chat/completions"
Receiver = tuple[Served, Recorder]


@pytest.fixture(scope="module", params=["in-process", "proxy"])
def receiver(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    """A guarded recorder: the app itself, or an upstream behind ``guardrail proxy`` wiring."""
    recorder = Recorder()
    if request.param == "in-process":
        guard = GuardrailMiddleware(recorder, policy=policy(), registry=CollectorRegistry())
        with Served(guard, name="guarded-recorder") as served:
            yield served, recorder
        return
    with Served(recorder, name="upstream") as upstream:
        guard = GuardrailMiddleware(
            Upstream(upstream.url), policy=policy(), registry=CollectorRegistry()
        )
        with Served(guard, name="proxy") as served:
            yield served, recorder


def scope(query: bytes) -> dict[str, object]:
    return {"type": "http", "query_string": query}


# --- the text of a query ----------------------------------------------------------


def test_names_and_values_are_decoded_one_per_line() -> None:
    assert query_text(scope(b"")) == ""
    assert query_text(scope(b"a=1&prompt=Ignore%20all")) == "a\n1\nprompt\nIgnore all"
    # '+' is a space to form decoders and itself to others: both are read.
    assert query_text(scope(b"p=a+b")) == "p\na b\np\na+b"
    # Escapes left after one decoding are read decoded again too.
    assert query_text(scope(b"p=a%2520b")) == "p\na%20b\na b"


@pytest.mark.parametrize(
    "query",
    [b"p=%zz", b"p=%4", b"p=%", b"a=1;p=x", b"p=%ff", b"p=%c0%af", b"p=%e9t%e9", b"p=\xe9"],
)
def test_queries_decoders_read_differently_are_refused(query: bytes) -> None:
    with pytest.raises(BadRequest) as refused:
        query_text(scope(query))
    assert refused.value.code == "ambiguous_query"


def utf8(max_size: int) -> st.SearchStrategy[str]:
    return st.text(st.characters(codec="utf-8"), max_size=max_size)


@settings(max_examples=150, deadline=None)
@given(
    # Text a client can percent-encode as UTF-8 (a lone surrogate has no encoding).
    pairs=st.lists(st.tuples(utf8(max_size=20), utf8(max_size=40)), max_size=5),
    form=st.booleans(),
)
def test_every_name_and_value_is_in_the_text(pairs: list[tuple[str, str]], form: bool) -> None:
    encoded = urlencode(pairs, quote_via=quote_plus if form else quote).encode()
    text = query_text(scope(encoded))
    for name, value in pairs:
        assert name in text and value in text


# --- through real HTTP --------------------------------------------------------------


_probes = itertools.count()


def ask(receiver: Receiver, query: str, text: str = BENIGN, method: str = "POST") -> object:
    served, recorder = receiver
    tag = f"q{next(_probes)}"
    answer = raw(served.port, method, f"{CHAT}?{query}", chat(text), {"x-probe": tag})
    return answer, recorder.probe(tag)


@pytest.mark.parametrize(
    "query",
    [
        "prompt=" + quote(INJECTION),
        "prompt=" + quote_plus(INJECTION),
        "messages=" + quote('[{"role":"user","content":"' + INJECTION + '"}]'),
        quote(INJECTION) + "=1",  # a name is read too
        "a=1&prompt=" + quote(INJECTION, safe=""),
        "prompt=" + quote(quote(INJECTION)),  # for a receiver that decodes twice
    ],
)
def test_an_injection_in_the_query_is_refused(receiver: Receiver, query: str) -> None:
    answer, _ = ask(receiver, query)
    assert answer.refused  # type: ignore[attr-defined]


def test_a_benign_query_passes_as_it_came(receiver: Receiver) -> None:
    served, recorder = receiver
    query = "user=ann&note=" + quote_plus(BENIGN)
    answer = raw(served.port, "POST", f"{CHAT}?{query}", chat(BENIGN), {"x-probe": "benign-q"})
    assert answer.answered
    [got] = recorder.probe("benign-q")
    assert got.body == chat(BENIGN)


@pytest.mark.parametrize("query", ["p=%zz", "a=1;p=2", "p=%ff", "p=%c0%af", "p=%"])
def test_an_ambiguous_query_never_reaches_the_receiver(receiver: Receiver, query: str) -> None:
    answer, got = ask(receiver, query)
    assert answer.status == 400  # type: ignore[attr-defined]
    assert answer.json()["error"]["code"] == "ambiguous_query"  # type: ignore[attr-defined]
    assert got == []


def test_a_query_with_an_unlisted_method_is_refused(receiver: Receiver) -> None:
    served, recorder = receiver
    query = "prompt=" + quote(INJECTION)
    answer = raw(served.port, "GET", f"{CHAT}?{query}", headers={"x-probe": "get-q"})
    assert answer.status == 405
    assert recorder.probe("get-q") == []


def encodings() -> st.SearchStrategy[str]:
    """A character as a URL could carry it: itself, percent-encoded, or '+' for a space."""
    return st.sampled_from(["plain", "percent", "plus"])


@st.composite
def carried(draw: st.DrawFn, text: str) -> str:
    """``text`` as a query value, each character encoded one of the ways decoders accept."""
    out = []
    for char in text:
        how = draw(encodings())
        if char == " " and how == "plus":
            out.append("+")
        elif how == "percent" or not (char.isalnum() or char in "-._~"):
            out.append(quote(char, safe=""))
        else:
            out.append(char)
    return "".join(out)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    text=st.sampled_from([INJECTION, BENIGN]),
    name=st.sampled_from(["prompt", "messages", "q", "x"]),
)
def test_a_query_is_screened_however_it_is_encoded(
    receiver: Receiver, data: st.DataObject, text: str, name: str
) -> None:
    before = data.draw(st.sampled_from(["", "a=1&", "k&"]))
    query = f"{before}{name}={data.draw(carried(text))}"
    answer, _ = ask(receiver, query)
    if text == INJECTION:
        assert answer.refused, query  # type: ignore[attr-defined]
    else:
        assert answer.answered, query  # type: ignore[attr-defined]
