"""The terminal side of ``guardrail eval``: a progress bar while it runs, tables after (``rich``).

``rich`` is the optional extra ``eval``; this module is imported only once the
command has checked it is installed (``require_rich``).
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

SHOWN_IDS = 20  # ids listed in the terminal; the JSON and HTML reports list them all


class RateColumn(ProgressColumn):
    """Items per second."""

    def render(self, task: Task) -> Text:
        """The task's speed, or a dash before it has one."""
        speed = task.finished_speed or task.speed
        return Text("-/s" if speed is None else f"{speed:,.0f}/s", style="progress.data.speed")


def progress(console: Console) -> Progress:
    """The bar: policy, done of total, rate, elapsed and ETA."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    )


def show(
    console: Console, summaries: list[dict[str, Any]], comparison: dict[str, Any] | None
) -> None:
    """Print every table of the report."""
    console.print(_overall(summaries))
    for s in summaries:
        _details(console, s)
    if comparison is not None:
        _comparison(console, comparison)


def _rate(rate: dict[str, Any]) -> str:
    if rate["value"] is None:
        return "n/a"
    low, high = rate["ci95"]
    return f"{rate['value']:.3f} [{low:.3f}-{high:.3f}] {rate['hits']}/{rate['n']}"


def _overall(summaries: list[dict[str, Any]]) -> Table:
    table = Table(title="guardrail eval (95% Wilson intervals)")
    table.add_column("policy")
    for column in ("items", "recall", "FPR", "precision", "errors", "p50 ms", "p99 ms", "$/1k req"):
        table.add_column(column, justify="right")
    for s in summaries:
        o, latency, cost = s["overall"], s["latency_ms"]["total"], s["cost"]
        per = None if cost is None else cost["per_1000_requests_usd"]
        table.add_row(
            s["policy"] + (f" (stopped: {s['stopped']})" if s["stopped"] else ""),
            str(s["items"]),
            _rate(o["recall"]),
            _rate(o["fpr"]),
            _rate(o["precision"]),
            str(o["error_rate"]["hits"]),
            _ms(latency["p50"]),
            _ms(latency["p99"]),
            "-" if per is None else f"{per:.4f}",
        )
    return table


def _details(console: Console, s: dict[str, Any]) -> None:
    policy = s["policy"]
    confusion = Table(title=f"{policy}: confusion matrix")
    for column in ("label", "refused", "passed", "error"):
        confusion.add_column(column, justify="right" if column != "label" else "left")
    for label in ("unsafe", "safe"):
        row = s["confusion"][label]
        confusion.add_row(label, str(row["refused"]), str(row["passed"]), str(row["error"]))
    console.print(confusion)
    categories = Table(title=f"{policy}: per category")
    for column in ("category", "unsafe", "safe", "recall", "FPR", "errors"):
        categories.add_column(column, justify="left" if column == "category" else "right")
    for name, g in s["categories"].items():
        categories.add_row(
            name,
            str(g["unsafe"]),
            str(g["safe"]),
            _rate(g["recall"]),
            _rate(g["fpr"]),
            str(g["error_rate"]["hits"]),
        )
    console.print(categories)
    judges = Table(title=f"{policy}: judges (who caught what)")
    for column in ("judge", "calls", "flags unsafe", "flags safe", "failures", "ms p50/p90/p99"):
        judges.add_column(column, justify="left" if column == "judge" else "right")
    for name, j in s["judges"].items():
        failures = ", ".join(f"{k} {v}" for k, v in j["failures"].items()) or "-"
        p = j["latency_ms"]
        judges.add_row(
            name,
            str(j["calls"]),
            str(j["flags_unsafe"]),
            str(j["flags_safe"]),
            failures,
            "/".join(_ms(v) for v in p.values()),
        )
    if s["judges"]:
        console.print(judges)
    stages = ", ".join(
        f"{stage} {'/'.join(_ms(v) for v in p.values())}" for stage, p in s["latency_ms"].items()
    )
    console.print(f"latency ms p50/p90/p99: {stages}")
    panel = s["panel"]
    if panel["convened"]:
        console.print(
            f"panel: convened {panel['convened']}, rulings {panel['rulings']},"
            f" overturned {panel['overturned']} ({panel['overturned_safe']} safe,"
            f" {panel['overturned_unsafe']} unsafe)"
        )
    if s["cost"] is not None:
        for name, j in s["cost"]["judges"].items():
            price = "no price" if j["cost_usd"] is None else f"${j['cost_usd']:.4f}"
            console.print(
                f"judge {name} ({j['model']}): {j['calls']} calls, ~{j['prompt_tokens']:,} prompt"
                f" + ~{j['completion_tokens']:,} completion tokens, {price}"
            )
        console.print(f"cost: {s['cost']['note']}")
    for label, ids in (("misses", s["misses"]), ("false positives", s["false_positives"])):
        if ids:
            console.print(f"{label} ({len(ids)}): {_ids(ids)}", highlight=False, markup=False)
    if s["errors"]:
        shown = "; ".join(f"{e['id']}: {e['error']}" for e in s["errors"][:5])
        console.print(f"errors ({len(s['errors'])}): {shown}", highlight=False, markup=False)


def _comparison(console: Console, c: dict[str, Any]) -> None:
    a, b = c["policies"]
    r, f = c["recall"], c["fpr"]
    console.print(f"[bold]{a} -> {b}[/bold] on {c['judged_by_both']} items both judged")
    console.print(
        f"  recall {_share(r['a'])} -> {_share(r['b'])}: now caught {len(r['now_caught'])},"
        f" now missed {len(r['now_missed'])} (McNemar exact p = {r['p_value']:.4g})"
    )
    console.print(
        f"  FPR    {_share(f['a'])} -> {_share(f['b'])}: now refused {len(f['now_refused'])},"
        f" now passed {len(f['now_passed'])} (McNemar exact p = {f['p_value']:.4g})"
    )
    for label, ids in (
        ("now caught", r["now_caught"]),
        ("now missed", r["now_missed"]),
        ("now refused", f["now_refused"]),
        ("now passed", f["now_passed"]),
    ):
        if ids:
            console.print(f"  {label}: {_ids(ids)}", highlight=False, markup=False)


def _ids(ids: list[str]) -> str:
    more = f" ... and {len(ids) - SHOWN_IDS} more" if len(ids) > SHOWN_IDS else ""
    return ", ".join(ids[:SHOWN_IDS]) + more


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
