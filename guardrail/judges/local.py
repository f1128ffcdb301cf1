"""Judges that run in-process with regexes: banned keywords, personal data, prompt injection.

No input can make these regexes backtrack catastrophically: no nested
unbounded quantifiers, possessive quantifiers where a run is never given back,
and a lookbehind (or ``\\b``) wherever a match could otherwise start inside a
long run, which would make a search quadratic. Each alternation starts its
branches with a literal where possible so ``re`` can reject a position
cheaply: a 1 MB text takes tens of milliseconds, not seconds.

Reasons name what was found ("card number"), never the text that matched.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from guardrail.judges.base import Verdict
from guardrail.judges.normalize import normalize, strip_invisible

__all__ = ["PII_KINDS", "InjectionJudge", "KeywordJudge", "PIIJudge"]

_T = TypeVar("_T")

# Above this many characters the scan moves to a worker thread. ``re`` holds
# the GIL, but the event loop still gets turns between thread switches (and
# the caller's timeout still fires) instead of stalling every other request.
_INLINE_LIMIT = 64 * 1024

# A pattern that refers to its own groups cannot share an alternation with
# others: group numbers shift and group names can collide.
_OWN_GROUP_REFERENCE = re.compile(r"\\[1-9]|\(\?P=|\(\?\(")


async def _off_loop(check: Callable[[str], _T], text: str) -> _T:
    if len(text) <= _INLINE_LIMIT:
        return check(text)
    return await asyncio.to_thread(check, text)


def _compile(source: str, flags: int) -> re.Pattern[str]:
    try:
        return re.compile(source, flags)
    except re.error as exc:
        raise ValueError(f"invalid regex {source!r}: {exc}") from None


def _fits_alternation(source: str) -> bool:
    if _OWN_GROUP_REFERENCE.search(source):
        return False
    try:
        # A global inline flag such as "(?i)" is legal only at the very start.
        re.compile(f"x|{source}")
    except re.error:
        return False
    return True


@dataclass(frozen=True, slots=True)
class _Rulebook:
    """Labelled regexes, searched as one alternation wherever that keeps their meaning."""

    combined: re.Pattern[str] | None
    members: tuple[tuple[re.Pattern[str], str], ...]
    alone: tuple[tuple[re.Pattern[str], str], ...]

    @classmethod
    def build(cls, rules: Sequence[tuple[str, str]], flags: int) -> _Rulebook:
        """Compile (label, regex) pairs; a bad regex raises ValueError naming it."""
        members: list[tuple[re.Pattern[str], str]] = []
        alone: list[tuple[re.Pattern[str], str]] = []
        for label, source in rules:
            compiled = _compile(source, flags)
            (members if _fits_alternation(source) else alone).append((compiled, label))
        if not members:
            return cls(None, (), tuple(alone))
        # Joined bare, not wrapped in groups: that lets ``re`` hoist a shared
        # leading \b and reject a position on each branch's first literal.
        try:
            combined = re.compile("|".join(p.pattern for p, _ in members), flags)
        except re.error:  # group names that collide across patterns
            return cls(None, (), (*members, *alone))
        return cls(combined, tuple(members), tuple(alone))

    def first_label(self, text: str) -> str | None:
        """The label of the first rule that matches, or None."""
        if self.combined is not None and (match := self.combined.search(text)):
            start = match.start()
            # The alternation takes the first branch that matches here, so
            # the first member that matches here is the one that fired.
            matched = (label for p, label in self.members if p.match(text, start))
            return next(matched, self.members[0][1])
        return next((label for pattern, label in self.alone if pattern.search(text)), None)


def _first_label(books: Sequence[_Rulebook], text: str) -> str | None:
    return next((label for book in books if (label := book.first_label(text)) is not None), None)


class _LocalJudge:
    """What the local judges share: a name, timing, long texts scanned off the loop."""

    inline = True

    def __init__(self, name: str) -> None:
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    async def screen(self, text: str) -> Verdict:
        """Flag the text with one category per kind of finding; reasons never quote it."""
        started = time.perf_counter()
        found = await _off_loop(self._find, text)
        return Verdict(
            judge=self._name,
            flagged=bool(found),
            categories=tuple(dict.fromkeys(category for category, _ in found)),
            score=1.0 if found else 0.0,
            reason="; ".join(dict.fromkeys(reason for _, reason in found)),
            latency_s=time.perf_counter() - started,
        )

    def _find(self, text: str) -> list[tuple[str, str]]:
        """(category, reason) for each finding; an empty list is a pass."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Nothing to release."""


