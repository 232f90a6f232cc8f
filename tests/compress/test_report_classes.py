"""report.md's classes section: a table per class for a few classes, a per-use summary for many,
nothing for a report written before classes were recorded."""

from __future__ import annotations

from mpqfx.compress.report import _classes_section


def test_many_classes_get_a_summary_per_use():
    classes = [f"n{i:03d}" for i in range(30)]
    counts = {c: 10 for c in classes} | {"n004": 3, "n017": 3}
    data = {"classes": classes, "images_per_class": {"train": counts, "held_out": {c: 5 for c in classes},
                                                     "search": {c: 2 for c in classes},
                                                     "bn_calibration": {c: 4 for c in classes}}}
    lines = _classes_section(data)
    assert "| training | 286 | 30 | **3** (n004, n017) | 10 |" in lines
    assert "| held-out | 150 | 30 | 5 (n000, n001, n002, ...) | 5 |" in lines
    assert "| search | 60 | 30 | 2 (n000, n001, n002, ...) | 2 |" in lines  # search counts are not warned about
    assert [line for line in lines if line.startswith("- ")] == [
        "- class 'n004' has 3 training images (fewer than 5)", "- class 'n017' has 3 training images (fewer than 5)"]


def test_a_report_without_classes_has_no_section():
    assert _classes_section({"name": "fashion-mnist", "root": "/data", "train_limit": 96}) == []
