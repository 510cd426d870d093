"""Reading official and our own checkpoints; writing files atomically."""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..io.files import atomic_write

# Where released checkpoints keep their weights: Restormer ships {"params": ...}, BasicSR
# also writes "params_ema"; MST/MST++ and many trainers use "state_dict" or "model".
_NESTED_KEYS = ("params", "params_ema", "state_dict", "model", "model_state_dict", "net")
# safetensors metadata of this project's files: the build record (JSON) and the package version
SPEC_KEY = "glmha.model"
VERSION_KEY = "glmha.version"


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
            if not _looks_like_torch_save(path):
                raise CheckpointError(f"{path} is not a weights file: expected a .safetensors file or a PyTorch "
                                      "checkpoint (.pth/.pt written by torch.save)")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except pickle.UnpicklingError:  # weights_only refused what the pickle holds (its message suggests unsafe loading)
        raise CheckpointError(f"cannot read checkpoint {path}: it holds objects other than tensors and plain values; "
                              "it was not loaded (only weights files are read)") from None
    except Exception as err:  # any reader failure means the same thing to the user
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"cannot read checkpoint {path}: {first}") from None
    return extract_state_dict(obj, source=str(path))


def _looks_like_torch_save(path: Path) -> bool:
    """torch.save writes a zip archive (or, before PyTorch 1.6, a pickle: protocol byte 0x80)."""
    import zipfile

    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as file:
        return file.read(1) == b"\x80"


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


def save_weights(model_or_state: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write weights atomically as safetensors.

    A model built by :func:`glmha.create_model` also gets its build record and the package
    version in the file's metadata (see :func:`save_model`), so the file describes itself.
    """
    from safetensors.torch import save_file

    module = getattr(model_or_state, "module", model_or_state)  # glmha.optimize / DataParallel wrappers
    metadata = dict(metadata or {})
    if isinstance(module, nn.Module) and getattr(module, "spec", None) is not None:
        from .._version import __version__

        metadata.update({SPEC_KEY: module.spec.to_json(), VERSION_KEY: __version__})
    state = module.state_dict() if isinstance(module, nn.Module) else model_or_state
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    return atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata or None))


def save_model(model: nn.Module, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Save ``model`` as a self-describing ``.safetensors`` file that :func:`load_model` rebuilds alone.

    The metadata holds the model's build record (``model.spec``: model name, constructor
    arguments, attention and its options, per-layer attentions after
    :func:`glmha.analysis.eigen.apply_ranks`, the preset it was loaded as) and the package
    version, next to ``metadata``. Raises :class:`CheckpointError` for a model that was not
    built by :func:`glmha.create_model` (it cannot say how to rebuild it).
    """
    module = getattr(model, "module", model)
    if getattr(module, "spec", None) is None:
        raise CheckpointError(
            f"{type(module).__name__} has no build record (model.spec): build it with glmha.create_model "
            "to save it with save_model, or use save_weights for the weights alone"
        )
    return save_weights(module, path, metadata)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of a ``.safetensors`` file (empty for other files)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {})
    except Exception as err:  # any reader failure means the same thing to the user
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from None


def read_model_spec(path: str | os.PathLike):
    """The build record (:class:`glmha.models.registry.ModelSpec`) a file was saved with, or None."""
    from .registry import ModelSpec

    text = read_metadata(path).get(SPEC_KEY)
    if text is None:
        return None
    try:
        return ModelSpec.from_json(text)
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A weights file, or a run folder of ``glmha train``: its ``model.safetensors``, else its newest checkpoint."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        if (path / "model.safetensors").is_file():
            return path / "model.safetensors"
        saved = sorted((path / "checkpoints").glob("iter_*.safetensors"))  # zero-padded iteration numbers
        if saved:
            return saved[-1]
        raise CheckpointError(f"{path} is a folder without model.safetensors or checkpoints/iter_*.safetensors (not a run folder of glmha train)")
    raise CheckpointError(f"checkpoint not found: {path}")