class KeywordJudge(_LocalJudge):
    """Flags whole-word keywords and regex patterns from the policy."""

    def __init__(
        self,
        name: str,
        *,
        keywords: Sequence[str] = (),
        patterns: Sequence[str] = (),
        category: str = "banned",
    ) -> None:
        words = sorted({normalize(keyword) for keyword in keywords}, key=len, reverse=True)
        if "" in words:
            raise ValueError("a keyword is empty once normalised and would match everywhere")
        if not words and not patterns:
            raise ValueError("a keyword judge needs at least one keyword or pattern")
        # Lookarounds rather than \b so "c++" still matches as a whole word.
        # Keywords and text are both case folded: no IGNORECASE, which is slower.
        alternation = "|".join(re.escape(word) for word in words)
        keyword_rules = [(f"{category} keyword", rf"(?<!\w)(?:{alternation})(?!\w)")]
        pattern_rules = [(f"{category} pattern {i}", p) for i, p in enumerate(patterns, 1)]
        super().__init__(name)
        self._category = category
        self._books = (
            _Rulebook.build(keyword_rules if words else [], 0),
            _Rulebook.build(pattern_rules, re.IGNORECASE),
        )

    def _find(self, text: str) -> list[tuple[str, str]]:
        label = _first_label(self._books, normalize(text))
        return [] if label is None else [(self._category, label)]


# --- personal data and secrets ------------------------------------------------

PII_KINDS = ("email", "phone", "card", "secret")

_EMAIL = re.compile(r"(?<![\w.%+-])[\w.%+-]++@[\w-]++(?:\.[\w-]++)*\.[^\W\d_]{2,63}(?![\w-])")

# International: +CC then up to six digit groups, brackets allowed.
_PHONE_INTL = re.compile(r"\+(?<![\w+]\+)\d{1,3}+(?:[ .-]?+(?:\(\d{1,4}+\)|\d{1,5}+)){1,6}+(?!\d)")
# National formats must be a whole digit run, so the lookbehinds (after the
# first character, so ``re`` can skip ahead fast) refuse a start inside one.
# North American: (415) 555-2671, 415-555-2671, 1 415 555 2671.
_PHONE_NANP = re.compile(
    r"(?:\((?<![\w+.-]\()(?<!\d[ .-]\()\d{3}\) ?"
    r"|\d(?<![\w+.-]\d)(?<!\d[ .-]\d)(?:\d\d[ .-]|[ .-]\(\d{3}\) ?|[ .-]\d{3}[ .-]))"
    r"\d{3}[ .-]\d{4}(?![\w-]|\.\d)"
)
# Trunk prefix 0, as in most of Europe: 020 7946 0958, 06 12 34 56 78.
_PHONE_TRUNK = re.compile(
    r"0(?<![\w+.-]0)(?<!\d[ -]0)\d{1,4}+(?:[ -]\d{2,8}+){1,4}+(?![\w-]|[ -]\d)"
)

# A run of 13-19 digits with single spaces or dashes. The lookbehinds, placed
# after the first digit so ``re`` can skip to digits fast, make a match start
# where the run starts; the lookahead makes it end where the run ends.
_CARD = re.compile(r"\d(?<!\d\d)(?<!\d[ -]\d)(?:[ -]?\d){12,18}+(?![ -]?\d)")

# Matched on text with case kept: these formats are case sensitive.
_SECRET_FORMATS: tuple[tuple[str, str], ...] = (
    ("OpenAI API key", r"sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{32,}+"),
    ("AWS access key id", r"AKIA[0-9A-Z]{16}(?![0-9A-Za-z])|ASIA[0-9A-Z]{16}(?![0-9A-Za-z])"),
    ("GitHub token", r"gh[pousr]_[A-Za-z0-9]{36,255}+|github_pat_[A-Za-z0-9_]{22,255}+"),
    ("Slack token", r"xox[baprs]-[A-Za-z0-9-]{10,}+"),
    ("Google API key", r"AIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])"),
    ("Stripe secret key", r"sk_live_[0-9A-Za-z]{16,}+|rk_live_[0-9A-Za-z]{16,}+"),
    ("private key", r"-----BEGIN (?:[A-Z0-9]++ ){0,3}PRIVATE KEY(?: BLOCK)?-----"),
    ("JSON web token", r"eyJ[A-Za-z0-9_-]{8,}+\.eyJ[A-Za-z0-9_-]{8,}+\.[A-Za-z0-9_-]{16,}+"),
)
_SECRET_MEMBERS = tuple((re.compile(source), label) for label, source in _SECRET_FORMATS)
_SECRET = re.compile(
    r"(?<![A-Za-z0-9_-])(?:" + "|".join(source for _, source in _SECRET_FORMATS) + ")"
)


