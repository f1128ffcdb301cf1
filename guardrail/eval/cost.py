"""Judge tokens and the estimated cost per 1,000 requests, from LiteLLM's bundled price map.

Judges do not report their vendors' token usage to the guard today, so tokens
are estimated: the prompt's fixed frame (instructions and categories, the same
for every call) is counted with LiteLLM's tokenizer for the judge's model, the
screened text at four characters a token (OpenAI's rule of thumb for English),
and the answer as the tokens of a typical verdict. Prices come from the map
LiteLLM ships (``LITELLM_LOCAL_MODEL_COST_MAP``: offline, no download).
LiteLLM is imported only for a policy with LLM judges.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

from guardrail.eval.outcome import Outcome
from guardrail.policy.models import LLMJudgeSpec, Policy

CHARS_PER_TOKEN = 4
_TYPICAL_VERDICT = '{"flagged": false, "categories": [], "reason": "An ordinary question."}'


def estimate(policy: Policy, outcomes: Sequence[Outcome]) -> dict[str, Any] | None:
    """Per LLM judge: calls, estimated tokens and cost; the total per 1,000 requests."""
    llm = {n: s for n, s in policy.judges.items() if isinstance(s, LLMJudgeSpec)}
    if not llm or not outcomes:
        return None
    calls: Counter[str] = Counter()
    chars: Counter[str] = Counter()
    for o in outcomes:
        calls.update(o.prompts)
        chars.update(o.prompt_chars)
    litellm = _litellm()
    judges: dict[str, Any] = {}
    total_cost = 0.0
    unpriced = []
    for name, spec in llm.items():
        if not calls[name]:
            continue
        frame, answer = _frame_tokens(litellm, spec)
        prompt = calls[name] * frame + chars[name] // CHARS_PER_TOKEN
        completion = calls[name] * answer
        cost = _price(litellm, spec.model, prompt, completion)
        judges[name] = {
            "model": spec.model,
            "calls": calls[name],
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "tokens_reported": False,
            "cost_usd": cost,
        }
        if cost is None:
            unpriced.append(name)
        else:
            total_cost += cost
    priced = len(unpriced) < len(judges)
    return {
        "judges": judges,
        "cost_usd": total_cost if priced else None,
        "per_1000_requests_usd": total_cost / len(outcomes) * 1000 if priced else None,
        "unpriced": unpriced,  # judges whose model LiteLLM's map has no price for: not in the total
        "note": "tokens estimated; prices from LiteLLM's bundled map"
        + (f"; not in the map, left out of the total: {', '.join(unpriced)}" if unpriced else ""),
    }


def _litellm() -> Any:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from guardrail.judges.llm import load_litellm

    return load_litellm()


def _frame_tokens(litellm: Any, spec: LLMJudgeSpec) -> tuple[int, int]:
    from guardrail.judges.prompt import build_messages

    messages = build_messages("", spec.categories)
    try:
        frame = int(litellm.token_counter(model=spec.model, messages=messages))
        answer = int(litellm.token_counter(model=spec.model, text=_TYPICAL_VERDICT))
    except Exception:  # a model LiteLLM has no tokenizer for: fall back to the rule of thumb
        frame = sum(len(m["content"]) for m in messages) // CHARS_PER_TOKEN
        answer = len(_TYPICAL_VERDICT) // CHARS_PER_TOKEN
    return frame, answer


def _price(litellm: Any, model: str, prompt: int, completion: int) -> float | None:
    try:
        cost_in, cost_out = litellm.cost_per_token(
            model=model, prompt_tokens=prompt, completion_tokens=completion
        )
    except Exception:  # LiteLLM raises a bare Exception for a model not in its map
        return None
    return float(cost_in) + float(cost_out)
