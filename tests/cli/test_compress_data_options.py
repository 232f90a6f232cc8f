"""``mpqfx compress`` passes its data options through to ``compress`` (a stand-in records them)."""

from __future__ import annotations

import importlib

import pytest
from click.testing import CliRunner

from mpqfx.cli.main import cli
from mpqfx.errors import MpqfxError


@pytest.mark.parametrize("flag,expected", [(["--skip-bad-images"], True), ([], None)])
def test_skip_bad_images_reaches_compress(monkeypatch, flag, expected):
    seen = {}

    def record(*args, **kwargs):
        seen.update(kwargs)
        raise MpqfxError("stop here")

    monkeypatch.setattr(importlib.import_module("mpqfx.compress"), "compress", record)  # mpqfx.compress is the function
    result = CliRunner().invoke(cli, ["compress", "--model", "test_resnet", "--train-images", "30", *flag])
    assert result.exit_code == 2 and result.stderr.strip() == "mpqfx: error: stop here"
    assert seen["skip_bad_images"] is expected and seen["train_images"] == 30  # None: the recipe's data.skip_bad_images
