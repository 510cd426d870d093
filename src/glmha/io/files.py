"""Atomic file writes: a reader (or a crash) never sees a partial file. Used by every write path."""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Callable


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a partial file.

    The file is flushed to disk before the rename and the folder after it, so a crash leaves
    either the old file or the new one. The file gets the usual permissions (0o666 less the
    process's umask) even when ``write`` replaces the temporary file with a private one (as
    safetensors does), and the temporary file (``.<name>.<pid>.<random>.tmp``) is removed if
    ``write`` fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # 0o666 minus the umask, as open() would
    try:
        write(str(tmp))
        os.chmod(tmp, 0o666 & ~_umask())
        _fsync(tmp, os.O_RDWR)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0), folder=True)
    return path


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


def _fsync(path: Path, flags: int, folder: bool = False) -> None:
    try:
        fd = os.open(path, flags)
    except OSError:
        if folder:  # folders cannot be opened on Windows; nothing to flush there
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not folder:  # some file systems refuse fsync on folders, which is harmless
            raise
    finally:
        os.close(fd)
