"""Guard models' own prompts and answers: Llama Guard, ShieldGemma, Granite Guardian.

A guard model is a chat model trained to answer one question in one format.
Served behind an OpenAI-compatible endpoint (vLLM, Ollama, a vendor), it is
asked through the LLM judge's client, but with its own prompt, and its answer
is read with its own grammar:

- Llama Guard 3/4: the text as the user turn (the server's chat template wraps
  it in the model's task and taxonomy); ``safe``, or ``unsafe`` and a line of
  codes ``S1,S10``. The policy's ``codes`` pick which codes count.
- ShieldGemma: the model card's prompt, one harm per request; ``Yes`` (the text
  violates the principle) or ``No``. With logprobs, P(Yes) against a threshold.
- Granite Guardian: the text as the user turn, the risk named in the chat
  template's ``guardian_config`` (vLLM); ``Yes`` (risky) or ``No``, maybe with
  ``<confidence>``, or 3.3's ``<score> yes </score>``. Logprobs as ShieldGemma.

Pure: no I/O. Only an exact pass is a pass: an answer outside the grammar is a
``JudgeError("parse")``, and a flag names categories through a fixed table (a
code outside it is ``other``), so it is never lost and labels stay a closed set.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from guardrail.judges.base import JudgeError, Verdict
from guardrail.judges.categories import OTHER

GuardFormatName = Literal["llama_guard", "shieldgemma", "granite_guardian"]

# Llama Guard 3 and 4 share the MLCommons hazard taxonomy (S1-S13) and S14.
LLAMA_GUARD_CODES: dict[str, str] = {
    "S1": "violence",  # violent crimes
    "S2": "non_violent_crimes",
    "S3": "sex_crimes",
    "S4": "sexual_minors",  # child sexual exploitation
    "S5": "defamation",
    "S6": "specialized_advice",
    "S7": "privacy",
    "S8": "intellectual_property",
    "S9": "weapons",  # indiscriminate weapons
    "S10": "hate",
    "S11": "self_harm",
    "S12": "sexual",
    "S13": "elections",
    "S14": "code_interpreter_abuse",
}

# ShieldGemma's four harm types, with the principle its model card asks about.
SHIELDGEMMA_HARMS: dict[str, str] = {
    "dangerous_content": "dangerous_content",
    "harassment": "harassment",
    "hate_speech": "hate",
    "sexually_explicit": "sexual",
}
_SHIELDGEMMA_PRINCIPLES = {
    "dangerous_content": (
        '"No Dangerous Content": The prompt shall not contain or seek generation of content'
        " that harming oneself and/or others (e.g., accessing or building firearms and"
        " explosive devices, promotion of terrorism, instructions for suicide)."
    ),
    "harassment": (
        '"No Harassment": The prompt shall not contain or seek generation of content that is'
        " malicious, intimidating, bullying, or abusive content targeting another individual"
        " (e.g., physical threats, denial of tragic events, disparaging victims of violence)."
    ),
    "hate_speech": (
        '"No Hate Speech": The prompt shall not contain or seek generation of content that'
        " targeting identity and/or protected attributes (e.g., racial slurs, promotion of"
        " discrimination, calls to violence against protected groups) or dehumanizing/"
        "belittling/vilifying on the bases of race, ethnicity, religion, disability, age,"
        " nationality, veteran status, sexual orientation, gender, gender identity, caste, or"
        " any other protected status. We do allow content that includes a reference to a"
        " protected individual or group in a positive manner."
    ),
    "sexually_explicit": (
        '"No Sexually Explicit Information": The prompt shall not contain or seek generation'
        " of content that contains references to sexual acts or other lewd content (e.g.,"
        " sexually graphic descriptions, content aimed at causing arousal). Medical or"
        " scientific terms related to human anatomy or sex education are permitted."
    ),
}
_SHIELDGEMMA_PROMPT = """\
You are a policy expert trying to help determine whether a user
prompt is in violation of the defined safety policies.

<start_of_turn>
Human Question: {text}
<end_of_turn>

Our safety principle is defined in the below:

* {principle}

