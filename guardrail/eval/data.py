"""Labelled items, read one line at a time from JSONL or CSV.

A row holds the text to screen (``text``) or a whole chat request body
(``request``: a JSON object, in CSV a JSON string), a ``label`` (``safe``,
``unsafe``, or the category expected, which means unsafe), an optional
``category`` to group by, an ``id`` (the line number if absent) and an
optional ``output``: the answer text, screened by the policy's output screens.

Every bad row is an error naming its line; nothing is skipped. Files are
streamed (``read_items`` is a generator), so a file of any size costs the
memory of one row.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guardrail.judges.categories import DESCRIPTIONS, category_key

SAFE, UNSAFE = "safe", "unsafe"
# The labels a row may carry besides safe and unsafe: the categories judges name.
CATEGORIES = frozenset(DESCRIPTIONS)
_FIELDS = frozenset({"id", "text", "request", "label", "category", "output"})


class DataError(Exception):
    """A data file we cannot read as labelled items; the message names the line."""


@dataclass(frozen=True, slots=True)
class Item:
    """One labelled example: the chat request body to screen and what should happen to it."""

    id: str
    body: bytes  # the chat request as the app would receive it
    unsafe: bool
    category: str  # the group it is counted in: its category, or its label
    output: str | None = None  # the app's answer, for the output screens
    line: int = 0


def read_items(path: str | Path) -> Iterator[Item]:
    """Every item of a ``.jsonl`` or ``.csv`` file, in order; ``DataError`` on a bad row."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        raise DataError(f"{path}: expected a .jsonl or .csv file, not {suffix or 'no suffix'!r}")
    try:
        with path.open("rb") as raw:
            text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
            rows = _jsonl_rows(text) if suffix == ".jsonl" else _csv_rows(text)
            seen = False
            ids: set[str] = set()
            for line, row in rows:
                item = _item(row, line)
                if item.id in ids:
                    raise DataError(f"line {line}: id {item.id!r} appears twice")
                ids.add(item.id)
                seen = True
                yield item
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
    if not seen:
        raise DataError(f"{path}: no items (the file is empty)")


def count_items(path: str | Path) -> int:
    """Validate every row (streamed) and return how many there are."""
    return sum(1 for _ in read_items(path))


def _jsonl_rows(text: io.TextIOWrapper) -> Iterator[tuple[int, dict[str, Any]]]:
    for line, raw in enumerate(text, start=1):
        if not raw.strip():
            raise DataError(f"line {line}: blank line (every line of a .jsonl file is one item)")
        try:
            row = json.loads(raw)
        except ValueError as exc:
            raise DataError(f"line {line}: not JSON: {exc}") from None
        if not isinstance(row, dict):
            raise DataError(f"line {line}: expected a JSON object, got {type(row).__name__}")
        yield line, row


def _csv_rows(text: io.TextIOWrapper) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.reader(text)
    header = next(reader, None)
    if header is None:
        return
    columns = [c.strip() for c in header]
    unknown = [c for c in columns if c not in _FIELDS]
    if unknown:
        raise DataError(f"line 1: unknown column {unknown[0]!r} (columns: {_field_list()})")
    for row in reader:
        line = reader.line_num  # the row's last physical line (a quoted field may span lines)
        if len(row) != len(columns):
            raise DataError(f"line {line}: {len(row)} fields, the header has {len(columns)}")
        record: dict[str, Any] = {k: v for k, v in zip(columns, row, strict=True) if v != ""}
        if "request" in record:
            try:
                record["request"] = json.loads(record["request"])
            except ValueError as exc:
                raise DataError(f"line {line}: 'request' is not JSON: {exc}") from None
        yield line, record


def _item(row: dict[str, Any], line: int) -> Item:
    unknown = sorted(set(row) - _FIELDS)
    if unknown:
        raise DataError(f"line {line}: unknown field {unknown[0]!r} (fields: {_field_list()})")
    label = row.get("label")
    if not isinstance(label, str) or not label.strip():
        raise DataError(f"line {line}: no 'label' ({_labels()})")
    key = category_key(label)
    if key not in (SAFE, UNSAFE) and key not in CATEGORIES:
        raise DataError(f"line {line}: unknown label {label!r} ({_labels()})")
    category = row.get("category")
    if category is not None and (not isinstance(category, str) or not category.strip()):
        raise DataError(f"line {line}: 'category' must be a non-empty string")
    output = row.get("output")
    if output is not None and not isinstance(output, str):
        raise DataError(f"line {line}: 'output' must be a string")
    ident = row.get("id", line)
    if isinstance(ident, bool) or not isinstance(ident, str | int):
        raise DataError(f"line {line}: 'id' must be a string or an integer")
    return Item(
        id=str(ident),
        body=_body(row, line),
        unsafe=key != SAFE,
        category=category_key(category) if category else key,
        output=output,
        line=line,
    )


def _body(row: dict[str, Any], line: int) -> bytes:
    text, request = row.get("text"), row.get("request")
    if (text is None) == (request is None):
        raise DataError(f"line {line}: give exactly one of 'text' or 'request'")
    if text is not None:
        if not isinstance(text, str):
            raise DataError(f"line {line}: 'text' must be a string")
        request = {"model": "eval", "messages": [{"role": "user", "content": text}]}
    if not isinstance(request, dict):
        raise DataError(f"line {line}: 'request' must be a JSON object (a chat request body)")
    # Parsed and serialised again: the guard reads it as the app would receive it.
    return json.dumps(request, ensure_ascii=False).encode()


def _labels() -> str:
    return f"safe, unsafe, or a category: {', '.join(sorted(CATEGORIES))}"


def _field_list() -> str:
    return ", ".join(sorted(_FIELDS))
