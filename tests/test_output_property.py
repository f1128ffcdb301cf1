"""Property: whatever the framing, chunking, padding and window settings, hold-back never
lets a character of a card or key reach the client before the stream is cut.

Driven in-process (no server per example, see ``answers.call``); the transport
itself is covered over real HTTP in ``test_output_leaks.py``.
"""

from __future__ import annotations

import asyncio
import json
import re
import string

from answers import call, chunk_event, raw_app
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guardrail import parse_policy

CARDS = ("4111 1111 1111 1111", "5555 5555 5555 4444", "3782 822463 10005", "6011 0009 9013 9424")
INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff\u00ad"
BLANK = " \n\t\r"
# Line endings a spec-following client reads as an event's end (never "\r" then "\n",
# which is one line ending, not two).
EVENT_ENDS = ("\n\n", "\r\n\r\n", "\r\r", "\n\r\n", "\n\r", "\r\n\n", "\r\n\r", "\n\r\r")
REFUSAL = "Sorry, I can't help with that request."


def policy(window: int, overlap: int) -> object:
    return parse_policy(
        "name: prop\n"
        "routes: [{path: /v1/chat/completions}]\n"
        "judges: {injection: {type: injection}, pii: {type: pii}}\n"
        "input: {screens: [{judge: injection}]}\n"
        f"output: {{screens: [{{judge: pii}}], window_chars: {window}, overlap_chars: {overlap}}}\n"
    )


words = st.lists(
    st.text(alphabet=string.ascii_letters + ".,!?", min_size=1, max_size=9), max_size=40
).map(" ".join)
padding = st.text(alphabet=INVISIBLE, max_size=600) | st.text(
    alphabet=INVISIBLE + BLANK, max_size=40
)


@st.composite
def key(draw: st.DrawFn) -> str:
    """An OpenAI-style key: random base62 with every class in its first 32 characters."""
    body = draw(st.text(alphabet=string.ascii_letters + string.digits, min_size=37, max_size=45))
    return "sk-" + "aZ7" + body


@st.composite
def answer(draw: st.DrawFn) -> tuple[str, str, int]:
    """(answer text, the secret as a judge reads it, where the secret starts in the text)."""
    if draw(st.booleans()):
        secret = draw(st.sampled_from(CARDS))
        # Blank and invisible runs between the groups: a client still renders one card.
        groups = secret.split(" ")
        padded = groups[0] + "".join(" " + draw(padding) + g for g in groups[1:])
    else:
        secret = draw(key())
        # Only invisible characters inside a key: a blank would end it.
        padded = "".join(c + draw(st.text(alphabet=INVISIBLE, max_size=3)) for c in secret)
    before = draw(words) + " " + draw(padding)
    after = " " + draw(words)
    return before + padded + after, secret, len(before)


@st.composite
def stream(draw: st.DrawFn, text: str) -> list[bytes]:
    """``text`` as SSE chunks: content cut anywhere, random event ends, random byte splits."""
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(text) - 1)), max_size=30)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True) if a < b]
    ascii_only = draw(st.booleans())
    body = b"".join(
        f"data: {chunk_event(p, ascii_only=ascii_only)}{draw(st.sampled_from(EVENT_ENDS))}".encode()
        for p in pieces
    )
    body += b"data: [DONE]\n\n"
    splits = sorted(draw(st.sets(st.integers(1, len(body) - 1), max_size=40)))
    return [body[a:b] for a, b in zip([0, *splits], [*splits, len(body)], strict=True)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), window=st.integers(65, 400))
def test_hold_back_never_releases_a_character_of_a_secret(data: st.DataObject, window: int) -> None:
    text, secret, start = data.draw(answer())
    chunks = data.draw(stream(text))
    overlap = data.draw(st.integers(64, window - 1))  # what validation allows for the pii judge
    got = asyncio.run(call(raw_app(chunks), policy(window, overlap)))  # type: ignore[arg-type]

    content = got.content()
    chunks_out = got.chunks()
    if content == REFUSAL:  # cut before anything was released: the policy's refusal alone
        released = ""
    else:
        released, newline, _ = content.partition("\n" + REFUSAL)
        assert newline, f"the stream was not cut: {content!r}"
        # The refusal continues the stream: the app's own id throughout.
        assert {c["id"] for c in chunks_out} == {"chatcmpl-app-1"}
    assert text.startswith(released)  # whole events, in order, nothing made up
    assert len(released) <= start  # not one character of the secret
    assert secret not in re.sub(r"\s+", " ", "".join(c for c in content if c not in INVISIBLE))
    assert chunks_out[-1]["choices"][0]["finish_reason"] == "content_filter"
    assert got.events()[-1] == {"data": "[DONE]"}


def test_the_property_example_from_the_issue_padding_600_invisible() -> None:
    # "Card: 4111" + 600 zero-width spaces + " 1111 1111 1111", in one window setting.
    text = "Card: 4111" + "\u200b" * 600 + " 1111 1111 1111 thanks"
    events = [text[i : i + 7] for i in range(0, len(text), 7)]
    body = [f"data: {chunk_event(e)}\n\n".encode() for e in events] + [b"data: [DONE]\n\n"]
    got = asyncio.run(call(raw_app(body), policy(400, 64)))  # type: ignore[arg-type]
    assert "4111" not in got.content()
    assert json.loads(got.events()[-2]["data"])["choices"][0]["finish_reason"] == "content_filter"
