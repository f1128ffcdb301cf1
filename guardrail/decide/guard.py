"""The guard: a policy with its parts built once, how it decides, and how it counts.

Nothing is built at import time. ``Guard.build`` turns a validated policy into
judges, screens, a panel, an adapter, metrics and an audit trail (``factory``
builds the judges); the middleware only runs them. ``Record`` is what one
request leaves behind, the single source of its metrics and its audit line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from prometheus_client import CollectorRegistry

from guardrail.adapters import Adapter, ChatRequest, Reply, build_adapter
from guardrail.adapters.base import Piece
from guardrail.decide.cache import Counted, MemoryCache, RedisCache, VerdictCache
from guardrail.decide.decision import Decision
from guardrail.decide.factory import build_judge, build_panel, build_screens, unset_api_keys
from guardrail.decide.panel import PanelOutcome, PanelRunner
from guardrail.decide.pieces import Keyed, Layout, history_before, key, lay_out
from guardrail.decide.screening import Job, Screen, Screening, screen_all, screen_jobs
from guardrail.judges.base import Judge, JudgeFailure, Verdict
from guardrail.judges.reach import reach
from guardrail.observe.audit import AuditTrail, build_audit
from guardrail.observe.metrics import GuardrailMetrics, child, metrics_for
from guardrail.policy.models import Policy, digest

Trigger = Literal["flag", "error"]
Stage = Literal["input", "output"]


@dataclass(frozen=True, slots=True)
class Assessment:
    """The decision on one text (the request, or a window of the answer) and what led to it."""

    decision: Decision
    screening: Screening
    panel: PanelOutcome | None = None
    trigger: Trigger | None = None  # why the panel was convened
    stage: Stage = "input"


@dataclass(slots=True)
class Record:
    """What happened to one guarded request: the source of its metrics and audit line."""

    decision: Decision
    duration_s: float
    assessment: Assessment | None = None
    added_latency_s: float | None = None
    app_cancelled: str | None = None  # why the app's generation was cancelled
    rejected: str | None = None  # why the request could not be screened
    text: str | None = None  # what was screened; the audit trail hashes it unless told not to
    outputs: list[Assessment] = field(default_factory=list)  # one per screened answer window
    first_byte_s: float | None = None  # from arrival to the first body byte sent
    stream_cut: str | None = None  # why a streamed answer was cut short
    app_tokens_saved: int | None = None  # the app's max_tokens when a refusal cancelled it
    redactions: dict[str, int] = field(default_factory=dict)  # values redacted, by kind


@dataclass(frozen=True, slots=True)
class Guard:
    """A policy with its parts built: what the middleware runs for each request."""

    policy: Policy
    adapter: Adapter
    screens: tuple[Screen, ...]
    output_screens: tuple[Screen, ...]
    judges: dict[str, Judge]
    panel: PanelRunner | None
    metrics: GuardrailMetrics
    audit: AuditTrail | None = None
    # One adapter per API the policy's routes speak (``adapter`` is the policy's format).
    adapters: dict[str, Adapter] = field(default_factory=dict)
    cache: VerdictCache | None = None  # pieces that passed (decide.cache)
    overlap_chars: int = 0  # the context each input window repeats (decide.pieces)
    cache_prefix: str = ""  # the policy version, so no entry of another policy is used

    @classmethod
    def build(cls, policy: Policy, *, registry: CollectorRegistry | None = None) -> Guard:
        """Build judges, screens, adapter and metrics for a policy (LiteLLM is imported here)."""
        unset_api_keys(policy)  # logged: a judge without its key refuses or fails everything
        judges = {name: build_judge(name, spec) for name, spec in policy.judges.items()}
        screens = build_screens(policy, policy.input.screens, judges)
        output = policy.output
        output_screens = build_screens(policy, output.screens, judges) if output else ()
        panel = build_panel(policy, judges)
        metrics = metrics_for(registry)
        metrics.prepare(
            policy.name,
            [s.judge for s in policy.input.screens],
            [s.judge for s in policy.output.screens] if policy.output else (),
            [s.judge for s in policy.panel.judges] if policy.panel else (),
        )
        json_shape = policy.json_api.shape() if policy.json_api is not None else None
        adapters = {name: build_adapter(name, json_shape) for name in policy.formats()}
        audit = build_audit(policy, metrics)
        context = policy.input.context_chars
        # Windows overlap by at least one finding of every input judge (judges.reach).
        overlap = max(
            [context, *(reach(policy.judges[s.judge], context) for s in policy.input.screens)]
        )
        version = digest(policy.model_dump_json())
        adapter = adapters[policy.format]
        return cls(
            policy,
            adapter,
            screens,
            output_screens,
            judges,
            panel,
            metrics,
            audit,
            adapters=adapters,
            cache=_build_cache(policy, metrics),
            overlap_chars=overlap,
            cache_prefix=version,
        )

    def adapter_for(self, method: str, path: str) -> Adapter:
        """The adapter of the API spoken on this request's route (the policy's by default)."""
        name = self.policy.format_of(self.policy.route(method, path) or self.policy.route_for(path))
        return self.adapters.get(name) or self.adapter

    def refusal(
        self,
        request: ChatRequest,
        assessment: Assessment | None = None,
        adapter: Adapter | None = None,
    ) -> Reply:
        """The policy's refusal, in the API's own shape (the route's ``adapter``), naming the
        flagged message if the policy says so."""
        r, adapter = self.policy.refusal, adapter or self.adapter
        message = r.message
        if r.detail and assessment is not None:
            # Each flagged turn as its API names it: "messages[2]", a Responses "input[2]".
            flagged = {
                p.message: p.location.partition("]")[0] + "]"
                for p in assessment.screening.flagged_pieces
                if p.message is not None
            }
            if flagged:
                named = ", ".join(flagged[i] for i in sorted(flagged))
                message = f"{message} (flagged: {named})"
        return adapter.refusal(request, message=message, shape=r.shape, status=r.status)

    async def assess_request(self, request: ChatRequest, query: str = "") -> Assessment:
        """Screen a request piece by piece, each piece not passed before; decide as ``assess``.

        ``query`` is the URL's query text, screened as one more piece.
        """
        pieces = request.pieces or (Piece("request", None, "$", request.text),)
        if query:
            pieces = (*pieces, Piece("request", None, "?", query))
        stage = self.policy.input
        keyed = await key(pieces, overlap_chars=self.overlap_chars)
        plan = await self._plan(keyed)
        # Only text from the first piece some screen has not passed is cut into windows.
        start = min((p.new.index(True) for p in plan if True in p.new), default=len(pieces))
        layout = await lay_out(
            keyed,
            window_chars=stage.window_chars,
            max_raw_bytes=16 * stage.window_chars,
            start=start,
        )
        jobs, cuts = self._jobs(layout, plan)
        screening = await screen_jobs(jobs, limit=stage.max_concurrency)
        await self._remember(layout, plan, cuts, screening)
        return await self._decide("\n".join(filter(None, (request.text, query))), screening)

    async def _plan(self, keyed: Keyed) -> list[_Planned]:
        """For each screen, the pieces' keys and which pieces it has not passed."""
        history = history_before(keyed.pieces) if self.policy.input.history == "latest_only" else 0
        plan: list[_Planned] = []
        for n, screen in enumerate(self.screens):
            prefix = f"{self.cache_prefix}:{n}:{screen.judge.name}:{','.join(screen.asks)}:"
            keys = [prefix + key for key in keyed.keys]
            known = await self.cache.passed(keys) if self.cache is not None else [False] * len(keys)
            seen: set[str] = set()
            new = []
            for piece, key_, hit in zip(keyed.pieces, keys, known, strict=True):
                # A repeat of a piece with the same context is screened once.
                history_only = piece.message is not None and piece.message < history
                new.append(not hit and key_ not in seen and not history_only)
                seen.add(key_)
            plan.append(_Planned(keys, new))
        return plan

    def _jobs(self, layout: Layout, plan: list[_Planned]) -> tuple[list[Job], list[list[int]]]:
        """Each screen on each window holding a piece it has not passed; and those windows."""
        jobs: list[Job] = []
        cuts_of: list[list[int]] = []
        for screen, planned in zip(self.screens, plan, strict=True):
            new = planned.new
            cuts = [c for c, cut in enumerate(layout.cuts) if any(new[i] for i in cut.pieces)]
            for c in cuts:
                cut = layout.cuts[c]
                named = tuple(layout.pieces[i] for i in sorted(cut.pieces) if new[i])
                jobs.append(Job(screen, cut.passage(new, self.overlap_chars), named))
            cuts_of.append(cuts)
        return jobs, cuts_of

    async def _remember(
        self,
        layout: Layout,
        plan: list[_Planned],
        cuts_of: list[list[int]],
        screening: Screening,
    ) -> None:
        """Cache each new piece every window of which passed (a definite verdict, not a flag)."""
        if self.cache is None:
            return
        results = iter(screening.by_job)
        passed: list[str] = []
        for planned, cuts in zip(plan, cuts_of, strict=True):
            ok = {c for c in cuts if _passed(next(results, None))}
            for i, key_ in enumerate(planned.keys):
                if planned.new[i] and all(c in ok for c in layout.windows_of[i]):
                    passed.append(key_)
        await self.cache.remember(passed)

    async def assess(self, text: str, stage: Stage = "input") -> Assessment:
        """Screen the text; escalate to the panel where the policy says so; decide."""
        screens = self.screens if stage == "input" else self.output_screens
        return await self._decide(text, await screen_all(screens, text), stage)

    async def _decide(self, text: str, screening: Screening, stage: Stage = "input") -> Assessment:
        policy = self.policy
        if screening.flag is not None:
            if screening.disputable:  # only under on_flag: vote, for judges the panel may overturn
                return await self._escalate(text, screening, "flag", stage)
            decision: Decision = "flagged_allowed" if policy.on_flag == "log_only" else "blocked"
        elif screening.failures:
            if policy.on_error == "vote":
                return await self._escalate(text, screening, "error", stage)
            decision = "error_allowed" if policy.on_error == "allow" else "error_blocked"
        else:
            decision = "allowed"
        return Assessment(decision, screening, stage=stage)

    async def _escalate(
        self, text: str, screening: Screening, trigger: Trigger, stage: Stage
    ) -> Assessment:
        assert self.panel is not None and self.policy.panel is not None  # policy-checked
        on_error = self.policy.on_error
        # The panel is asked what the escalating screens asked, and with on_error:
        # vote also what the failed screens could not answer.
        question = screening.flag_question if trigger == "flag" else ()
        if on_error == "vote":
            question += tuple(c for c in screening.failed_question if c not in question)
        outcome = await self.panel.convene(text, question)
        decision: Decision
        if outcome.ruling.outcome == "block":
            decision = "blocked"
        elif outcome.ruling.outcome == "allow":
            decision = "flagged_allowed" if trigger == "flag" else "allowed"
            if screening.failures and on_error != "vote":
                # The panel cleared the flag; a screen that failed still decides by the fail mode.
                decision = "error_allowed" if on_error == "allow" else "error_blocked"
        elif self.policy.panel.on_no_quorum == "allow":
            decision = "error_allowed"
        else:
            decision = "error_blocked"
        return Assessment(decision, screening, outcome, trigger, stage)

    def observe(self, record: Record) -> None:
        """Count one finished request and write its audit record."""
        m, policy = self.metrics, self.policy.name
        child(m.requests, policy, record.decision).inc()
        child(m.request_duration, policy, record.decision).observe(record.duration_s)
        if record.added_latency_s is not None:
            child(m.added_latency, policy).observe(record.added_latency_s)
        if record.app_cancelled:
            child(m.app_cancelled, policy, record.app_cancelled).inc()
        if record.app_tokens_saved:
            child(m.app_tokens_saved, policy).inc(record.app_tokens_saved)
        if record.rejected:
            child(m.rejected, policy, record.rejected).inc()
        if record.first_byte_s is not None:
            child(m.first_byte, policy).observe(record.first_byte_s)
        if record.stream_cut:
            child(m.streams_cut, policy, record.stream_cut).inc()
        if record.outputs:
            child(m.windows, policy).inc(len(record.outputs))
        assessments = [record.assessment] if record.assessment else []
        for assessment in assessments + record.outputs:
            self._observe_assessment(assessment)
        if self.audit is not None:
            self.audit.write(record)  # queued for a writer thread; never raises

    def _observe_assessment(self, assessment: Assessment) -> None:
        m, policy, stage = self.metrics, self.policy.name, assessment.stage
        for result in assessment.screening.results:
            child(m.judge_calls, policy, result.judge, stage).inc()
            child(m.judge_duration, policy, result.judge, stage).observe(result.latency_s)
            if result.queued_s:
                child(m.judge_pool_wait, policy, result.judge, stage).observe(result.queued_s)
            if result.tokens:
                child(m.judge_tokens, policy, result.judge, stage).inc(result.tokens)
            if isinstance(result, JudgeFailure):
                child(m.judge_errors, policy, result.judge, stage, result.reason).inc()
            elif result.flagged:
                for category in result.categories or ("other",):
                    child(m.flags, policy, stage, result.judge, category).inc()
        for role in dict.fromkeys(p.role for p in assessment.screening.flagged_pieces):
            child(m.flagged_pieces, policy, stage, role).inc()
        if assessment.panel is not None and assessment.trigger is not None:
            self._observe_panel(assessment.panel, assessment.trigger, stage)

    def _observe_panel(self, outcome: PanelOutcome, trigger: Trigger, stage: Stage) -> None:
        m, policy = self.metrics, self.policy.name
        child(m.escalations, policy, stage, trigger).inc()
        child(m.panel_duration, policy, outcome.ended).observe(outcome.duration_s)
        child(m.panel_rulings, policy, stage, trigger, outcome.ruling.outcome).inc()
        if trigger == "flag" and outcome.ruling.outcome == "allow":
            child(m.overturned, policy).inc()
        for seat in outcome.seats:
            child(m.panel_votes, policy, seat.judge, seat.state).inc()
            if seat.tokens:
                child(m.judge_tokens, policy, seat.judge, stage).inc(seat.tokens)
            if seat.abstained is not None:  # every abstain vote, cancelled stragglers too
                child(m.panel_abstentions, policy, seat.judge, seat.abstained).inc()
            if seat.abstained == "cancelled":
                child(m.panel_cancelled, policy, seat.judge).inc()
            if seat.result is not None:
                child(m.judge_duration, policy, seat.judge, "panel").observe(seat.latency_s)
                if seat.result.queued_s:
                    pool_wait = child(m.judge_pool_wait, policy, seat.judge, "panel")
                    pool_wait.observe(seat.result.queued_s)

    @property
    def version(self) -> str:
        """A short hash naming exactly this validated policy (metrics, audit, logs)."""
        return digest(self.policy.model_dump_json())

    def announce(self) -> None:
        """Mark this policy version as the one serving (``guardrail_policy_info``)."""
        info, name = self.metrics.policy_info, self.policy.name
        for metric in info.collect():
            for sample in metric.samples:
                if sample.labels.get("policy") == name:
                    info.labels(name, sample.labels["version"]).set(0)
        info.labels(name, self.version).set(1)

    async def aclose(self) -> None:
        """Close the judges' clients and the audit trail (its queued records are written)."""
        if self.audit is not None:
            await self.audit.aclose()
        if self.cache is not None:
            await self.cache.aclose()
        for judge in self.judges.values():
            await judge.aclose()
        if self.panel is not None:
            for seat in self.panel.judges:
                await seat.judge.aclose()


@dataclass(frozen=True, slots=True)
class _Planned:
    """One screen's share of a request: its keys, and which pieces it has not passed."""

    keys: list[str]
    new: list[bool]


def _passed(result: object) -> bool:
    return isinstance(result, Verdict) and not result.flagged


def _build_cache(policy: Policy, metrics: GuardrailMetrics) -> VerdictCache | None:
    settings = policy.input.cache
    if settings.backend == "none":
        return None
    lookups = (
        child(metrics.cache_lookups, policy.name, "hit"),
        child(metrics.cache_lookups, policy.name, "miss"),
    )

    def looked_up(hits: int, misses: int) -> None:
        lookups[0].inc(hits)
        lookups[1].inc(misses)

    def evicted(n: int) -> None:
        child(metrics.cache_evictions, policy.name).inc(n)

    counted = Counted(looked_up, evicted)
    if settings.backend == "redis":
        assert settings.url is not None  # policy-checked
        return RedisCache(
            settings.url, ttl_s=settings.ttl_s, counted=counted, timeout_s=settings.timeout_s
        )
    return MemoryCache(settings.entries, counted)
