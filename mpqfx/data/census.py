"""What each use of a run's data holds: the classes, the images of each class per use (training,
held-out, search, BatchNorm calibration), counted from the indices actually drawn, and the image
files left out as unreadable. report.json keeps it; nothing is dropped without a line saying so."""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from mpqfx.data.sampling import ClassSubset

FEW_IMAGES = 5  # a class with fewer images than this in the training or held-out subset is warned about
USES = ("train", "held_out", "search", "bn_calibration")
WARNED_USES = {"train": "training", "held_out": "held-out"}  # the uses a class with few images is warned about


def images_per_class(dataset: ClassSubset, indices: Sequence[int] | None = None) -> dict[str, int]:
    """Images of each class (by name, every class listed) in ``dataset``, or at its ``indices``."""
    labels = np.asarray(dataset.targets, dtype=np.int64)
    if indices is not None:
        labels = labels[list(indices)]
    counts = np.bincount(labels, minlength=len(dataset.classes))
    return {name: int(n) for name, n in zip(dataset.classes, counts)}


def data_census(train: ClassSubset, held_out: ClassSubset, search: Sequence[int], calibration: Sequence[int],
                root: str | None) -> dict[str, Any]:
    """``classes``, ``images_per_class`` per use and ``skipped_images`` (per split, paths relative to
    ``root``); ``search`` and ``calibration`` are indices of ``train``."""
    per_use = {"train": images_per_class(train), "held_out": images_per_class(held_out),
               "search": images_per_class(train, search), "bn_calibration": images_per_class(train, calibration)}
    skipped = {use: [os.path.relpath(path, root) if root else path for path in subset.skipped]
               for use, subset in (("train", train), ("held_out", held_out))}
    return {"classes": list(train.classes), "images_per_class": per_use, "skipped_images": skipped}


def census_warnings(census: dict[str, Any]) -> list[str]:
    """One line per class with fewer than ``FEW_IMAGES`` training or held-out images, and one per
    split that had unreadable image files left out."""
    per_use = census.get("images_per_class", {})
    lines = [f"class {name!r} has {n} {label} image{'s' * (n != 1)} (fewer than {FEW_IMAGES})"
             for use, label in WARNED_USES.items() for name, n in per_use.get(use, {}).items() if n < FEW_IMAGES]
    for use, paths in census.get("skipped_images", {}).items():
        if paths:
            shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
            lines.append(f"{WARNED_USES[use]}: {len(paths)} unreadable image file{'s' * (len(paths) != 1)} "
                         f"left out (--skip-bad-images): {shown}")
    return lines
