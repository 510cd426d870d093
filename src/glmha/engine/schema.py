"""The config schema: every section checked before anything runs, a bad value reported in one line.

:func:`validate_config` checks a resolved config (see :mod:`glmha.engine.config`): the known
keys of each section, the types and ranges of the ``train`` and ``evaluate`` settings, the
optimizer's and schedulers' names and arguments, the task, the model's and attention's names
and each dataset's ``type`` and arguments. The first problem is raised as a
:class:`ConfigError` such as::

    train.batch_size = 0: must be an integer > 0
"""
from __future__ import annotations

import inspect
from typing import Any, Literal, Mapping, Optional, Union

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A config file or override is malformed; the message says where (glmha.engine.config raises it too)."""


PositiveInt = Field(gt=0)
PRECISION = Literal["fp32", "bf16", "fp16"]


class _Section(BaseModel):
    # strict: "8" is not 8, 1 is not true (YAML already gives numbers and booleans their types)
    model_config = ConfigDict(extra="forbid", strict=True)


class Stage(_Section):
    iters: int = PositiveInt
    patch_size: Optional[int] = Field(default=None, gt=0)
    batch_size: Optional[int] = Field(default=None, gt=0)


class Mixup(_Section):
    beta: float = Field(gt=0)
    use_identity: bool = False


class TrainSection(_Section):
    total_iters: int = PositiveInt
    batch_size: int = Field(default=8, gt=0)
    patch_size: Optional[int] = Field(default=None, gt=0)
    stages: Optional[list[Stage]] = None
    loss: str = "l1"
    grad_clip: Optional[float] = Field(default=None, gt=0)
    precision: PRECISION = "fp32"
    mixup: Optional[Mixup] = None
    val_every: int = Field(default=1000, gt=0)
    checkpoint_every: int = Field(default=1000, gt=0)
    log_every: int = Field(default=100, gt=0)
    keep_checkpoints: int = Field(default=2, gt=0)
    num_workers: int = Field(default=0, ge=0)
    deterministic: bool = False
    progress: bool = True
    tensorboard: bool = True
    init_from: Optional[str] = None

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, value: str) -> str:
        from .tasks import LOSSES

        if value not in LOSSES:
            raise ValueError(f"must be one of {sorted(LOSSES)}")
        return value

    @model_validator(mode="after")
    def _stages_add_up(self) -> "TrainSection":
        if self.stages and sum(s.iters for s in self.stages) != self.total_iters:
            raise ValueError(f"stages last {sum(s.iters for s in self.stages)} iterations in all, "
                             f"but total_iters is {self.total_iters}; they must agree")
        return self


class EvaluateSection(_Section):
    checkpoint: Optional[str] = None
    precision: Optional[PRECISION] = None
    save_images: Optional[bool] = None
    sets: Optional[list[str]] = None
    tile: Optional[int] = Field(default=None, gt=0)
    ensemble: Optional[Literal["none", "mean", "median"]] = None


class ModelSection(BaseModel):
    # the architecture's own arguments are checked when the model is built
    model_config = ConfigDict(extra="allow", strict=True)
    name: str
    attention: str = "csa"
    attention_kwargs: dict[str, Any] = Field(default_factory=dict)


class Config(_Section):
    description: Optional[str] = None
    task: Union[str, dict[str, Any]]
    seed: int = Field(default=0, ge=0)
    output_dir: Optional[str] = None
    model: ModelSection
    data: dict[str, Any]
    optimizer: Optional[dict[str, Any]] = None
    scheduler: Optional[dict[str, Any]] = None
    train: Optional[TrainSection] = None
    evaluate: Optional[EvaluateSection] = None


# ----------------------------------------------------------------------------- messages
_SECTIONS: dict[str, type[BaseModel]] = {
    "": Config, "train": TrainSection, "train.stages": Stage, "train.mixup": Mixup, "evaluate": EvaluateSection,
}


def _allowed(error: Mapping[str, Any], section: str) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "extra_forbidden":
        accepted = list(_SECTIONS[section].model_fields) if section in _SECTIONS else []
        return f"unknown key; accepted: {', '.join(accepted)}" if accepted else "unknown key"
    if kind == "missing":
        return "is required"
    if kind in ("greater_than", "greater_than_equal"):
        number = "an integer" if isinstance(ctx.get("gt", ctx.get("ge")), int) else "a number"
        bound = ctx.get("gt", ctx.get("ge"))
        return f"must be {number} {'>' if kind == 'greater_than' else '>='} {int(bound) if bound == int(bound) else bound}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}"
    if kind in ("int_type", "int_from_float", "int_parsing"):
        return "must be an integer"
    if kind in ("float_type", "float_parsing"):
        return "must be a number (YAML reads 3e-4 as text: write 3.0e-4)"
    if kind in ("bool_type", "bool_parsing"):
        return "must be true or false"
    if kind in ("string_type",):
        return "must be text"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return "must be a mapping of keys to values"
    if kind in ("list_type",):
        return "must be a list"
    return str(error["msg"]).removeprefix("Value error, ")


def _location(error: Mapping[str, Any]) -> tuple:
    # pydantic adds the member type of a union to the location ("task", "str"): not a key of the config
    return tuple(p for p in error["loc"] if not (isinstance(p, str) and (p in ("str", "int", "float", "bool") or "[" in p)))


def _format(err: ValidationError) -> str:
    errors = err.errors(include_url=False)
    first = errors[0]
    loc = _location(first)
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "config"
    section = ".".join(p for p in loc[:-1] if isinstance(p, str))
    message = _allowed(first, section)
    bare = first["type"] in ("missing", "extra_forbidden") or isinstance(first.get("input"), Mapping)  # a section's own check
    text = f"{key}: {message}" if bare else f"{key} = {first.get('input')!r}: {message}"
    more = len({_location(e) for e in errors} - {loc})
    return text + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


# ----------------------------------------------------------------------------- the named parts
def _check_arguments(where: str, target, given: Mapping[str, Any], skip: tuple[str, ...] = ()) -> None:
    params = inspect.signature(target).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    accepted = [name for name in params if name not in skip]
    for key in given:
        if key not in accepted:
            raise ConfigError(f"{where}.{key}: unknown argument; accepted: {', '.join(accepted)}")


def _check_dataset(where: str, spec: Any, extra: tuple[str, ...] = ()) -> None:
    from .tasks import DATASET_TYPES

    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where} = {spec!r}: must be a dataset entry {{type: ..., its arguments}}")
    kind = spec.get("type")
    if kind not in DATASET_TYPES:
        raise ConfigError(f"{where}.type = {kind!r}: must be one of {sorted(DATASET_TYPES)}")
    _check_arguments(where, DATASET_TYPES[kind], {k: v for k, v in spec.items() if k not in ("type", *extra)})


def _check_torch_class(where: str, spec: Any, module, base: type) -> None:
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where} = {spec!r}: must be a mapping {{name: ..., its arguments}}")
    name = spec.get("name")
    cls = getattr(module, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, base)) or str(name).startswith("_"):
        choices = sorted(n for n, c in vars(module).items() if isinstance(c, type) and issubclass(c, base) and c is not base and not n.startswith("_"))
        raise ConfigError(f"{where}.name = {name!r}: must be one of {', '.join(choices)}")
    arguments = {k: v for k, v in spec.items() if k != "name"}
    for key, value in arguments.items():
        if key == "lr" and not (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
            raise ConfigError(f"{where}.lr = {value!r}: must be a number > 0 (YAML reads 3e-4 as text: write 3.0e-4)")
    _check_arguments(where, cls, arguments, skip=("self", "params", "optimizer"))


def _check_scheduler(spec: Any) -> None:
    if not isinstance(spec, Mapping):
        raise ConfigError(f"scheduler = {spec!r}: must be {{name: ..., its arguments}} or {{phases: [...], milestones: [...]}}")
    if "phases" not in spec:
        _check_torch_class("scheduler", spec, torch.optim.lr_scheduler, torch.optim.lr_scheduler.LRScheduler)
        return
    extra = sorted(set(spec) - {"phases", "milestones"})
    if extra:
        raise ConfigError(f"scheduler.{extra[0]}: unknown key beside phases; accepted: phases, milestones")
    phases, milestones = spec["phases"], spec.get("milestones", [])
    if not isinstance(phases, list) or not phases:
        raise ConfigError(f"scheduler.phases = {phases!r}: must be a non-empty list of {{name: ..., its arguments}}")
    for i, phase in enumerate(phases):
        _check_torch_class(f"scheduler.phases[{i}]", phase, torch.optim.lr_scheduler, torch.optim.lr_scheduler.LRScheduler)
    if not (isinstance(milestones, list) and len(milestones) == len(phases) - 1
            and all(isinstance(m, int) and not isinstance(m, bool) and m > 0 for m in milestones) and milestones == sorted(milestones)):
        raise ConfigError(f"scheduler.milestones = {milestones!r}: must be {len(phases) - 1} increasing positive iteration(s), "
                          f"one between each two of the {len(phases)} phases")


def _check_named_parts(cfg: Mapping[str, Any]) -> None:
    from ..attention import list_attentions
    from ..models import list_models
    from .tasks import TASKS

    task = cfg["task"]
    name = task if isinstance(task, str) else task.get("name")
    if name not in TASKS:
        raise ConfigError(f"task{'' if isinstance(task, str) else '.name'} = {name!r}: must be one of {sorted(TASKS)}")
    if not isinstance(task, str):
        _check_arguments("task", TASKS[name], {k: v for k, v in task.items() if k != "name"})
    model = cfg["model"]
    if model["name"] not in list_models():
        raise ConfigError(f"model.name = {model['name']!r}: must be one of {list_models()}")
    if model.get("attention", "csa") not in list_attentions():
        raise ConfigError(f"model.attention = {model['attention']!r}: must be one of {list_attentions()}")

    data = cfg["data"]
    unknown = sorted(set(data) - {"train", "val", "test"})
    if unknown:
        raise ConfigError(f"data.{unknown[0]}: unknown key; accepted: train, val, test")
    if "train" not in data:
        raise ConfigError("data.train: is required")
    _check_dataset("data.train", data["train"])
    if data.get("val") is not None:
        _check_dataset("data.val", data["val"])
    tests = data.get("test") or {}
    if not isinstance(tests, Mapping):
        raise ConfigError(f"data.test = {tests!r}: must map test set names to dataset entries")
    sets = {"": tests} if "type" in tests else tests  # one unnamed set (the demo's configs)
    for set_name, spec in sets.items():
        _check_dataset(f"data.test.{set_name}".rstrip("."), spec, extra=("protocol",))

    if cfg.get("optimizer") is not None:
        _check_torch_class("optimizer", cfg["optimizer"], torch.optim, torch.optim.Optimizer)
    if cfg.get("scheduler"):
        _check_scheduler(cfg["scheduler"])


def validate_config(cfg: Mapping[str, Any]) -> None:
    """Check a resolved config; raise :class:`ConfigError` with one line (key, value, what is allowed) for the first problem."""
    try:
        Config.model_validate(dict(cfg))
    except ValidationError as err:
        raise ConfigError(_format(err)) from None
    _check_named_parts(cfg)
