"""Atomic outputs: a reader sees the old file or the new one, never half of one, and a failed write
leaves nothing behind."""

import json

import pytest

from unlearn_audit.utils import io


def test_json_is_replaced_whole_and_no_temporary_file_stays(tmp_path):
    path = tmp_path / "out.json"
    io.atomic_write_json(path, {"a": 1})
    io.atomic_write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "out.txt"
    io.atomic_write_text(path, "old")

    def broken_replace(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(io.os, "replace", broken_replace)
    with pytest.raises(OSError):
        io.atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_a_folder_appears_only_when_its_block_finishes(tmp_path):
    final = tmp_path / "model"
    with pytest.raises(RuntimeError):
        with io.atomic_dir(final) as tmp:
            (tmp / "weights").write_text("half")
            raise RuntimeError("killed mid-way")
    assert list(tmp_path.iterdir()) == []
    with io.atomic_dir(final) as tmp:
        (tmp / "weights").write_text("whole")
    with io.atomic_dir(final) as tmp:  # a second write replaces the first
        (tmp / "weights").write_text("newer")
    assert (final / "weights").read_text() == "newer"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
