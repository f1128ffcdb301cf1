"""Canonical text for matching, so obfuscated input reads the same as plain input.

The output is for matching only and never shown to anyone. Every step works
one character at a time, so the cost is linear and a text can be normalised
in chunks (yielding to the event loop between them) with the same result:

1. Combining marks are dropped before anything else: "i̇gnore" and marks
   stacked on every letter read as the plain word. Dropping them first also
   makes the text stream-safe (UAX #15: no run of non-starters at all), which
   is what keeps ``unicodedata.normalize`` linear; a long run of alternating
   marks makes its canonical reordering quadratic, holding the GIL.
2. Invisible characters are removed, or read as spaces: one inside a word
   hides it ("ig\u200bnore"), one between words joins them
   ("ignore\u200ball"). ``readings`` gives both readings when the text holds
   any, so a matcher sees each.
3. NFKD undoes compatibility forms (fullwidth, superscript, ligatures,
   mathematical letters); its own combining marks are dropped too.
4. Letters that Unicode's confusables data says look like a Latin letter or
   digit (Armenian oh, Greek alpha, dotless i, Cyrillic a) become that letter,
   and so do ASCII punctuation lookalikes (U+02BC for an apostrophe). Mapping them
   mangles genuine Greek or Russian text into a mix of scripts, which is fine
   for matching: keywords go through the same function as the text. Letters and
   digits that NFKD leaves alone but whose Unicode name says which Latin letter
   or digit they are (negative squared and circled letters, regional
   indicators, small capitals, dingbat circled digits) become it too.
   Tag characters (U+E0020..E007E) are invisible ASCII that models read: the
   spaced reading reads them as that ASCII.
5. ``normalize`` also folds case and whitespace runs; matchers that care
   about case (API keys, tokens) use ``strip_invisible``.
"""

from __future__ import annotations

import asyncio
import json
import re
import unicodedata
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from importlib import resources

__all__ = [
    "char_class",
    "mapped_reading",
    "normalize",
    "readings",
    "squeeze",
    "stream_safe",
    "strip_invisible",
    "tag_count",
    "without_tags",
]

# Characters normalised between two turns of the event loop: about a
# millisecond of work, so a 1 MiB body never holds the loop for long and a
# judge's timeout can stop it between chunks.
CHUNK = 8_192

# Characters that render as nothing, so inserting one inside a word hides the
# word from a matcher but not from a model or a human. All of Unicode 14's
# category Cf (a test checks the table against ``unicodedata``), plus invisible
# characters from other categories that obfuscators use.
_INVISIBLE_RANGES: tuple[tuple[int, int], ...] = (
    # Cf: format characters.
    (0x00AD, 0x00AD),  # soft hyphen
    (0x0600, 0x0605),
    (0x061C, 0x061C),  # Arabic letter mark (bidi)
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x0890, 0x0891),
    (0x08E2, 0x08E2),
    (0x180E, 0x180E),  # Mongolian vowel separator
    (0x200B, 0x200F),  # zero-width space/non-joiner/joiner, LRM, RLM
    (0x202A, 0x202E),  # bidi embeddings and overrides
    (0x2060, 0x206F),  # word joiner, invisible operators, bidi isolates, U+2065 (reserved)
    (0xFEFF, 0xFEFF),  # zero-width no-break space / BOM
    (0xFFF0, 0xFFFB),  # reserved (default ignorable), interlinear annotation
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x1343F),  # Egyptian hieroglyph format controls (39-3F: Unicode 15)
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    # Tags (invisible ASCII: read as ASCII in the spaced reading), variation
    # selectors, and the rest of the plane, reserved as default ignorable.
    (0xE0000, 0xE0FFF),
    # Not Cf, but invisible all the same.
    (0x034F, 0x034F),  # combining grapheme joiner
    (0x115F, 0x1160),  # Hangul choseong/jungseong fillers
    (0x17B4, 0x17B5),  # Khmer inherent vowels
    (0x180B, 0x180D),  # Mongolian free variation selectors
    (0x180F, 0x180F),
    (0x2800, 0x2800),  # Braille pattern blank
    (0x3164, 0x3164),  # Hangul filler
    (0xFE00, 0xFE0F),  # variation selectors
    (0xFFA0, 0xFFA0),  # halfwidth Hangul filler
    (0x1D159, 0x1D159),  # musical symbol null notehead
    # C0/C1 controls other than whitespace: a NUL inside a word hides it too.
    (0x0000, 0x0008),
    (0x000E, 0x001B),
    (0x007F, 0x0084),
    (0x0086, 0x009F),
)