Does the human question violate the above principle? Your answer must start
with 'Yes' or 'No'. And then walk through step by step to be sure we answer
correctly.
"""

# Granite Guardian's built-in risks for a prompt or an answer.
GRANITE_RISKS: dict[str, str] = {
    "harm": "harm",
    "social_bias": "hate",
    "jailbreak": "prompt_injection",
    "violence": "violence",
    "profanity": "profanity",
    "sexual_content": "sexual",
    "unethical_behavior": "unethical_behavior",
}

FORMAT_CODES: dict[str, Mapping[str, str]] = {
    "llama_guard": LLAMA_GUARD_CODES,
    "shieldgemma": SHIELDGEMMA_HARMS,
    "granite_guardian": GRANITE_RISKS,
}
# What is asked when the policy names no codes: everything, except Granite's
# risks, one request each, where "harm" is its own umbrella.
DEFAULT_CODES: dict[str, tuple[str, ...]] = {
    "llama_guard": tuple(LLAMA_GUARD_CODES),
    "shieldgemma": tuple(SHIELDGEMMA_HARMS),
    "granite_guardian": ("harm", "jailbreak"),
}
# Enough for each grammar's longest answer (Llama Guard: "unsafe" and 14 codes).
DEFAULT_MAX_TOKENS: dict[str, int] = {
    "llama_guard": 64,
    "shieldgemma": 4,
    "granite_guardian": 20,
}
_TOP_LOGPROBS = 5

# Chat-template control tokens of these families. Inside the text they could
# close the turn the template put it in, and what followed would read as the
# template's own instructions; a space stands in, so no words are joined (and
# none can form a new token: no token holds a space).
_CONTROL_TOKENS = re.compile(
    r"<\|[A-Za-z0-9_]{1,40}\|>|</?(?:start_of_turn|end_of_turn|bos|eos|pad)>"
    r"|</?(?:start_of_risk_definition|end_of_risk_definition)>"
)


def defanged(text: str) -> str:
    """``text`` with chat-template control tokens replaced by a space."""
    return _CONTROL_TOKENS.sub(" ", text)


@dataclass(frozen=True, slots=True)
class Question:
    """One request to a guard model: about one code (or all of them, ``""``)."""

    code: str
    messages: list[dict[str, str]]
    options: dict[str, Any] = field(default_factory=dict)  # request fields besides messages


@dataclass(frozen=True, slots=True)
class Answer:
    """A guard model's answer to one question: its text, and its first token's logprobs."""

    code: str
    content: str
    logprobs: Mapping[str, float] | None = None


class GuardFormat(Protocol):
    """One family's prompt and grammar."""

    @property
    def max_tokens(self) -> int: ...

    def questions(self, text: str) -> list[Question]: ...

    def verdict(self, answers: Sequence[Answer], *, judge: str, latency_s: float) -> Verdict: ...


def guard_format(
    name: str,
    *,
    codes: Sequence[str] | None = None,
    threshold: float = 0.5,
    max_tokens: int | None = None,
) -> GuardFormat:
    """The format ``name`` asking about ``codes`` (default: ``DEFAULT_CODES``)."""
    counted = tuple(codes) if codes else DEFAULT_CODES[name]
    tokens = max_tokens or DEFAULT_MAX_TOKENS[name]
    if name == "llama_guard":
        return LlamaGuard(counted, tokens)
    if name == "shieldgemma":
        return YesNoGuard("shieldgemma", counted, threshold, tokens)
    if name == "granite_guardian":
        return YesNoGuard("granite_guardian", counted, threshold, tokens)
    raise ValueError(f"unknown guard format {name!r}")


def categories_of(name: str, codes: Sequence[str] | None) -> tuple[str, ...]:
    """The categories a guard model's flags can name: those of its counted codes, and other."""
    table = FORMAT_CODES[name]
    counted = tuple(codes) if codes else DEFAULT_CODES[name]
    return tuple(dict.fromkeys([*(table[c] for c in counted), OTHER]))


# --- Llama Guard ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LlamaGuard:
    """``safe``, or ``unsafe`` and the codes broken; only ``codes`` count."""

    codes: tuple[str, ...]
    max_tokens: int

    def questions(self, text: str) -> list[Question]:
        return [Question("", [{"role": "user", "content": defanged(text)}])]

    def verdict(self, answers: Sequence[Answer], *, judge: str, latency_s: float) -> Verdict:
        (answer,) = answers
        unsafe, named = parse_llama_guard(answer.content)
        if not unsafe:
            return Verdict(judge, False, reason="safe", latency_s=latency_s)
        # An unknown or garbled code is still a flag ("other"); a known code the
        # policy does not count is not. No code at all: a flag in "other".
        hits = [c for c in named if c in self.codes or c not in LLAMA_GUARD_CODES] or (
            [] if named else [OTHER]
        )
        if not hits:
            return Verdict(judge, False, reason="unsafe in uncounted codes", latency_s=latency_s)
        categories = tuple(dict.fromkeys(LLAMA_GUARD_CODES.get(c, OTHER) for c in hits))
        shown = ",".join(c for c in hits if c in LLAMA_GUARD_CODES) or "no known code"
        return Verdict(judge, True, categories, reason=f"unsafe: {shown}", latency_s=latency_s)


_CODE = re.compile(r"S[1-9][0-9]?")


def parse_llama_guard(content: str) -> tuple[bool, tuple[str, ...]]:
    """(unsafe, the codes named); ``JudgeError("parse")`` unless it is Llama Guard's grammar.

    A code that is not ``S<n>`` is kept as written, so it counts as ``other``.
    """
    lines = [line.strip() for line in content.strip().splitlines() if line.strip()]
    head = lines[0].casefold() if lines else ""
    if head == "safe" and len(lines) == 1:
        return False, ()
    if head != "unsafe":
        raise JudgeError("parse", f"not a Llama Guard answer ({len(content)} chars)")
    named = [c.strip().upper() for line in lines[1:] for c in line.split(",") if c.strip()]
    return True, tuple(c if _CODE.fullmatch(c) else OTHER for c in named)


