"""JSON paths: a small, strict subset of JSONPath that names fields of a chat app's JSON.

    $                    the whole document
    .name                a member (letters, digits, ``_`` and ``-``; not starting with a digit)
    ['any name']         a member whose name needs quoting (no quote or backslash inside)
    [3]                  an item of an array
    [*]                  every item of an array
    .*                   every member of an object

Nothing else (no recursive descent, filters, slices or unions): each of those
reads differently in different JSONPath libraries, and a policy must mean one
thing. A path is parsed and checked when the policy loads.

A path **covers** a place in a document when it matches the place or one of its
ancestors: the place is inside what the path names.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

Place = tuple[str | int, ...]  # member names and array positions, from the root

_NAME = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)")
_QUOTED = re.compile(r"\[(?:'([^'\\]*)'|\"([^\"\\]*)\")\]")
_INDEX = re.compile(r"\[(0|[1-9][0-9]{0,8})\]")


@dataclass(frozen=True, slots=True)
class Every:
    """A wildcard step: every member of an object, or every item of an array."""

    of: type[str] | type[int]  # the type of what it matches in a place: member names or positions


MEMBERS = Every(str)  # .*
ITEMS = Every(int)  # [*]
Step = str | int | Every


@dataclass(frozen=True, slots=True)
class JsonPath:
    """A parsed path: its steps (a name, an index, ``MEMBERS`` or ``ITEMS``) and its text."""

    steps: tuple[Step, ...]
    text: str

    def covers(self, place: Place) -> bool:
        """Whether ``place`` is what this path names, or inside it."""
        if len(place) < len(self.steps):
            return False
        return all(_step_matches(step, at) for step, at in zip(self.steps, place, strict=False))

    def covers_any(self, other: JsonPath) -> bool:
        """Whether some place ``other`` names is inside what this path names."""
        if len(other.steps) < len(self.steps):
            return False
        return all(_steps_meet(a, b) for a, b in zip(self.steps, other.steps, strict=False))

    def names(self) -> Iterator[str]:
        """The member names the path spells out (fields of the app's own schema)."""
        return (s for s in self.steps if isinstance(s, str))


def _step_matches(step: Step, at: str | int) -> bool:
    if isinstance(step, Every):
        return type(at) is step.of
    return type(step) is type(at) and step == at


def _steps_meet(step: Step, other: Step) -> bool:
    """Whether some place matches both steps."""
    if isinstance(step, Every) and isinstance(other, Every):
        return step == other
    if isinstance(step, Every):
        return type(other) is step.of
    if isinstance(other, Every):
        return type(step) is other.of
    return type(step) is type(other) and step == other


def parse_path(text: str) -> JsonPath:
    """Parse a path of the subset above; ``ValueError`` says where it is not."""
    if not text.startswith("$"):
        raise ValueError(f"JSON path {text!r} must start with '$'")
    steps: list[Step] = []
    at = 1
    while at < len(text):
        rest = text[at:]
        if rest.startswith(".*"):
            steps.append(MEMBERS)
            at += 2
        elif rest.startswith("[*]"):
            steps.append(ITEMS)
            at += 3
        elif match := _NAME.match(text, at):
            steps.append(match.group(1))
            at = match.end()
        elif match := _QUOTED.match(text, at):
            steps.append(match.group(1) if match.group(1) is not None else match.group(2))
            at = match.end()
        elif match := _INDEX.match(text, at):
            steps.append(int(match.group(1)))
            at = match.end()
        else:
            raise ValueError(
                f"JSON path {text!r}: cannot read {rest[:20]!r} at character {at} "
                "(the subset is $, .name, ['name'], [n], [*] and .*)"
            )
    return JsonPath(tuple(steps), text)


def places(value: Any, place: Place = ()) -> Iterator[tuple[Place, str, bool]]:
    """(place, string, is_key) for every string and object key, in document order.

    A key's place is the place of the member it names. Recursion is bounded: the
    body was read by ``read_json``, which refuses deep nesting.
    """
    if isinstance(value, str):
        yield place, value, False
    elif isinstance(value, dict):
        for key, item in value.items():
            yield (*place, key), key, True
            yield from places(item, (*place, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from places(item, (*place, index))


def find(path: JsonPath, value: Any) -> Iterator[Any]:
    """Every value ``path`` names in ``value``."""
    current = [value]
    for step in path.steps:
        found: list[Any] = []
        for item in current:
            if step == MEMBERS and isinstance(item, dict):
                found += item.values()
            elif step == ITEMS and isinstance(item, list):
                found += item
            elif isinstance(step, str) and isinstance(item, dict) and step in item:
                found.append(item[step])
            elif type(step) is int and step >= 0 and isinstance(item, list) and step < len(item):
                found.append(item[step])
        current = found
    return iter(current)


def channel(place: Place) -> str:
    """A place as one text (the channel its streamed pieces are joined in)."""
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f"[{p!r}]" for p in place)
