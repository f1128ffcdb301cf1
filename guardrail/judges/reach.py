"""How much text one finding of a judge spans: the least overlap an answer's windows need.

A window screens each channel with its last ``overlap_chars`` (normalised)
characters before the new text, and hold-back keeps those back until a later
window passed. A finding no longer than that is seen whole by one window and
none of it is released before it is. So the overlap must be at least the reach
of every judge screening the answer, counted as the judges count: normalised
text (invisible characters removed, whitespace runs one space).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from guardrail.judges.normalize import normalize

if TYPE_CHECKING:
    from guardrail.policy.models import JudgeSpec, Policy

# The longest text one match spans, by kind of personal data.
PII_REACH = {
    "card": 19 + 18,  # 19 digits, a single space or dash between each
    # The longest of the shortest texts that match each key format: past that
    # many characters a key already matches (the longest: a private key header
    # with three words, ``-----BEGIN ENCRYPTED OPENSSH PRIVATE KEY-----``).
    "secret": 64,
    "phone": 32,  # "+" and up to 15 digits, brackets and separators
    "email": 64,  # longer addresses are flagged once 64 characters of them are seen together
    "iban": 34 + 8,  # 34 characters, a space after every four
    "ssn": 11,
}
# Injection phrases are a few words ("ignore all previous instructions").
INJECTION_REACH = 64


def reach(spec: JudgeSpec, llm_context_chars: int) -> int:
    """The longest text one finding of this judge spans (LLM judges: the context chosen)."""
    from guardrail.policy.models import InjectionJudgeSpec, KeywordJudgeSpec, PIIJudgeSpec

    if isinstance(spec, PIIJudgeSpec):
        return max((PII_REACH[k] for k in spec.kinds), default=0)
    if isinstance(spec, KeywordJudgeSpec):
        # Patterns are the policy's own regexes: their reach is what overlap_chars says.
        return max((len(normalize(k)) for k in spec.keywords), default=0)
    if isinstance(spec, InjectionJudgeSpec):
        return INJECTION_REACH
    return llm_context_chars


def overlap_problems(policy: Policy) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """The output stage's overlap against the reach of each judge screening the answer."""
    output = policy.output
    if output is None:
        return
    for i, screen in enumerate(output.screens):
        spec = policy.judges.get(screen.judge)
        if spec is None:
            continue  # reported as an unknown judge
        needed = reach(spec, output.llm_context_chars)
        if output.overlap_chars < needed:
            what = "its context (llm_context_chars)" if spec.type == "llm" else "one finding"
            yield (
                ("output", "overlap_chars"),
                (
                    f"judge '{screen.judge}' (output.screens[{i}]) needs overlap_chars of at "
                    f"least {needed}, {what}: a shorter overlap lets a window boundary split a "
                    "finding so that no window sees it whole"
                ),
            )
