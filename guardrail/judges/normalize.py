"""Canonical text for matching, so obfuscated input reads the same as plain input.

``strip_invisible`` undoes the tricks that change how text is encoded but not
how it looks: compatibility forms (fullwidth, superscript, ligatures),
invisible format characters, and a few lookalike letters from other scripts.
``normalize`` also folds whitespace and case; matchers that care about case
(API keys, tokens) use ``strip_invisible`` alone.

The output is for matching only and never shown to anyone: mapping Cyrillic
lookalikes to Latin mangles genuine Russian text, which is fine because
keywords go through the same function as the text they are matched against.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

__all__ = ["normalize", "strip_invisible"]

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
    (0x2060, 0x2064),  # word joiner, invisible operators
    (0x2066, 0x206F),  # bidi isolates, deprecated format characters
    (0xFEFF, 0xFEFF),  # zero-width no-break space / BOM
    (0xFFF9, 0xFFFB),  # interlinear annotation
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x1343F),  # Egyptian hieroglyph format controls (39-3F: Unicode 15)
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0001, 0xE0001),  # language tag
    (0xE0020, 0xE007F),  # tag characters: invisible ASCII look-alikes
    # Not Cf, but invisible all the same.
    (0x034F, 0x034F),  # combining grapheme joiner
    (0x115F, 0x1160),  # Hangul choseong/jungseong fillers
    (0x17B4, 0x17B5),  # Khmer inherent vowels
    (0x180B, 0x180D),  # Mongolian free variation selectors
    (0x180F, 0x180F),
    (0x3164, 0x3164),  # Hangul filler
    (0xFE00, 0xFE0F),  # variation selectors
    (0xFFA0, 0xFFA0),  # halfwidth Hangul filler
    (0xE0100, 0xE01EF),  # variation selectors supplement
    # C0/C1 controls other than whitespace: a NUL inside a word hides it too.
    (0x0000, 0x0008),
    (0x000E, 0x001B),
    (0x007F, 0x0084),
    (0x0086, 0x009F),
)

# Letters from other scripts that look identical to Latin ones in common fonts,
# by Unicode name so a reader can tell them apart from the Latin letters.
# Deliberately small and explicit: the full Unicode confusables list maps
# thousands of characters, many only loosely similar, and would make false
# matches in ordinary non-Latin text far more likely.
_LOOKALIKES = {
    # Cyrillic lower case
    "CYRILLIC SMALL LETTER A": "a",
    "CYRILLIC SMALL LETTER IE": "e",
    "CYRILLIC SMALL LETTER O": "o",
    "CYRILLIC SMALL LETTER ER": "p",
    "CYRILLIC SMALL LETTER ES": "c",
    "CYRILLIC SMALL LETTER U": "y",
    "CYRILLIC SMALL LETTER HA": "x",
    "CYRILLIC SMALL LETTER BYELORUSSIAN-UKRAINIAN I": "i",
    "CYRILLIC SMALL LETTER JE": "j",
    "CYRILLIC SMALL LETTER DZE": "s",
    "CYRILLIC SMALL LETTER SHHA": "h",
    "CYRILLIC SMALL LETTER KOMI DE": "d",
    "CYRILLIC SMALL LETTER QA": "q",
    "CYRILLIC SMALL LETTER WE": "w",
    "CYRILLIC SMALL LETTER PALOCHKA": "l",
    # Cyrillic upper case
    "CYRILLIC CAPITAL LETTER A": "A",
    "CYRILLIC CAPITAL LETTER VE": "B",
    "CYRILLIC CAPITAL LETTER IE": "E",
    "CYRILLIC CAPITAL LETTER KA": "K",
    "CYRILLIC CAPITAL LETTER EM": "M",
    "CYRILLIC CAPITAL LETTER EN": "H",
    "CYRILLIC CAPITAL LETTER O": "O",
    "CYRILLIC CAPITAL LETTER ER": "P",
    "CYRILLIC CAPITAL LETTER ES": "C",
    "CYRILLIC CAPITAL LETTER TE": "T",
    "CYRILLIC CAPITAL LETTER HA": "X",
    "CYRILLIC CAPITAL LETTER BYELORUSSIAN-UKRAINIAN I": "I",
    "CYRILLIC CAPITAL LETTER JE": "J",
    "CYRILLIC CAPITAL LETTER DZE": "S",
    # Greek
    "GREEK CAPITAL LETTER ALPHA": "A",
    "GREEK CAPITAL LETTER BETA": "B",
    "GREEK CAPITAL LETTER EPSILON": "E",
    "GREEK CAPITAL LETTER ZETA": "Z",
    "GREEK CAPITAL LETTER ETA": "H",
    "GREEK CAPITAL LETTER IOTA": "I",
    "GREEK CAPITAL LETTER KAPPA": "K",
    "GREEK CAPITAL LETTER MU": "M",
    "GREEK CAPITAL LETTER NU": "N",
    "GREEK CAPITAL LETTER OMICRON": "O",
    "GREEK CAPITAL LETTER RHO": "P",
    "GREEK CAPITAL LETTER TAU": "T",
    "GREEK CAPITAL LETTER UPSILON": "Y",
    "GREEK CAPITAL LETTER CHI": "X",
    "GREEK SMALL LETTER OMICRON": "o",
}

# One table for both jobs, so a single ``str.translate`` pass does them.
_TABLE: dict[int, str | None] = {
    code: None for first, last in _INVISIBLE_RANGES for code in range(first, last + 1)
}
_TABLE.update({ord(unicodedata.lookup(name)): latin for name, latin in _LOOKALIKES.items()})

_WHITESPACE_RUN = re.compile(r"\s+")


# Every local judge normalises the same request text: the first pays, the rest
# hit the cache. Small, so at most a few recent texts stay in memory.
@lru_cache(maxsize=16)
def strip_invisible(text: str) -> str:
    """NFKC, invisible characters removed, lookalike letters mapped to Latin; case kept."""
    # Remove invisibles before NFKC so a base letter and its combining mark
    # that were split by one still compose.
    text = text.translate(_TABLE)
    if unicodedata.is_normalized("NFKC", text):
        return text
    # NFKC can produce lookalikes (mathematical Greek letters become Greek),
    # so map once more.
    return unicodedata.normalize("NFKC", text).translate(_TABLE)


@lru_cache(maxsize=16)
def normalize(text: str) -> str:
    """``strip_invisible``, then whitespace runs folded to one space and case folded."""
    return _WHITESPACE_RUN.sub(" ", strip_invisible(text)).strip().casefold()
