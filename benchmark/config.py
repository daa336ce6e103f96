"""The run configuration: YAML + ``--set key=value`` overrides, validated before anything runs.

Structure is checked by pydantic (unknown keys and wrong types name the field and the closest
valid key); names are checked against the registries (dataset, model, method, layers) so a
typo fails in a second, not after a teacher has trained for an hour.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    ValidationError,
)

from otbench.errors import ConfigError, closest

Scenario = Literal["transfer", "distill", "cross"]

#: What each scenario implies; the runner and the applicability check read it from here.
SCENARIOS: dict[str, dict[str, bool]] = {
    # student = teacher's architecture, starts from its weights, new head, new task
    "transfer": {"starts_from_teacher": True, "same_labels": False},
    # smaller student from scratch, teacher trained on the same task
    "distill": {"starts_from_teacher": False, "same_labels": True},
    # smaller student from scratch, teacher trained on another (source) task
    "cross": {"starts_from_teacher": False, "same_labels": False},
}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TrainConfig(Strict):
    """Optimisation settings, shared by teachers and students."""

    epochs: PositiveInt = 30
    batch_size: PositiveInt = 64
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: PositiveFloat = 0.05
    momentum: NonNegativeFloat = 0.9
    nesterov: bool = Field(False, description="Nesterov momentum (sgd); the CRD/RepDistiller "
                           "recipe uses plain momentum")
    weight_decay: NonNegativeFloat = 5e-4
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    milestones: list[float] = Field(default_factory=lambda: [0.5, 0.75],
                                    description="step schedule: fractions of the epochs")
    gamma: PositiveFloat = 0.1
    amp: bool = Field(False, description="bfloat16 autocast on CUDA; ignored on CPU")


class TeacherConfig(Strict):
    """The teacher: trained once by the same loop and cached, or loaded from a file."""

    model: str = "cnn-l"
    task: str | None = Field(None, description="source task; distill defaults to the run's task")
    train: TrainConfig = Field(default_factory=TrainConfig)
    seed: int = 0
    weights: str | None = Field(None, description="a state_dict file (or 'imagenet' for "
                                "torchvision ResNets) to use instead of training")
    num_classes: PositiveInt | None = Field(None, description="head size of `weights`")
    in_channels: PositiveInt = Field(3, description="input channels of `weights`")


class RunConfig(Strict):
    """One training run of a student under one method."""

    scenario: Scenario = "distill"
    task: str = "digits"
    student: str | None = Field("cnn-s", description="student model; transfer uses the "
                                "teacher's")
    method: str = "finetune"
    params: dict[str, Any] = Field(default_factory=dict, description="method hyper-parameters")
    layers: list[tuple[str, str]] | None = Field(
        None, description="(teacher layer, student layer) pairs; default: by stage")
    layer_weights: list[float] | None = None
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    seed: int = 0
    split_seed: int = 0
    val_fraction: float = Field(0.2, gt=0, lt=1)
    image_size: PositiveInt | None = None
    device: str = "cpu"
    data_dir: str = "data"
    download: bool = False
    results_dir: str = "results"
    tracking_uri: str | None = None
    experiment: str = "otbench"
    evaluate_test: bool = Field(False, description="score on the test split (final stage)")
    refit: bool = Field(False, description="train on the training and validation splits "
                        "together (no per-epoch validation), as a final run with chosen "
                        "hyper-parameters does under final.refit: train+val")
    diagnostics: bool = Field(True, description="per-epoch OT/CKA/matching diagnostics")
    diagnostics_every: PositiveInt = Field(
        1, description="record the diagnostics every k-th epoch (the first and last always)")
    probe_size: PositiveInt = Field(256, description="validation examples in the probe batch")
    save_model: bool = Field(True, description="log the trained student as model.pt")
    tags: dict[str, str] = Field(default_factory=dict, description="extra MLflow tags")


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """``["train.lr=0.1", "method=ot"]`` -> a nested dict; values are parsed as YAML."""
    tree: dict[str, Any] = {}
    for item in pairs:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r} (e.g. --set train.lr=0.1)")
        node = tree
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part!r} was already set to a value")
        node[leaf] = yaml.safe_load(raw) if raw.strip() else ""
    return tree


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively overlay ``override`` on ``base``; nested dicts merge, values replace."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a file, with errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys to values")
    return data


def validate_model(model: type[BaseModel], data: Mapping[str, Any], what: str) -> Any:
    """``model.model_validate`` with errors that name the field and suggest a fix."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        lines = [_describe_error(model, e) for e in err.errors()]
        raise ConfigError(f"invalid {what}:\n  " + "\n  ".join(lines)) from None


def _describe_error(model: type[BaseModel], error: Mapping[str, Any]) -> str:
    path = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        guess = closest(str(error["loc"][-1]), _fields_at(model, error["loc"][:-1]))
        hint = f"; did you mean {guess!r}?" if guess else ""
        return f"{path}: unknown key{hint}"
    return f"{path}: {error['msg']} (got {error.get('input')!r})"


def _fields_at(model: type[BaseModel], loc: Iterable[Any]) -> list[str]:
    """Field names of the nested model reached by ``loc`` (for suggestions)."""
    current: Any = model
    for part in loc:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None or not isinstance(field.annotation, type):
            return []
        current = field.annotation
    return list(getattr(current, "model_fields", {}))


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> ``{"train.lr": 0.05, ...}`` (lists kept whole), for MLflow params."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def resolve_run_config(path: str | Path | None = None, overrides: Iterable[str] = (),
                       base: Mapping[str, Any] | None = None) -> RunConfig:
    """File (optional) + overrides -> a structurally valid :class:`RunConfig`."""
    data = dict(base or {})
    if path is not None:
        data = deep_merge(data, load_yaml(path))
    data = deep_merge(data, parse_overrides(overrides))
    return validate_model(RunConfig, data, "run config")