# --- ShieldGemma and Granite Guardian: Yes or No -----------------------------------


@dataclass(frozen=True, slots=True)
class YesNoGuard:
    """One request per code; ``Yes`` flags it (or P(Yes) >= threshold, with logprobs)."""

    family: Literal["shieldgemma", "granite_guardian"]
    codes: tuple[str, ...]
    threshold: float
    max_tokens: int

    def questions(self, text: str) -> list[Question]:
        text = defanged(text)
        wanted = {"logprobs": True, "top_logprobs": _TOP_LOGPROBS}
        if self.family == "shieldgemma":
            return [
                Question(
                    code,
                    [{"role": "user", "content": _shieldgemma_prompt(text, code)}],
                    dict(wanted),
                )
                for code in self.codes
            ]
        return [
            Question(
                code,
                [{"role": "user", "content": text}],
                {"chat_template_kwargs": {"guardian_config": {"risk_name": code}}, **wanted},
            )
            for code in self.codes
        ]

    def verdict(self, answers: Sequence[Answer], *, judge: str, latency_s: float) -> Verdict:
        table = FORMAT_CODES[self.family]
        hits: list[str] = []
        scores: list[float] = []
        for answer in answers:
            said_yes = (
                parse_shieldgemma(answer.content)
                if self.family == "shieldgemma"
                else parse_granite(answer.content)
            )
            p_yes = yes_probability(answer.logprobs) if answer.logprobs else None
            if p_yes is not None:
                scores.append(p_yes)
            if (p_yes >= self.threshold) if p_yes is not None else said_yes:
                hits.append(answer.code)
        score = max(scores) if scores else None
        if not hits:
            return Verdict(judge, False, score=score, reason="no", latency_s=latency_s)
        categories = tuple(dict.fromkeys(table.get(c, OTHER) for c in hits))
        return Verdict(
            judge,
            True,
            categories,
            score=score,
            reason=f"yes: {','.join(hits)}",
            latency_s=latency_s,
        )


def _shieldgemma_prompt(text: str, code: str) -> str:
    return _SHIELDGEMMA_PROMPT.format(text=text.strip(), principle=_SHIELDGEMMA_PRINCIPLES[code])


_YES_NO = re.compile(r"(yes|no)(?![A-Za-z0-9_])", re.IGNORECASE)


def parse_shieldgemma(content: str) -> bool:
    """True for ``Yes``, False for ``No`` (a reasoning may follow); else ``JudgeError``."""
    match = _YES_NO.match(content.strip())
    if match is None:
        raise JudgeError("parse", f"not a Yes/No answer ({len(content)} chars)")
    return match.group(1).casefold() == "yes"


_THINKING = re.compile(r"\A\s*<think>.*?</think>", re.DOTALL)
_GRANITE_LABEL = re.compile(
    r"(yes|no)\s*(?:<confidence>\s*(?:high|low)\s*</confidence>)?", re.IGNORECASE
)
_GRANITE_SCORE = re.compile(r"<score>\s*(yes|no)\s*</score>", re.IGNORECASE)


def parse_granite(content: str) -> bool:
    """True for a risk (``Yes``, ``<score> yes </score>``), False for none; else ``JudgeError``.

    The whole answer must be the label: a label with anything after it is not
    Granite Guardian's grammar.
    """
    body = _THINKING.sub("", content, count=1).strip()
    match = _GRANITE_LABEL.fullmatch(body) or _GRANITE_SCORE.fullmatch(body)
    if match is None:
        raise JudgeError("parse", f"not a Granite Guardian answer ({len(content)} chars)")
    return match.group(1).casefold() == "yes"


def yes_probability(logprobs: Mapping[str, float]) -> float:
    """P(Yes) from the first token's alternatives, over Yes and No (as the model cards do).

    If one of the two is not among the alternatives, its logprob is at most the
    least one listed: that bound is used, which can only overstate P(Yes) when
    No is missing and understate nothing that was seen. Neither: ``JudgeError``.
    """
    yes = _best(logprobs, "yes")
    no = _best(logprobs, "no")
    if yes is None and no is None:
        raise JudgeError("parse", "neither Yes nor No among the answer's first-token logprobs")
    if no is None:
        return 1.0
    if yes is None:
        yes = min(lp for lp in logprobs.values() if not math.isnan(lp))
    if yes == no:  # equal, or both impossible (-inf): no evidence either way
        return 0.5
    # exp would overflow for a gap beyond ~700 nats; the answer is certain by then.
    return 1.0 / (1.0 + math.exp(min(no - yes, 700.0)))


def _best(logprobs: Mapping[str, float], word: str) -> float | None:
    # NaN and +inf are no probability; -inf is "impossible", a real answer.
    found = [
        lp
        for token, lp in logprobs.items()
        if token.strip().casefold() == word and (math.isfinite(lp) or lp == -math.inf)
    ]
    return max(found) if found else None
