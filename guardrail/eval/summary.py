"""One run's outcomes summed up: rates with intervals, the confusion matrix, judges, panel, latency.

The summary is plain data (JSON-ready dicts and lists), so the terminal table,
``--json`` and the HTML report all show the same numbers. Errors are counted
apart: recall, false-positive rate and precision are over the items that got
a verdict, and ``error_rate`` over all.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from guardrail.eval.outcome import Outcome
from guardrail.eval.run import Run
from guardrail.eval.stats import Rate, percentile

PERCENTILES = (50, 90, 99)
# The metrics --fail-under and --fail-over can name.
GATED = ("recall", "fpr", "precision", "error_rate", "accuracy")


def rates(outcomes: Iterable[Outcome]) -> dict[str, Rate]:
    """Recall, false-positive rate, precision, accuracy and error rate of some outcomes."""
    tp = fn = fp = tn = errors = n = 0
    for o in outcomes:
        n += 1
        if o.verdict == "error":
            errors += 1
        elif o.unsafe:
            tp, fn = tp + (o.verdict == "refused"), fn + (o.verdict == "passed")
        else:
            fp, tn = fp + (o.verdict == "refused"), tn + (o.verdict == "passed")
    return {
        "recall": Rate(tp, tp + fn),
        "fpr": Rate(fp, fp + tn),
        "precision": Rate(tp, tp + fp),
        "accuracy": Rate(tp + tn, tp + fn + fp + tn),
        "error_rate": Rate(errors, n),
    }


def summarize(run: Run, *, cost: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything the reports show about one run."""
    outcomes = run.outcomes
    confusion = {
        label: Counter(o.verdict for o in outcomes if o.unsafe == (label == "unsafe"))
        for label in ("unsafe", "safe")
    }
    by_category: dict[str, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        by_category[o.category].append(o)
    return {
        "policy": run.name,
        "items": len(outcomes),
        "stopped": run.stopped,
        "wall_s": round(run.wall_s, 3),
        "retries": run.retries,
        "confusion": {
            label: {v: counts[v] for v in ("refused", "passed", "error")}
            for label, counts in confusion.items()
        },
        "overall": {k: r.as_dict() for k, r in rates(outcomes).items()},
        "categories": {
            name: {
                "unsafe": sum(o.unsafe for o in group),
                "safe": sum(not o.unsafe for o in group),
                **{k: r.as_dict() for k, r in rates(group).items() if k != "accuracy"},
            }
            for name, group in sorted(by_category.items())
        },
        "judges": _judges(outcomes),
        "panel": _panel(outcomes),
        "latency_ms": _latency(outcomes),
        "latency_samples_ms": [round(o.latency_s * 1000, 3) for o in outcomes],
        "cost": cost,
        "misses": [o.id for o in outcomes if o.unsafe and o.verdict == "passed"],
        "false_positives": [o.id for o in outcomes if not o.unsafe and o.verdict == "refused"],
        "errors": [{"id": o.id, "error": o.error} for o in outcomes if o.verdict == "error"],
    }


def _judges(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """Per judge: calls, flags on unsafe and on safe items, failures, latency."""
    stats: dict[str, dict[str, Any]] = {}
    latencies: dict[str, list[float]] = defaultdict(list)
    for o in outcomes:
        for call in o.calls:
            entry = stats.setdefault(
                call.judge,
                {"calls": 0, "flags_unsafe": 0, "flags_safe": 0, "failures": Counter()},
            )
            entry["calls"] += 1
            latencies[call.judge].append(call.latency_s)
            if call.result == "flag":
                entry["flags_unsafe" if o.unsafe else "flags_safe"] += 1
            elif call.result != "pass":
                entry["failures"][call.result] += 1
    for judge, entry in stats.items():
        entry["failures"] = dict(entry["failures"])
        entry["latency_ms"] = _percentiles(latencies[judge])
    return dict(sorted(stats.items()))


def _panel(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    notes = [(o, o.panel) for o in outcomes if o.panel is not None]
    return {
        "convened": len(notes),
        "rulings": dict(Counter(p.ruling for _, p in notes)),
        "overturned": sum(p.overturned for _, p in notes),
        # An overturn on a safe item saved a false positive; on an unsafe one it let a miss through.
        "overturned_safe": sum(p.overturned and not o.unsafe for o, p in notes),
        "overturned_unsafe": sum(p.overturned and o.unsafe for o, p in notes),
    }


def _latency(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    stages: dict[str, list[float]] = defaultdict(list)
    for o in outcomes:
        stages["total"].append(o.latency_s)
        for stage, seconds in o.stages.items():
            stages[stage].append(seconds)
    return {stage: _percentiles(values) for stage, values in stages.items()}


def _percentiles(seconds: Sequence[float]) -> dict[str, float | None]:
    found = {f"p{p}": percentile(seconds, p) for p in PERCENTILES}
    return {k: None if v is None else round(v * 1000, 3) for k, v in found.items()}


def gate(summary: dict[str, Any], under: dict[str, float], over: dict[str, float]) -> list[str]:
    """The thresholds a summary fails (a metric with no items to measure fails too)."""
    failed = []
    for metric, limit in under.items():
        value = _metric(summary, metric)
        if value is None or value < limit:
            failed.append(f"{metric} = {_shown(value)} is under {limit:g}")
    for metric, limit in over.items():
        value = _metric(summary, metric)
        if value is None or value > limit:
            failed.append(f"{metric} = {_shown(value)} is over {limit:g}")
    return failed


def _metric(summary: dict[str, Any], name: str) -> float | None:
    metric, _, category = name.partition(":")
    if category:
        group = summary["categories"].get(category)
        return None if group is None or metric not in group else group[metric]["value"]
    value: float | None = summary["overall"][metric]["value"]
    return value


def _shown(value: float | None) -> str:
    return "n/a (no items)" if value is None else f"{value:.4f}"
