"""Atomic file writes and output claims: a reader (or a crash) never sees a partial file, and
two writers never silently replace each other's files. Used by every write path.

Every temporary or claim file this package creates has a name no user file has
(``.<name>.glmha-<pid>-<hex>.tmp``, ``.<name>.glmha-claim``), so that clean-ups remove
only what the package itself left.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import socket
from pathlib import Path
from typing import Callable, Iterator, Sequence

from ..validation import InputError

_TEMPORARY = re.compile(r"\..+\.glmha-\d+-[0-9a-f]{8}\.tmp")
_CLAIM_SUFFIX = ".glmha-claim"


class OutputExistsError(InputError):
    """An output file exists already (or another process claimed it): nothing was replaced."""


def is_temporary(path: str | os.PathLike) -> bool:
    """Whether ``path`` is named as :func:`atomic_write`'s temporary files are (and only those)."""
    return _TEMPORARY.fullmatch(Path(path).name) is not None


def is_claim(path: str | os.PathLike) -> bool:
    """Whether ``path`` is named as :func:`claim_outputs`' claim files are."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(_CLAIM_SUFFIX)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], *, replace: bool = True) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a partial file.

    The file is flushed to disk before the rename and the folder after it, so a crash leaves
    either the old file or the new one. The file gets the usual permissions (0o666 less the
    process's umask) even when ``write`` replaces the temporary file with a private one (as
    safetensors does), and the temporary file (``.<name>.glmha-<pid>-<random>.tmp``) is
    removed if ``write`` fails. With ``replace=False`` the file is only created, never
    replaced: if ``path`` exists by then (another process wrote it meanwhile),
    :class:`OutputExistsError` is raised and nothing is changed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.glmha-{os.getpid()}-{secrets.token_hex(4)}.tmp"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # 0o666 minus the umask, as open() would
    try:
        write(str(tmp))
        os.chmod(tmp, 0o666 & ~_umask())
        _fsync(tmp, os.O_RDWR)
        if replace:
            os.replace(tmp, path)
        else:
            _publish_new(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0), folder=True)
    return path


def _publish_new(tmp: Path, path: Path) -> None:
    """Move ``tmp`` to ``path`` unless ``path`` exists: a hard link is created atomically or not at all."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise OutputExistsError(f"{path} was written by another process meanwhile; it was left as it is") from None
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        # file systems without hard links (FAT, some network mounts): create the name first, then fill it
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            raise OutputExistsError(f"{path} was written by another process meanwhile; it was left as it is") from None
        os.replace(tmp, path)
        return
    tmp.unlink()


# ----------------------------------------------------------------------------- output claims
def _claim_path(path: Path) -> Path:
    return path.parent / f".{path.name}{_CLAIM_SUFFIX}"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine still runs (a killed child its parent has not reaped does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    try:  # a zombie still answers kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _claim_is_stale(claim: Path) -> bool:
    """A claim left by a process of this machine that no longer runs (killed before it could remove it)."""
    try:
        host, pid = claim.read_text().split()[:2]
        pid_number = int(pid)
    except (OSError, ValueError):
        return False  # unreadable or being written: treat as held
    if host != socket.gethostname():
        return False  # another machine's process: cannot tell, so it is respected
    return not pid_alive(pid_number)


@contextlib.contextmanager
def claim_outputs(paths: Sequence[str | os.PathLike]) -> Iterator[list[Path]]:
    """Claim each output path for this process (an exclusive-create claim file beside it) while the block runs.

    A second process claiming one of the same paths gets :class:`OutputExistsError` naming it
    and the process that holds it, before it does any work. Claims of processes of this
    machine that have died are taken over. The claims are removed when the block ends.
    """
    taken: list[Path] = []
    try:
        for path in map(Path, paths):
            claim = _claim_path(path)
            claim.parent.mkdir(parents=True, exist_ok=True)
            for attempt in (0, 1):
                try:
                    fd = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
                except FileExistsError:
                    if attempt == 0 and _claim_is_stale(claim):
                        claim.unlink(missing_ok=True)
                        continue
                    try:
                        holder = " ".join(claim.read_text().split()[:2])
                    except OSError:
                        holder = "unknown"
                    raise OutputExistsError(f"the output {path} is being written by another glmha process ({holder}); "
                                            "wait for it to end or choose another output") from None
                with os.fdopen(fd, "w") as handle:
                    handle.write(f"{socket.gethostname()} {os.getpid()}\n")
                taken.append(claim)
                break
        yield [Path(p) for p in paths]
    finally:
        for claim in taken:
            claim.unlink(missing_ok=True)


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
