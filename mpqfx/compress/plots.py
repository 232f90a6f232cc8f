"""The run's figures, drawn from the report (so ``mpqfx report`` can draw them again):
BitOPs against accuracy (pareto.png) and the per-layer bits of each searched policy (bits.png).

Every point is visible (a searched policy equal to a uniform one shows as a star inside its
ring) and labelled by what it is; labels are placed where they overlap nothing and stay inside
the axes; legends sit outside the axes; the bits axis names the layers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402

from mpqfx.io import atomic_open  # noqa: E402

# label offsets (points, to the label's nearest corner) tried in order around a point: right, left,
# above, below, above or below reaching over the point (slid into the axes where they stick out), then
# further out (with a leader line)
_OFFSETS = [(7, 3, "left"), (7, -3, "left"), (-7, 3, "right"), (-7, -3, "right"), (0, 8, "center"),
            (0, -8, "center"), (24, 8, "right"), (-24, 8, "left"), (24, -8, "right"), (-24, -8, "left"),
            (12, 12, "left"), (-12, 12, "right"), (12, -12, "left"), (-12, -12, "right"),
            *[(dx, dy, ha) for dy in (20, -20, 32, -32) for dx, ha in ((0, "center"), (24, "right"), (-24, "left"))]]
LAYER_LABEL_PT = 6.5  # font size of the layer names on the bits axis


def save_figure(fig: Figure, path: Path) -> None:
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=120)
    plt.close(fig)


def searched_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The searched policies of a report: those ``compress`` ran, then later searches."""
    return [p for p in report["policies"] if p["kind"] == "searched"] + list(report.get("searches", []))


def mixed_label(row: dict[str, Any]) -> str:
    """A searched policy as a person reads it: mixed precision, under which budget (and which later search)."""
    where = f" ({row['search']})" if row.get("search") else ""
    return f"mixed, budget {row['target']}{where}"


def _place_labels(ax, points: Iterable[tuple[float, float, str, str]], lines_y: Iterable[float] = (),
                  path: Sequence[tuple[float, float]] = (), marker_pt: float = 12) -> list:
    """Annotate each (x, y, text, color) at the first offset where its text stays inside the axes and
    overlaps no other label, no marker, no horizontal line at ``lines_y`` and no segment of the
    polyline ``path``; the last offset tried when none is free."""
    fig = ax.figure
    fig.canvas.draw()  # fix the layout, so that display coordinates are final
    ax.set_xlim(ax.get_xlim())  # and the limits: no leader line may rescale the axes
    ax.set_ylim(ax.get_ylim())
    renderer = fig.canvas.get_renderer()
    area = ax.get_window_extent(renderer)
    points = list(points)
    half = marker_pt * fig.dpi / 72 / 2
    taken = [Bbox.from_extents(px - half, py - half, px + half, py + half)
             for px, py in (ax.transData.transform((x, y)) for x, y, _, _ in points)]
    for y in lines_y:
        py = ax.transData.transform((1, y))[1]
        taken.append(Bbox.from_extents(area.x0, py - 6, area.x1, py + 6))
    corners = [ax.transData.transform(xy) for xy in path]
    for (x0, y0), (x1, y1) in zip(corners, corners[1:]):  # a segment as a chain of small boxes
        steps = max(int(max(abs(x1 - x0), abs(y1 - y0)) / 3), 1)
        taken += [Bbox.from_extents(x - 2, y - 2, x + 2, y + 2)
                  for x, y in ((x0 + (x1 - x0) * t / steps, y0 + (y1 - y0) * t / steps) for t in range(steps + 1))]
    placed = []

    def px_of(x, y):
        return ax.transData.transform((x, y))[0]

    for x, y, text, color in points:
        best = None
        for rank, (dx, dy, ha) in enumerate(_OFFSETS):
            label = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha,
                                va="bottom" if dy > 0 else "top", fontsize=8, color=color)
            box = label.get_window_extent(renderer)
            shift = max(area.x0 - box.x0, 0) or min(area.x1 - box.x1, 0)
            if abs(dy) >= 8 and shift and box.x0 + shift <= px_of(x, y) <= box.x1 + shift:
                label.xyann = (dx + shift * 72 / fig.dpi, dy)  # above or below: slid into the axes, still over the point
                box = label.get_window_extent(renderer)
            inside = area.x0 <= box.x0 and box.x1 <= area.x1 and area.y0 <= box.y0 and box.y1 <= area.y1
            score = (not inside, sum(box.overlaps(other) for other in taken), rank)
            if best is None or score < best[0]:
                if best is not None:
                    best[1].remove()
                best = (score, label, box)
            else:
                label.remove()
            if score[:2] == (False, 0):
                break
        taken.append(best[2])  # free, or else inside the axes with the fewest overlaps
        placed.append(best[1])
        _leader(ax, (x, y), best[2], color, 2 * half)
    return placed


def _leader(ax, xy: tuple[float, float], box: Bbox, color: str, near: float) -> None:
    """A thin line from the point ``xy`` to its label ``box`` (display units) when the label sits
    further than ``near`` from it, so that a label pushed out by its neighbours still names its point."""
    px, py = ax.transData.transform(xy)
    tx, ty = min(max(px, box.x0), box.x1), min(max(py, box.y0), box.y1)  # the box's point nearest the point
    distance = math.hypot(tx - px, ty - py)
    if distance <= near:
        return
    start = (px + (tx - px) * near / 2 / distance, py + (ty - py) * near / 2 / distance)  # from the marker's edge
    (x0, y0), (x1, y1) = ax.transData.inverted().transform([start, (tx, ty)])
    ax.add_line(Line2D([x0, x1], [y0, y1], color=color, linewidth=0.6, zorder=1, gid="leader"))


