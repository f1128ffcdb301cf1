"""Redaction: the request's detected values replaced by typed placeholders before the app starts.

A screen with ``on_flag: redact`` (a pii or keywords judge: they say where
their findings are) does not refuse a request whose text it flags. Every
string of the request's JSON is rewritten instead, each value its judge
found replaced by a placeholder of its kind (``<EMAIL_1>``, ``<CARD_1>``),
and the app gets the rewritten body, serialised canonically. The same value
gets the same placeholder everywhere in the request (every message), in any
spelling (``spans``: a value's key is the value as the judge reads it).

It works on JSON strings, not on an adapter's pieces, so it serves every
API shape; strings no judge reads as text are left alone: data URLs (their
payload is base64 or percent-encoded: a match inside would corrupt it) and
the top-level ``model``. Keys are never rewritten (they are the app's
schema). What is left unredacted (a key, a data URL's text, the query string,
a value only a folded reading finds) is still flagged by the screens, which
run on the rewritten text as usual: a flag is never lost, it blocks.

Placeholders never collide with the request's own text: a number whose
placeholder the user already typed (``<EMAIL_1>`` in a message) is skipped,
so the app gets ``<EMAIL_2>`` for the first e-mail found, and the user's
literal stays text that is never restored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from guardrail.judges.base import Verdict
from guardrail.judges.spans import NEVER_RESTORED, Span, merged

if TYPE_CHECKING:
    from guardrail.decide.guard import Guard

log = logging.getLogger("guardrail")

# What a placeholder looks like: the kind in capitals, a number.
PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]{0,40}_[0-9]{1,9}>")
# Kinds whose values never come back into an answer, whatever the policy says:
# a card number or a key shown again is a leak, to whoever reads the screen.
# ``NEVER_RESTORED`` is defined with the spans: a value holding one is of its kind.


@runtime_checkable
class SpanJudge(Protocol):
    """A judge that says where its findings are (the local pii and keywords judges)."""

    async def screen(self, text: str) -> Verdict: ...

    async def spans(self, text: str) -> list[Span]: ...


@dataclass(frozen=True, slots=True)
class Redacting:
    """A screen whose flag redacts: its judge, and whether its values come back in the answer."""

    judge: SpanJudge
    restore: bool = False
    timeout_s: float = 2.0  # the screen's: redaction costs no more than screening would


@dataclass(slots=True)
class Redaction:
    """One request's redaction: the body the app gets, and what each placeholder stood for."""

    body: bytes
    restorable: dict[str, str]  # placeholder -> the original value, for those that may come back
    issued: frozenset[str]  # every placeholder the app was given
    counts: Counter[str] = field(default_factory=Counter)  # values redacted, by kind


def redacting_screens(guard: Guard) -> tuple[Redacting, ...]:
    """The guard's input screens whose flag redacts (cheap: built per request)."""
    return tuple(
        Redacting(screen.judge, spec.restore, spec.timeout_s)
        for spec, screen in zip(guard.policy.input.screens, guard.screens, strict=True)
        if spec.on_flag == "redact" and isinstance(screen.judge, SpanJudge)
    )


async def redact(
    screens: Sequence[Redacting], body: bytes, also_read: str = ""
) -> Redaction | None:
    """The body with every value the screens find replaced; None if nothing was found.

    The body is JSON the adapter accepted. ``also_read`` is other text the app
    reads (the query string): placeholders typed there are taken too.
    """
    if not screens:
        return None
    data = json.loads(body)
    slots = list(_strings(data))
    # Typed anywhere the app reads (values, keys, the query), a placeholder is the
    # user's text: its number is never issued, so it is never restored.
    everything = json.dumps(data, ensure_ascii=False) + also_read
    taken = set(PLACEHOLDER.findall(everything))
    book = PlaceholderBook(taken)
    changed = False
    for container, key, value in slots:
        if key == "model" and container is data:
            continue
        if value[:5].lower() == "data:":
            continue
        found: list[tuple[Span, bool]] = []
        for screen in screens:
            found += [(s, screen.restore) for s in await screen.judge.spans(value)]
        if not found:
            continue
        pieces: list[str] = []
        done = 0
        for span in merged([s for s, _ in found]):
            pieces.append(value[done : span.start])
            # Restored only if every value inside it may be (each screen's say).
            restore = all(r for s, r in found if s.start < span.end and span.start < s.end)
            pieces.append(book.placeholder(span, value[span.start : span.end], restore=restore))
            done = span.end
        pieces.append(value[done:])
        container[key] = "".join(pieces)
        changed = True
    if not changed:
        return None
    rewritten = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    return Redaction(rewritten, book.restorable, frozenset(book.issued), book.counts)


