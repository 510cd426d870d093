"""A run folder's state: checkpoint files, the training state with its RNG states, resume rules, the folder lock.

Every file is written atomically (temporary file, then rename), and ``latest.json`` only
names a checkpoint once both of its files are complete, so a run killed at any moment
restarts from its last checkpoint.
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..io.files import atomic_write
from ..io.folders import remove_own_temporaries
from ..models.checkpoint import CheckpointError, save_weights
from .config import ConfigError


# ----------------------------------------------------------------------------- checkpoints
# The training state is saved as tensors and plain Python values only, so that it loads with
# ``torch.load(weights_only=True)``: reading a run folder never runs code from a pickle.
STATE_KEYS = ("iteration", "samples_seen", "optimizer", "scaler", "rng")
_CHECKPOINT_NAME = re.compile(r"iter_\d+\.(safetensors|state\.pt)")


def _rng_state() -> dict:
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["position"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["internal"].tolist()), python_state["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_training_state(path: str | os.PathLike) -> dict:
    """The training state of a checkpoint (optimizer, scheduler, scaler, RNG states, counters).

    Loaded with ``weights_only=True``; a file that is damaged or holds anything but tensors and
    plain values is refused with :class:`CheckpointError` naming it.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # damaged zip, foreign pickle, objects weights_only refuses: all the same to the user
        reason = "it holds objects other than tensors and plain values" if isinstance(err, pickle.UnpicklingError) else type(err).__name__
        raise CheckpointError(f"{path} is not a readable glmha training state ({reason}); it was not loaded. "
                              "Resume from another checkpoint or start afresh in another --output-dir") from None
    if not isinstance(state, dict) or any(key not in state for key in STATE_KEYS):
        raise CheckpointError(f"{path} is not a glmha training state: it lacks {[k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]}")
    return state


def latest_checkpoint(output_dir: str | os.PathLike) -> tuple[Path, Path] | None:
    """(weights, state) of the newest complete checkpoint of a run, or None."""
    pointer = Path(output_dir) / "checkpoints" / "latest.json"
    if not pointer.is_file():
        return None
    try:
        entry = json.loads(pointer.read_text())
        names = entry["weights"], entry["state"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise CheckpointError(f"{pointer} is damaged: expected JSON naming the newest checkpoint's weights and state files") from None
    if not all(isinstance(name, str) and _CHECKPOINT_NAME.fullmatch(name) for name in names):
        raise CheckpointError(f"{pointer} names {names}, which are not checkpoint files of this folder")
    weights, state = pointer.parent / names[0], pointer.parent / names[1]
    if not (weights.is_file() and state.is_file()):
        raise CheckpointError(f"{pointer} names {weights.name} and {state.name}, which are missing")
    return weights, state


def _save_checkpoint(output_dir: Path, model: nn.Module, state: dict, keep: int) -> Path:
    folder = output_dir / "checkpoints"
    stem = f"iter_{state['iteration']:08d}"
    weights = save_weights(model, folder / f"{stem}.safetensors", metadata={"iteration": str(state["iteration"])})
    atomic_write(folder / f"{stem}.state.pt", lambda tmp: torch.save(state, tmp))
    pointer = json.dumps({"iteration": state["iteration"], "weights": weights.name, "state": f"{stem}.state.pt"})
    atomic_write(folder / "latest.json", lambda tmp: Path(tmp).write_text(pointer))
    # Older checkpoints go only after the pointer has moved past them; the one just written
    # always stays (a folder may hold higher-numbered leftovers of an earlier, longer run).
    others = sorted({p.name.split(".")[0] for p in folder.glob("iter_*.safetensors")} - {stem}, key=lambda name: int(name[5:]))
    for old in others[: max(len(others) - (max(keep, 1) - 1), 0)]:
        for suffix in (".safetensors", ".state.pt"):
            (folder / f"{old}{suffix}").unlink(missing_ok=True)
    return weights


def _has_checkpoints(output_dir: Path) -> bool:
    folder = output_dir / "checkpoints"
    return (folder / "latest.json").is_file() or any(folder.glob("iter_*.safetensors"))


# ----------------------------------------------------------------------------- the run folder
RESUME_MODES = ("auto", "never", "force")
# Settings that do not change what a run computes: a resumed run may change them freely.
RESUME_FREE_KEYS = ("description", "output_dir", "evaluate", "data.test", "train.total_iters", "train.progress", "train.tensorboard",
                    "train.log_every", "train.num_workers", "train.checkpoint_every", "train.keep_checkpoints", "train.init_from")
LOCK_FILE = ".lock"


class RunFolderError(ConfigError):
    """The run folder cannot be used as asked: in use by another run, or its checkpoints do not fit the request."""


def _flatten(config: Mapping, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(saved: Mapping, current: Mapping, free: Sequence[str] = RESUME_FREE_KEYS) -> list[str]:
    """Dotted keys whose values differ between a run's saved config and ``current``, except those under ``free``."""
    a, b = (_flatten(json.loads(json.dumps(c, default=str))) for c in (saved, current))
    return sorted(k for k in set(a) | set(b) if a.get(k, "<unset>") != b.get(k, "<unset>")
                  and not any(k == f or k.startswith(f + ".") for f in free))


def _resume_mode(resume: bool | str) -> str:
    mode = ("auto" if resume else "never") if isinstance(resume, bool) else resume
    if mode not in RESUME_MODES:
        raise ConfigError(f"resume must be one of {list(RESUME_MODES)}, got {resume!r}")
    return mode


@contextlib.contextmanager
def run_lock(output_dir: Path):
    """Hold ``output_dir/.lock`` (``flock``) while a run uses the folder; the system drops it when the process ends."""
    try:
        import fcntl
    except ImportError:  # no flock on Windows: runs are not guarded there
        yield
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / LOCK_FILE, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            owner = handle.read().strip()
            raise RunFolderError(f"run folder {output_dir} is in use by another run{f' (process {owner})' if owner else ''}; "
                                 "wait for it to end or choose another --output-dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def remove_stale_temporaries(output_dir: Path) -> list[Path]:
    """Delete the temporary files a killed run left in its folder (only this package's names); call with the lock held."""
    return remove_own_temporaries(output_dir, ["checkpoints"])
