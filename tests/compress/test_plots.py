"""The report's figures, drawn at their default size from a report dictionary: every point shown and
labelled, no label clipped or overlapping another, legends off the data, layer names on the bits axis."""

from __future__ import annotations

import itertools
import math

import pytest
from matplotlib.text import Text

from mpqfx.compress.plots import bits_figure, pareto_figure

LAYERS = ["conv_stem"] + [f"blocks.{i}.{j}.conv_{k}" for i in range(6) for j in range(2) for k in ("pw", "dw", "pwl")] \
    + ["conv_head", "classifier"]


def row(kind, name, accuracy, gbitops, target=None, bits=None, search=None):
    out = {"kind": kind, "name": name, "target": target, "accuracy": accuracy, "bitops": gbitops * 1e9,
           "bits": None if bits is None else {layer: list(bits(i)) for i, layer in enumerate(LAYERS)}}
    return {**out, "search": search} if search else out


@pytest.fixture
def report():
    """A make-demo-like report: a searched policy exactly on uniform 4/4 (same BitOPs and accuracy), uniform
    8/8 far right, and a later search."""
    return {"layers": [{"name": name} for name in LAYERS], "policies": [
        row("float", "float", 0.676, 7.885),
        row("uniform", "uniform 8/8", 0.6805, 0.4928, bits=lambda i: (8, 8)),
        row("uniform", "uniform 4/4", 0.5945, 0.1274, bits=lambda i: (4, 4)),
        row("uniform", "uniform 3/3", 0.5315, 0.07406, bits=lambda i: (3, 3)),
        row("searched", "searched uniform:4", 0.5945, 0.1274, "uniform:4", bits=lambda i: (4, 4)),
        row("searched", "searched uniform:3", 0.542, 0.074, "uniform:3", bits=lambda i: (2 + i % 5, 3 + i % 4)),
    ], "searches": [row("searched", "searched size=10x", 0.55, 0.09, "size=10x", bits=lambda i: (3, 4),
                        search="ilp-objective=limpq")]}


def boxes(fig, texts):
    renderer = fig.canvas.get_renderer()
    return [t.get_window_extent(renderer) for t in texts]


def inside(box, outer, slack=0.5):
    return (outer.x0 - slack <= box.x0 and box.x1 <= outer.x1 + slack and outer.y0 - slack <= box.y0
            and box.y1 <= outer.y1 + slack)


def test_pareto_labels_every_point_by_what_it_is_without_clipping_or_overlap(report):
    fig = pareto_figure(report, "efficientnet_lite0 (quickstart)")
    fig.canvas.draw()
    ax = fig.axes[0]
    labels = [t for t in ax.texts if t.get_text()]
    assert sorted(t.get_text() for t in labels) == sorted(
        ["uniform 8/8", "uniform 4/4", "uniform 3/3", "mixed, budget uniform:4", "mixed, budget uniform:3",
         "mixed, budget size=10x (ilp-objective=limpq)"])
    label_boxes = boxes(fig, labels)
    area = ax.get_window_extent(fig.canvas.get_renderer())
    assert all(inside(box, area) for box in label_boxes)  # nothing clipped at the edges ("8/8" was)
    assert not any(a.overlaps(b) for a, b in itertools.combinations(label_boxes, 2))
    float_y = ax.transData.transform((1, 67.6))[1]
    assert not any(box.y0 <= float_y <= box.y1 for box in label_boxes)  # no label on the float line
    legend = fig.legends[0].get_window_extent(fig.canvas.get_renderer())
    assert not legend.overlaps(area) and inside(legend, fig.bbox)  # the legend covers no point
    # the searched star on uniform 4/4 sits inside the ring drawn for the uniform point: both show
    uniform_line, stars = ax.lines[0], ax.lines[1]
    assert uniform_line.get_markerfacecolor() == "none" and uniform_line.get_markersize() > stars.get_markersize()
    assert stars.get_zorder() > uniform_line.get_zorder()


