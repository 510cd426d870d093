import os

import pytest

import glmha.io.files as files
from glmha.io.files import atomic_write


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")

    def failing_writer(tmp):
        open(tmp, "w").write("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, failing_writer)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_write_flushes_and_uses_the_umask(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(files.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    previous = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "a.txt", lambda tmp: open(tmp, "w").write("x"))
    finally:
        os.umask(previous)
    assert path.read_text() == "x" and (path.stat().st_mode & 0o777) == 0o644
    assert len(synced) == 2  # the file before the rename, the folder after it
    with pytest.raises(ZeroDivisionError):
        atomic_write(tmp_path / "b.txt", lambda tmp: 1 / 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]  # no temporary file left


def test_the_file_gets_the_umasks_permissions_even_if_the_writer_makes_it_private(tmp_path):
    def private_writer(tmp):  # as safetensors does: a new file of mode 0o600 in place of the temporary one
        os.unlink(tmp)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))

    old = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "weights.safetensors", private_writer)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
