"""Float weights from a local file through timm's loader: the file formats users bring, the
classifier and input conv timm fits to the data, what the warm start records, and the refusals."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from mpqfx import MpqfxError
from mpqfx.compress.warm_start import Adapted, create_float_model, warm_start_record
from mpqfx.recipe import Recipe


@pytest.fixture(scope="module")
def imagenet_style():
    """A test_resnet with timm's default 1000-class head, as an ImageNet checkpoint holds it."""
    torch.manual_seed(5)
    return timm.create_model("test_resnet").eval()


def _save(kind: str, state: dict, path):
    if kind == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif kind == "state_dict":
        torch.save(state, path)
    elif kind == "timm":  # timm train.py: the weights under "state_dict", DDP's "module." prefix
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    else:  # torchvision references/classification: under "model"
        torch.save({"model": state, "epoch": 3}, path)


@pytest.mark.parametrize("kind,suffix", [("state_dict", ".pt"), ("safetensors", ".safetensors"), ("timm", ".pth.tar"),
                                         ("torchvision", ".pth")])
def test_a_1000_class_file_gets_a_new_10_class_head_and_keeps_every_other_weight(kind, suffix, imagenet_style, tmp_path):
    state = imagenet_style.state_dict()
    path = tmp_path / f"w{suffix}"
    _save(kind, state, path)
    model, adapted = create_float_model("test_resnet", {"num_classes": 10}, False, path)
    assert adapted == Adapted(classes=(1000, 10))
    assert model.fc.weight.shape == (10, 96)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if not k.startswith("fc."))


def test_a_file_that_fits_is_loaded_whole_and_needs_no_fine_tune(tmp_path):
    torch.manual_seed(6)
    mine = timm.create_model("test_resnet", num_classes=10)  # e.g. the user's own fine-tuned weights
    torch.save(mine.state_dict(), tmp_path / "mine.pt")
    model, adapted = create_float_model("test_resnet", {"num_classes": 10}, False, tmp_path / "mine.pt")
    assert not adapted  # timm keeps the classifier: its size is the file's, not the 1000 of the default cfg
    assert all(torch.equal(model.state_dict()[k], v) for k, v in mine.state_dict().items())
    record = warm_start_record("checkpoint", adapted, Recipe.load("quickstart"), tmp_path / "mine.pt")
    assert record["float_epochs"] == 0 and record["note"].endswith("used as they are")


def test_rgb_weights_on_grayscale_data_sum_the_first_conv_over_its_input_channels(imagenet_style, tmp_path):
    torch.save(imagenet_style.state_dict(), tmp_path / "rgb.pt")
    model, adapted = create_float_model("test_resnet", {"num_classes": 10, "in_chans": 1}, False, tmp_path / "rgb.pt")
    assert adapted == Adapted(classes=(1000, 10), channels=(3, 1))
    rgb = imagenet_style.conv1[0].weight
    assert torch.allclose(model.conv1[0].weight, rgb.sum(dim=1, keepdim=True))  # timm's adapt_input_conv for 1 channel


def test_the_record_says_what_was_re_initialised_and_how_long_it_was_fine_tuned():
    quickstart = Recipe.load("quickstart")  # warm_start.epochs: 2
    record = warm_start_record("pretrained", Adapted(classes=(1000, 10)), quickstart, None)
    assert record == {"source": "pretrained", "classes": [1000, 10], "channels": None, "float_epochs": 2,
                      "note": "timm's pretrained weights; classifier re-initialised: 1000 -> 10 classes; "
                              "fine-tuned 2 float epochs"}
    no_fine_tune = quickstart.replace(warm_start=quickstart.warm_start.__class__(epochs=0))
    assert warm_start_record("pretrained", Adapted(classes=(1000, 10)), no_fine_tune, None)["note"].endswith(
        "not fine-tuned (warm_start.epochs is 0)")
    assert warm_start_record("train", Adapted(), quickstart, None)["note"] == "random weights; trained 2 float epochs"


def test_a_file_of_another_architecture_names_the_first_keys_that_differ(tmp_path):
    torch.save(timm.create_model("test_efficientnet").state_dict(), tmp_path / "effnet.pt")
    with pytest.raises(MpqfxError) as info:
        create_float_model("test_resnet", {"num_classes": 10}, False, tmp_path / "effnet.pt")
    message = str(info.value)
    assert message.startswith(f"--checkpoint: {str(tmp_path / 'effnet.pt')!r} does not fit test_resnet: keys differ")
    assert "missing: conv1.0.weight, conv1.1.weight, conv1.1.bias and" in message
    assert "unexpected: conv_stem.weight" in message and "\n" not in message


@pytest.mark.parametrize("content,message", [
    (b"not a torch file", "is corrupt or not a weights file"),
    (None, "a training checkpoint holding only tensors and plain values"),
])
def test_unreadable_files_are_one_line_errors(content, message, tmp_path):
    path = tmp_path / "w.pt"
    if content is None:  # an object besides tensors that torch.load(weights_only=True) refuses
        import fractions
        torch.save({"state_dict": {}, "ratio": fractions.Fraction(1, 3)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(MpqfxError) as info:
        create_float_model("test_resnet", {"num_classes": 10}, False, path)
    assert "is corrupt or not a weights file" in str(info.value) and message in str(info.value)
    assert "\n" not in str(info.value)


def test_pretrained_offline_names_checkpoint_as_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MpqfxError) as info:
        create_float_model("test_resnet", {"num_classes": 10}, True, None)
    message = str(info.value)
    assert message.startswith("--pretrained: cannot fetch timm's pretrained weights for 'test_resnet'")
    assert message.endswith("offline, download them elsewhere and pass the file with --checkpoint PATH")