def _luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = int(char)
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def _has_email(text: str) -> bool:
    return "@" in text and _EMAIL.search(text) is not None


def _has_phone(text: str) -> bool:
    if _PHONE_NANP.search(text):
        return True
    for match in _PHONE_INTL.finditer(text):
        if 7 <= sum(char.isdecimal() for char in match.group()) <= 15:
            return True
    for match in _PHONE_TRUNK.finditer(text):
        number = match.group()
        # A date such as "01-02-2024 10" has too few digits or mixed separators.
        separators = {char for char in number if char in " -"}
        if 9 <= sum(char.isdecimal() for char in number) <= 15 and len(separators) == 1:
            return True
    return False


def _has_card(text: str) -> bool:
    for match in _CARD.finditer(text):
        digits = "".join(char for char in match.group() if char.isdecimal())
        # 0000 0000 0000 0000 passes Luhn but is a placeholder, not a card.
        if len(set(digits)) > 1 and _luhn_valid(digits):
            return True
    return False


def _looks_random(key: str) -> bool:
    # Real OpenAI keys are random base62; "sk-" before a slug is prose.
    body = key.removeprefix("sk-")
    classes = (str.isupper, str.islower, str.isdigit)
    return all(any(is_class(char) for char in body) for is_class in classes)


def _secret_label(text: str) -> str | None:
    for match in _SECRET.finditer(text):
        start = match.start()
        label = next((label for p, label in _SECRET_MEMBERS if p.match(text, start)), None)
        if label is not None and (label != "OpenAI API key" or _looks_random(match.group())):
            return label
    return None


class PIIJudge(_LocalJudge):
    """Flags email addresses, phone numbers, Luhn-valid card numbers and API keys."""

    def __init__(
        self, name: str, *, kinds: Sequence[str] = ("email", "phone", "card", "secret")
    ) -> None:
        unknown = [kind for kind in kinds if kind not in PII_KINDS]
        if unknown:
            raise ValueError(f"unknown PII kinds {unknown}; valid kinds: {', '.join(PII_KINDS)}")
        super().__init__(name)
        self._kinds = frozenset(kinds)

    def _find(self, text: str) -> list[tuple[str, str]]:
        kept_case = strip_invisible(text)
        folded = normalize(kept_case)
        found: list[tuple[str, str]] = []
        if "email" in self._kinds and _has_email(folded):
            found.append(("pii_email", "email address"))
        if "phone" in self._kinds and _has_phone(folded):
            found.append(("pii_phone", "phone number"))
        if "card" in self._kinds and _has_card(folded):
            found.append(("pii_card", "card number"))
        if "secret" in self._kinds and (label := _secret_label(kept_case)) is not None:
            found.append(("pii_secret", label))
        return found


# --- prompt injection ---------------------------------------------------------

# Written against normalised text: case folded, whitespace runs are one space.
# Phrases are specific on purpose: "ignore whitespace" or "the previous
# instructions for this shelf" must pass; "ignore the previous instructions" not.
_DROP = r"(?:ignore|disregard|forget|override|bypass)"
_EARLIER = r"(?:previous|prior|above|earlier|preceding|foregoing|original|initial|system)"
_ORDERS = r"(?:instructions?|prompts?|rules|directions|guidelines|commands|directives|context)"
_LIMITS = r"(?:restrictions|rules|filters|limits|limitations|guidelines|censorship|boundaries)"
_PROMPT = r"(?:system (?:prompt|message|instructions)|(?:initial|original|hidden|secret) prompt)"
_SHOW = r"(?:reveal|print|show|display|output|repeat|recite|leak|dump)"
_WORDS = r"(?:[^ .!?\n]++ ){0,12}?"  # a few words, one possessive word at a time

