"""What an answer (or one streamed event of it) says: the text to screen, by where it sits.

Text that a client joins across events (a chat chunk's ``delta.content``, a
tool call's arguments) is a **flow**: its pieces are screened as one text, in
order, per channel. Every other string (ids, model names, unknown fields,
object keys, SSE ``event:``/``id:`` values) is **side** text: a reader sees it
as a value on its own, so each is screened whole where it appears.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

Flow = tuple[str, str]  # (channel, text)


@dataclass(frozen=True, slots=True)
class Progress:
    """How far a stream has got, so a refusal that ends it continues it consistently.

    APIs whose clients rebuild the answer from indexed events (Responses output
    items, Anthropic content blocks) reject a refusal that reuses a slot or
    goes back in the event sequence.
    """

    slots: int = 0  # output slots the stream opened: a refusal takes the next one
    sequence: int = -1  # the last event sequence number seen

    def after(self, other: Progress | None) -> Progress:
        """The furthest of both."""
        if other is None:
            return self
        return Progress(max(self.slots, other.slots), max(self.sequence, other.sequence))


@dataclass(frozen=True, slots=True)
class AnswerParts:
    """The text of one answer or event: flows by channel, and side values."""

    flows: tuple[Flow, ...] = ()
    side: tuple[str, ...] = ()
    ident: str | None = None  # the answer's own id, reused by a refusal that ends its stream
    model: str | None = None
    progress: Progress | None = None  # indexed APIs: the slots and sequence this event shows
    # Where the event moves the stream in the API's grammar (adapter-defined, e.g. a
    # block started): a refusal that cuts the stream continues from the released steps.
    step: str | None = None

    def text(self) -> str:
        """Everything, as one text: each channel's pieces joined, then the side values."""
        channels: dict[str, list[str]] = {}
        for channel, piece in self.flows:
            channels.setdefault(channel, []).append(piece)
        return "\n".join(["".join(pieces) for pieces in channels.values()] + list(self.side))


def strings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(path, string) for every string and every object key, however nested.

    The path drops list positions, so one field's pieces share a path across
    events. Numbers, booleans and nulls are not language and are skipped.
    """
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield f"{path}#key", str(key)
            yield from strings(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for item in value:
            yield from strings(item, path)


def split_parts(
    pairs: Iterator[tuple[str, str]],
    channel_of: Callable[[str], str | None],
    not_text: Callable[[str, str], bool],
) -> tuple[list[Flow], list[str]]:
    """Sort (path, string) pairs into flows (``channel_of`` names one) and side values."""
    flows: list[Flow] = []
    side: list[str] = []
    for path, text in pairs:
        if not text or not_text(path, text):
            continue
        channel = channel_of(path)
        if channel is None:
            side.append(text)
        else:
            flows.append((channel, text))
    return flows, side


def foreign_parts(value: Any) -> AnswerParts:
    """An event not in the route's grammar: every string a flow of its own path.

    A raw client may join what such events carry across the stream (another
    API's deltas), so each field's pieces are screened joined, never one by one.
    """
    flows = [(f"foreign:{path}", text) for path, text in strings(value) if text]
    return AnswerParts(flows=tuple(flows))


NOT_JSON: Any = object()  # what ``read_answer`` returns for text that is not JSON


# Deeper than any real answer. The walks over an answer (``strings``) recurse: a
# value that ``json`` could just parse near the recursion limit would break them.
MAX_ANSWER_DEPTH = 200


def read_answer(data: str) -> Any:
    """An answer's (or event's) JSON value, or ``NOT_JSON``: not JSON (NaN and Infinity
    are not), or nested deeper than ``MAX_ANSWER_DEPTH``."""
    try:
        value = json.loads(data, parse_constant=_not_a_constant)
    except (ValueError, RecursionError):
        return NOT_JSON
    return value if _shallow(value) else NOT_JSON


def _shallow(value: Any) -> bool:
    level = [value]
    for _ in range(MAX_ANSWER_DEPTH):
        level = [
            child
            for item in level
            if isinstance(item, dict | list)
            for child in (item.values() if isinstance(item, dict) else item)
        ]
        if not level:
            return True
    return False


def _not_a_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
