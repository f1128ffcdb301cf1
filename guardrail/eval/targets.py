"""Where an item is evaluated: in this process through a ``Guard``, or through a running server.

``InProcess`` runs the same ``Guard`` the middleware runs: the adapter reads the
request body, ``Guard.assess`` screens it (escalating to the panel where the
policy says so), and the expected answer, if the item has one, goes through
the output screens. No HTTP, no app.

``Served`` sends each request with the real ``openai`` client to a guarded
server, and reads its refusal from the answer (``finish_reason:
content_filter``, or an error whose code is ``content_filter``).
"""

from __future__ import annotations

import json
import time
from typing import Any, Protocol

from guardrail.adapters import BadRequest
from guardrail.decide.decision import REFUSING
from guardrail.decide.guard import Assessment, Guard
from guardrail.eval.data import Item
from guardrail.eval.outcome import JudgeCall, Outcome, PanelNote, Verdict
from guardrail.flow.body import parse
from guardrail.judges.base import JudgeFailure
from guardrail.policy.models import LLMJudgeSpec

_VERDICTS: dict[str, Verdict] = {
    "blocked": "refused",
    "allowed": "passed",
    "flagged_allowed": "passed",
    "error_allowed": "error",
    "error_blocked": "error",
}


class Unreachable(Exception):
    """The server did not answer at all (refused the connection, or it dropped)."""


class Target(Protocol):
    """Evaluates one item under one policy."""

    name: str

    async def evaluate(self, item: Item) -> Outcome: ...

    async def aclose(self) -> None: ...


class InProcess:
    """A policy's ``Guard``, run on each item in this process."""

    def __init__(self, guard: Guard, name: str) -> None:
        self.guard, self.name = guard, name
        self._llm = frozenset(
            n for n, spec in guard.policy.judges.items() if isinstance(spec, LLMJudgeSpec)
        )

    async def evaluate(self, item: Item) -> Outcome:
        """Screen the item's request (and answer) as the middleware would."""
        started = time.perf_counter()
        outcome = Outcome(item.id, item.unsafe, item.category, "error", "rejected", 0.0)
        try:
            request = await parse(self.guard.adapter, item.body)
        except BadRequest as exc:
            outcome.error = f"rejected ({exc.code}): {exc.message}"
            outcome.latency_s = time.perf_counter() - started
            return outcome
        assessments = [await self._timed(outcome, request.text, "input")]
        if item.output is not None and self.guard.output_screens:
            if assessments[0].decision not in REFUSING:
                assessments.append(await self._timed(outcome, item.output, "output"))
        outcome.latency_s = time.perf_counter() - started
        outcome.decision = _decision([a.decision for a in assessments])
        outcome.verdict = _VERDICTS[outcome.decision]
        failures = [c for c in outcome.calls if c.result not in ("flag", "pass")]
        if outcome.verdict == "error":
            outcome.error = "; ".join(sorted({f"{c.judge}: {c.result}" for c in failures}))
        if any(c.result == "rate_limited" for c in failures):
            outcome.retry_after_s = 0.0
        return outcome

    async def _timed(self, outcome: Outcome, text: str, stage: str) -> Assessment:
        started = time.perf_counter()
        assessment = await self.guard.assess(text, "input" if stage == "input" else "output")
        outcome.stages[stage] = time.perf_counter() - started
        for result in assessment.screening.results:
            outcome.calls.append(_call(result, assessment.stage))
            self._note_prompt(outcome, result.judge, text)
        panel = assessment.panel
        if panel is not None and assessment.trigger is not None:
            outcome.stages["panel"] = outcome.stages.get("panel", 0.0) + panel.duration_s
            outcome.panel = PanelNote(
                assessment.trigger, panel.ruling.outcome, panel.ended, panel.duration_s
            )
            for seat in panel.seats:
                # A seat cut off once the vote was settled was still asked: its prompt is billed.
                self._note_prompt(outcome, seat.judge, text)
                if seat.result is not None:
                    outcome.calls.append(_call(seat.result, "panel", seat.latency_s))
        return assessment

    def _note_prompt(self, outcome: Outcome, judge: str, text: str) -> None:
        if judge in self._llm:  # what the call cost in input: its text (the prompt's frame aside)
            outcome.prompt_chars[judge] = outcome.prompt_chars.get(judge, 0) + len(text)
            outcome.prompts[judge] = outcome.prompts.get(judge, 0) + 1

    async def aclose(self) -> None:
        """Close the judges' clients."""
        await self.guard.aclose()


