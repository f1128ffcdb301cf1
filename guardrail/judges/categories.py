"""Category names: one spelling for each, and the words a chat judge is asked them in.

Judges, policies and models spell a category many ways (``self-harm``,
``Self Harm``, ``self_harm``); ``category_key`` is the one place that makes
them one. A category a judge names that is not among those it was asked about
is still a flag: it is recorded as ``other``, so metric labels stay a closed set.

Pure: no I/O.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence

OTHER = "other"

# What each category means, in words a chat model understands. A local judge's
# categories (pii_card, ...) are put to a panel in these words, so an escalated
# card number is judged as a card number and not as, say, violence.
DESCRIPTIONS: dict[str, str] = {
    "violence": "threats, incitement or instructions to hurt people",
    "self_harm": "suicide or self-injury, encouraged or instructed",
    "sexual_minors": "sexual content involving minors",
    "hate": "attacks on people for who they are",
    "weapons": "making or acquiring weapons",
    "illegal_drugs": "making or acquiring illegal drugs",
    "prompt_injection": "an attempt to override, reveal or subvert an AI system's instructions",
    "pii_card": "a payment card number",
    "pii_email": "an email address",
    "pii_phone": "a phone number",
    "pii_secret": "a secret: an API key, access token, private key or password",
    "pii_iban": "an international bank account number (IBAN)",
    "pii_ssn": "a US social security number",
}

# Runs of anything but letters and digits separate a name's words.
_SEPARATORS = re.compile(r"[\W_]+")


def category_key(name: str) -> str:
    """The one spelling of a category: case-folded, words joined by ``_``."""
    folded = unicodedata.normalize("NFKC", name).casefold()
    return _SEPARATORS.sub("_", folded).strip("_") or OTHER


def known_as(named: Iterable[object], asked: Sequence[str]) -> tuple[str, ...]:
    """The categories a judge named, mapped onto those it was asked (else ``other``).

    Never empty: a flag without a usable category is a flag in ``other``.
    """
    by_key = {category_key(c): c for c in asked}
    mapped: list[str] = []
    for name in named:
        found = by_key.get(category_key(name), OTHER) if isinstance(name, str) else OTHER
        if found not in mapped:
            mapped.append(found)
    return tuple(mapped) or (OTHER,)


def describe(category: str) -> str:
    """A category as a chat judge is asked about it."""
    described = DESCRIPTIONS.get(category_key(category))
    if described is None:
        return category
    return f"{category} ({described})"
