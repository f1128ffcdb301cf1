"""Draw the Grafana dashboard's main panels from a real Prometheus, as one PNG.

Each panel's own PromQL (from grafana/guardrail-dashboard.json) is sent to
Prometheus as Grafana would send it, so the picture shows what the dashboard
shows, without a Grafana server:

    python examples/observability/render_dashboard.py --prometheus http://127.0.0.1:9090 \\
        --minutes 10 --out examples/observability/dashboard.png

Needs matplotlib (``pip install -e '.[observability]'``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

DASHBOARD = Path(__file__).resolve().parent / "grafana" / "guardrail-dashboard.json"

# The overview's whole counts over the range, then the time series that matter most.
STATS = ("Decisions", "Block rate", "Fail-open decisions", "Requests in flight")
BARS = "Decisions by outcome"
SERIES = (
    "Block rate",
    "Decisions over time",
    "Added latency p50 / p95 / p99",
    "Judge latency p95",
    "Judge error rate",
    "Flags by judge and category",
)
UNITS = {"percentunit": "share", "reqps": "per second", "s": "seconds"}


@dataclass
class Drawn:
    """What each drawn panel held: its number of series (0: no data)."""

    series: dict[str, int] = field(default_factory=dict)


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def substitute(expr: str, *, range_s: int, step_s: int, policy: str) -> str:
    """Grafana's variables in ``expr``, as Grafana would fill them in."""
    values = {
        "__range": f"{range_s}s",
        "__rate_interval": f"{max(4 * step_s, 60)}s",
        "__interval": f"{step_s}s",
        "policy": policy,
    }
    for name, value in values.items():
        expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
    return expr


def legend(template: str, labels: dict[str, str]) -> str:
    """A legendFormat like ``{{judge}} {{stage}}`` filled in with a series' labels."""
    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)
    return text.strip() or ", ".join(f"{k}={v}" for k, v in labels.items()) or "value"


class Source:
    """Prometheus' HTTP API, over one time range."""

    def __init__(self, url: str, start: float, end: float, policy: str) -> None:
        self.url, self.end, self.policy = url.rstrip("/"), end, policy
        self.range_s = max(1, round(end - start))
        self.step_s = max(1, self.range_s // 120)
        # A range query's points are start + k * step: the last one falls on ``end``
        # itself, so it sees the latest scrape. (Points laid from ``start`` could end
        # just before it, and a rate over the range would then miss a series' last sample.)
        self.start = end - self.step_s * -(-self.range_s // self.step_s)
        self.http = httpx.Client(timeout=30.0)

    def _get(self, path: str, **params: Any) -> list[dict[str, Any]]:
        body = self.http.get(f"{self.url}/api/v1/{path}", params=params).json()
        if body.get("status") != "success":
            raise RuntimeError(f"{params.get('query')}: {body.get('error')}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def expr(self, target: dict[str, Any]) -> str:
        return substitute(
            target["expr"], range_s=self.range_s, step_s=self.step_s, policy=self.policy
        )

    def instant(self, target: dict[str, Any]) -> list[tuple[str, float]]:
        found = self._get("query", query=self.expr(target), time=f"{self.end:.3f}")
        fmt = target.get("legendFormat", "")
        return [(legend(fmt, s["metric"]), float(s["value"][1])) for s in found]

    def series(self, target: dict[str, Any]) -> list[tuple[str, list[float], list[float]]]:
        found = self._get(
            "query_range",
            query=self.expr(target),
            start=f"{self.start:.3f}",
            end=f"{self.end:.3f}",
            step=f"{self.step_s}s",
        )
        fmt = target.get("legendFormat", "")
        return [
            (
                legend(fmt, s["metric"]),
                [float(t) - self.end for t, _ in s["values"]],
                [float(v) for _, v in s["values"]],
            )
            for s in found
        ]


def render(url: str, out: Path, *, start: float, end: float, policy: str = ".*") -> Drawn:
    """Draw the main panels over ``start``..``end`` (Unix seconds) into ``out``."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    dashboard = json.loads(DASHBOARD.read_text())
    by_title: dict[tuple[str, str], dict[str, Any]] = {
        (p["title"], p["type"]): p for p in panels(dashboard)
    }
    source, drawn = Source(url, start, end, policy), Drawn()
    figure = plt.figure(figsize=(16, 12), layout="constrained")
    grid = figure.add_gridspec(4, 6, height_ratios=[0.6, 1.1, 1, 1])
    minutes = source.range_s / 60
    figure.suptitle(f"guardrail: the last {minutes:g} minutes (policy =~ {policy!r})", size=15)

    for column, title in enumerate(STATS):
        panel = by_title[(title, "stat")]
        axes = figure.add_subplot(grid[0, column + 1])
        values = source.instant(panel["targets"][0])
        drawn.series[f"stat {title}"] = len(values)
        unit = panel["fieldConfig"]["defaults"].get("unit")
        value = values[0][1] if values else math.nan
        shown = f"{value:.1%}" if unit == "percentunit" else f"{value:,.0f}"
        axes.text(0.5, 0.35, shown, ha="center", va="center", size=28, weight="bold")
        axes.set_title(title, size=11)
        axes.set_axis_off()

    bars = by_title[(BARS, "bargauge")]
    counts = sorted(source.instant(bars["targets"][0]), key=lambda kv: -kv[1])
    drawn.series[f"bargauge {BARS}"] = len(counts)
    axes = figure.add_subplot(grid[1, :2])
    axes.barh([name for name, _ in counts], [value for _, value in counts], color="tab:blue")
    axes.invert_yaxis()
    for index, (_, value) in enumerate(counts):
        axes.text(value, index, f" {value:,.0f}", va="center", size=9)
    axes.set_title(BARS + " (whole counts)", size=11)

    cells = [grid[1, 2:4], grid[1, 4:6], grid[2, 0:3], grid[2, 3:6], grid[3, 0:3], grid[3, 3:6]]
    for cell, title in zip(cells, SERIES, strict=True):
        panel = by_title[(title, "timeseries")]
        axes = figure.add_subplot(cell)
        lines = [one for target in panel["targets"] for one in source.series(target)]
        drawn.series[f"timeseries {title}"] = len(lines)
        for name, times, values in lines:
            axes.plot([t / 60 for t in times], values, label=name, linewidth=1.4)
        unit = panel["fieldConfig"]["defaults"].get("unit", "")
        unit = UNITS.get(unit, unit)
        axes.set_title(f"{title} ({unit})" if unit else title, size=11)
        axes.set_xlabel("minutes ago")
        axes.grid(alpha=0.3)
        if lines:
            axes.legend(fontsize=7, loc="upper left", ncol=2)
        else:
            axes.text(0.5, 0.5, "no data", ha="center", transform=axes.transAxes)
    figure.savefig(out, dpi=80)
    plt.close(figure)
    return drawn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--minutes", type=float, default=10.0, help="the range drawn, to now")
    parser.add_argument("--policy", default=".*", help="regular expression, as $policy")
    parser.add_argument("--out", type=Path, default=Path("dashboard.png"))
    args = parser.parse_args()
    end = time.time()
    drawn = render(
        args.prometheus, args.out, start=end - args.minutes * 60, end=end, policy=args.policy
    )
    for name, count in drawn.series.items():
        print(f"{count:3d} series  {name}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
