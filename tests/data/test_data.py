"""Fashion-MNIST IDX reading, ImageFolder checks, data specs and fixed batches."""

from __future__ import annotations

import gzip

import pytest
import torch
from PIL import Image

from mpqfx.data.fashion_mnist import DataError, FashionMNIST, find_dir, read_idx
from mpqfx.data.imagefolder import class_names
from mpqfx.data.spec import DataSpec, fixed_batches


def test_idx_round_trip_and_dataset(fashion_dir):
    images = read_idx(fashion_dir / "train-images-idx3-ubyte.gz")
    assert images.shape == (600, 28, 28) and images.dtype.name == "uint8"
    train = FashionMNIST("train", fashion_dir, size=32, limit=100)
    x, y = train[3]
    assert len(train) == 100 and x.shape == (1, 32, 32) and 0 <= y < 10
    assert len(FashionMNIST("test", fashion_dir)) == 200
    augmented = FashionMNIST("train", fashion_dir, size=32, train=True)
    assert augmented[0][0].shape == (1, 32, 32)


def test_truncated_and_missing_files_are_clear_errors(fashion_dir, tmp_path, monkeypatch):
    data = gzip.decompress((fashion_dir / "train-images-idx3-ubyte.gz").read_bytes())
    (tmp_path / "bad.gz").write_bytes(gzip.compress(data[:5000]))
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "bad.gz")
    monkeypatch.delenv("MPQFX_DATA_DIR", raising=False)
    monkeypatch.setattr("mpqfx.data.fashion_mnist.DEFAULT_DIR", tmp_path / "nowhere")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        find_dir(tmp_path / "empty")
    monkeypatch.setenv("MPQFX_DATA_DIR", str(fashion_dir))
    assert find_dir(None) == fashion_dir


def test_the_debian_package_files_read():
    """The real data set (`make test` installs Debian's dataset-fashion-mnist, or $MPQFX_DATA_DIR names it)."""
    try:
        directory = find_dir(None)
    except DataError as error:
        pytest.skip(f"{error} (`make test` installs it)")
    train = FashionMNIST("train", directory, limit=10)
    assert len(FashionMNIST("test", directory)) == 10_000 and train.images.shape[1:] == (28, 28)
    assert len(FashionMNIST("train", directory)) == 60_000 and int(train.labels.max()) <= 9


def _image_tree(root, classes=("cat", "dog"), per_class=3):
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (40, 40), color=(i * 40, 80, 120)).save(root / split / c / f"{i}.png")


def test_imagefolder_spec_builds_timm_splits(tmp_path):
    _image_tree(tmp_path)
    spec = DataSpec.parse(str(tmp_path), val_limit=2)
    assert spec.name == "imagefolder" and spec.model_kwargs() == {"num_classes": 2}
    import timm

    model = timm.create_model("test_resnet", num_classes=2)
    train = spec.split("train", model, train=True)
    val = spec.split("val", model, train=False)
    x, y = train[0]
    assert x.shape == spec.input_size(model) and len(val) == 2
    assert DataSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize("layout,match", [
    (lambda r: None, "does not exist"),
    (lambda r: (r / "train").mkdir(parents=True), "has no val/ folder"),
    (lambda r: [(r / s).mkdir(parents=True) for s in ("train", "val")], "has no class folders"),
    (lambda r: [(r / s / "a").mkdir(parents=True) for s in ("train", "val")], "class folder 'a' holds no images"),
])
def test_malformed_imagefolder_is_a_clear_error(tmp_path, layout, match):
    root = tmp_path / "data"
    layout(root)
    with pytest.raises(DataError, match=match):
        class_names(root)


def test_fixed_batches_are_seeded(fashion_dir):
    data = FashionMNIST("train", fashion_dir)
    a = fixed_batches(data, 70, 32, seed=1)
    b = fixed_batches(data, 70, 32, seed=1)
    assert [x.shape[0] for x, _ in a] == [32, 32, 6]
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, b))


def test_val_classes_that_differ_from_train_are_a_clear_error(tmp_path):
    _image_tree(tmp_path / "data", classes=("cat", "dog"), per_class=1)
    (tmp_path / "data" / "val" / "dog").rename(tmp_path / "data" / "val" / "dgo")
    with pytest.raises(DataError, match=r"class 'dog' is in train/ but not in val/"):
        class_names(tmp_path / "data")
    (tmp_path / "data" / "val" / "dgo").rename(tmp_path / "data" / "val" / "dog")
    assert class_names(tmp_path / "data") == ["cat", "dog"]
