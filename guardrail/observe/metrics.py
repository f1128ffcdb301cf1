"""All Prometheus metrics, on an injected registry.

One ``GuardrailMetrics`` exists per registry (several middlewares on the global
registry share it instead of failing on duplicate names). Label values come
only from closed sets: policy and judge names from policy files, decisions,
failure reasons, categories that judges map into known sets.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any, get_args
from weakref import WeakKeyDictionary

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from guardrail.decide.decision import DECISIONS
from guardrail.decide.panel import Abstention
from guardrail.judges.base import FailureReason

# Added latency is the product's promise: fine buckets near zero.
_ADDED_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
# One set for local judges (tens of microseconds) and LLM judges (seconds):
# a quantile is only as fine as the bucket it falls in, so the low end starts
# at 10 µs (a 0.5 ms first bucket made every local judge's p95 read 475 µs).
_LATENCY_BUCKETS = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
# How a panel seat ended (a seat still pending when the panel ends abstains).
_VOTES = ("block", "allow", "abstain")


class GuardrailMetrics:
    """The metric families guardrail writes."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "guardrail_requests",
            "Guarded requests by the decision they ended in.",
            ["policy", "decision"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "guardrail_request_duration_seconds",
            "End-to-end time of a guarded request, by decision.",
            ["policy", "decision"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.added_latency = Histogram(
            "guardrail_added_latency_seconds",
            "From the app's response being complete to its release: what the guard costs.",
            ["policy"],
            buckets=_ADDED_BUCKETS,
            registry=registry,
        )
        self.judge_duration = Histogram(
            "guardrail_judge_duration_seconds",
            "Time a judge took to answer (or fail).",
            ["policy", "judge", "stage"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.judge_calls = Counter(
            "guardrail_judge_calls",
            "Screen calls to a judge, by stage (input, output), answered or failed: the "
            "denominator of the judge error ratio, created at zero with the errors.",
            ["policy", "judge", "stage"],
            registry=registry,
        )
        self.judge_errors = Counter(
            "guardrail_judge_errors",
            "Screens that gave no verdict, by stage (input, output) and reason: timeout, pool, "
            "http, rate_limited, parse, internal.",
            ["policy", "judge", "stage", "reason"],
            registry=registry,
        )
        self.judge_pool_wait = Histogram(
            "guardrail_judge_pool_wait_seconds",
            "Time a judge call waited for a free connection (calls that waited only); a call "
            "that ran out of time mostly waiting fails with reason pool.",
            ["policy", "judge", "stage"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.flags = Counter(
            "guardrail_flags",
            "Flags raised by judges, by category.",
            ["policy", "stage", "judge", "category"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "guardrail_requests_in_flight",
            "Guarded requests being screened or held right now.",
            ["policy"],
            registry=registry,
            multiprocess_mode="livesum",  # several workers: the sum over live ones
        )
        self.app_cancelled = Counter(
            "guardrail_app_cancelled",
            "App generations cancelled before they finished (blocked, or the client left).",
            ["policy", "reason"],
            registry=registry,
        )
        self.rejected = Counter(
            "guardrail_rejected",
            "Guarded requests refused unscreened because they could not be read, by reason.",
            ["policy", "reason"],
            registry=registry,
        )
        self.audit_write_failures = Counter(
            "guardrail_audit_write_failures",
            "Audit records not written (sink: logger, file): queue full, disk error, closed.",
            ["policy", "sink"],
            registry=registry,
        )

        self.escalations = Counter(
            "guardrail_escalations",
            "Requests (stage=input) and answer windows (stage=output) sent to the panel, by "
            "trigger: flag (a screen flagged), error (a judge failed).",
            ["policy", "stage", "trigger"],
            registry=registry,
        )
        self.panel_duration = Histogram(
            "guardrail_panel_duration_seconds",
            "Time the panel took to settle, by why it ended.",
            ["policy", "ended"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.panel_rulings = Counter(
            "guardrail_panel_rulings",
            "Panel rulings by stage (input, output), trigger and outcome; with trigger=flag, "
            "block is agreement with the screen and allow an overturn.",
            ["policy", "stage", "trigger", "outcome"],
            registry=registry,
        )
        self.overturned = Counter(
            "guardrail_flags_overturned",
            "Screen flags the panel overturned (false alarms released).",
            ["policy"],
            registry=registry,
        )
        self.panel_votes = Counter(
            "guardrail_panel_votes",
            "Panel seats by how they ended: block, allow or abstain.",
            ["policy", "judge", "vote"],
            registry=registry,
        )
        self.panel_abstentions = Counter(
            "guardrail_panel_abstentions",
            "Panel seats that gave no vote, by reason (timeout, http, rate_limited, parse, "
            'internal, deadline, cancelled): every vote="abstain" of guardrail_panel_votes.',
            ["policy", "judge", "reason"],
            registry=registry,
        )
        self.panel_cancelled = Counter(
            "guardrail_panel_stragglers_cancelled",
            "Panel calls cancelled because the vote was already settled (also counted as "
            "abstentions with reason cancelled).",
            ["policy", "judge"],
            registry=registry,
        )

        self.first_byte = Histogram(
            "guardrail_time_to_first_byte_seconds",
            "From a request's arrival to the first answer byte reaching the client.",
            ["policy"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.windows = Counter(
            "guardrail_output_windows",
            "Windows of the app's answer screened before (hold-back) or while (optimistic) "
            "they were released.",
            ["policy"],
            registry=registry,
        )
        self.streams_cut = Counter(
            "guardrail_streams_cut",
            "Streamed answers ended early with a refusal, by reason (flag, error, idle).",
            ["policy", "reason"],
            registry=registry,
        )

        self.policy_info = Gauge(
            "guardrail_policy_info",
            "The active policy: 1 for the version serving now, 0 for versions replaced.",
            ["policy", "version"],
            registry=registry,
            multiprocess_mode="max",
        )
        self.reloads = Counter(
            "guardrail_policy_reloads",
            "Live policy reloads, by result (success; failure: the old policy kept serving).",
            ["policy", "result"],
            registry=registry,
        )
        self.reload_failing = Gauge(
            "guardrail_policy_reload_failing",
            "1 while the policy file on disk failed to load and the previous version serves "
            "in its place; 0 once a reload succeeds.",
            ["policy"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.redactions = Counter(
            "guardrail_redactions",
            "Values replaced by placeholders (on_flag: redact), by kind: in requests and answers.",
            ["policy", "kind"],
            registry=registry,
        )
        self.unknown_tenants = Counter(
            "guardrail_unknown_tenants",
            "Requests naming a tenant with no policy; screened by the default policies.",
            ["policy"],
            registry=registry,
        )

        # Conversations: pieces, the verdict cache (labels: closed sets only).
        self.cache_lookups = Counter(
            "guardrail_verdict_cache_lookups",
            "Pieces looked up in the verdict cache, by result (hit: not screened again).",
            ["policy", "result"],
            registry=registry,
        )
        self.cache_evictions = Counter(
            "guardrail_verdict_cache_evictions",
            "Passed pieces dropped from the in-process verdict cache to stay in its size.",
            ["policy"],
            registry=registry,
        )
        self.judge_tokens = Counter(
            "guardrail_judge_tokens",
            "Tokens judges were billed for input and output screens and panel votes, as "
            "their providers reported (usage); calls cut off before an answer report none.",
            ["policy", "judge", "stage"],
            registry=registry,
        )
        self.app_tokens_saved = Counter(
            "guardrail_app_tokens_saved",
            "App tokens not generated because a refusal cancelled the app: the request's "
            "max_tokens (max_completion_tokens, max_output_tokens), less the answer so far "
            "at four characters a token if an answer was cut; only where it set one.",
            ["policy"],
            registry=registry,
        )
        self.flagged_pieces = Counter(
            "guardrail_flagged_pieces",
            "Flags by the role of the piece they name (user, tool, system, ...) and stage.",
            ["policy", "stage", "role"],
            registry=registry,
        )

    def prepare(
        self,
        policy: str,
        input_judges: Iterable[str],
        output_judges: Iterable[str] = (),
        panel_judges: Iterable[str] = (),
    ) -> None:
        """Create a policy's series at zero, so rates and ratios exist before the first event.

        ``input_judges`` and ``output_judges`` name the judges of the input and output
        screens (a policy without output screens gets no ``stage="output"`` series);
        ``panel_judges`` the panel's seats.
        """
        for decision in DECISIONS:
            self.requests.labels(policy, decision)
            self.request_duration.labels(policy, decision)
        for one in (self.added_latency, self.in_flight, self.first_byte, self.windows):
            one.labels(policy)
        for one in (self.overturned, self.unknown_tenants, self.reload_failing):
            one.labels(policy)
        for reason in ("blocked", "client_disconnected", "idle"):
            self.app_cancelled.labels(policy, reason)
        for reason in ("flag", "error", "idle", "app_error"):
            self.streams_cut.labels(policy, reason)
        stages = {"input": tuple(input_judges), "output": tuple(output_judges)}
        for stage, judges in stages.items():
            if stage == "output" and not judges:
                continue
            for trigger in ("flag", "error"):
                self.escalations.labels(policy, stage, trigger)
                for outcome in ("block", "allow", "no_quorum"):
                    self.panel_rulings.labels(policy, stage, trigger, outcome)
            for judge in dict.fromkeys(judges):
                # Numerator and denominator of the error ratio, both from the start.
                self.judge_calls.labels(policy, judge, stage)
                self.judge_duration.labels(policy, judge, stage)
                for reason in get_args(FailureReason):
                    self.judge_errors.labels(policy, judge, stage, reason)
        for judge in dict.fromkeys(panel_judges):
            self.judge_duration.labels(policy, judge, "panel")
            self.panel_cancelled.labels(policy, judge)
            for vote in _VOTES:
                self.panel_votes.labels(policy, judge, vote)
            for reason in get_args(Abstention):
                self.panel_abstentions.labels(policy, judge, reason)
        for result in ("success", "failure"):
            self.reloads.labels(policy, result)
        for result in ("hit", "miss"):
            self.cache_lookups.labels(policy, result)
        self.cache_evictions.labels(policy)
        self.app_tokens_saved.labels(policy)


@lru_cache(maxsize=8192)
def child(metric: Any, *labels: str) -> Any:
    """A metric's child for these label values, looked up once: ``labels()`` costs ~1 µs
    and a request makes a dozen; label values come from closed sets, so this stays small."""
    return metric.labels(*labels)


_by_registry: WeakKeyDictionary[CollectorRegistry, GuardrailMetrics] = WeakKeyDictionary()
_lock = threading.Lock()


def metrics_for(registry: CollectorRegistry | None = None) -> GuardrailMetrics:
    """The metrics on this registry (the global one by default), created once."""
    registry = REGISTRY if registry is None else registry
    with _lock:
        found = _by_registry.get(registry)
        if found is None:
            found = _by_registry[registry] = GuardrailMetrics(registry)
        return found


def multiprocess_registry(directory: str | Path) -> CollectorRegistry:
    """Every worker's metrics in ``directory`` (``PROMETHEUS_MULTIPROC_DIR``), summed.

    A worker that died (killed, crashed) leaves its files behind; its live gauges
    (``guardrail_requests_in_flight``) would count its last requests in flight for
    good. Those files are dropped first, as prometheus_client's multiprocess rules
    say (``mark_process_dead``); counters of dead workers stay, so totals never drop.
    """
    for pid in _dead_workers(Path(directory)):
        mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]
    registry = CollectorRegistry()
    MultiProcessCollector(registry, str(directory))  # type: ignore[no-untyped-call]
    return registry


_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w+_(\d+)\.db")


def _dead_workers(directory: Path) -> set[int]:
    """PIDs with live-gauge files whose process is gone."""
    pids = set()
    for path in directory.glob("gauge_live*_*.db"):
        match = _LIVE_GAUGE_FILE.fullmatch(path.name)
        if match:
            pids.add(int(match.group(1)))
    return {pid for pid in pids if not _alive(pid)}


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (dead, not yet reaped by its parent) does not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc here: ask the kernel instead
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    # The state follows the parenthesised command name, which may hold spaces.
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")
