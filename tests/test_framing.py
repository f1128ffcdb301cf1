"""SSE framing, pure: our events are the events a spec-following client reads, however split."""

from __future__ import annotations

import json

from answers import Answer
from hypothesis import given, settings
from hypothesis import strategies as st

from guardrail.adapters import OpenAIChat
from guardrail.flow.framing import SSE_LINES, SSEFramer, Unit, looks_like_sse

LINE_ENDS = ("\n", "\r\n", "\r")
# What an app can put on the wire: UTF-8 text (a lone surrogate has no encoding).
values = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=12)


@st.composite
def event(draw: st.DrawFn) -> list[str]:
    """The lines of one event: data (JSON content), and maybe a comment, event: or id:."""
    lines = [f"data: {json.dumps({'choices': [{'delta': {'content': draw(values)}}]})}"]
    if draw(st.booleans()):
        lines.insert(
            draw(st.integers(0, 1)),
            f"{draw(st.sampled_from([':', 'event:', 'id:']))}{draw(values)}",
        )
    return lines


@st.composite
def body(draw: st.DrawFn) -> bytes:
    out = ""
    for lines in draw(st.lists(event(), min_size=1, max_size=6)):
        for line in lines:
            out += line + draw(st.sampled_from(LINE_ENDS))
        end = draw(st.sampled_from(LINE_ENDS))
        if out.endswith("\r") and end == "\n":
            end = "\r"  # "\r" then "\n" is one line ending, not a blank line
        out += end
    return out.encode()


def frame(data: bytes, cuts: list[int]) -> list[Unit]:
    framer = SSEFramer(OpenAIChat().event_parts, max_event_bytes=1 << 20)
    units: list[Unit] = []
    for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True):
        units += framer.feed(data[a:b])
    return units + framer.flush()


@settings(max_examples=200, deadline=None)
@given(data=body(), cuts=st.lists(st.integers(1, 400), max_size=20))
def test_events_match_a_spec_reader_however_the_bytes_are_split(
    data: bytes, cuts: list[int]
) -> None:
    cuts = sorted({c for c in cuts if c < len(data)})
    units = frame(data, cuts)
    assert b"".join(u.raw for u in units) == data  # every byte released, in order
    expected = Answer(200, [], data).events()
    read = [u for u in units if u.raw.strip()]
    assert len(read) == len(expected)
    for unit, want in zip(read, expected, strict=True):
        content = json.loads(want["data"])["choices"][0]["delta"]["content"]
        assert ("0:delta.content", content) in unit.flows or not content
        others = [f"{k}:{v}" for k, v in want.items() if k not in ("data",)]
        lines = [text for channel, text in unit.flows if channel == SSE_LINES]
        assert len(lines) == len(others)


def test_a_carriage_return_at_a_chunk_edge_waits_for_the_next_byte() -> None:
    data = b'data: {"choices": []}\r\n\r\n'
    cut = data.index(b"\r\n") + 1  # "\r" ends the first read; its "\n" starts the next
    units = frame(data, [cut])
    assert [u.raw for u in units] == [data]


def test_sniffing_decides_only_once_it_can() -> None:
    assert looks_like_sse(b"dat") is None
    assert looks_like_sse(b"data: {}") is True
    assert looks_like_sse(b"\xef\xbb\xbf: hi") is True
    assert looks_like_sse(b"Hello") is False
    assert looks_like_sse(b"dat", final=True) is False