# Blocks with no combining mark in them (a test checks this against
# ``unicodedata``): skipping them keeps building the mark table fast.
_MARK_FREE_RANGES: tuple[tuple[int, int], ...] = (
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xAC00, 0xD7A3),  # Hangul syllables
    (0xD800, 0xF8FF),  # surrogates, private use
    (0x20000, 0xDFFFF),  # CJK extensions, unassigned planes
    (0xF0000, 0x10FFFF),  # private use planes
)

_WHITESPACE_RUN = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class _Tables:
    """The translation tables, built once on first use (never at import)."""

    invisible: re.Pattern[str]
    # Before NFKD: marks and invisibles dropped (or invisibles read as
    # spaces), lookalikes mapped (NFKD would turn some into a space and a mark).
    joined: dict[int, str | None]
    spaced: dict[int, str | None]
    # After NFKD: the marks it produced dropped, lookalikes mapped to Latin.
    latin: dict[int, str | None]
    latin_folded: dict[int, str | None]


@cache
def _tables() -> _Tables:
    invisibles = [code for first, last in _INVISIBLE_RANGES for code in range(first, last + 1)]
    found = _scan()
    marks = dict.fromkeys(found.marks)
    lookalikes = {**_latin_lookalikes(), **found.named}
    # What a model reads in tag characters: "ASCII smuggling".
    tags = {code: chr(code - 0xE0000) for code in range(0xE0020, 0xE007F)}
    joined: dict[int, str | None] = {**lookalikes, **marks, **dict.fromkeys(invisibles)}
    spaced: dict[int, str | None] = {
        **lookalikes,
        **marks,
        **dict.fromkeys(invisibles, " "),
        **tags,
    }
    folded = {code: latin.casefold() for code, latin in lookalikes.items()}
    return _Tables(
        invisible=re.compile(
            "["
            + "".join(f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in _INVISIBLE_RANGES)
            + "]"
        ),
        joined=joined,
        spaced=spaced,
        latin={**lookalikes, **marks},
        latin_folded={**folded, **marks},
    )


@dataclass(frozen=True, slots=True)
class _Found:
    marks: list[int]  # dropped for matching
    named: dict[int, str]  # the Latin letter or digit a character's name or value says it is


# "NEGATIVE SQUARED LATIN CAPITAL LETTER I", "LATIN LETTER SMALL CAPITAL I",
# "PARENTHESIZED LATIN SMALL LETTER I", "REGIONAL INDICATOR SYMBOL LETTER I".
_NAMED_LETTER = re.compile(
    r"(?:^|\s)(?:LATIN (CAPITAL |SMALL )?LETTER (SMALL CAPITAL )?"
    r"|REGIONAL INDICATOR SYMBOL LETTER )([A-Z])$"
)


def _scan() -> _Found:
    """Code points dropped for matching (combining marks, and any whose NFKD starts with
    one), and those named as a Latin letter or valued as a digit that NFKD leaves alone."""
    found = _Found([], {})
    start = 0
    for first, last in (*_MARK_FREE_RANGES, (0x110000, 0x110000)):
        for code in range(start, first):
            char = chr(code)
            decomposed = unicodedata.normalize("NFKD", char)
            if unicodedata.category(char) in ("Mn", "Me") or unicodedata.combining(decomposed[0]):
                found.marks.append(code)
            elif code > 0x7F and not (len(decomposed) == 1 and decomposed.isascii()):
                if (latin := _named_latin(char)) is not None:
                    found.named[code] = latin
        start = last + 1
    return found


