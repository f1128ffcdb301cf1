"""Judges that run in-process with regexes: banned keywords, personal data, prompt injection.

No input can make these regexes backtrack catastrophically: no nested
unbounded quantifiers, possessive quantifiers where a run is never given back,
and a lookbehind (or ``\\b``) wherever a match could otherwise start inside a
long run, which would make a search quadratic. Each alternation starts its
branches with a literal where possible so ``re`` can reject a position
cheaply: a 1 MB text takes tens of milliseconds, not seconds. Every built-in
pattern has a bounded match length, so a long text is searched in windows
(``windows``) that yield to the event loop; a judge's timeout stops the work.

Reasons name what was found ("card number"), never the text that matched.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from guardrail.judges import phones, windows
from guardrail.judges.base import Verdict
from guardrail.judges.normalize import normalize, readings
from guardrail.judges.spans import Span, merged, spans_in

__all__ = ["PII_KINDS", "InjectionJudge", "KeywordJudge", "PIIJudge"]

# A pattern that refers to its own groups cannot share an alternation with
# others: group numbers shift and group names can collide.
_OWN_GROUP_REFERENCE = re.compile(r"\\[1-9]|\(\?P=|\(\?\(")


def _compile(source: str, flags: int) -> re.Pattern[str]:
    try:
        return re.compile(source, flags)
    except re.error as exc:
        raise ValueError(f"invalid regex {source!r}: {exc}") from None


def _spaces_optional(source: str) -> str:
    """``source`` with each space between words made optional (outside character classes).

    An invisible character can stand for a space ("ignore<ZWSP>all") and
    another in the same phrase hide inside a word ("ig<ZWSP>nore"): neither
    reading of the text undoes both, so the phrases also match run together.
    """
    out: list[str] = []
    in_class = False
    i = 0
    while i < len(source):
        char = source[i]
        token = source[i : i + 2] if char == "\\" else char
        i += len(token)
        out.append(token)
        if in_class:
            in_class = token != "]"
        elif token == "[":
            in_class = True
        elif token in (" ", "\\ ") and source[i : i + 1] not in ("?", "*", "+", "{"):
            out.append("?")
    return "".join(out)


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
    def build(cls, rules: Sequence[tuple[str, str]], flags: int, *, starts: str = "") -> _Rulebook:
        """Compile (label, regex) pairs; a bad regex raises ValueError naming it.

        ``starts``, a character class every match of every rule starts with,
        lets the alternation reject a position on one character (``re`` has no
        other way to skip the positions no branch can start at).
        """
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
            joined = "|".join(p.pattern for p, _ in members)
            combined = re.compile(f"(?={starts})(?:{joined})" if starts else joined, flags)
        except re.error:  # group names that collide across patterns
            return cls(None, (), (*members, *alone))
        return cls(combined, tuple(members), tuple(alone))

    async def first_label(self, text: str) -> str | None:
        """The label of the first rule that matches, or None."""
        if self.combined is not None and (match := await windows.search(self.combined, text)):
            start = match.start()
            # The alternation takes the first branch that matches here, so
            # the first member that matches here is the one that fired.
            matched = (label for p, label in self.members if p.match(text, start))
            return next(matched, self.members[0][1])
        for pattern, label in self.alone:
            if await windows.search(pattern, text) is not None:
                return label
        return None


async def _first_label(books: Sequence[_Rulebook], texts: Sequence[str]) -> str | None:
    for text in texts:
        for book in books:
            if (label := await book.first_label(text)) is not None:
                return label
    return None


# Punctuation and symbols that join words ("ignore-all_previous/instructions",
# "ignore.all"): a model reads the words, so phrases are also matched with
# them as spaces. A sentence's end ("word. ", "word!" at the end) is left
# alone: it parts phrases. Letters spelled out one by one ("i g n o r e")
# are read as one word: phrases match with their spaces missing too.
# Each pattern lets ``re`` reject most positions on one character: the
# joiner's lookahead names what every match starts with (neither a letter,
# digit nor space; or "_"), and a letter gap starts with its space, its
# lookbehinds reaching back over it.
_JOINER = re.compile(r"(?=[^\w\s]|_)(?:(?<!\w)[.!?]++|[.!?]++(?!\s|\Z)|[^\w\s.!?]|_)")
_SPACES = re.compile(r"\s{2,}+")
_LETTER_GAP = re.compile(r" (?<=\w )(?<!\w\w )(?=\w(?!\w))")


# The keyword and injection judges read the same request text: the first
# pays for its words-apart readings, the other finds them here. Bounded like
# the readings cache (``normalize.readings``): a few texts, and in characters.
_APART: OrderedDict[tuple[str, ...], tuple[str, ...]] = OrderedDict()
_APART_SIZE = 8
_APART_CHARS = 1 << 25


async def _words_apart(texts: tuple[str, ...]) -> tuple[str, ...]:
    """``texts``, then each one with joiners as spaces and spelled-out letters joined,
    when that reads differently."""
    if (cached := _APART.get(texts)) is None:
        cached = await _words_apart_uncached(texts)
        _APART[texts] = cached
        while len(_APART) > _APART_SIZE or (
            sum(len(t) for both in _APART.values() for t in both) > _APART_CHARS and len(_APART) > 1
        ):
            _APART.popitem(last=False)
    _APART.move_to_end(texts)
    return cached


async def _words_apart_uncached(texts: Sequence[str]) -> tuple[str, ...]:
    apart: list[str] = []
    for text in texts:
        spaced = await _sub(_JOINER, " ", text)
        spaced = await _sub(_LETTER_GAP, "", await _sub(_SPACES, " ", spaced))
        if spaced != text:
            apart.append(spaced)
    return (*texts, *apart)


async def _sub(
    pattern: re.Pattern[str], replacement: str, text: str, *, window: int = windows.WINDOW
) -> str:
    """``pattern.sub(replacement, text)``, found a window at a time (``windows``)."""
    if len(text) <= window:
        return pattern.sub(replacement, text)  # one window: the same matches, no machinery
    pieces: list[str] = []
    done = 0
    async for found in windows.batches(pattern, text, window=window):
        for match in found:
            if match.start() < done:
                continue  # the rest of a run a previous window's match took whole
            pieces.append(text[done : match.start()])
            pieces.append(replacement)
            done = match.end()
    pieces.append(text[done:])
    return "".join(pieces)


class _LocalJudge:
    """What the local judges share: a name, timing, long texts scanned a window at a time."""

    inline = True

    def __init__(self, name: str) -> None:
        self._name = name
        # Builds the normalisation tables now, while the guard is built,
        # rather than on the first request.
        normalize("")

    @property
    def name(self) -> str:
        return self._name

    async def screen(self, text: str) -> Verdict:
        """Flag the text with one category per kind of finding; reasons never quote it."""
        started = time.perf_counter()
        found = await self._find(text)
        return Verdict(
            judge=self._name,
            flagged=bool(found),
            categories=tuple(dict.fromkeys(category for category, _ in found)),
            score=1.0 if found else 0.0,
            reason="; ".join(dict.fromkeys(reason for _, reason in found)),
            latency_s=time.perf_counter() - started,
        )

    async def _find(self, text: str) -> list[tuple[str, str]]:
        """(category, reason) for each finding; an empty list is a pass."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Nothing to release."""


