"""Atomic writes: the target holds the old content or the whole new one, and no temporary file is
left behind either way."""

import pytest

from workloads.io import atomic_open, atomic_path, write_text


def test_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.txt"
    write_text(target, "old")
    with atomic_open(target, "w") as fh:
        fh.write("new ")
        assert target.read_text() == "old"  # not visible until the block ends
        fh.write("content")
    assert target.read_text() == "new content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_error_keeps_old_file_and_removes_temp(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.bin.") and tmp.name.endswith(".tmp")
        tmp.write_bytes(b"half")
        raise RuntimeError("writer failed")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_writers_get_distinct_temp_names(tmp_path):
    with atomic_path(tmp_path / "a") as t1, atomic_path(tmp_path / "a") as t2:
        assert t1 != t2
        t1.write_text("1")
        t2.write_text("2")
    assert (tmp_path / "a").read_text() == "1"  # the last to finish wins, whole
