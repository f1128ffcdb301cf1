"""A judge that asks a moderation endpoint: OpenAI's ``POST /v1/moderations`` or one alike.

The lean path posts ``{"model", "input"}`` to ``<api_base>/moderations`` over
the LLM judge's connection pool (``llm.Connections``: the same timeout, pool
and 429 handling); ``client: litellm`` calls ``litellm.amoderation`` for the
providers LiteLLM supports. Either answer is read by ``moderation_verdict``:

- a category with a threshold in the policy flags when its score reaches it;
  any other category flags when the vendor's boolean says so;
- ``ignore`` drops a vendor category from the decision entirely;
- the vendor's ``flagged`` with no category true is a flag in ``other``: a
  flag is never lost, even unexplained;
- vendor categories map to ours through ``VENDOR_CATEGORIES`` and the policy's
  ``category_map``; one in neither is ``other``.

An answer that is not a moderation result is ``JudgeError("parse")``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from guardrail.judges.base import JudgeError, Verdict
from guardrail.judges.categories import OTHER, category_key
from guardrail.judges.llm import (
    DEFAULT_MAX_CONNECTIONS,
    ClientChoice,
    ClientName,
    Connections,
    auth_headers,
    litellm_error,
    load_litellm,
    openai_url,
    resolved_client,
)

DEFAULT_MODEL = "omni-moderation-latest"

# Vendor category -> ours. OpenAI's omni-moderation and text-moderation names,
# and Mistral's (whose answers have no ``flagged``: its booleans decide).
VENDOR_CATEGORIES: dict[str, str] = {
    "harassment": "harassment",
    "harassment/threatening": "harassment",
    "hate": "hate",
    "hate/threatening": "hate",
    "illicit": "illicit",
    "illicit/violent": "weapons",  # violent wrongdoing, acquiring weapons
    "self-harm": "self_harm",
    "self-harm/intent": "self_harm",
    "self-harm/instructions": "self_harm",
    "sexual": "sexual",
    "sexual/minors": "sexual_minors",
    "violence": "violence",
    "violence/graphic": "violence",
    # Mistral
    "hate_and_discrimination": "hate",
    "violence_and_threats": "violence",
    "dangerous_and_criminal_content": "illicit",
    "selfharm": "self_harm",
    "health": "health",
    "financial": "financial",
    "law": "law",
    "pii": "pii",
}


@dataclass(frozen=True, slots=True)
class ModerationRules:
    """How a moderation result becomes a verdict (from the policy)."""

    thresholds: Mapping[str, float] = field(default_factory=dict)  # vendor category -> score
    threshold: float | None = None  # for every category without its own
    ignore: frozenset[str] = frozenset()
    category_map: Mapping[str, str] = field(default_factory=dict)  # vendor -> ours, over defaults

    def ours(self, vendor_category: str) -> str:
        """Our category for a vendor's."""
        mapped = self.category_map.get(vendor_category) or VENDOR_CATEGORIES.get(vendor_category)
        return category_key(mapped) if mapped else OTHER

    def categories(self) -> tuple[str, ...]:
        """Every category a flag can name."""
        vendors = {**VENDOR_CATEGORIES, **self.category_map}
        named = (self.ours(v) for v in vendors if v not in self.ignore)
        return tuple(dict.fromkeys([*named, OTHER]))