def _named_latin(char: str) -> str | None:
    # Dingbat and double circled digits have a digit value but no decomposition.
    digit = unicodedata.digit(char, None)
    if digit is not None and unicodedata.category(char) != "Nd":
        return str(digit)
    if (named := _NAMED_LETTER.search(unicodedata.name(char, ""))) is None:
        return None
    small = named[1] == "SMALL " or named[2] is not None
    return named[3].lower() if small else named[3]


def _latin_lookalikes() -> dict[int, str]:
    """Each non-Latin character Unicode's confusables data says looks like one Latin letter."""
    # confusables.json (from Unicode's confusables.txt) maps a prototype to the
    # characters confusable with it, LRM-wrapped when right-to-left.
    source = resources.files("confusable_homoglyphs").joinpath("confusables.json")
    data: dict[str, list[dict[str, str]]] = json.loads(source.read_text("utf-8"))
    table: dict[int, str] = {}
    for prototype, entries in data.items():
        chars = [entry["c"].strip("\u200e") for entry in entries]
        latin = _latin_letter(prototype, chars)
        if latin is None:
            continue
        for char in chars:
            # ASCII stays itself; a digit keeps its value (cards in any script);
            # NFKD's reading wins (U+017F, long s, is an "s", though it looks like an "f").
            if (
                len(char) != 1
                or char.isascii()
                or unicodedata.category(char) == "Nd"
                or unicodedata.normalize("NFKD", char).isascii()
            ):
                continue
            # "l", "I" and "1" share one prototype: a capital reads as "I".
            table.setdefault(ord(char), "I" if latin == "l" and char.isupper() else latin)
    return table


def _latin_letter(prototype: str, chars: list[str]) -> str | None:
    """The Latin letter or digit a group of confusables stands for, if there is exactly one."""
    if not prototype.isascii():
        return None
    if len(prototype) == 1:
        return prototype if prototype.isprintable() else None
    # "rn" is the prototype of "m": a group whose one Latin letter is "m" maps to it.
    letters = {char for char in chars if len(char) == 1 and char.isascii() and char.isalnum()}
    return letters.pop() if len(letters) == 1 else None


def stream_safe(text: str, *, spaced: bool = False) -> str:
    """What NFKD is given: marks and invisibles dropped (or invisibles as spaces).

    No character left decomposes to a leading non-starter, so no run of
    non-starters ever reaches NFKD (UAX #15 allows 30): its reordering is linear.
    """
    tables = _tables()
    return text.translate(tables.spaced if spaced else tables.joined)


def _kept(text: str, *, spaced: bool) -> str:
    """One piece in matching form, case kept; works a character at a time, so pieces concatenate."""
    text = stream_safe(text, spaced=spaced)
    if unicodedata.is_normalized("NFKD", text):
        return text  # lookalikes were mapped with the marks
    # NFKD can make marks ("é") and lookalikes (mathematical Greek): map again.
    return unicodedata.normalize("NFKD", text).translate(_tables().latin)


def _folded(kept: str) -> str:
    """A piece of ``_kept`` output, case folded."""
    # Lookalikes are mapped before and after casefolding: a capital's data
    # (Greek capital epsilon is "E") is not its small letter's, and
    # casefolding can add a mark ("İ" becomes "i" and a dot above).
    return kept.casefold().translate(_tables().latin_folded)


def _fold_spaces(piece: str, after_space: bool) -> tuple[str, bool]:
    """A piece with whitespace runs as one space, none at the start of the text.

    ``after_space`` says whether the text so far ends in a space, so a run
    split across two pieces still becomes one space; returns it for the next.
    """
    piece = _WHITESPACE_RUN.sub(" ", piece)
    if after_space:
        piece = piece.lstrip(" ")
    return piece, piece.endswith(" ") if piece else after_space


# The invisibles within ASCII: controls other than whitespace.
_ASCII_INVISIBLE = re.compile(r"[\x00-\x08\x0e-\x1b\x7f]")


def _has_invisible(text: str) -> bool:
    # ASCII first: a plain character class is several times faster to search.
    if text.isascii():
        return _ASCII_INVISIBLE.search(text) is not None
    return _tables().invisible.search(text) is not None


