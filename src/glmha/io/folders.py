"""Output folders: a command writes only into a new or empty folder, or into one it made itself.

Each folder a command makes for its results (a training run, an evaluation, a demo, a study,
a distillation) holds a small marker file, :data:`MARKER`, naming its kind. A command then
accepts a folder only when it is new, empty, or marked with its own kind; a folder holding
anything else (a dataset, a study, a user's files) is refused in one line, so that nothing a
command did not create is replaced or deleted. A folder may not be, hold, or lie inside one of
the command's inputs either.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Sequence

from ..validation import InputError
from .files import atomic_write, is_claim, is_temporary, pid_alive

MARKER = ".glmha-folder.json"
LOCK = ".lock"
# The kinds of folders, as users know them (a distillation trains through glmha train: its folder is a training run).
KINDS = {"train": "training run", "evaluate": "evaluation", "demo": "demo", "study": "study", "rank": "rank analysis"}


class FolderError(InputError):
    """A folder cannot be used for a command's outputs: it holds something else, or an input."""


def _own(path: Path) -> bool:
    return path.name in (MARKER, LOCK) or is_temporary(path) or is_claim(path)


def folder_kind(folder: str | os.PathLike) -> str | None:
    """The kind recorded in ``folder``'s marker, or None (no marker, or not readable)."""
    try:
        record = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    kind = record.get("kind") if isinstance(record, dict) else None
    return kind if isinstance(kind, str) else None


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_not_input(output: str | os.PathLike, inputs: Iterable[str | os.PathLike], what: str = "output") -> None:
    """Refuse an output (file or folder) that is one of ``inputs``, holds one, or lies inside an input folder."""
    out = Path(output).resolve()
    for item in inputs:
        if item is None or str(item) == "":
            continue
        source = Path(item).resolve()
        same_file = False
        try:
            same_file = os.path.samefile(out, source)
        except OSError:
            pass
        if same_file or out == source:
            raise FolderError(f"the {what} {output} is the input {item}; choose another {what}")
        if _within(source, out):
            raise FolderError(f"the {what} {output} holds the input {item}; choose another {what}")
        if source.is_dir() and _within(out, source):
            raise FolderError(f"the {what} {output} lies inside the input folder {item}; choose another {what}")


def claim_folder(
    folder: str | os.PathLike,
    kind: str,
    *,
    inputs: Iterable[str | os.PathLike] = (),
    legacy: Sequence[str] = (),
    option: str = "--output",
) -> Path:
    """Make ``folder`` a ``kind`` output folder, or refuse it with :class:`FolderError`.

    Accepted: a new or empty folder (it gets the marker), or one already marked ``kind`` (a
    run to resume, results to update). ``legacy`` names files whose presence marks a ``kind``
    folder written before markers existed (it gets the marker too). Refused: a folder of
    another kind, one holding files no command of this package wrote, a file, and a folder
    that is, holds or lies inside one of ``inputs``. ``option`` names the argument in messages.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown folder kind {kind!r}; known: {list(KINDS)}")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FolderError(f"{option} {folder} is a file, not a folder; choose a folder for the {KINDS[kind]}")
    check_not_input(folder, inputs, f"{option} folder")
    found = folder_kind(folder) if folder.is_dir() else None
    if found == kind:
        return folder
    if found is not None:
        raise FolderError(f"{option} {folder} holds a glmha {KINDS.get(found, found)}, not a {KINDS[kind]}; "
                          "nothing in it was changed: choose another folder")
    if folder.is_dir():
        others = sorted(p.name for p in folder.iterdir() if not _own(p))
        if others and not any((folder / name).exists() for name in legacy):
            shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
            raise FolderError(f"{option} {folder} holds files that are not a glmha {KINDS[kind]}'s ({shown}); "
                              "nothing in it was changed: choose a new or empty folder")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / MARKER, lambda tmp: Path(tmp).write_text(json.dumps({"kind": kind}) + "\n"))
    return folder


def remove_own_temporaries(folder: str | os.PathLike, subfolders: Sequence[str] = ()) -> list[Path]:
    """Delete the temporary files a killed process of this package left in ``folder`` (and ``subfolders``).

    Only names :func:`glmha.io.files.atomic_write` gives its temporary files are touched (a
    user's own ``.notes.tmp`` stays), and only those of processes that no longer run.
    """
    root = Path(folder)
    removed = []
    for place in (root, *(root / s for s in subfolders)):
        if not place.is_dir():
            continue
        for path in place.iterdir():
            if is_temporary(path) and path.is_file() and not _other_process_alive(int(path.name.rsplit(".glmha-", 1)[1].split("-")[0])):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed



def _other_process_alive(pid: int) -> bool:
    return pid != os.getpid() and pid_alive(pid)  # this process's leftovers are its own to remove