def _first_characters(words: Sequence[str]) -> str:
    """A character class of the words' first characters."""
    return "[" + "".join(sorted({re.escape(word[0]) for word in words})) + "]"


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
        keyword_rules = [
            (f"{category} keyword", rf"(?<!\w)(?:{_spaces_optional(alternation)})(?!\w)")
        ]
        pattern_rules = [(f"{category} pattern {i}", p) for i, p in enumerate(patterns, 1)]
        super().__init__(name)
        self._category = category
        self._books = (
            # Every keyword match starts with a keyword's first character.
            _Rulebook.build(
                keyword_rules if words else [], 0, starts=_first_characters(words) if words else ""
            ),
            _Rulebook.build(pattern_rules, re.IGNORECASE),
        )

    async def _find(self, text: str) -> list[tuple[str, str]]:
        label = await _first_label(self._books, await _words_apart(await readings(text)))
        return [] if label is None else [(self._category, label)]

    async def spans(self, text: str) -> list[Span]:
        """Where the keywords and patterns match, as spans of ``text`` (for redaction).

        Matches found only once joiners are read as spaces ("ig-nore") are not
        located: the screen that runs after redaction still flags them.
        """
        return await spans_in(text, self._found)

    async def _found(self, form: str) -> list[tuple[int, int, str]]:
        found: list[tuple[int, int, str]] = []
        for book in self._books:
            patterns = [book.combined] if book.combined is not None else []
            for pattern in [*patterns, *(p for p, _ in book.alone)]:
                found += [(*m.span(), self._category) for m in await _matches(pattern, form)]
        return found