def test_bits_figure_names_the_layers_and_nothing_overlaps(report):
    fig = bits_figure(report, "efficientnet_lite0 (quickstart)")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    panels = fig.axes
    assert len(panels) == 3  # two searched by compress, one later search
    names = [t.get_text() for t in panels[-1].get_xticklabels()]
    assert names == LAYERS  # 41 layers fit at the default width, so every one is named
    ticks = boxes(fig, panels[-1].get_xticklabels())
    assert not any(a.overlaps(b) for a, b in itertools.combinations(ticks, 2))
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text()]
    assert all(inside(t.get_window_extent(renderer), fig.bbox) for t in texts)
    for upper, lower in zip(panels, panels[1:]):  # a title never runs into the panel above
        title = lower.title.get_window_extent(renderer)
        assert title.y1 <= upper.get_window_extent(renderer).y0
        assert not any(title.overlaps(box) for box in boxes(fig, upper.get_xticklabels()))
    legend = fig.legends[0].get_window_extent(renderer)
    assert not any(legend.overlaps(ax.get_window_extent(renderer)) for ax in panels)  # never over the bars
    assert [ax.get_title(loc="left").split(": ")[0].split(":\n")[0] for ax in panels] == [
        "mixed, budget uniform:4", "mixed, budget uniform:3", "mixed, budget size=10x (ilp-objective=limpq)"]


def test_many_layers_get_a_readable_subset_of_names(report):
    many = [f"stages.{i}.blocks.{j}.conv" for i in range(8) for j in range(40)]
    report = {"layers": [{"name": n} for n in many], "policies": [
        {"kind": "searched", "name": "s", "target": "4G", "accuracy": 0.5, "bitops": 4e9,
         "bits": {n: [4, 4] for n in many}}]}
    fig = bits_figure(report, "big")
    fig.canvas.draw()
    labels = fig.axes[-1].get_xticklabels()
    step = many.index(labels[1].get_text())
    assert 1 < step < 10 and [t.get_text() for t in labels] == many[::step]
    assert not any(a.overlaps(b) for a, b in itertools.combinations(boxes(fig, labels), 2))
    assert f"every {step}{'rd' if step == 3 else 'nd' if step == 2 else 'th'} named" in fig.axes[-1].get_xlabel()


def test_a_label_pushed_away_from_its_point_is_joined_to_it_by_a_line(report):
    """The uniform:3 star sits just above the uniform 3/3 ring near the left edge: its label cannot go beside
    it, so it goes above, and a leader line in its colour runs from the star to the label."""
    fig = pareto_figure(report, "efficientnet_lite0 (quickstart)")
    fig.canvas.draw()
    ax = fig.axes[0]
    near = 12 * fig.dpi / 72  # a marker's width: a label closer than that needs no line
    leaders = [line for line in ax.lines if line.get_gid() == "leader"]
    joined = 0
    for label, box in zip(ax.texts, boxes(fig, ax.texts)):
        px, py = ax.transData.transform(label.xy)
        gap = math.hypot(min(max(px, box.x0), box.x1) - px, min(max(py, box.y0), box.y1) - py)
        if gap <= near:
            continue
        ends = [ax.transData.transform(xy) for line in leaders for xy in zip(*line.get_data())
                if line.get_color() == label.get_color()]
        assert any(math.hypot(x - px, y - py) <= near for x, y in ends), label.get_text()
        assert any(box.x0 - 1 <= x <= box.x1 + 1 and box.y0 - 1 <= y <= box.y1 + 1 for x, y in ends), label.get_text()
        joined += 1
    assert joined == len(leaders) == 1
    star = next(t for t in ax.texts if t.get_text() == "mixed, budget uniform:3")
    assert star.get_window_extent().y0 > ax.transData.transform(star.xy)[1]  # above its star, not by the ring
