"""Plots as inline SVG, drawn here: the report is one file that opens offline, with no library.

Each function returns an ``<svg>`` element with a ``data-plot`` attribute naming it
(the tests look for them), a title, axes and labelled marks.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

WIDTH = 640
COLOURS = ("#3366cc", "#dc7633", "#2e8b57", "#8e44ad")


def histogram(
    name: str, series: dict[str, Sequence[float]], *, unit: str = "ms", bins: int = 30
) -> str:
    """Overlaid histograms of each series (e.g. latency per policy), up to the 99th percentile."""
    values = sorted(v for s in series.values() for v in s)
    if not values:
        return _empty(name, "no latencies")
    top = values[min(len(values) - 1, int(len(values) * 0.99))] or values[-1] or 1.0
    step = top / bins
    height, left, bottom = 240, 50, 30
    plot_w, plot_h = WIDTH - left - 10, height - bottom - 30
    counts = {label: _binned(s, step, bins) for label, s in series.items()}
    peak = max(max(c) for c in counts.values()) or 1
    bar_w = plot_w / bins
    marks = []
    for k, (label, row) in enumerate(counts.items()):
        colour = COLOURS[k % len(COLOURS)]
        for i, count in enumerate(row):
            if count:
                h = count / peak * plot_h
                marks.append(
                    f'<rect x="{left + i * bar_w:.1f}" y="{height - bottom - h:.1f}"'
                    f' width="{bar_w - 1:.1f}" height="{h:.1f}" fill="{colour}"'
                    f' fill-opacity="0.6"><title>{escape(label)}: {count} items,'
                    f" {i * step:.1f}-{(i + 1) * step:.1f} {unit}</title></rect>"
                )
        marks.append(_legend(k, label, colour))
    axes = (
        _axes(left, height - bottom, plot_w, plot_h)
        + f'<text x="{left}" y="{height - 8}" font-size="11">0</text>'
        + f'<text x="{left + plot_w}" y="{height - 8}" font-size="11" text-anchor="end">'
        f"{top:.1f} {unit} (p99)</text>"
        + f'<text x="{left - 6}" y="30" font-size="11" text-anchor="end">{peak}</text>'
    )
    return _svg(name, height, axes + "".join(marks))


Bar = tuple[str, float | None, tuple[float, float] | None]  # series, value, interval


def bars(name: str, rows: Sequence[tuple[str, Sequence[Bar]]]) -> str:
    """Horizontal bars in [0, 1] with confidence whiskers: one row per group, one bar per series.

    ``rows`` is ``[(group, [(series, value, (low, high)), ...]), ...]``.
    """
    if not rows:
        return _empty(name, "no groups")
    series = len(rows[0][1])
    left, bar_h, gap = 170, 12, 10
    row_h = series * bar_h + gap
    height = len(rows) * row_h + 50
    plot_w = WIDTH - left - 20
    marks = []
    for r, (group, values) in enumerate(rows):
        y0 = 30 + r * row_h
        marks.append(
            f'<text x="{left - 6}" y="{y0 + series * bar_h / 2 + 4:.1f}" font-size="11"'
            f' text-anchor="end">{escape(group[:26])}</text>'
        )
        for k, (label, value, interval) in enumerate(values):
            y = y0 + k * bar_h
            colour = COLOURS[k % len(COLOURS)]
            if value is None:
                marks.append(
                    f'<text x="{left + 4}" y="{y + bar_h - 2}" font-size="10" fill="#888">'
                    f"{escape(label)}: n/a</text>"
                )
                continue
            marks.append(
                f'<rect x="{left}" y="{y}" width="{value * plot_w:.1f}" height="{bar_h - 2}"'
                f' fill="{colour}"><title>{escape(group)} {escape(label)}: {value:.3f}'
                "</title></rect>"
            )
            if interval is not None:
                lo, hi = (left + v * plot_w for v in interval)
                mid = y + (bar_h - 2) / 2
                marks.append(
                    f'<line x1="{lo:.1f}" x2="{hi:.1f}" y1="{mid:.1f}" y2="{mid:.1f}"'
                    ' stroke="#222" stroke-width="1"/>'
                )
    for k, (label, _, _) in enumerate(rows[0][1]):
        marks.append(_legend(k, label, COLOURS[k % len(COLOURS)]))
    scale = "".join(
        f'<text x="{left + t * plot_w:.1f}" y="{height - 6}" font-size="10"'
        f' text-anchor="middle">{t:.2g}</text>'
        f'<line x1="{left + t * plot_w:.1f}" x2="{left + t * plot_w:.1f}" y1="26"'
        f' y2="{height - 18}" stroke="#ddd"/>'
        for t in (0, 0.25, 0.5, 0.75, 1.0)
    )
    return _svg(name, height, scale + "".join(marks))


def counts(name: str, values: Sequence[tuple[str, int]]) -> str:
    """Vertical bars of counts (e.g. the items that flipped each way)."""
    if not values:
        return _empty(name, "nothing to count")
    height, left, bottom = 220, 50, 40
    plot_w, plot_h = WIDTH - left - 10, height - bottom - 20
    peak = max(v for _, v in values) or 1
    slot = plot_w / len(values)
    marks = []
    for i, (label, value) in enumerate(values):
        h = value / peak * plot_h
        x = left + i * slot + slot * 0.15
        marks.append(
            f'<rect x="{x:.1f}" y="{height - bottom - h:.1f}" width="{slot * 0.7:.1f}"'
            f' height="{h:.1f}" fill="{COLOURS[i % len(COLOURS)]}"/>'
            f'<text x="{x + slot * 0.35:.1f}" y="{height - bottom - h - 4:.1f}" font-size="11"'
            f' text-anchor="middle">{value}</text>'
            f'<text x="{x + slot * 0.35:.1f}" y="{height - bottom + 14}" font-size="11"'
            f' text-anchor="middle">{escape(label)}</text>'
        )
    return _svg(name, height, _axes(left, height - bottom, plot_w, plot_h) + "".join(marks))


def _binned(values: Sequence[float], step: float, bins: int) -> list[int]:
    row = [0] * bins
    for v in values:
        i = int(v / step)
        if i < bins:
            row[i] += 1
    return row


def _axes(x: float, y: float, w: float, h: float) -> str:
    return (
        f'<line x1="{x}" y1="{y}" x2="{x + w}" y2="{y}" stroke="#444"/>'
        f'<line x1="{x}" y1="{y}" x2="{x}" y2="{y - h}" stroke="#444"/>'
    )


def _legend(k: int, label: str, colour: str) -> str:
    x = WIDTH - 150
    y = 12 + k * 14
    return (
        f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{colour}"/>'
        f'<text x="{x + 14}" y="{y}" font-size="11">{escape(label[:20])}</text>'
    )


def _svg(name: str, height: float, body: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" data-plot="{escape(name)}" role="img"'
        f' width="{WIDTH}" height="{height:.0f}" viewBox="0 0 {WIDTH} {height:.0f}">'
        f'<title>{escape(name)}</title><text x="4" y="14" font-size="12" font-weight="bold">'
        f"{escape(name)}</text>{body}</svg>"
    )


def _empty(name: str, why: str) -> str:
    return _svg(name, 40, f'<text x="10" y="24" font-size="12" fill="#888">{escape(why)}</text>')