# --- personal data and secrets ------------------------------------------------

PII_KINDS = ("email", "phone", "card", "secret", "iban", "ssn")

# Bounded by RFC 5321's lengths, so a long text can be searched in windows.
_EMAIL = re.compile(
    r"(?<![\w.%+-])[\w.%+-]{1,64}+@[\w-]{1,63}+(?:\.[\w-]{1,63}+){0,8}\.[^\W\d_]{2,63}(?![\w-])"
)

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


def _card_pattern(separator: str) -> re.Pattern[str]:
    """A run of 13-19 digits with runs of up to four ``separator`` characters between them.

    The lookbehinds, placed after the first digit so ``re`` can skip to digits
    fast, make a match start where the run starts (one per separator length: a
    lookbehind has a fixed width); the lookahead makes it end where it ends.
    """
    starts_run = "".join(rf"(?<!\d{separator}{{{n}}}\d)" for n in range(1, 5))
    return re.compile(
        rf"\d(?<!\d\d){starts_run}(?:{separator}{{0,4}}+\d){{12,18}}+(?!{separator}{{0,4}}+\d)"
    )


# Separators are anything neither letter nor digit: spaces, dashes of any
# kind, dots, slashes, U+2212 minus (newlines are spaces by then); a run of
# them is read as one (``_separator_runs_folded``). A list
# ("0958, 4111 1111 1111 1111, ...") would join a card to its neighbours, so
# a second pattern reads commas and semicolons as the end of a number.
_CARDS = (_card_pattern(r"[\W_]"), _card_pattern(r"[^\w,;]"))

