"""Experiment configs: plain YAML whose sections map one-to-one onto function arguments.

- ``model`` -> :func:`glmha.create_model` (``name``, ``attention``, ``attention_kwargs``, the
  architecture's own arguments)
- ``data.train`` / ``data.val`` / ``data.test.<set>`` -> a dataset class chosen by ``type``
  (see :data:`glmha.engine.tasks.DATASET_TYPES`), the remaining keys its arguments
- ``optimizer`` -> ``torch.optim.<name>(params, **rest)``
- ``scheduler`` -> ``torch.optim.lr_scheduler.<name>(optimizer, **rest)`` for each entry of
  ``phases``, chained with ``SequentialLR`` at ``milestones`` (iterations)
- ``train`` -> :class:`glmha.engine.settings.TrainSettings`
- ``evaluate`` -> the evaluation options of :func:`glmha.engine.evaluate.evaluate`

A config may name a ``base`` config (path relative to itself) that it updates, and holds
``variants`` (e.g. ``smoke``): partial configs merged on top when selected. Sections merge
key by key, except ``data``, which a variant or derived config replaces as a whole.
Overrides are ``dotted.key=value`` strings, the value parsed as YAML.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from .schema import ConfigError, validate_config

TOP_LEVEL_KEYS = ("base", "description", "task", "seed", "output_dir", "model", "data", "optimizer", "scheduler", "train", "evaluate", "variants")


def merge(base: Mapping, update: Mapping, top_level: bool = True) -> dict:
    """Recursive dict update: nested mappings merge, anything else replaces.

    Exception: a top-level ``data`` section replaces the base's as a whole (a variant on
    synthetic data must not inherit the dataset folders of the full recipe).
    """
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if top_level and key == "data":
            out[key] = copy.deepcopy(value)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value, top_level=False)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_config_file(path: str | os.PathLike, _chain: tuple[Path, ...] = ()) -> dict:
    """Read a YAML config, resolving its ``base`` chain."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"base config not found: {path} (named by {_chain[-1]})" if _chain else f"config not found: {path}")
    if path.resolve() in _chain:
        loop = " -> ".join(p.name for p in (*_chain, path.resolve()))
        raise ConfigError(f"base configs form a loop: {loop}")
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(config).__name__}")
    base = config.pop("base", None)
    if base:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: base = {base!r}: must be the path of another config, relative to this one")
        config = merge(read_config_file(path.parent / base, (*_chain, path.resolve())), config)
    return config


def apply_override(config: dict, override: str) -> None:
    """Set ``a.b.c=value`` in ``config`` in place (``value`` parsed as YAML)."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r} must look like section.key=value")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"override {override!r}: value is not valid YAML: {err}") from None
    *parents, leaf = key.strip().split(".")
    node = config
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {'.'.join(parents[: i + 1])} is not a section")
        node = child
    node[leaf] = value


def load_config(
    config: str | os.PathLike | Mapping[str, Any],
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
    variant: str | None = None,
) -> dict:
    """The final config: file (or dict) -> ``variants[variant]`` merged -> overrides applied.

    ``overrides`` are ``"dotted.key=value"`` strings or a mapping of dotted keys to values.
    """
    cfg = read_config_file(config) if isinstance(config, (str, os.PathLike)) else copy.deepcopy(dict(config))
    cfg.pop("base", None)
    variants = cfg.pop("variants", None) or {}
    if variant:
        if variant not in variants:
            raise ConfigError(f"config has no variant {variant!r}; it has {sorted(variants) or 'none'}")
        cfg = merge(cfg, variants[variant])
    if isinstance(overrides, Mapping):
        overrides = [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}" for k, v in overrides.items()]
    for override in overrides or []:
        apply_override(cfg, override)
    unknown = sorted(set(cfg) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise ConfigError(f"unknown config sections {unknown}; expected some of {list(TOP_LEVEL_KEYS)}")
    for required in ("task", "model", "data"):
        if required not in cfg:
            raise ConfigError(f"config needs a {required!r} section")
    validate_config(cfg)
    return cfg


def input_paths(cfg: Mapping[str, Any], config: str | os.PathLike | Mapping[str, Any] | None = None) -> list[Path]:
    """The files and folders a run reads: the config file (and its bases), data folders and files, ``train.init_from``.

    Output folders are checked against them: a run never writes into (or over) what it reads.
    """
    found: list[Path] = []
    if config is not None and not isinstance(config, Mapping):
        found.append(Path(config))

    def walk(value: Any) -> None:
        if isinstance(value, Mapping):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)
        elif isinstance(value, (str, os.PathLike)) and str(value) and os.path.exists(value):
            found.append(Path(value))

    walk(cfg.get("data") or {})
    init_from = (cfg.get("train") or {}).get("init_from")
    if isinstance(init_from, (str, os.PathLike)) and init_from and os.path.exists(init_from):
        found.append(Path(init_from))
    return found
