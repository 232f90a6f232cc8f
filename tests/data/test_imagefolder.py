"""Bad input in ImageFolder trees: unreadable files (an error naming the file, or left out and
counted with skip_bad_images), image modes converted to the model's channels, unmatched classes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from torch.utils.data import DataLoader

from mpqfx.data.census import census_warnings, data_census
from mpqfx.data.fashion_mnist import DataError
from mpqfx.data.imagefolder import BadImageError, class_names
from mpqfx.data.spec import DataSpec

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGENET_CFG = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD)  # test_resnet's own are 0.5 for every channel


def write_tree(root: Path, per_class: int = 6, classes=("ant", "bee")) -> Path:
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (8, 8), (30 * i, 60, 90)).save(root / split / c / f"{i}.png")
    return root


def break_files(root: Path) -> list[Path]:
    """train/ant/1.png truncated, train/bee/2.png not an image at all."""
    truncated, garbage = root / "train" / "ant" / "1.png", root / "train" / "bee" / "2.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:-40])
    garbage.write_bytes(b"this is no image")
    return [truncated, garbage]


@pytest.fixture(scope="module")
def model():
    return timm.create_model("test_resnet", num_classes=2, pretrained_cfg_overlay=IMAGENET_CFG)


def test_an_unreadable_image_is_one_line_naming_the_file(tmp_path, model):
    truncated, garbage = break_files(write_tree(tmp_path))
    train = DataSpec.parse(str(tmp_path)).split("train", model, train=True)
    for path in (truncated, garbage):
        position = train.dataset.paths.index(str(path))
        with pytest.raises(BadImageError, match="--skip-bad-images") as caught:
            train[train.indices.index(position)]
        assert str(caught.value).startswith(f"{path}: cannot read the image (") and "\n" not in str(caught.value)
    with pytest.raises(BadImageError) as caught:  # from a DataLoader worker process too
        list(DataLoader(train, batch_size=4, num_workers=1))
    assert str(caught.value).startswith(f"{truncated}: cannot read the image (") and "\n" not in str(caught.value)


def test_skip_bad_images_leaves_them_out_and_counts_them(tmp_path, model):
    break_files(write_tree(tmp_path))
    spec = DataSpec.parse(str(tmp_path), skip_bad_images=True)
    train = spec.split("train", model, train=True)
    assert len(train) == 10 and Counter(train.targets.tolist()) == {0: 5, 1: 5}
    assert all(train[i][0].shape == (3, 160, 160) for i in range(len(train)))  # every kept file reads
    census = data_census(train, spec.split("val", model, train=False), [], [], spec.root)
    assert census["skipped_images"] == {"train": ["train/ant/1.png", "train/bee/2.png"], "held_out": []}
    assert "training: 2 unreadable image files left out (--skip-bad-images): train/ant/1.png, train/bee/2.png" \
        in census_warnings(census)


def test_with_a_limit_a_skipped_image_is_replaced_by_another_of_its_class(tmp_path, model):
    broken = {str(p) for p in break_files(write_tree(tmp_path))}
    spec = DataSpec.parse(str(tmp_path), train_limit=10, skip_bad_images=True)
    skipped = []
    for seed in range(4):  # whichever images a seed draws first, each class keeps its 5 of 6
        train = DataSpec.from_dict({**spec.to_dict(), "seed": seed}).split("train", model, train=False)
        assert Counter(Path(train.dataset.paths[i]).parent.name for i in train.indices) == {"ant": 5, "bee": 5}
        assert set(train.skipped) <= broken and not broken & {train.dataset.paths[i] for i in train.indices}
        skipped += train.skipped
    assert skipped  # some seed drew a broken file and replaced it


@pytest.mark.parametrize("mode,color,rgb", [
    ("L", 200, (200, 200, 200)),
    ("P", 1, (10, 200, 30)),  # palette entry 1
    ("CMYK", (0, 255, 0, 0), (255, 0, 255)),  # full magenta ink: green absorbed
    ("LA", (90, 128), (90, 90, 90)),
    ("RGBA", (10, 20, 30, 0), (10, 20, 30)),
])
def test_other_image_modes_are_converted_to_rgb(tmp_path, model, mode, color, rgb):
    write_tree(tmp_path, per_class=1)
    path = tmp_path / "val" / "ant" / "0.tiff"
    (tmp_path / "val" / "ant" / "0.png").unlink()
    image = Image.new(mode, (8, 8), color)
    if mode == "P":
        image.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    image.save(path)
    val = DataSpec.parse(str(tmp_path)).split("val", model, train=False)
    x, label = val[0]
    expected = torch.tensor([(v / 255 - m) / s for v, m, s in zip(rgb, IMAGENET_MEAN, IMAGENET_STD)])
    assert label == 0 and x.shape == (3, 160, 160)
    assert torch.allclose(x, expected[:, None, None].expand_as(x), atol=1e-5)


def test_a_one_channel_model_gets_grayscale_images(tmp_path):
    write_tree(tmp_path, per_class=1)
    Image.new("RGB", (8, 8), (200, 100, 50)).save(tmp_path / "val" / "ant" / "0.png")
    model = timm.create_model("test_resnet", num_classes=2, in_chans=1, pretrained_cfg_overlay=IMAGENET_CFG)
    spec = DataSpec.parse(str(tmp_path))
    x, _ = spec.split("val", model, train=False)[0]
    luma = (200 * 299 + 100 * 587 + 50 * 114) / 1000  # ITU-R 601-2, what PIL's convert("L") documents
    mean, std = sum(IMAGENET_MEAN) / 3, sum(IMAGENET_STD) / 3
    assert spec.input_size(model) == (1, 160, 160) and x.shape == (1, 160, 160)
    assert torch.allclose(x, torch.full_like(x, (round(luma) / 255 - mean) / std), atol=1e-5)


@pytest.mark.parametrize("layout,match", [
    (lambda r: (r / "val" / "cow").mkdir(), "class 'cow' is in val/ but not in train/"),
    (lambda r: [p.unlink() for p in (r / "val" / "bee").iterdir()] + [(r / "val" / "bee").rmdir()],
     "class 'bee' is in train/ but not in val/"),
    (lambda r: [p.unlink() for p in (r / "val" / "bee").iterdir()], "val'?: class folder 'bee' holds no images"),
])
def test_unmatched_classes_are_one_line_naming_the_class(tmp_path, layout, match):
    write_tree(tmp_path, per_class=1)
    layout(tmp_path)
    with pytest.raises(DataError, match=match) as caught:
        class_names(tmp_path)
    assert "\n" not in str(caught.value)


def _png_and_garbage() -> tuple[bytes, bytes]:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 200, 30)).save(buffer, format="PNG")
    return buffer.getvalue(), b"\0" * len(buffer.getvalue())


def test_decodes_is_remembered_per_file_version_not_per_path(tmp_path):
    import os

    from mpqfx.data.imagefolder import decodes

    png, garbage = _png_and_garbage()
    same_size, same_time = tmp_path / "a.png", tmp_path / "b.png"
    same_size.write_bytes(garbage)
    os.utime(same_size, ns=(10**18, 10**18))
    assert decodes(str(same_size)) is False
    same_size.write_bytes(png)  # same size, another mtime: a new version
    os.utime(same_size, ns=(2 * 10**18, 2 * 10**18))
    assert decodes(str(same_size)) is True

    same_time.write_bytes(garbage + b"\0")
    os.utime(same_time, ns=(10**18, 10**18))
    assert decodes(str(same_time)) is False
    same_time.write_bytes(png)  # same mtime, another size: a new version
    os.utime(same_time, ns=(10**18, 10**18))
    assert decodes(str(same_time)) is True


def test_a_worker_s_error_keeps_only_its_own_last_line():
    """A DataLoader worker re-raises with the whole traceback; the message keeps the original one."""
    own = "a/b.png: cannot read the image (BadImageError: truncated); --skip-bad-images leaves such files out"
    worker = ("Caught BadImageError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
              f'  File "x.py", line 1, in load\nmpqfx.data.imagefolder.BadImageError: {own}\n  \n')
    assert str(BadImageError(worker)) == own
    assert str(BadImageError(own)) == own


def test_labels_follow_the_natural_order_of_the_class_folders(tmp_path, model):
    """Labels by hand: c1 < c2 < c10 (natural order; a plain sort puts c10 before c2)."""
    write_tree(tmp_path, per_class=1, classes=("c10", "c2", "c1"))
    assert class_names(tmp_path) == ["c1", "c2", "c10"]
    val = DataSpec.parse(str(tmp_path)).split("val", model, train=False)
    by_folder = {Path(val.dataset.paths[i]).parent.name: val[k][1] for k, i in enumerate(val.indices)}
    assert by_folder == {"c1": 0, "c2": 1, "c10": 2}


def test_labels_follow_the_given_classes_not_the_split_s_own_folders(tmp_path):
    from mpqfx.data.imagefolder import ImageFolderSplit

    write_tree(tmp_path, per_class=2, classes=("ant", "bee", "cow"))
    split = ImageFolderSplit(tmp_path, "val", ["cow", "ant", "bee"], transform=lambda image: image, mode="RGB")
    labels = {Path(p).parent.name: int(t) for p, t in zip(split.paths, split.targets)}
    assert labels == {"cow": 0, "ant": 1, "bee": 2} and len(split) == 6
    assert split.targets.dtype.name == "int64"
    image, label = split[split.paths.index(str(tmp_path / "val" / "bee" / "1.png"))]
    assert label == 2 and image.mode == "RGB" and image.getpixel((0, 0)) == (30, 60, 90)


def test_malformed_trees_are_these_exact_messages(tmp_path):
    root = tmp_path / "data"
    with pytest.raises(DataError) as caught:
        class_names(root)
    assert str(caught.value) == f"data directory {str(root)!r} does not exist"
    (root / "train").mkdir(parents=True)
    with pytest.raises(DataError) as caught:
        class_names(root)
    assert str(caught.value) == (f"{str(root)!r} is not an ImageFolder tree: it has no val/ folder "
                                 "(expected train/<class>/<image> and val/<class>/<image>)")
    (root / "val").mkdir()
    with pytest.raises(DataError) as caught:
        class_names(root)
    assert str(caught.value) == f"{str(root / 'train')!r} has no class folders (expected train/<class>/<image>)"
    for split in ("train", "val"):
        (root / split / "ant").mkdir()
        Image.new("RGB", (4, 4)).save(root / split / "ant" / "0.PNG")  # suffixes in any case
    (root / "val" / "ant" / "0.PNG").rename(root / "val" / "ant" / "0.txt")
    with pytest.raises(DataError) as caught:
        class_names(root)
    assert str(caught.value) == (f"{str(root / 'val')!r}: class folder 'ant' holds no images "
                                 "(.bmp, .jpeg, .jpg, .png, .tif, .tiff, .webp)")
    (root / "val" / "ant" / "0.txt").rename(root / "val" / "ant" / "0.Jpg")
    assert class_names(root) == ["ant"]
    (root / "val" / "bee").mkdir()
    with pytest.raises(DataError) as caught:
        class_names(root)
    assert str(caught.value) == (f"{str(root)!r}: class 'bee' is in val/ but not in train/ "
                                 "(train/ and val/ must hold the same class folders)")


def test_input_channels_are_the_stem_s_and_three_without_a_4d_weight():
    from torch import nn

    from mpqfx.data.imagefolder import data_config, input_channels

    assert input_channels(None) == 3
    assert input_channels(nn.Sequential(nn.Flatten(), nn.Linear(12, 2))) == 3
    assert input_channels(nn.Sequential(nn.Linear(12, 12), nn.Conv2d(5, 4, 3), nn.Conv2d(4, 7, 3))) == 5
    assert data_config(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)))["input_size"][0] == 3
    with pytest.raises(DataError) as caught:
        data_config(nn.Conv2d(2, 4, 3))
    assert str(caught.value) == "ImageFolder images load as 1 (grayscale) or 3 (RGB) channels; the model takes 2"


def test_the_training_split_is_augmented_and_the_other_is_not(tmp_path, model):
    """A dark-left, bright-right image: a crop keeps that order, only a horizontal flip reverses it."""
    write_tree(tmp_path, per_class=1)
    image = Image.new("RGB", (32, 32), (0, 0, 0))
    image.paste((255, 255, 255), (16, 0, 32, 32))
    image.save(tmp_path / "train" / "ant" / "0.png")
    spec = DataSpec.parse(str(tmp_path))
    position = lambda split: split.indices.index(split.dataset.paths.index(str(tmp_path / "train" / "ant" / "0.png")))
    torch.manual_seed(0)
    train = spec.split("train", model, train=True)
    draws = [train[position(train)][0] for _ in range(12)]
    flipped = [x[:, :, :80].mean() > x[:, :, 80:].mean() + 0.5 for x in draws]
    assert any(flipped) and not all(flipped)
    plain = spec.split("train", model, train=False)
    x = plain[position(plain)][0]
    assert torch.equal(x, plain[position(plain)][0])
    assert torch.allclose(x[0, :, :60], torch.full((160, 60), -IMAGENET_MEAN[0] / IMAGENET_STD[0]), atol=1e-5)
    assert torch.allclose(x[0, :, 100:], torch.full((160, 60), (1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]), atol=1e-5)
