"""Reading official and our own checkpoints; writing files atomically."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

# Where released checkpoints keep their weights: Restormer ships {"params": ...}, BasicSR
# also writes "params_ema"; MST/MST++ and many trainers use "state_dict" or "model".
_NESTED_KEYS = ("params", "params_ema", "state_dict", "model", "model_state_dict", "net")


class CheckpointError(RuntimeError):
    """A checkpoint could not be read, or does not fit the model."""


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read the weights of a checkpoint file as users have them.

    Accepts ``.safetensors`` files and ``torch.save`` files holding a plain state dict or one
    nested under ``params`` / ``state_dict`` / ``model`` / ...; strips a ``module.`` prefix
    left by DataParallel / DistributedDataParallel.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any reader failure means the same thing to the user
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from None
    return extract_state_dict(obj, source=str(path))


def extract_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the tensor dict inside a loaded checkpoint object and normalise its keys."""
    if isinstance(obj, Mapping):
        for key in _NESTED_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                return extract_state_dict(obj[key], source)
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{source} holds no state dict: expected a dict of tensors, or one under any of {list(_NESTED_KEYS)}"
        )
    state = dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_checkpoint(model: nn.Module, checkpoint: str | os.PathLike | Mapping, strict: bool = True) -> nn.Module:
    """Load weights (a path or a state dict, official layouts included) into ``model``.

    Fails with a message that lists missing and unexpected keys and mismatched shapes.
    """
    if isinstance(checkpoint, Mapping):
        state = extract_state_dict(checkpoint)
        source = "state dict"
    else:
        state = read_state_dict(checkpoint)
        source = str(checkpoint)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if mismatched or (strict and (missing or unexpected)):
        raise CheckpointError(
            f"{source} does not fit {type(model).__name__}:\n"
            + _key_report("missing keys", missing)
            + _key_report("unexpected keys", unexpected)
            + _key_report("shape mismatches", mismatched)
        )
    model.load_state_dict(state, strict=strict)
    return model


def _key_report(title: str, items: list[str], limit: int = 20) -> str:
    if not items:
        return ""
    shown = "\n".join(f"    {k}" for k in items[:limit])
    more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"  {title} ({len(items)}):\n{shown}{more}\n"


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def save_weights(model_or_state: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write weights atomically as safetensors."""
    from safetensors.torch import save_file

    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    return atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))