# Matched on text with case kept: these formats are case sensitive.
_SECRET_FORMATS: tuple[tuple[str, str], ...] = (
    ("OpenAI API key", r"sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{32,256}+"),
    ("AWS access key id", r"AKIA[0-9A-Z]{16}(?![0-9A-Za-z])|ASIA[0-9A-Z]{16}(?![0-9A-Za-z])"),
    ("GitHub token", r"gh[pousr]_[A-Za-z0-9]{36,255}+|github_pat_[A-Za-z0-9_]{22,255}+"),
    ("Slack token", r"xox[baprs]-[A-Za-z0-9-]{10,256}+"),
    ("Google API key", r"AIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])"),
    ("Stripe secret key", r"sk_live_[0-9A-Za-z]{16,256}+|rk_live_[0-9A-Za-z]{16,256}+"),
    ("private key", r"-----BEGIN (?:[A-Z0-9]++ ){0,3}PRIVATE KEY(?: BLOCK)?-----"),
    (
        "JSON web token",
        r"eyJ[A-Za-z0-9_-]{8,8192}+\.eyJ[A-Za-z0-9_-]{8,8192}+\.[A-Za-z0-9_-]{16,1024}+",
    ),
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


async def _any(
    pattern: re.Pattern[str],
    text: str,
    accept: Callable[[str], bool],
    *,
    window: int = windows.WINDOW,
) -> bool:
    """Whether some match of ``pattern`` in ``text`` passes ``accept``."""
    if len(text) <= window:
        # One window: the matches ``windows.finditer`` gives, without its generator.
        return any(accept(m.group()) for m in pattern.finditer(text) if m.start() < len(text))
    async for match in windows.finditer(pattern, text, window=window):
        if accept(match.group()):
            return True
    return False


def _anything(found: str) -> bool:
    return True


async def _matches(
    pattern: re.Pattern[str],
    text: str,
    accept: Callable[[str], bool] = _anything,
    *,
    window: int = windows.WINDOW,
) -> list[re.Match[str]]:
    """Every match of ``pattern`` in ``text`` that passes ``accept``, a window at a time."""
    if len(text) <= window:
        return [m for m in pattern.finditer(text) if m.start() < len(text) and accept(m.group())]
    return [m async for m in windows.finditer(pattern, text, window=window) if accept(m.group())]


# Addresses documentation and forms use as placeholders: RFC 2606's example
# domains with a local part that names no one ("user@example.com"). A named
# person at an example domain (jane.doe@example.com) is still flagged: tests
# and demos write real-looking data that way.
_EXAMPLE_DOMAINS = frozenset({"example.com", "example.org", "example.net"})
_PLACEHOLDER_LOCALS = frozenset(
    "user username name email mail you your.name yourname someone somebody "
    "firstname.lastname first.last".split()
)

# "ana at example dot com", "ana (at) example [dot] org": an address spelled
# out so that a regex for "@" misses it. The last word must be a common top
# level domain, which keeps prose ("look at this dot com") from most matches.
_SPELLED_AT = r"(?: ?[(\[{]at[)\]}] ?| at )"
_SPELLED_DOT = r"(?: ?[(\[{]dot[)\]}] ?| dot |\.)"
_EMAIL_SPELLED = re.compile(
    rf"(?<![\w.+-])[a-z0-9][\w.+-]{{0,63}}+{_SPELLED_AT}[a-z0-9][\w-]{{0,62}}+"
    rf"(?:{_SPELLED_DOT}[a-z0-9][\w-]{{0,62}}+){{0,3}}?{_SPELLED_DOT}"
    r"(?:com|org|net|edu|gov|io|co|uk|de|fr|es|it|nl|info|biz|me|us|ca|au)(?![\w-])"
)


def _real_email(found: str) -> bool:
    local, _, domain = found.rpartition("@")
    return not (domain in _EXAMPLE_DOMAINS and local in _PLACEHOLDER_LOCALS)


def _spelled_out(text: str) -> bool:
    return ("at" in text and "dot" in text) or "[at]" in text or "(at)" in text


# Words that stand before " at " in prose ("look at", "meet me at"): not a mailbox.
_PROSE_BEFORE_AT = frozenset(
    "look looking looked me him her us them it this that you good bad best "
    "arrive arrived stay stayed meet work home school here there out".split()
)


def _spelled_email(found: str) -> bool:
    return found.split(" ", 1)[0] not in _PROSE_BEFORE_AT


async def _has_email(text: str) -> bool:
    if "@" in text and await _any(_EMAIL, text, _real_email):
        return True
    return _spelled_out(text) and await _any(_EMAIL_SPELLED, text, _spelled_email)


def _phone_digits(number: str) -> bool:
    return 7 <= sum(char.isdecimal() for char in number) <= 15


def _trunk_number(number: str) -> bool:
    # A date such as "01-02-2024 10" has too few digits or mixed separators.
    separators = {char for char in number if char in " -"}
    return 9 <= sum(char.isdecimal() for char in number) <= 15 and len(separators) == 1


_DIGIT = re.compile(r"\d")
# The fewest digits a finding holds: every phone pattern's match that is
# accepted has 7 or more (NANP 10, international 7, trunk 9), a card 13.
_PHONE_DIGITS = 7
_CARD_DIGITS = 13


async def _digits_at_least(text: str, count: int) -> bool:
    """Whether ``text`` holds ``count`` decimal digits or more, a window at a time."""
    seen = 0
    for start in range(0, len(text), windows.WINDOW):
        if start:
            await asyncio.sleep(0)
        for _ in _DIGIT.finditer(text, start, start + windows.WINDOW):
            seen += 1
            if seen >= count:
                return True
    return False


# Digits close enough together to be one finding. A phone's digits are at
# most three characters apart (")-(" in "+44-(20)-(7946)"), and it has 7 or
# more; a card's 13 or more have only separators between them ("4111 -- 1111",
# and the commas the card list pattern reads as an end). Text in other
# scripts reads some letters as digits (Cyrillic be as "6"): lone digits,
# never a cluster.
_PHONE_CLUSTER = re.compile(r"\d(?:\D{0,3}\d){6}")
_CARD_CLUSTER = re.compile(r"\d(?:[\W_]*+\d){12}")


async def _has_phone(text: str) -> bool:
    # Benign prose has few digits, and those apart: counting them and finding
    # a cluster are fast scans, the phone patterns are not.
    return (
        await _digits_at_least(text, _PHONE_DIGITS)
        and await windows.search(_PHONE_CLUSTER, text) is not None
        and await _has_phone_scanned(text)
    )


async def _has_phone_scanned(text: str) -> bool:
    return (
        await _any(_PHONE_NANP, text, _not_fictional)
        or await _any(_PHONE_INTL, text, _phone_digits)
        or await _any(_PHONE_TRUNK, text, _trunk_number)
        or bool(await phones.found(text, _not_fictional, first_only=True))
    )


def _not_fictional(number: str) -> bool:
    # 555-0100 to 555-0199 are reserved for fiction and examples in North America.
    digits = "".join(char for char in number if char.isdecimal())
    return not (digits[-7:-4] == "555" and digits[-4:-2] == "01")


def _card_number(found: str) -> bool:
    digits = "".join(char for char in found if char.isdecimal())
    # 0000 0000 0000 0000 passes Luhn but is a placeholder, not a card.
    return len(set(digits)) > 1 and _luhn_valid(digits)


# A run of separators ("4111 ----- 1111") reads as one: the patterns allow up
# to four between digits (each length needs its own lookbehind), a reader any.
_SEPARATOR_RUN = re.compile(r"(?:[^\w,;]|_){2,}")


async def _separator_runs_folded(text: str) -> str:
    """``text`` with each run of separators (not commas or semicolons) as one space.

    A chunk at a time, yielding between: a run cut by a chunk's edge becomes
    two spaces, which the card patterns still read as one separator run.
    """
    pieces: list[str] = []
    for start in range(0, len(text), windows.WINDOW):
        if start:
            await asyncio.sleep(0)
        pieces.append(_SEPARATOR_RUN.sub(" ", text[start : start + windows.WINDOW]))
    return "".join(pieces)


async def _has_card(text: str) -> bool:
    return (
        await _digits_at_least(text, _CARD_DIGITS)
        and await windows.search(_CARD_CLUSTER, text) is not None
        and await _has_card_scanned(text)
    )


async def _has_card_scanned(text: str) -> bool:
    text = await _separator_runs_folded(text)
    for card in _CARDS:
        if await _any(card, text, _card_number):
            return True
    async for run in windows.finditer(_DIGIT_RUN, text):
        if await _card_inside_run(run.group()):
            return True
    return False


# A card inside a longer run of digit groups ("ref 7 4111 1111 1111 1111",
# "4111 1111 1111 1111 22"): the run as a whole fails Luhn, but a reader still
# sees the card. So each run is also read a stretch of whole groups at a time:
# 13-19 digits grouped as cards are written (one group, fours with a shorter
# last group, 4-6-5 or 4-6-4), starting with a card network's first digit (2-6:
# Mastercard, Amex and Diners, Visa, Mastercard, Discover). The grouping and
# the first digit keep tables of numbers from reading as cards one time in ten.
_DIGIT_RUN = re.compile(
    r"\d(?<!\d\d)"
    + "".join(rf"(?<!\d[\W_]{{{n}}}\d)" for n in range(1, 5))
    + r"(?:[\W_]{0,4}+\d)++"
)
_DIGIT_GROUP = re.compile(r"\d+")
# Groups examined between two turns of the event loop, for a run of megabytes.
_GROUPS_PER_TURN = 4096


def _card_grouping(lengths: list[int]) -> bool:
    if len(lengths) == 1:
        return True
    if all(n == 4 for n in lengths[:-1]) and 1 <= lengths[-1] <= 4:
        return True
    return lengths in ([4, 6, 5], [4, 6, 4])


async def _card_inside_run(run: str) -> bool:
    return bool(await _cards_inside_run(run, first_only=True))


async def _cards_inside_run(run: str, *, first_only: bool = False) -> list[tuple[int, int]]:
    """Where cards sit inside a run of digit groups, as (start, end) in ``run``."""
    groups = list(_DIGIT_GROUP.finditer(run))
    if len(groups) < 2 or sum(len(g.group()) for g in groups) < 14:
        return []  # the run is one card at most: the card patterns read it whole
    found: list[tuple[int, int]] = []
    first = 0
    while first < len(groups):
        if first and first % _GROUPS_PER_TURN == 0:
            await asyncio.sleep(0)
        group = groups[first].group()
        if not 2 <= int(group[0]) <= 6:
            first += 1
            continue
        if len(group) != 4:
            # Every grouping of two groups or more starts with four digits
            # (``_card_grouping``): this group can only be a card alone.
            if 13 <= len(group) <= 19 and _card_number(group):
                found.append(groups[first].span())
                if first_only:
                    return found
            first += 1
            continue
        card = _card_stretch(groups, first)
        if card is None:
            first += 1
            continue
        found.append((groups[first].start(), groups[card].end()))
        if first_only:
            return found
        first = card + 1
    return found


def _card_stretch(groups: list[re.Match[str]], first: int) -> int | None:
    """The last group of a card that starts at group ``first``, if one does."""
    digits = 0
    for last in range(first, len(groups)):
        digits += len(groups[last].group())
        if digits > 19:
            break
        stretch = [g.group() for g in groups[first : last + 1]]
        if (
            digits >= 13
            and _card_grouping([len(g) for g in stretch])
            and _card_number("".join(stretch))
        ):
            return last
    return None


def _looks_random(key: str) -> bool:
    # Real OpenAI keys are random base62; "sk-" before a slug is prose.
    body = key.removeprefix("sk-")
    classes = (str.isupper, str.islower, str.isdigit)
    return all(any(is_class(char) for char in body) for is_class in classes)


async def _secret_label(text: str, *, window: int = windows.WINDOW) -> str | None:
    if len(text) <= window:
        return next(filter(None, map(_secret_found, _SECRET.finditer(text))), None)
    async for match in windows.finditer(_SECRET, text, window=window):
        if (label := _secret_found(match)) is not None:
            return label
    return None


def _secret_found(match: re.Match[str]) -> str | None:
    """The label of a secret format match, or None if it is not one after all."""
    text, start = match.string, match.start()
    label = next((label for p, label in _SECRET_MEMBERS if p.match(text, start)), None)
    if label is None or "EXAMPLE" in match.group():
        return None  # documented example keys (AWS's AKIAIOSFODNN7EXAMPLE) are no one's
    if label != "OpenAI API key" or _looks_random(match.group()):
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

    async def _find(self, text: str) -> list[tuple[str, str]]:
        found: dict[str, str] = {}
        checks = (
            ("email", "pii_email", "email address", _has_email),
            ("phone", "pii_phone", "phone number", _has_phone),
            ("card", "pii_card", "card number", _has_card),
            ("iban", "pii_iban", "IBAN", _has_iban),
            ("ssn", "pii_ssn", "social security number", _has_ssn),
        )
        for folded in await readings(text):
            for kind, category, reason, has in checks:
                if kind in self._kinds and category not in found and await has(folded):
                    found[category] = reason
        if "secret" in self._kinds:
            for kept_case in await readings(text, fold=False):
                if (label := await _secret_label(kept_case)) is not None:
                    found["pii_secret"] = label
                    break
        return list(found.items())

    async def spans(self, text: str) -> list[Span]:
        """Where the values of this judge's kinds are, as spans of ``text`` (for redaction)."""
        found = await spans_in(text, self._found)
        if "secret" in self._kinds:
            found += await spans_in(text, _secrets_found, fold=False)
        return merged(found)

    async def _found(self, form: str) -> list[tuple[int, int, str]]:
        found: list[tuple[int, int, str]] = []
        for kind, locate in _LOCATORS.items():
            if kind in self._kinds:
                found += [(start, end, kind) for start, end in await locate(form)]
        return found


async def _emails_at(text: str) -> list[tuple[int, int]]:
    found = [m.span() for m in await _matches(_EMAIL, text, _real_email)] if "@" in text else []
    if _spelled_out(text):
        found += [m.span() for m in await _matches(_EMAIL_SPELLED, text, _spelled_email)]
    return found


# IBAN: a country code, two check digits, 11 to 30 letters and digits, printed
# in groups of four or run together; valid when its mod-97 checksum is 1.
_IBAN = re.compile(r"(?<![a-z0-9])[a-z]{2}[0-9]{2}(?:[ -]?+[a-z0-9]){11,30}+")
_IBAN_SEPARATORS = re.compile(r"[ -]")


def _iban_valid(compact: str) -> bool:
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


async def _ibans_at(text: str) -> list[tuple[int, int]]:
    found = []
    for match in await _matches(_IBAN, text):
        # The run may take a word that follows ("... 3000 is mine"): the longest
        # valid stretch that ends where a word ends is the IBAN.
        value, start = match.group(), match.start()
        for end in range(len(value), 14, -1):
            after = text[start + end : start + end + 1]
            if not value[end - 1].isalnum() or after.isalnum():
                continue
            if _iban_valid(_IBAN_SEPARATORS.sub("", value[:end]).upper()):
                found.append((start, start + end))
                break
    return found


async def _has_iban(text: str) -> bool:
    return bool(await _ibans_at(text)) if await _digits_at_least(text, 13) else False


# US social security numbers as written (AAA-GG-SSSS, one separator kind): area
# 001-899 but not 666, group 01-99, serial 0001-9999; numbers the SSA published
# as examples (on a wallet insert, in adverts) are not anyone's.
_SSN = re.compile(
    r"(?<![\w-])(?!000|666|9)[0-9]{3}([- ])(?!00)[0-9]{2}\1(?!0000)[0-9]{4}(?![\w-]|\.[0-9])"
)
_EXAMPLE_SSNS = frozenset({"078051120", "219099999", "123456789"})


def _real_ssn(found: str) -> bool:
    return "".join(char for char in found if char.isdecimal()) not in _EXAMPLE_SSNS


async def _ssns_at(text: str) -> list[tuple[int, int]]:
    if not await _digits_at_least(text, 9):
        return []
    return [m.span() for m in await _matches(_SSN, text, _real_ssn)]


async def _has_ssn(text: str) -> bool:
    return bool(await _ssns_at(text))


async def _phones_at(text: str) -> list[tuple[int, int]]:
    if not await _digits_at_least(text, _PHONE_DIGITS):
        return []
    found = await _matches(_PHONE_NANP, text, _not_fictional)
    found += await _matches(_PHONE_INTL, text, _phone_digits)
    found += await _matches(_PHONE_TRUNK, text, _trunk_number)
    return [m.span() for m in found] + await phones.found(text, _not_fictional)


async def _cards_at(text: str) -> list[tuple[int, int]]:
    if not await _digits_at_least(text, _CARD_DIGITS):
        return []
    found = [m.span() for card in _CARDS for m in await _matches(card, text, _card_number)]
    for run in await _matches(_DIGIT_RUN, text):
        found += [
            (run.start() + a, run.start() + b) for a, b in await _cards_inside_run(run.group())
        ]
    return found


async def _secrets_found(text: str) -> list[tuple[int, int, str]]:
    return [(*m.span(), "secret") for m in await _matches(_SECRET, text) if _secret_found(m)]


# Where each kind's values are in a reading (secrets: in the reading with case kept).
_LOCATORS: dict[str, Callable[[str], Awaitable[list[tuple[int, int]]]]] = {
    "email": _emails_at,
    "phone": _phones_at,
    "card": _cards_at,
    "iban": _ibans_at,
    "ssn": _ssns_at,
}


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
# A few words, one possessive word at a time; a "word" longer than 40
# characters is not one, which bounds the phrase's length.
_WORDS = r"(?:[^ .!?\n]{1,40}+ ){0,12}?"

# All start with \b, which ``re`` hoists out of the joined alternation.
_INJECTION_PHRASES: dict[str, tuple[str, ...]] = {
    "instruction override": (
        rf"\b{_DROP} (?:all|any|every) (?:of )?(?:the |your )?(?:{_EARLIER} )?{_ORDERS}\b",
        rf"\b{_DROP} (?:the |your |these |those )?{_EARLIER} {_ORDERS}\b",
        rf"\b{_DROP} your (?:{_ORDERS}|programming|training)\b",
        r"\b(?:ignore|disregard) (?:all of |everything )?(?:the )?above(?: text| prompt)?"
        r"(?: and|[,.;:!]|$)",
        r"\b(?:ignore|forget) (?:everything|all) "
        r"(?:above|before this|you(?: were|['\u2019`]ve been| have been) told)\b",
    ),
    "persona switch": (
        r"\byou(?: are|['\u2019`]re) now (?:dan\b|(?:in |entering )?(?:developer|dan|jailbreak|"
        r"god|unrestricted) mode\b|(?:an? )?(?:unrestricted|unfiltered|uncensored|jailbroken)\b"
        r"|free (?:of|from) |no longer bound\b)",
        r"\b(?:enable|activate|enter|switch to) (?:dan|jailbreak) mode\b",
        r"\b(?:dan|jailbreak) mode (?:enabled|activated)\b",
        rf"\b(?:pretend (?:that )?(?:you are|you['\u2019`]re|to be)|act as) {_WORDS}"
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
    # Every phrase starts with a word of lowercase ASCII letters (the text is
    # case folded): positions anywhere else are rejected on one character.
    _Rulebook.build(
        [(label, _spaces_optional(p)) for label, ps in _INJECTION_PHRASES.items() for p in ps],
        0,
        starts="[a-z]",
    ),
    _Rulebook.build([("fake role marker", p) for p in _ROLE_MARKERS], 0),
)


class InjectionJudge(_LocalJudge):
    """Flags prompt-injection phrasing: instruction overrides, persona switches, role markers."""

    def __init__(self, name: str, *, extra_patterns: Sequence[str] = ()) -> None:
        extra = [(f"policy pattern {i}", p) for i, p in enumerate(extra_patterns, 1)]
        super().__init__(name)
        self._books = (*_INJECTION_BOOKS, _Rulebook.build(extra, re.IGNORECASE))

    async def _find(self, text: str) -> list[tuple[str, str]]:
        label = await _first_label(self._books, await _words_apart(await readings(text)))
        return [] if label is None else [("prompt_injection", label)]