def _call(result: Any, stage: Any, latency_s: float | None = None) -> JudgeCall:
    latency = result.latency_s if latency_s is None else latency_s
    if isinstance(result, JudgeFailure):
        return JudgeCall(result.judge, stage, result.reason, latency)
    verdict = "flag" if result.flagged else "pass"
    return JudgeCall(result.judge, stage, verdict, latency, tuple(result.categories))


def _decision(decisions: list[str]) -> str:
    """The request's decision from its input and output stages: a refusal anywhere wins."""
    for decision in decisions:
        if decision in REFUSING:
            return decision
    return next((d for d in decisions if d != "allowed"), "allowed")


class Served:
    """A guarded server at ``url``, asked through the ``openai`` client."""

    def __init__(self, url: str, name: str, *, timeout_s: float = 60.0) -> None:
        import openai  # the SDK costs import time only in this mode

        self.name = name
        self._openai = openai
        base = url.rstrip("/")
        self._client = openai.AsyncOpenAI(
            base_url=base if base.endswith("/v1") else base + "/v1",
            api_key="guardrail-eval",  # the guarded app, not a vendor: any key
            max_retries=0,  # the runner retries 429 within its budget
            timeout=timeout_s,
        )

    async def evaluate(self, item: Item) -> Outcome:
        """Send the item's request; read whether it was refused."""
        body: dict[str, Any] = json.loads(item.body)
        outcome = Outcome(item.id, item.unsafe, item.category, "error", "app_error", 0.0)
        started = time.perf_counter()
        openai = self._openai
        try:
            finish = await self._finish_reason(body)
        except openai.APIConnectionError as exc:
            raise Unreachable(f"{type(exc).__name__}: {exc}") from exc
        except openai.APIStatusError as exc:
            outcome.latency_s = time.perf_counter() - started
            code = exc.code if isinstance(exc.code, str) else None
            if code == "content_filter":  # the refusal shaped as an error
                outcome.verdict, outcome.decision = "refused", "blocked"
            elif exc.status_code == 429:
                outcome.error, outcome.retry_after_s = "HTTP 429", _retry_after(exc)
            else:
                outcome.decision = "rejected" if 400 <= exc.status_code < 500 else "app_error"
                outcome.error = f"HTTP {exc.status_code}" + (f" ({code})" if code else "")
            return outcome
        outcome.latency_s = outcome.stages["request"] = time.perf_counter() - started
        refused = finish == "content_filter"
        outcome.verdict = "refused" if refused else "passed"
        outcome.decision = "blocked" if refused else "allowed"
        return outcome

    async def _finish_reason(self, body: dict[str, Any]) -> str | None:
        # The body goes as it is (the client's low-level post): the server screens
        # exactly what the item holds, fields the SDK's typed call would not send included.
        from openai import AsyncStream
        from openai.types.chat import ChatCompletion, ChatCompletionChunk

        if body.get("stream") is True:
            finish = None
            stream = await self._client.post(
                "/chat/completions",
                body=body,
                cast_to=ChatCompletion,
                stream=True,
                stream_cls=AsyncStream[ChatCompletionChunk],
            )
            async for chunk in stream:
                for choice in chunk.choices:
                    finish = choice.finish_reason or finish
            return finish
        completion = await self._client.post("/chat/completions", body=body, cast_to=ChatCompletion)
        return completion.choices[0].finish_reason if completion.choices else None

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.close()


def _retry_after(exc: Any) -> float | None:
    from guardrail.judges.llm import retry_after_seconds

    headers = {k.lower(): v for k, v in exc.response.headers.items()}
    return retry_after_seconds(headers)
