"""Subsets that keep every class: per-class counts of the drawn subsets against hand-computed
proportional counts, their determinism, and the warning about classes with few images."""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from mpqfx.data.census import census_warnings, data_census
from mpqfx.data.fashion_mnist import CLASSES, DEFAULT_DIR, DataError
from mpqfx.data.sampling import proportional_counts
from mpqfx.data.spec import DataSpec, calibration_indices, fixed_batches, fixed_indices, search_indices

TRAIN = {"ant": 30, "bee": 12, "cat": 6, "dog": 2}  # unbalanced on purpose
VAL = {"ant": 9, "bee": 5, "cat": 3, "dog": 3}


def write_tree(root: Path, counts: dict[str, dict[str, int]], side: int = 8) -> Path:
    for split, per_class in counts.items():
        for index, (name, n) in enumerate(per_class.items()):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (side, side), (40 * index, 7 * i % 256, 90)).save(root / split / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return write_tree(tmp_path_factory.mktemp("unbalanced"), {"train": TRAIN, "val": VAL})


@pytest.fixture(scope="module")
def model():
    return timm.create_model("test_resnet", num_classes=4)


def folder_counts(subset) -> dict[str, int]:
    """Images per class read from the drawn files' folder names (not from the labels the code keeps)."""
    return dict(Counter(Path(subset.dataset.paths[i]).parent.name for i in subset.indices))


def test_proportional_counts_by_hand():
    # 20 of (30, 12, 6, 2): shares 12, 4.8, 2.4, 0.8 -> floors 12, 4, 2, 0; dog gets its one image, bee the last one
    assert proportional_counts([30, 12, 6, 2], 20).tolist() == [12, 5, 2, 1]
    # 10 of (1000, 1 x 9): every class present comes first, at the cost of the big class's share
    assert proportional_counts([1000] + [1] * 9, 10).tolist() == [1] * 10
    assert proportional_counts([6000] * 10, 9600).tolist() == [960] * 10
    assert proportional_counts([5, 5, 5], 2).tolist() == [1, 1, 0]  # fewer images than classes
    assert proportional_counts([3, 0, 7], 99).tolist() == [3, 0, 7]  # a limit above the set: all of it


def test_imagefolder_limits_keep_every_class_in_proportion(tree, model):
    spec = DataSpec.parse(str(tree), train_limit=20, val_limit=8)
    train = spec.split("train", model, train=True)
    val = spec.split("val", model, train=False)
    assert folder_counts(train) == {"ant": 12, "bee": 5, "cat": 2, "dog": 1}  # see test_proportional_counts_by_hand
    # 8 of (9, 5, 3, 3): shares 3.6, 2, 1.2, 1.2 -> floors 3, 2, 1, 1; ant has the largest remainder
    assert folder_counts(val) == {"ant": 4, "bee": 2, "cat": 1, "dog": 1}
    assert [train[i][1] for i in range(len(train))] == [0] * 12 + [1] * 5 + [2] * 2 + [3]  # the labels the model sees


def test_fashion_mnist_limits_keep_every_class_in_proportion(fashion_dir):
    with gzip.open(fashion_dir / "train-labels-idx1-ubyte.gz") as fh:
        labels = np.frombuffer(fh.read(), dtype=np.uint8, offset=8)
    sizes = np.bincount(labels, minlength=10)
    subset = DataSpec("fashion-mnist", str(fashion_dir), train_limit=96).split("train", None, train=False)
    drawn = np.bincount([subset[i][1] for i in range(len(subset))], minlength=10)
    share = 96 * sizes / sizes.sum()
    assert drawn.sum() == 96 and (drawn >= 1).all() and (np.abs(drawn - share) < 1).all(), (drawn, share)
    assert all(labels[subset.indices[i]] == subset[i][1] for i in range(len(subset)))


@pytest.mark.skipif(not DEFAULT_DIR.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_the_recipe_limits_on_fashion_mnist_give_equal_classes():
    """The quickstart limits (9,600 / 2,000) of the balanced set (6,000 / 1,000 per class): 960 / 200 each."""
    spec = DataSpec.parse("fashion-mnist", train_limit=9600, val_limit=2000)
    census = data_census(spec.split("train", None, False), spec.split("val", None, False), [], [], None)
    assert census["classes"] == list(CLASSES)
    assert census["images_per_class"]["train"] == {name: 960 for name in CLASSES}
    assert census["images_per_class"]["held_out"] == {name: 200 for name in CLASSES}


def test_subsets_and_draws_are_the_same_for_every_instance_of_a_spec(tree, model):
    spec = DataSpec.parse(str(tree), train_limit=20, val_limit=8, seed=5)
    again = DataSpec.from_dict(spec.to_dict())  # what resume and `mpqfx search --run` rebuild from run.json
    first, second = spec.split("train", model, train=True), again.split("train", model, train=False)
    assert first.indices == second.indices
    assert calibration_indices(first, 9) == calibration_indices(second, 9)
    assert search_indices(first, 6, 9) == search_indices(second, 6, 9)
    other = DataSpec.parse(str(tree), train_limit=20, val_limit=8, seed=6).split("train", model, train=True)
    assert other.indices != first.indices and folder_counts(other) == folder_counts(first)


def test_search_and_calibration_draws_are_stratified_and_apart(tree, model):
    train = DataSpec.parse(str(tree), train_limit=20).split("train", model, train=False)  # 12, 5, 2, 1
    calibration = calibration_indices(train, 10)
    search = search_indices(train, 6, 10)
    # 10 of (12, 5, 2, 1): shares 6, 2.5, 1, 0.5 -> 6, 2, 1, 1 (dog's one image first; bee's remainder gives way)
    assert Counter(train.targets[calibration].tolist()) == {0: 6, 1: 2, 2: 1, 3: 1}
    # 6 of the other 10 (6, 3, 1, 0): shares 3.6, 1.8, 0.6, 0 -> 3, 1, 1, 0 then +1 to bee (0.8 > 0.6)
    assert Counter(train.targets[search].tolist()) == {0: 3, 1: 2, 2: 1}
    assert not set(calibration) & set(search)


def test_a_legacy_run_json_keeps_its_first_n_images(tree, model):
    """run.json files written before stratified subsets hold no sampling field: they mean the first N."""
    legacy = {"name": "imagefolder", "root": str(tree), "train_limit": 20, "val_limit": None, "image_size": None}
    subset = DataSpec.from_dict(legacy).split("train", model, train=False)
    assert subset.indices == list(range(20)) and folder_counts(subset) == {"ant": 20}


def test_a_class_left_with_fewer_than_five_images_is_a_warning_naming_it(tree, model):
    spec = DataSpec.parse(str(tree), train_limit=20, val_limit=8)
    census = data_census(spec.split("train", model, False), spec.split("val", model, False), [], [], spec.root)
    assert census_warnings(census) == [
        "class 'cat' has 2 training images (fewer than 5)", "class 'dog' has 1 training image (fewer than 5)",
        "class 'ant' has 4 held-out images (fewer than 5)", "class 'bee' has 2 held-out images (fewer than 5)",
        "class 'cat' has 1 held-out image (fewer than 5)", "class 'dog' has 1 held-out image (fewer than 5)"]


class Labelled(torch.utils.data.Dataset):
    """Image i is a 1x2x2 tensor filled with i; its label is targets[i]."""

    def __init__(self, targets):
        self.targets = list(targets)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return torch.full((1, 2, 2), float(i)), self.targets[i]


def test_fixed_batches_hold_the_drawn_images_in_order_and_leave_out_exclude():
    data = Labelled([0, 1] * 10)  # even indices class 0, odd class 1
    batches = fixed_batches(data, 6, batch_size=4, exclude=range(10))
    assert [len(y) for _, y in batches] == [4, 2]
    drawn = [int(x[0, 0, 0]) for images, _ in batches for x in images]
    assert all(i >= 10 for i in drawn) and len(set(drawn)) == 6
    assert [int(y) for _, labels in batches for y in labels] == [i % 2 for i in drawn]
    assert sorted(i % 2 for i in drawn) == [0, 0, 0, 1, 1, 1]  # 6 of two equal classes: 3 each
    assert drawn == fixed_indices(data, 6, 0, exclude=range(10))  # the seed defaults to 0, order kept


def test_exclude_is_left_out_while_exactly_enough_others_remain():
    data = Labelled([0, 1] * 10)
    assert sorted(fixed_indices(data, 10, 3, exclude=range(10))) == list(range(10, 20))
    fallback = fixed_indices(data, 12, 3, exclude=range(10))  # 10 left for 12: drawn from all 20
    assert len(set(fallback)) == 12 and set(fallback) & set(range(10))


def test_an_empty_data_set_is_a_clear_error():
    with pytest.raises(DataError, match="^the data set is empty$"):
        fixed_batches(Labelled([]), 1, 1)
    with pytest.raises(DataError, match=r"^data sampling: 'random' is not one of stratified, first$"):
        DataSpec("fashion-mnist", sampling="random")


def test_a_fashion_mnist_spec_reads_the_folder_it_names_split_by_split(fashion_dir, monkeypatch):
    monkeypatch.delenv("MPQFX_DATA_DIR", raising=False)
    spec = DataSpec.parse("fashion-mnist", str(fashion_dir))
    assert spec.root == str(fashion_dir) and spec.input_size(None) == (1, 32, 32)
    assert len(spec.split("train", None, train=False)) == 600 and len(spec.split("val", None, train=False)) == 200
    legacy = DataSpec.from_dict({"name": "fashion-mnist", "root": str(fashion_dir), "train_limit": None})
    assert list(legacy.split("train", None, train=False).indices) == list(range(600))  # "first", no limit: all


def test_fashion_mnist_and_imagefolder_specs_know_their_classes_and_model_arguments(tree):
    fashion = DataSpec("fashion-mnist", "/unused")
    assert fashion.model_kwargs() == {"in_chans": 1, "num_classes": 10}  # 28x28 grayscale, 10 classes
    assert fashion.classes()[:2] == ["T-shirt/top", "Trouser"] and len(fashion.classes()) == 10
    folder = DataSpec.parse(str(tree))
    assert folder.classes() == ["ant", "bee", "cat", "dog"]
    assert folder.model_kwargs() == {"num_classes": 4}
