"""Model registry: names -> builders plus the metadata transfer methods need.

Each registered model declares its feature *taps* (module paths whose outputs are the stage
features, shallow -> deep) and its classifier *head*, so methods can pair teacher/student
layers and fine-tuning can treat the head separately without knowing the architecture.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from otbench.errors import ConfigError, unknown_name

FAMILIES = ("cnn", "cifar", "imagenet")
#: Attribute build_model sets on a model, so FeatureTaps can list its declared taps.
SPEC_ATTR = "otbench_spec"

StateDict = Mapping[str, Tensor]


@dataclass(frozen=True)
class ModelSpec:
    """A registered architecture.

    ``builder(num_classes, in_channels)`` returns a fresh model. ``pretrained``, when set,
    returns a state_dict of published weights (used for ``weights="imagenet"``).
    """

    name: str
    family: str
    taps: tuple[str, ...]
    head: str
    builder: Callable[..., nn.Module]
    pretrained: Callable[[], StateDict] | None = None


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str,
    *,
    family: str,
    taps: tuple[str, ...] | list[str],
    head: str,
    pretrained: Callable[[], StateDict] | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering ``builder(num_classes, in_channels)`` under ``name``."""
    if family not in FAMILIES:
        raise ConfigError(f"model {name!r}: family must be one of {FAMILIES}, got {family!r}")
    if not taps:
        raise ConfigError(f"model {name!r}: declare at least one feature tap")

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ConfigError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelSpec(name, family, tuple(taps), head, builder, pretrained)
        return builder

    return decorator


def get_model_spec(name: str) -> ModelSpec:
    """The spec registered under ``name``; a typo gets a suggestion."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise unknown_name("model", name, _REGISTRY) from None


def model_names() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def spec_of(model: nn.Module) -> ModelSpec | None:
    """The spec ``build_model`` attached to ``model``, if any."""
    spec = getattr(model, SPEC_ATTR, None)
    return spec if isinstance(spec, ModelSpec) else None


def build_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    weights: str | Path | None = None,
) -> nn.Module:
    """Build a registered model, optionally loading weights.

    ``weights`` is a local state_dict file, or ``"imagenet"`` for models with published
    weights. A file whose head was trained for another class count loads everything but
    the head (with a warning), so ImageNet or teacher checkpoints can seed a new task.
    """
    spec = get_model_spec(name)
    for field, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"model {name!r}: {field} must be a positive integer, got {value!r}")
    model = spec.builder(num_classes=num_classes, in_channels=in_channels)
    setattr(model, SPEC_ATTR, spec)
    if weights is not None:
        if isinstance(weights, str) and weights == "imagenet":
            state, source = _pretrained_state(spec), f"torchvision's ImageNet weights for {name}"
        else:
            state, source = _read_state_dict(Path(weights)), f"weights file {str(weights)!r}"
        load_weights(model, spec, state, source)
    return model


def _pretrained_state(spec: ModelSpec) -> StateDict:
    if spec.pretrained is None:
        with_weights = [s.name for s in _REGISTRY.values() if s.pretrained is not None]
        raise ConfigError(
            f"model {spec.name!r} has no built-in 'imagenet' weights (only "
            f"{', '.join(sorted(with_weights)) or 'none'} do); pass a local state_dict file")
    try:
        return spec.pretrained()
    except Exception as exc:  # download/cache failures come in many types
        raise ConfigError(
            f"could not fetch torchvision's ImageNet weights for {spec.name!r} ({exc}). "
            "Offline? Download them on a connected machine and pass the local file as "
            "weights=PATH instead of 'imagenet'") from exc


def _read_state_dict(path: Path) -> StateDict:
    fix = "pass a file written by torch.save(model.state_dict(), path)"
    if not path.is_file():
        raise ConfigError(f"weights file {str(path)!r} does not exist; {fix}")
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt zip, pickle errors, disallowed globals...
        # The chained exception keeps torch's (long) explanation.
        raise ConfigError(
            f"weights file {str(path)!r} could not be read ({type(exc).__name__}): it is "
            f"corrupt, truncated or holds objects other than tensors; {fix}") from exc
    # Training checkpoints often wrap the state_dict (e.g. {"model": ..., "epoch": ...}).
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
    ):
        raise ConfigError(f"weights file {str(path)!r} does not hold a state_dict; {fix}")
    return obj


def load_weights(model: nn.Module, spec: ModelSpec, state: StateDict, source: str) -> None:
    """Load ``state`` strictly, except that a head of another shape is skipped with a warning."""
    own = model.state_dict()
    head_keys = {k for k in own if k.startswith(spec.head + ".")}
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    mismatched = sorted(k for k in own.keys() & state.keys() if own[k].shape != state[k].shape)
    head_mismatch = bool(mismatched) and set(mismatched) <= head_keys
    problems = []
    if missing:
        problems.append(f"missing {missing[:5]}")
    if unexpected:
        problems.append(f"unexpected {unexpected[:5]}")
    if mismatched and not head_mismatch:
        problems += [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                     for k in mismatched[:5]]
    if problems:
        raise ConfigError(
            f"{source} does not fit model {spec.name!r} ({'; '.join(problems)}); check the "
            "model name and in_channels, and that the file is a state_dict of this model")
    if head_mismatch:
        warnings.warn(
            f"{source}: head {spec.head!r} has shape {tuple(state[spec.head + '.weight'].shape)}"
            f", the model's is {tuple(own[spec.head + '.weight'].shape)}; loaded everything "
            "except the head, which keeps its fresh initialisation",
            UserWarning, stacklevel=3)
        state = {k: v for k, v in state.items() if k not in head_keys}
        model.load_state_dict(state, strict=False)
    else:
        model.load_state_dict(state, strict=True)


def _head_module(model: nn.Module, spec: ModelSpec) -> nn.Linear:
    try:
        head = model.get_submodule(spec.head)
    except AttributeError:
        raise ConfigError(f"model has no module {spec.head!r} (head of {spec.name!r})") from None
    if not isinstance(head, nn.Linear):
        raise ConfigError(f"head {spec.head!r} of {spec.name!r} is a {type(head).__name__}, "
                          "not an nn.Linear")
    return head


def replace_head(model: nn.Module, spec: ModelSpec, num_classes: int) -> nn.Module:
    """Swap the classifier for a freshly initialised ``nn.Linear`` with ``num_classes`` outputs."""
    old = _head_module(model, spec)
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None,
                    device=old.weight.device, dtype=old.weight.dtype)
    parent_path, _, attr = spec.head.rpartition(".")
    setattr(model.get_submodule(parent_path), attr, new)
    return model


def head_parameter_names(model: nn.Module, spec: ModelSpec) -> frozenset[str]:
    """Names (as in ``model.named_parameters()``) of the head's parameters."""
    ids = {id(p) for p in _head_module(model, spec).parameters()}
    return frozenset(n for n, p in model.named_parameters() if id(p) in ids)