class ModerationJudge:
    """Screens text with a moderation endpoint."""

    inline = False

    def __init__(
        self,
        *,
        name: str,
        model: str = DEFAULT_MODEL,
        rules: ModerationRules | None = None,
        api_base: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 5.0,
        client: ClientChoice = "auto",
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        self._name = name
        self._model = model
        self._rules = rules or ModerationRules()
        self._api_base = api_base
        self._api_key = api_key
        self._timeout_s = timeout_s
        self._client = moderation_client(client, model, api_base)
        self._connections = Connections(max_connections)

    @property
    def name(self) -> str:
        """The judge's name from the policy; a metric label."""
        return self._name

    @property
    def client(self) -> ClientName:
        """Which client this judge resolved to."""
        return self._client

    async def screen(self, text: str) -> Verdict:
        """Ask the endpoint about ``text``; raise ``JudgeError`` if it gives no verdict."""
        started = time.perf_counter()
        if self._client == "openai":
            body = await self._connections.post(
                openai_url(self._api_base, "/moderations"),
                {"model": self._model.removeprefix("openai/"), "input": text},
                headers=auth_headers(self._api_key),
                timeout_s=self._timeout_s,
            )
            try:
                data = json.loads(body)
            except ValueError:
                raise JudgeError("parse", "response is not JSON") from None
        else:
            data = await self._moderate_litellm(text)
        return moderation_verdict(
            data, self._rules, judge=self._name, latency_s=time.perf_counter() - started
        )

    async def aclose(self) -> None:
        """Close the HTTP session, if one was opened."""
        await self._connections.aclose()

    async def _moderate_litellm(self, text: str) -> Any:
        import asyncio

        litellm = load_litellm()  # loaded while the guard was built
        try:
            async with asyncio.timeout(self._timeout_s):
                response = await litellm.amoderation(
                    input=text,
                    model=self._model,
                    api_base=self._api_base,
                    api_key=self._api_key,
                    timeout=self._timeout_s,
                    max_retries=0,
                )
        except Exception as exc:
            mapped = litellm_error(exc, litellm, self._timeout_s)
            if mapped is exc:
                raise
            raise mapped from exc
        # The openai SDK's model: dumped by alias, its categories keep their slashes.
        data = response.model_dump(by_alias=True) if hasattr(response, "model_dump") else response
        for result in data.get("results") or () if isinstance(data, dict) else ():
            for table in ("categories", "category_scores"):
                if isinstance(result, dict) and isinstance(result.get(table), dict):
                    result[table] = _vendor_spelling(result[table])
        return data


def moderation_client(client: ClientChoice, model: str, api_base: str | None) -> ClientName:
    """The client a moderation judge uses: ``auto`` is the lean one unless a LiteLLM
    provider prefix (``mistral/...``) with no ``api_base`` names another vendor."""
    if client == "auto" and "/" not in model:
        return "openai"  # a bare name ("omni-moderation-latest") is OpenAI's
    return resolved_client(client, model, api_base)


def moderation_verdict(
    data: Any, rules: ModerationRules, *, judge: str, latency_s: float
) -> Verdict:
    """A moderation response (``{"results": [...]}``) as a verdict; ``JudgeError`` if malformed."""
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, list) or not results:
        raise JudgeError("parse", "response has no moderation results")
    hits: list[str] = []
    scores: list[float] = []
    for result in results:
        found, score = _hits(result, rules)
        hits += [h for h in found if h not in hits]
        if score is not None:
            scores.append(score)
    if not hits:
        return Verdict(judge, False, reason="not flagged", latency_s=latency_s)
    categories = tuple(dict.fromkeys(rules.ours(h) if h else OTHER for h in hits))
    shown = ", ".join(h for h in hits if h) or "flagged, no category"
    return Verdict(
        judge,
        True,
        categories,
        score=max(scores) if scores else None,
        reason=shown[:200],
        latency_s=latency_s,
    )


def _hits(result: Any, rules: ModerationRules) -> tuple[list[str], float | None]:
    """The vendor categories that flag in one result ("" for an unexplained flag), top score."""
    if not isinstance(result, dict):
        raise JudgeError("parse", "a moderation result is not an object")
    flagged = result.get("flagged")
    if flagged is not None and not isinstance(flagged, bool):
        raise JudgeError("parse", "'flagged' must be true or false")
    booleans = _table(result.get("categories"), bool)
    scores = _table(result.get("category_scores"), float)
    if booleans is None or scores is None:
        if flagged:
            return [""], None  # a flag whatever the rest says
        raise JudgeError("parse", "'categories' and 'category_scores' must map names to values")
    hits = []
    for category in dict.fromkeys([*booleans, *scores]):
        if category in rules.ignore:
            continue
        limit = rules.thresholds.get(category, rules.threshold)
        score = scores.get(category)
        if limit is not None and score is not None:
            hit = score >= limit
        else:
            hit = booleans.get(category) is True
        if hit:
            hits.append(category)
    top = max((scores[h] for h in hits if h in scores), default=None)
    if flagged and not hits and not any(booleans.values()):
        hits.append("")  # flagged, yet no category says why
    return hits, top


def _vendor_spelling(table: dict[str, Any]) -> dict[str, Any]:
    """One entry per category: LiteLLM's objects carry the SDK's field names
    (``self_harm_intent``) beside the vendor's (``self-harm/intent``)."""
    vendor = {category_key(name): name for name in table if name in VENDOR_CATEGORIES}
    return {
        name: value
        for name, value in table.items()
        if name in VENDOR_CATEGORIES or category_key(name) not in vendor
    }


def _table(value: Any, kind: type) -> dict[str, Any] | None:
    """``value`` as {name: bool} or {name: score in [0, 1]}; None if it is not one."""
    if not isinstance(value, dict):
        return None
    table: dict[str, Any] = {}
    for name, item in value.items():
        if item is None:
            continue  # a category this model does not score (the SDK's models keep it as null)
        if kind is bool:
            if not isinstance(item, bool):
                return None
        elif (
            isinstance(item, bool)
            or not isinstance(item, int | float)
            or not (math.isfinite(item) and 0.0 <= item <= 1.0)
        ):
            return None
        table[str(name)] = item
    return table


def known_vendor_categories(category_map: Sequence[str] = ()) -> tuple[str, ...]:
    """The vendor category names a policy may set thresholds for or ignore."""
    return tuple(dict.fromkeys([*VENDOR_CATEGORIES, *category_map]))