def strip_invisible(text: str, *, spaced: bool = False) -> str:
    """Marks and invisible characters removed (or, if ``spaced``, invisibles as spaces),
    compatibility forms undone, lookalike letters mapped to Latin; case and spacing kept."""
    return _kept(text, spaced=spaced)


def normalize(text: str, *, spaced: bool = False) -> str:
    """``strip_invisible``, then case folded and whitespace runs folded to one space."""
    folded, _ = _fold_spaces(_folded(_kept(text, spaced=spaced)), True)
    return folded.rstrip(" ")


# --- shorter texts that read the same -----------------------------------------
#
# Context repeated in front of every window (``flow.windows``) is bounded in
# characters a judge reads, so a text that reads as little but weighs a lot
# (one letter, then a kilobyte of zero-width spaces, over and over) must be
# stored short, or every window repeats megabytes.

# Tag characters: invisible ASCII that the spaced reading (and a model) reads.
_TAGS = re.compile("[\U000e0020-\U000e007e]")
_NO_TAGS = dict.fromkeys(range(0xE0020, 0xE007F))


def tag_count(text: str) -> int:
    """How many tag characters ``text`` holds: text in the spaced reading, none in the joined."""
    if text.isascii() or _TAGS.search(text) is None:
        return 0
    return len(text) - len(text.translate(_NO_TAGS))


def without_tags(text: str) -> str:
    """``text`` with its tag characters removed: its joined reading is unchanged."""
    return text if text.isascii() else text.translate(_NO_TAGS)


@cache
def _blank_runs() -> re.Pattern[str]:
    """Runs of two or more characters that both readings read as nothing or as whitespace."""
    tables = _tables()
    blank: list[int] = []
    start = 0
    for first, last in (*_MARK_FREE_RANGES, (0x110000, 0x110000)):
        for code in range(start, first):
            char = chr(code)
            # Only a character some table drops, whitespace, or one NFKD changes can read blank.
            candidate = code in tables.joined or char.isspace() or unicodedata.decomposition(char)
            if candidate and not (normalize(char) or normalize(char, spaced=True)):
                blank.append(code)
        start = last + 1
    return re.compile(f"[{char_class(blank)}]{{2,}}")


def char_class(codes: Iterable[int]) -> str:
    """The inside of a regex character class matching exactly ``codes`` (ascending)."""
    ranges: list[list[int]] = []
    for code in codes:
        if ranges and ranges[-1][1] == code - 1:
            ranges[-1][1] = code
        else:
            ranges.append([code, code])
    return "".join(
        re.escape(chr(a)) + ("" if a == b else "-" + re.escape(chr(b))) for a, b in ranges
    )


def squeeze(text: str) -> str:
    """``text`` with each run of blank characters cut to one character that reads the same.

    Blank: read as nothing or as whitespace in both readings (whitespace,
    invisible characters but tags, combining marks). A run
    reads as one space in both readings if it holds whitespace (a space
    stands for it), else as nothing joined and one space spaced if it holds
    an invisible character (that one stands for it), else as nothing (its
    first mark does). Next to the text around it, the shorter run reads the
    same in both readings, case kept or folded: what judges match is unchanged.
    """
    return _blank_runs().sub(_one_for_run, text)


def _one_for_run(run: re.Match[str]) -> str:
    text = run[0]
    if _kept(text, spaced=False):
        return " "  # what is left of a blank run joined is whitespace
    invisible = _tables().invisible.search(text)
    return invisible[0] if invisible is not None else text[0]


# Every local judge reads the same request text: the first pays, the rest hit
# this cache. Small, so at most a few recent texts stay in memory; bounded in
# characters too, as NFKD can make a reading eighteen times its text (U+FDFA).
_RECENT: OrderedDict[tuple[str, int], dict[bool, tuple[str, ...]]] = OrderedDict()
_RECENT_SIZE = 8
_RECENT_CHARS = 1 << 25


