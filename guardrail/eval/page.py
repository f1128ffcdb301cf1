"""The HTML report: one self-contained file (inline CSS and SVG, no script, no CDN)."""

from __future__ import annotations

from html import escape
from typing import Any

from guardrail.eval import charts

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 980px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
.ids { font-family: monospace; font-size: 12px; word-break: break-all; }
.warn { color: #a00; }
"""


def render(summaries: list[dict[str, Any]], comparison: dict[str, Any] | None) -> str:
    """The report for one or two policies' summaries (and their comparison)."""
    names = ", ".join(s["policy"] for s in summaries)
    parts = [f"<h1>guardrail eval: {escape(names)}</h1>"]
    for s in summaries:
        if s["stopped"]:
            parts.append(
                f'<p class="warn">{escape(s["policy"])}: stopped early ({escape(s["stopped"])}),'
                f" {s['items']} items finished</p>"
            )
    parts += [
        "<h2>Overall</h2>",
        _overall(summaries),
        "<h2>Recall and false-positive rate per category</h2>",
        _category_plot(summaries, "recall"),
        _category_plot(summaries, "fpr"),
        "<h2>Latency</h2>",
        charts.histogram(
            "latency", {s["policy"]: s["latency_samples_ms"] for s in summaries}, unit="ms"
        ),
    ]
    for s in summaries:
        parts += [f"<h2>{escape(s['policy'])}</h2>", _details(s)]
    if comparison is not None:
        parts += ["<h2>Differences</h2>", _comparison(comparison)]
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>guardrail eval: {escape(names)}</title><style>{_STYLE}</style></head>"
        f"<body>{''.join(parts)}</body></html>"
    )


def _rate(rate: dict[str, Any]) -> str:
    if rate["value"] is None:
        return "n/a"
    low, high = rate["ci95"]
    return f"{rate['value']:.3f} [{low:.3f}, {high:.3f}] ({rate['hits']}/{rate['n']})"


def _overall(summaries: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{escape(s['policy'])}</th>" for s in summaries)
    rows = []
    for metric in ("recall", "fpr", "precision", "accuracy", "error_rate"):
        cells = "".join(f"<td>{_rate(s['overall'][metric])}</td>" for s in summaries)
        rows.append(f"<tr><td>{metric}</td>{cells}</tr>")
    return f"<table><tr><th>metric (95% Wilson)</th>{head}</tr>{''.join(rows)}</table>"


def _category_plot(summaries: list[dict[str, Any]], metric: str) -> str:
    groups = sorted({c for s in summaries for c in s["categories"]})
    rows = []
    for group in groups:
        values = []
        for s in summaries:
            rate = s["categories"].get(group, {}).get(metric)
            ci = rate["ci95"] if rate else None
            values.append((s["policy"], rate["value"] if rate else None, tuple(ci) if ci else None))
        if any(v is not None for _, v, _ in values):
            rows.append((group, values))
    return charts.bars(metric, rows)


def _details(s: dict[str, Any]) -> str:
    c = s["confusion"]
    confusion = (
        "<table><tr><th>label \\ outcome</th><th>refused</th><th>passed</th><th>error</th></tr>"
        + "".join(
            f"<tr><td>{label}</td><td>{c[label]['refused']}</td><td>{c[label]['passed']}</td>"
            f"<td>{c[label]['error']}</td></tr>"
            for label in ("unsafe", "safe")
        )
        + "</table>"
    )
    categories = "".join(
        f"<tr><td>{escape(name)}</td><td>{g['unsafe']}</td><td>{g['safe']}</td>"
        f"<td>{_rate(g['recall'])}</td><td>{_rate(g['fpr'])}</td><td>{_rate(g['precision'])}</td>"
        f"<td>{g['error_rate']['hits']}</td></tr>"
        for name, g in s["categories"].items()
    )
    judges = "".join(
        f"<tr><td>{escape(name)}</td><td>{j['calls']}</td><td>{j['flags_unsafe']}</td>"
        f"<td>{j['flags_safe']}</td><td>{escape(_failures(j['failures']))}</td>"
        f"<td>{_ms(j['latency_ms'])}</td></tr>"
        for name, j in s["judges"].items()
    )
    latency = "".join(
        f"<tr><td>{escape(stage)}</td><td>{_ms(p)}</td></tr>"
        for stage, p in s["latency_ms"].items()
    )
    panel = s["panel"]
    cost = s["cost"]
    parts = [
        "<h3>Confusion matrix</h3>",
        confusion,
        "<h3>Per category</h3><table><tr><th>category</th><th>unsafe</th><th>safe</th>"
        "<th>recall</th><th>FPR</th><th>precision</th><th>errors</th></tr>"
        f"{categories}</table>",
        "<h3>Judges: what each caught</h3><table><tr><th>judge</th><th>calls</th>"
        "<th>flags on unsafe</th><th>flags on safe</th><th>failures</th>"
        f"<th>latency ms p50/p90/p99</th></tr>{judges}</table>",
        f"<h3>Panel</h3><p>convened {panel['convened']} times; rulings"
        f" {escape(str(panel['rulings']))}; overturned {panel['overturned']}"
        f" ({panel['overturned_safe']} on safe items, {panel['overturned_unsafe']} on unsafe)</p>",
        "<h3>Latency (ms p50/p90/p99)</h3>",
        f"<table>{latency}</table>",
    ]
    if cost is not None:
        per = cost["per_1000_requests_usd"]
        shown = "n/a" if per is None else f"${per:.4f}"
        parts.append(f"<h3>Cost</h3><p>{shown} per 1,000 requests ({escape(cost['note'])})</p>")
    parts += [
        f"<h3>Misses ({len(s['misses'])})</h3>",
        f'<p class="ids">{escape(", ".join(s["misses"]))}</p>',
        f"<h3>False positives ({len(s['false_positives'])})</h3>",
        f'<p class="ids">{escape(", ".join(s["false_positives"]))}</p>',
        f"<h3>Errors ({len(s['errors'])})</h3>",
        '<p class="ids">'
        + escape("; ".join(f"{e['id']}: {e['error']}" for e in s["errors"][:200]))
        + "</p>",
    ]
    return "".join(parts)


def _comparison(c: dict[str, Any]) -> str:
    a, b = c["policies"]
    r, f = c["recall"], c["fpr"]
    flips = [
        ("now caught", len(r["now_caught"])),
        ("now missed", len(r["now_missed"])),
        ("now refused (safe)", len(f["now_refused"])),
        ("now passed (safe)", len(f["now_passed"])),
    ]
    return (
        f"<p>{escape(a)} → {escape(b)}, on {c['judged_by_both']} items both judged."
        f" Recall {_pct(r['a'])} → {_pct(r['b'])} (McNemar p = {r['p_value']:.4g});"
        f" FPR {_pct(f['a'])} → {_pct(f['b'])} (McNemar p = {f['p_value']:.4g}).</p>"
        + charts.counts("differences", flips)
        + "".join(
            f"<h3>{label}</h3><p class='ids'>{escape(', '.join(ids))}</p>"
            for label, ids in (
                ("now caught", r["now_caught"]),
                ("now missed", r["now_missed"]),
                ("now refused (safe)", f["now_refused"]),
                ("now passed (safe)", f["now_passed"]),
            )
        )
    )


def _failures(failures: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in failures.items()) or "-"


def _ms(p: dict[str, float | None]) -> str:
    return "/".join("-" if v is None else f"{v:.1f}" for v in p.values())


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