def load_model(
    checkpoint: str | os.PathLike,
    device: str | torch.device = "cpu",
    preset: str | None = None,
    *,
    model: str | None = None,
    attention: str | None = None,
    attention_kwargs: dict | None = None,
    verbose: bool = True,
    **model_kwargs,
) -> nn.Module:
    """Build the model a checkpoint belongs to, load it, and return it on ``device`` in eval mode.

    ``checkpoint`` is a weights file or a run folder of ``glmha train`` (its
    ``model.safetensors``, else its newest checkpoint). What the model is comes from, in order:

    1. the file's own record (:func:`save_model`; every file this project writes has one);
    2. ``preset``, an official release file (:mod:`glmha.models.presets`), for files without a record;
    3. ``model`` with its arguments, for files without a record;
    4. else the keys and shapes of a plain state dict, when they match a preset (said on stdout
       when ``verbose``).

    ``model``, ``attention``, ``attention_kwargs`` and ``model_kwargs`` may add to a record or
    override a preset's values; one that contradicts the file's record is an error that shows
    both. ``preset`` with a recorded file must name the same architecture; it sets the
    test-time steps (``model.spec.preset``).
    """
    from .registry import ModelSpec, list_models
    from .presets import get_preset, recognise_preset

    path = resolve_checkpoint(checkpoint)
    recorded = read_model_spec(path)
    state = read_state_dict(path)
    flags = {key: value for key, value in
             {"name": model, "attention": attention, "attention_kwargs": attention_kwargs, "model_kwargs": model_kwargs}.items() if value}
    if model is not None and model not in list_models():
        raise CheckpointError(f"unknown model {model!r}; available: {list_models()}")
    try:
        chosen = get_preset(preset) if preset else None
    except ValueError as err:
        raise CheckpointError(str(err)) from None

    if recorded is not None:
        spec = _merge_recorded(path, recorded, flags, chosen)
    elif chosen is not None:
        if model is not None and model != chosen.model:
            raise CheckpointError(f"preset {chosen.name!r} is a {chosen.model} model, not {model!r}")
        spec = ModelSpec(chosen.model, {**chosen.model_kwargs, **model_kwargs}, attention or "csa", dict(attention_kwargs or {}), preset=chosen.name)
    elif flags:
        if model is None:
            raise CheckpointError(f"{path} does not record its model: name it (model=... / --model) or give a preset")
        spec = ModelSpec(model, dict(model_kwargs), attention or "csa", dict(attention_kwargs or {}))
    else:
        spec = _recognised_spec(path, recognise_preset(state), verbose)

    try:
        built = spec.build()
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"cannot build {spec.name!r} with attention {spec.attention!r} for {path}: {err}") from None
    try:
        load_checkpoint(built, state)
    except CheckpointError as err:
        source = "its record" if recorded is not None else f"preset {spec.preset!r}" if spec.preset else "the arguments"
        raise CheckpointError(f"{str(err).replace('state dict', str(path), 1).rstrip()}\n  model (from {source}): {_describe(spec)}") from None
    try:
        built = built.to(torch.device(device))
    except (RuntimeError, AssertionError) as err:
        raise CheckpointError(f"cannot use device {device!r}: {err}") from None
    return built.eval()


def _describe(spec) -> str:
    import json

    text = f"{spec.name}, attention {spec.attention}"
    if spec.attention_kwargs:
        text += f" {json.dumps(spec.attention_kwargs)}"
    if spec.model_kwargs:
        text += f", arguments {json.dumps(spec.model_kwargs)}"
    if spec.layers:
        text += f", {len(spec.layers)} layer(s) with their own attention"
    return text


def _merge_recorded(path: Path, recorded, flags: dict, chosen):
    """The recorded spec with the arguments added; contradictions are an error that shows both."""
    import copy
    import json

    spec = copy.deepcopy(recorded)
    conflicts = []
    for key in ("name", "attention"):
        if key in flags and flags[key] != getattr(spec, key):
            conflicts.append(f"{key} {getattr(spec, key)!r} vs {flags[key]!r}")
    for key in ("model_kwargs", "attention_kwargs"):
        recorded_values = getattr(spec, key)
        for name, value in json.loads(json.dumps(flags.get(key, {}))).items():
            if name in recorded_values and recorded_values[name] != value:
                conflicts.append(f"{name} {recorded_values[name]!r} vs {value!r}")
            recorded_values[name] = value
    if chosen is not None:
        differing = [k for k, v in chosen.model_kwargs.items() if k in spec.model_kwargs and spec.model_kwargs[k] != v]
        if spec.name != chosen.model or differing:
            conflicts.append(f"model {_describe(spec)} vs preset {chosen.name!r} ({chosen.model} {json.dumps(chosen.model_kwargs)})")
        spec.preset = chosen.name
    if conflicts:
        raise CheckpointError(
            f"{path} records {_describe(recorded)}; the arguments contradict it (recorded vs given): "
            + "; ".join(conflicts) + ". Leave those arguments out to use the record"
        )
    return spec


def _recognised_spec(path: Path, candidates: list, verbose: bool):
    from .registry import ModelSpec
    from .presets import list_presets

    if not candidates:
        raise CheckpointError(
            f"{path} does not record its model and its keys and shapes match no preset; "
            f"give a preset (one of {list_presets()}) or the model (--model, --model-kwargs, --attention)"
        )
    first = candidates[0]
    if any(not first.same_except_name(other) for other in candidates[1:]):
        raise CheckpointError(f"{path} matches several presets that differ: {[p.name for p in candidates]}; choose one with preset=/--preset")
    if verbose:
        if len(candidates) == 1:
            print(f"{path.name}: no model record; recognised by its keys and shapes as preset {first.name!r} ({first.task})")
        else:
            names = ", ".join(p.name for p in candidates)
            print(f"{path.name}: no model record; its keys and shapes match presets {names} (one architecture, "
                  f"the same test-time steps); using {first.name!r}; name another with --preset")
    return ModelSpec(first.model, dict(first.model_kwargs), "csa", {}, preset=first.name)