def _size(entry: tuple[tuple[str, int], dict[bool, tuple[str, ...]]]) -> int:
    (text, _), cached = entry
    return len(text) + sum(len(reading) for both in cached.values() for reading in both)


async def readings(text: str, *, fold: bool = True, chunk: int = CHUNK) -> tuple[str, ...]:
    """The text in matching form: one reading, or two (invisibles removed, then as spaces)
    if it holds invisible characters. Long texts yield to the event loop between chunks."""
    key = (text, chunk)
    if (cached := _RECENT.get(key)) is None:
        kept, folded, saw_invisible = await _reading(text, spaced=False, chunk=chunk)
        cached = {False: (kept,), True: (folded,)}
        if saw_invisible:
            kept, folded, _ = await _reading(text, spaced=True, chunk=chunk)
            cached = {False: (*cached[False], kept), True: (*cached[True], folded)}
        _RECENT[key] = cached
        total = sum(map(_size, _RECENT.items()))
        while len(_RECENT) > _RECENT_SIZE or (total > _RECENT_CHARS and len(_RECENT) > 1):
            total -= _size(_RECENT.popitem(last=False))
    _RECENT.move_to_end(key)
    return cached[fold]


async def _reading(text: str, *, spaced: bool, chunk: int) -> tuple[str, str, bool]:
    """One reading of the text, case kept and folded, and whether it held an invisible."""
    kept: list[str] = []
    folded: list[str] = []
    after_space, saw_invisible = True, False
    start, step = 0, chunk
    while start < len(text):
        if start:
            await asyncio.sleep(0)
        piece = text[start : start + step]
        start += len(piece)
        saw_invisible = saw_invisible or _has_invisible(piece)
        kept.append(_kept(piece, spaced=spaced))
        folded_piece, after_space = _fold_spaces(_folded(kept[-1]), after_space)
        folded.append(folded_piece)
        # About ``chunk`` characters of output per turn: NFKD can make one
        # character eighteen (U+FDFA), and folding works on what it made.
        step = max(64, chunk * len(piece) // max(len(kept[-1]), len(piece)))
    return "".join(kept), "".join(folded).rstrip(" "), saw_invisible


# --- readings that keep where each character came from ------------------------


async def mapped_reading(
    text: str, *, spaced: bool = False, fold: bool = True, chunk: int = CHUNK
) -> tuple[str, list[int]]:
    """A reading of ``text`` (as ``readings`` makes it) and, for each of its characters,
    the index in ``text`` of the character it came from.

    For redaction: a match found in the reading maps back to the original
    characters from its first to its last, so an invisible character inside a
    value (dropped from the reading) falls inside the span and goes with it.
    Whitespace runs are one space, as in ``readings``; leading and trailing
    ones are kept (as one space), which moves no match.
    """
    form: list[str] = []
    origin: list[int] = []
    for start in range(0, len(text), chunk):
        if start:
            await asyncio.sleep(0)
        piece = text[start : start + chunk]
        if piece.isascii() and _ASCII_INVISIBLE.search(piece) is None:
            # Each character reads as itself (or its lower case): one to one.
            form.append(piece.lower() if fold else piece)
            origin.extend(range(start, start + len(piece)))
            continue
        for offset, char in enumerate(piece):
            out = _kept(char, spaced=spaced)
            if fold:
                out = _folded(out)
            form.append(out)
            origin.extend([start + offset] * len(out))
    return _spaces_folded("".join(form), origin)


# Whitespace that folding changes: a run of two or more, or one that is not a space.
_FOLDED_WHITESPACE = re.compile(r"\s{2,}|[^\S ]")


def _spaces_folded(form: str, origin: list[int]) -> tuple[str, list[int]]:
    if _FOLDED_WHITESPACE.search(form) is None:
        return form, origin
    kept: list[str] = []
    where: list[int] = []
    done = 0
    for run in _FOLDED_WHITESPACE.finditer(form):
        kept.append(form[done : run.start()])
        where.extend(origin[done : run.start()])
        kept.append(" ")
        where.append(origin[run.start()])
        done = run.end()
    kept.append(form[done:])
    where.extend(origin[done:])
    return "".join(kept), where