def pareto_figure(report: dict[str, Any], title: str) -> Figure:
    """Top-1 accuracy against GBitOPs: uniform policies as rings on a dashed line, searched mixed
    ones as stars (later searches as diamonds), the float model as a dotted line."""
    fig, ax = plt.subplots(figsize=(6.4, 4.6), layout="constrained")
    rows = report["policies"]
    uniform = sorted((r for r in rows if r["kind"] == "uniform"), key=lambda r: r["bitops"])
    ours = [r for r in rows if r["kind"] == "searched"]
    later = list(report.get("searches", []))
    points = []
    if uniform:
        ax.plot([r["bitops"] / 1e9 for r in uniform], [100 * r["accuracy"] for r in uniform], "o--", color="tab:gray",
                markersize=13, markerfacecolor="none", markeredgewidth=1.5, label="uniform W/A bits", zorder=2)
        points += [(r["bitops"] / 1e9, 100 * r["accuracy"], r["name"], "dimgray") for r in uniform]
    for group, marker, color, label in ((ours, "*", "tab:red", "mixed precision, searched"),
                                        (later, "D", "tab:purple", "mixed precision, later search")):
        if group:
            ax.plot([r["bitops"] / 1e9 for r in group], [100 * r["accuracy"] for r in group], marker, color=color,
                    markersize=11 if marker == "*" else 7, linestyle="none", label=label, zorder=3)
            points += [(r["bitops"] / 1e9, 100 * r["accuracy"], mixed_label(r), color) for r in group]
    floats = [100 * r["accuracy"] for r in rows if r["kind"] == "float"]
    for accuracy in floats:
        ax.axhline(accuracy, color="tab:blue", linestyle=":", label=f"float ({accuracy:.1f}%)")
    xs = [x for x, _, _, _ in points]
    if xs and max(xs) > 4 * min(xs):  # uniform 8/8 far to the right of the rest: a log axis spreads them
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.margins(x=0.25, y=0.2)
    ax.set_xlabel("GBitOPs")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    fig.legend(loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    _place_labels(ax, points, floats, [(r["bitops"] / 1e9, 100 * r["accuracy"]) for r in uniform])
    fig.set_layout_engine("none")  # the labels were placed for this layout: keep it when saving
    return fig


def pareto_plot(report: dict[str, Any], path: Path, title: str) -> None:
    save_figure(pareto_figure(report, title), path)


def bits_figure(report: dict[str, Any], title: str) -> Figure:
    """Weight and activation bits per layer (execution order) of each searched policy, one panel
    each, the layer names under the last panel (every k-th when they would not fit)."""
    layers = [l["name"] for l in report["layers"]]
    searched = searched_rows(report)
    width = min(max(6.4, 0.16 * len(layers) + 1.5), 24)
    longest = max((len(name) for name in layers), default=0)
    names_in = longest * LAYER_LABEL_PT * 0.6 / 72  # height of the rotated names
    fig, axes = plt.subplots(max(len(searched), 1), 1, figsize=(width, 1.7 * max(len(searched), 1) + names_in + 0.9),
                             sharex=True, squeeze=False, layout="constrained")
    index = range(len(layers))
    for ax, r in zip(axes[:, 0], searched):
        w = [r["bits"][name][0] for name in layers]
        a = [r["bits"][name][1] for name in layers]
        ax.bar([i - 0.2 for i in index], w, width=0.4, label="weight bits", color="tab:blue")
        ax.bar([i + 0.2 for i in index], a, width=0.4, label="activation bits", color="tab:orange")
        ax.set_ylabel("bits")
        head, tail = mixed_label(r), f"{r['bitops'] / 1e9:.3g} GBitOPs, top-1 {_percent(r['accuracy'])}"
        fits = (len(head) + len(tail) + 2) * 9 * 0.6 / 72 < width - 1.2  # a 9-pt character is about 0.6 x 9 pt wide
        ax.set_title(f"{head}:{' ' if fits else chr(10)}{tail}", fontsize=9, loc="left")
        ax.set_yticks(sorted({b for b in w + a if b}))
        ax.set_ylim(0, max(b for b in w + a if b) + 0.5)
    if not searched:
        axes[0, 0].text(0.5, 0.5, "no searched policies", ha="center", va="center", transform=axes[0, 0].transAxes)
    bottom = axes[-1, 0]
    bottom.set_xlim(-0.7, len(layers) - 0.3)
    step = _label_step(len(layers), width)
    bottom.set_xticks(list(index)[::step], layers[::step], rotation=90, fontsize=LAYER_LABEL_PT)
    bottom.set_xlabel("layer (execution order)" + (f", every {_ordinal(step)} named" if step > 1 else ""))
    if searched:
        fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside upper right", ncols=2, fontsize=8,
                   frameon=False)
    fig.suptitle(title, fontsize=10, x=0.02, ha="left")
    return fig


def bits_plot(report: dict[str, Any], path: Path, title: str) -> None:
    save_figure(bits_figure(report, title), path)


def _label_step(count: int, width_in: float) -> int:
    """Every how many layers a name fits on the axis (a rotated name needs about 1.6x its font size)."""
    per_layer_pt = max(width_in - 1.2, 1) * 72 / max(count, 1)
    step = 1
    while per_layer_pt * step < 1.6 * LAYER_LABEL_PT:
        step += 1
    return step


def _ordinal(n: int) -> str:
    """2nd, 3rd, 4th, 11th, 21st."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _percent(accuracy: float | None) -> str:
    return "not measured" if accuracy is None else f"{100 * accuracy:.1f}%"
