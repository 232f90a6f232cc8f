"""Atomic writes: whole files or none, with the permissions the user's umask gives."""

from __future__ import annotations

import os

import pytest

from mpqfx.io import atomic_open, atomic_write_bytes, atomic_write_text, current_umask


@pytest.fixture
def umask():
    """Set the process umask for one test and put the old one back."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077, 0o002])
def test_written_files_follow_the_umask(mask, umask, tmp_path):
    umask(mask)
    assert current_umask() == mask
    atomic_write_text(tmp_path / "a.txt", "hello")
    atomic_write_bytes(tmp_path / "sub" / "b.bin", b"\x00\x01")
    for path in (tmp_path / "a.txt", tmp_path / "sub" / "b.bin"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask, oct(path.stat().st_mode)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "report.md"
    atomic_write_text(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_open(path, "w") as fh:
            fh.write("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]