def _strings(data: Any) -> Iterator[tuple[Any, Any, str]]:
    """(container, key or index, value) for every string value, however nested."""
    stack: list[Any] = [data]
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            if isinstance(value, str):
                yield node, key, value
            elif isinstance(value, dict | list):
                stack.append(value)


class PlaceholderBook:
    """Placeholders issued for one request: one per value, numbered per kind, none already typed."""

    def __init__(self, taken: set[str]) -> None:
        self._taken = taken
        self._by_value: dict[tuple[str, str], str] = {}
        self._next: Counter[str] = Counter()
        self.issued: set[str] = set()
        self.restorable: dict[str, str] = {}
        self.counts: Counter[str] = Counter()

    def placeholder(self, span: Span, original: str, *, restore: bool) -> str:
        """The placeholder for this value (the same one it got before, if any)."""
        self.counts[span.kind] += 1
        value = (span.kind, span.key)
        if (known := self._by_value.get(value)) is not None:
            return known
        label = span.kind.upper()
        while True:
            self._next[label] += 1
            placeholder = f"<{label}_{self._next[label]}>"
            if placeholder not in self._taken:
                break
        self._by_value[value] = placeholder
        self.issued.add(placeholder)
        if restore and span.kind not in NEVER_RESTORED:
            self.restorable[placeholder] = original
        return placeholder


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the redaction step did: the redaction (None: nothing to redact), or it failed."""

    redaction: Redaction | None = None
    # Out of time or broken: the app must not start before the verdict, or it
    # would get the values the policy says it never sees.
    failed: bool = False


async def redact_request(
    guard: Guard,
    body: bytes,
    text: str,
    query: str = "",
    *,
    read: Callable[[bytes], str] | None = None,
) -> Outcome:
    """Redact the request if a redacting screen's judge flags its text.

    The judges are first asked about the whole text (the cost on the allow
    path: their readings are cached for the screens that follow); only a flag
    makes the body be read string by string. Out of time (the longest of the
    screens' timeouts) or failing, it redacts nothing and says so: the app then
    waits for the verdict, and the screens, run on the request as it came,
    refuse it for what they find. So does a value redaction cannot reach (a
    key, the ``query``, a value only a folded reading finds, one inside a text
    data URL or a base64 text document that ``read``, the adapter's reading of
    a body, decodes): the screens will refuse it, and the app must not have it
    before they do.
    """
    screens = redacting_screens(guard)
    if not screens:
        return Outcome()
    try:
        async with asyncio.timeout(max(s.timeout_s for s in screens)):
            flagging = [s for s in screens if (await s.judge.screen(text)).flagged]
            if not flagging:
                return Outcome()
            redaction = await redact(flagging, body, text)
            given = redaction.body if redaction is not None else body
            left = _everything(given) + query
            if read is not None:
                left += "\n" + read(given)  # as the screens read it: data URLs decoded
            for screen in flagging:
                if (await screen.judge.screen(left)).flagged:
                    return Outcome(redaction, failed=True)
            return Outcome(redaction)
    except TimeoutError:
        log.warning("redaction ran out of time; the request is screened as it came")
    except Exception:  # a bug here must not cost the request: the screens still decide
        log.exception("redaction failed; the request is screened as it came")
    return Outcome(failed=True)


def _everything(body: bytes) -> str:
    """Every key and string of a JSON body, unescaped, as one text (for a last look)."""
    return json.dumps(json.loads(body), ensure_ascii=False) + "\n"
