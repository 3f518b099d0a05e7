"""The reports' charts as server-rendered SVG: stacked spend over time, budget burn-down and
the operations page's lines.

Why SVG drawn here and not a JavaScript chart library: every figure a chart shows is the
Decimal the page's tables show, formatted by the one rule of usage.amounts (the bars' and
points' tooltips are SVG <title>s written here), so a chart agrees with its table to the cent by
construction; it needs no script and no network (the page works offline and without
JavaScript); a viewBox scales it to a 390 px phone; and the live updates (usage.live) swap
the re-rendered fragment in. Each function returns a plain dict the templates draw
(templates/usage/_stacked.html, _lines.html). Geometry is in viewBox units.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from usage.amounts import usd_display

# Colour-blind-safe categorical palette (Okabe-Ito), then grey for "Other".
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442",
           "#000000")
OTHER_COLOUR = "#9aa3b2"
WIDTH, HEIGHT = 720, 260
LEFT, RIGHT, TOP, BOTTOM = 84, 12, 10, 30


@dataclass(frozen=True, slots=True)
class Series:
    label: str
    values: Sequence[Decimal | float | None]
    colour: str = ""
    dashed: bool = False
    # Which points get a marker (and its tooltip): "all", "last" or "none".
    markers: str = "all"


def nice_ceiling(value: float) -> float:
    """The smallest 1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 x 10^n at or above `value` (an axis
    top: each divides into four round ticks)."""
    if value <= 0:
        return 1.0
    magnitude = 10 ** _floor_log10(value)
    for step in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if step * magnitude >= value * (1 - 1e-12):
            return step * magnitude
    return 10 * magnitude


def _floor_log10(value: float) -> int:
    n = 0
    while value >= 10:
        value /= 10
        n += 1
    while value < 1:
        value *= 10
        n -= 1
    return n


def _ticks(top: float, fmt: Callable[[float], str]) -> list[dict]:
    plot_h = HEIGHT - TOP - BOTTOM
    return [{"y": round(TOP + plot_h * (1 - i / 4), 2), "text": fmt(top * i / 4)} for i in range(5)]


def _x_labels(labels: Sequence[str], x_of: Callable[[int], float]) -> list[dict]:
    """At most about 6 labels (they must fit a phone), the last one always; ISO days shortened
    to MM-DD, hours (`MM-DD HH:00`) to HH:00 except the first and midnights."""
    every = max(1, -(-len(labels) // 6))
    shown = [i for i in range(len(labels)) if i % every == 0]
    if labels and shown[-1] != len(labels) - 1:
        if len(shown) > 1:
            shown.pop()  # too close to the last label, which is always shown
        shown.append(len(labels) - 1)
    return [{"x": round(x_of(i), 2),
             "anchor": "end" if x_of(i) > WIDTH - RIGHT - 24 else "middle",
             "text": _short(labels[i], first=i == 0)} for i in shown]


def _short(label: str, *, first: bool) -> str:
    if len(label) == 10 and label[4] == "-":
        return label[5:]
    if len(label) == 11 and label[5] == " " and label.endswith(":00"):
        return label[:5] if first or label.endswith("00:00") else label[6:]
    return label


def stacked_bars(*, labels: Sequence[str], series: Sequence[Series], unit: str = "usd") -> dict:
    """Bars per label (a day), one segment per series stacked bottom-up in `series` order.
    Each segment carries its exact amount (`usd`, a Decimal string) and a tooltip; the y axis
    starts at 0 and ends at a nice ceiling of the tallest bar."""
    n = len(labels)
    totals = [sum((Decimal(s.values[i] or 0) for s in series), Decimal(0)) for i in range(n)]
    top = nice_ceiling(float(max(totals, default=0)))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / max(n, 1)
    bar_w = max(1.0, slot * 0.72)

    def x_of(i: int) -> float:
        return LEFT + slot * i + slot / 2

    rects = []
    for i in range(n):
        base = Decimal(0)
        for k, s in enumerate(series):
            value = Decimal(s.values[i] or 0)
            if not value:
                continue
            y0 = TOP + plot_h * (1 - float(base) / top)
            y1 = TOP + plot_h * (1 - float(base + value) / top)
            rects.append({"x": round(x_of(i) - bar_w / 2, 2), "y": round(y1, 2),
                          "w": round(bar_w, 2), "h": round(max(y0 - y1, 0.5), 2),
                          "colour": s.colour or PALETTE[k % len(PALETTE)], "series": s.label,
                          "label": labels[i], "usd": str(value),
                          "title": f"{s.label} · {labels[i]}: {usd_display(value)}"})
            base += value
    return {"width": WIDTH, "height": HEIGHT, "left": LEFT, "right": WIDTH - RIGHT,
            "top": TOP, "bottom": HEIGHT - BOTTOM, "rects": rects,
            "ticks": _ticks(top, lambda v: usd_display(Decimal(repr(v)))),
            "x_labels": _x_labels(labels, x_of),
            "legend": [{"label": s.label, "colour": s.colour or PALETTE[k % len(PALETTE)],
                        "total": usd_display(sum((Decimal(v or 0) for v in s.values), Decimal(0)))}
                       for k, s in enumerate(series)],
            "totals": [{"label": labels[i], "usd": str(totals[i])} for i in range(n)]}


def lines(*, labels: Sequence[str], series: Sequence[Series], fmt: Callable[[float], str],
          top: float | None = None) -> dict:
    """Polylines over evenly spaced labels (None: a gap); points with tooltips. The y axis
    runs from 0 to `top` (default: a nice ceiling of the largest value)."""
    n = len(labels)
    values = [float(v) for s in series for v in s.values if v is not None]
    top = top or nice_ceiling(max(values, default=0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / max(n - 1, 1)

    def x_of(i: int) -> float:
        return LEFT + step * i if n > 1 else LEFT + plot_w / 2

    def y_of(v: float) -> float:
        return TOP + plot_h * (1 - min(v, top) / top)

    drawn = []
    for k, s in enumerate(series):
        runs: list[list[str]] = [[]]
        points = []
        for i, v in enumerate(s.values):
            if v is None:
                runs.append([])
                continue
            x, y = round(x_of(i), 2), round(y_of(float(v)), 2)
            runs[-1].append(f"{x},{y}")
            points.append({"x": x, "y": y, "value": str(v),
                           "title": f"{s.label} · {labels[i]}: {fmt(float(v))}"})
        if s.markers == "none":
            points = []
        elif s.markers == "last":
            points = points[-1:]
        drawn.append({"label": s.label, "colour": s.colour or PALETTE[k % len(PALETTE)],
                      "dashed": s.dashed, "paths": [" ".join(r) for r in runs if r],
                      "points": points})
    return {"width": WIDTH, "height": HEIGHT, "left": LEFT, "right": WIDTH - RIGHT,
            "top": TOP, "bottom": HEIGHT - BOTTOM, "series": drawn,
            "ticks": _ticks(top, fmt), "x_labels": _x_labels(labels, x_of)}