# All start with \b, which ``re`` hoists out of the joined alternation.
_INJECTION_PHRASES: dict[str, tuple[str, ...]] = {
    "instruction override": (
        rf"\b{_DROP} (?:all|any|every) (?:of )?(?:the |your )?(?:{_EARLIER} )?{_ORDERS}\b",
        rf"\b{_DROP} (?:the |your |these |those )?{_EARLIER} {_ORDERS}\b",
        rf"\b{_DROP} your (?:{_ORDERS}|programming|training)\b",
        r"\b(?:ignore|disregard) (?:all of |everything )?(?:the )?above(?: text| prompt)?"
        r"(?: and|[,.;:!]|$)",
        r"\b(?:ignore|forget) (?:everything|all) "
        r"(?:above|before this|you(?: were|['\u2019]ve been| have been) told)\b",
    ),
    "persona switch": (
        r"\byou(?: are|['\u2019]re) now (?:dan\b|(?:in |entering )?(?:developer|dan|jailbreak|"
        r"god|unrestricted) mode\b|(?:an? )?(?:unrestricted|unfiltered|uncensored|jailbroken)\b"
        r"|free (?:of|from) |no longer bound\b)",
        r"\b(?:enable|activate|enter|switch to) (?:dan|jailbreak) mode\b",
        r"\b(?:dan|jailbreak) mode (?:enabled|activated)\b",
        rf"\b(?:pretend (?:that )?(?:you are|you['\u2019]re|to be)|act as) {_WORDS}"
        rf"(?:without|with no|free of|free from) (?:any |all |your )?{_LIMITS}\b",
        rf"\bpretend (?:that )?you (?:have|had) no {_LIMITS}\b",
        rf"\bact as {_WORDS}(?:jailbroken|unrestricted|unfiltered|uncensored)\b",
    ),
    "prompt extraction": (
        rf"\b(?:{_SHOW}|tell me|give me|write out) (?:me )?(?:all (?:of )?)?(?:your|the) "
        rf"(?:(?:full|entire|exact|complete|verbatim) )?{_PROMPT}\b",
        rf"\b{_SHOW} (?:me )?(?:all (?:of )?)?your (?:(?:full|entire|exact|original|initial|"
        r"hidden|secret) )?(?:instructions|prompt|rules|guidelines)\b",
        rf"\bwhat (?:is|are|was|were) your "
        rf"(?:{_PROMPT}|(?:initial|original|hidden) instructions)\b",
    ),
    "fake role marker": (
        r"\b(?:begin|end) (?:new )?system prompt\b",
        r"\bnew (?:system )?instructions ?:",
    ),
    "safety override": (
        r"\b(?:override|bypass|disable|circumvent|turn off|deactivate|ignore) (?:all |any )?"
        r"(?:of )?(?:your|the) (?:safety|content|ethical|moderation) (?:rules|guidelines|"
        r"filters?|restrictions|protocols|settings|polic(?:y|ies)|guardrails|measures)\b",
        r"\b(?:override|bypass|circumvent|disable) (?:your|the) safety"
        r"(?: training| guidelines)?(?:$|[,.;:!?]| and)",
    ),
}

# Chat-template tokens a user has no reason to type. Each starts with a literal.
_ROLE_MARKERS = (
    r"<\|(?:im_start|im_end|system|endoftext|start_header_id|end_header_id|eot_id)\|>",
    r"<</?sys>>",
    r"#(?<!##)#{1,5} ?system(?: prompt| message)? ?:",
    r"\[/?(?:system|inst|sys)\]",
    # A bare "</s>" also closes HTML strikethrough; only flag it before a turn.
    r"</s> ?(?:<s> ?)?(?:\[inst\]|<\||<<sys>>|(?:system|assistant|user) ?:)",
)
_INJECTION_BOOKS = (
    _Rulebook.build([(label, p) for label, ps in _INJECTION_PHRASES.items() for p in ps], 0),
    _Rulebook.build([("fake role marker", p) for p in _ROLE_MARKERS], 0),
)


class InjectionJudge(_LocalJudge):
    """Flags prompt-injection phrasing: instruction overrides, persona switches, role markers."""

    def __init__(self, name: str, *, extra_patterns: Sequence[str] = ()) -> None:
        extra = [(f"policy pattern {i}", p) for i, p in enumerate(extra_patterns, 1)]
        super().__init__(name)
        self._books = (*_INJECTION_BOOKS, _Rulebook.build(extra, re.IGNORECASE))

    def _find(self, text: str) -> list[tuple[str, str]]:
        label = _first_label(self._books, normalize(text))
        return [] if label is None else [("prompt_injection", label)]
