"""The shared interface of transfer methods and their registry.

A method is an ``nn.Module`` built once per run from a :class:`TransferContext` and its
hyper-parameters. At each training step it receives a :class:`StepOutputs` and returns a dict
of named, already-weighted loss terms (``{"ot/stage3": t}``), so each term is logged on its own.
Methods are pure tensor math: no data loading, no tracking, no sweeping here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from otbench.errors import ConfigError, unknown_name

Kind = Literal["float", "int", "categorical", "bool"]

#: What a method may read at each step; the runner computes only what is read.
READABLE = frozenset({"student_features", "teacher_features", "student_logits",
                      "teacher_logits", "student_weights", "start_weights"})
#: What a feature-matching method reads: both networks' tapped features.
FEATURE_READS = frozenset({"student_features", "teacher_features"})

#: Which of the stage pairs a method uses when a run does not set ``layers``.
LayerChoice = Literal["all", "middle", "last"]
LAYER_CHOICES: tuple[LayerChoice, ...] = ("all", "middle", "last")


@dataclass(frozen=True)
class HyperParam:
    """One hyper-parameter: its type, default and default search range.

    ``searchable=False`` marks a setting a sweep keeps at its default unless a suite
    overrides the range (e.g. the choice of OT solver, which changes speed, not the loss).
    """

    name: str
    kind: Kind
    default: Any
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None
    searchable: bool = True
    help: str = ""
    #: Where the default and the range come from: a paper, reference code, or "ours: why".
    source: str = ""

    def __post_init__(self) -> None:
        if self.kind in ("float", "int"):
            if self.low is None or self.high is None or not self.low <= self.high:
                raise ConfigError(f"hyper-parameter {self.name!r}: numeric range needs "
                                  f"low <= high, got low={self.low}, high={self.high}")
            if self.log and self.low <= 0:
                raise ConfigError(f"hyper-parameter {self.name!r}: a log range needs low > 0, "
                                  f"got {self.low}")
        if self.kind == "categorical" and not self.choices:
            raise ConfigError(f"hyper-parameter {self.name!r}: categorical needs choices")
        self.validate(self.default)

    def validate(self, value: Any) -> Any:
        """Coerce ``value`` to this parameter's type or raise naming the parameter."""
        where = f"hyper-parameter {self.name!r}"
        if self.kind == "categorical":
            if value not in self.choices:  # type: ignore[operator]
                raise ConfigError(f"{where}: {value!r} is not one of {list(self.choices)}")
            return value
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: expected true/false, got {value!r}")
            return value
        value = _number(value, f"{where}: expected a {self.kind}, got {value!r}")
        if self.kind == "int":
            if not float(value).is_integer():
                raise ConfigError(f"{where}: expected an integer, got {value!r}")
            value = int(value)
        value = float(value) if self.kind == "float" else value
        if not math.isfinite(value):
            raise ConfigError(f"{where}: must be finite, got {value!r}")
        if value < 0 <= (self.low or 0):  # ranges are search spaces; only the sign is a rule
            raise ConfigError(f"{where}: must be >= 0, got {value!r}")
        return value

    def describe(self) -> str:
        """A one-line human description: default and search space."""
        if self.kind == "categorical":
            space = "{" + ", ".join(map(str, self.choices or ())) + "}"
        elif self.kind == "bool":
            space = "{true, false}"
        else:
            space = f"[{self.low:g}, {self.high:g}]{' log' if self.log else ''}"
        fixed = "" if self.searchable else " (fixed unless a suite searches it)"
        return f"{self.name}={self.default!r} {space}{fixed}"


def _number(value: Any, error: str) -> float | int:
    """A number from a number or a numeric string (YAML reads ``1e-3`` as a string)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(error) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(error)
    return value


@dataclass(frozen=True)
class LayerPair:
    """A teacher layer matched to a student layer, with per-example feature shapes."""

    teacher: str
    student: str
    teacher_shape: tuple[int, ...]
    student_shape: tuple[int, ...]
    weight: float = 1.0

    @property
    def key(self) -> str:
        """Name used in loss-term keys: the student layer (unique among pairs)."""
        return self.student

    def describe(self) -> str:
        return (f"teacher layer {self.teacher!r} {tuple(self.teacher_shape)} / "
                f"student layer {self.student!r} {tuple(self.student_shape)}")


@dataclass
class TransferContext:
    """Everything a method may need at construction time.

    ``same_architecture`` means the student has the teacher's architecture and starts from its
    weights (scenario ``transfer``). ``start_weights`` are the student's parameters before
    training; ``head`` names the student's parameters that are new (its classifier).
    """

    teacher: nn.Module
    student: nn.Module
    pairs: Sequence[LayerPair]
    scenario: str = "transfer"
    same_architecture: bool = True
    same_labels: bool = False
    start_weights: Mapping[str, Tensor] = field(default_factory=dict)
    head: frozenset[str] = frozenset()


@dataclass
class StepOutputs:
    """What a training step produced, passed to every method's forward."""

    student_logits: Tensor
    targets: Tensor
    student_features: Mapping[str, Tensor] = field(default_factory=dict)
    teacher_features: Mapping[str, Tensor] = field(default_factory=dict)
    teacher_logits: Tensor | None = None


class TransferMethod(nn.Module):
    """Base class: subclasses set the class attributes and implement :meth:`forward`."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    #: The paper and the reference code the defaults follow.
    reference: ClassVar[str] = ""
    reads: ClassVar[frozenset[str]] = frozenset()
    #: The stage pairs used when a run does not set ``layers`` (default pairs run shallow ->
    #: deep): all of them, the middle one, or the last one.
    layers: ClassVar[LayerChoice] = "all"
    hyperparams: ClassVar[tuple[HyperParam, ...]] = ()
    needs_same_architecture: ClassVar[bool] = False
    needs_same_labels: ClassVar[bool] = False
    needs_layer_pairs: ClassVar[bool] = False

    def __init__(self, context: TransferContext, **hparams: Any) -> None:
        super().__init__()
        self.hparams = resolve_hparams(type(self), hparams)
        check_applicable(type(self), context.scenario, same_architecture=context.same_architecture,
                         same_labels=context.same_labels, has_pairs=bool(context.pairs))
        self.pairs = tuple(context.pairs)

    def forward(self, step: StepOutputs) -> dict[str, Tensor]:
        raise NotImplementedError

    def task_loss_weight(self) -> float:
        """Weight of the task's cross-entropy; KD-style methods mix it with their own."""
        return 1.0

    def anchored_parameters(self) -> frozenset[str]:
        """Names of the student's parameters this method pulls toward their starting values:
        the optimizer puts no weight decay on them, which would pull them toward 0 instead."""
        return frozenset()

    @classmethod
    def applicability(cls) -> str:
        """Human description of where the method applies."""
        needs = []
        if cls.needs_same_architecture:
            needs.append("same architecture")
        if cls.needs_same_labels:
            needs.append("same label set")
        return "any pairing" if not needs else "needs " + " and ".join(needs)


_REGISTRY: dict[str, type[TransferMethod]] = {}


def register_method(name: str) -> Callable[[type[TransferMethod]], type[TransferMethod]]:
    """Class decorator registering a method under ``name`` (refuses duplicates)."""

    def decorate(cls: type[TransferMethod]) -> type[TransferMethod]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ConfigError(f"method name {name!r} is already registered by "
                              f"{_REGISTRY[name].__module__}.{_REGISTRY[name].__qualname__}; "
                              f"choose another name for {cls.__module__}.{cls.__qualname__}")
        unknown_reads = set(cls.reads) - READABLE
        if unknown_reads:
            raise ConfigError(f"method {name!r} declares unknown reads {sorted(unknown_reads)}; "
                              f"valid: {sorted(READABLE)}")
        if cls.layers not in LAYER_CHOICES:
            raise ConfigError(f"method {name!r} declares layers={cls.layers!r}; valid: "
                              f"{list(LAYER_CHOICES)}")
        names = [hp.name for hp in cls.hyperparams]
        if len(set(names)) != len(names):
            raise ConfigError(f"method {name!r} declares a hyper-parameter twice: {names}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def get_method(name: str) -> type[TransferMethod]:
    """The registered class for ``name``; the error suggests the closest name."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise unknown_name("method", name, _REGISTRY) from None


def method_names() -> list[str]:
    return sorted(_REGISTRY)


def resolve_hparams(cls: type[TransferMethod], given: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults overlaid with ``given``, each value validated; unknown names are errors."""
    declared = {hp.name: hp for hp in cls.hyperparams}
    for key in given:
        if key not in declared:
            if not declared:
                raise ConfigError(f"method {cls.name!r} takes no hyper-parameters, got {key!r}")
            raise unknown_name(f"hyper-parameter of method {cls.name!r}", key, declared)
    return {name: hp.validate(given.get(name, hp.default)) for name, hp in declared.items()}


def check_applicable(cls: type[TransferMethod], scenario: str, *, same_architecture: bool,
                     same_labels: bool, has_pairs: bool = True) -> None:
    """Refuse a pairing the method cannot handle, saying why and what to use instead.

    Called by the runner before anything trains, and again when a method is built.
    """
    if cls.needs_same_architecture and not same_architecture:
        raise ConfigError(
            f"method {cls.name!r} does not apply to scenario {scenario!r}: it compares "
            "student weights with the teacher's, so it needs the same architecture, started "
            "from the teacher's weights (scenario 'transfer'). Use a feature-based method "
            "(ot, fitnets, at) instead.")
    if cls.needs_same_labels and not same_labels:
        raise ConfigError(
            f"method {cls.name!r} does not apply to scenario {scenario!r}: it matches "
            "teacher and student predictions, so it needs the same label set (scenario "
            "'distill'). Use a feature-based method (ot, fitnets, at) instead.")
    if cls.needs_layer_pairs and not has_pairs:
        raise ConfigError(f"method {cls.name!r} needs at least one layer pair; set "
                          "'layers' in the config or use models that declare feature taps")


#: The ``β/2 · ||w_head||²`` weight L2-SP and DELTA put on a transfer student's new head.
HEAD_BETA = HyperParam(
    "beta", "float", 0.01, 1e-4, 1.0, log=True, help="β, weight of ||w||² on the new head",
    source="Transfer-Learning-Library --trade-off-head 0.01 (L2Regularization, ½||w||²), in "
           "its L2-SP and DELTA examples alike; range: ours")


def head_penalty(beta: float, params: Mapping[str, Tensor], head: Sequence[str],
                 device: torch.device) -> Tensor:
    """``β/2 · ||w_head||²`` over the named head parameters (0 when there are none)."""
    norm = sum((params[n].pow(2).sum() for n in head), start=torch.zeros((), device=device))
    return beta / 2 * norm


def pair_features(step: StepOutputs, pair: LayerPair) -> tuple[Tensor, Tensor]:
    """The (teacher, student) features of a pair, with an error naming a missing layer."""
    try:
        return step.teacher_features[pair.teacher], step.student_features[pair.student]
    except KeyError as missing:
        raise ConfigError(f"no features recorded for layer {missing}; "
                          f"the pair is {pair.describe()}") from None


def per_pair_terms(prefix: str, pairs: Sequence[LayerPair], step: StepOutputs, weight: float,
                   loss: Callable[[LayerPair, Tensor, Tensor], Tensor]) -> dict[str, Tensor]:
    """``{prefix/layer: weight · pair weight · loss(pair, teacher, student)}`` for every pair;
    teacher features are detached, so no gradient can reach the teacher."""
    terms = {}
    for pair in pairs:
        teacher, student = pair_features(step, pair)
        terms[f"{prefix}/{pair.key}"] = weight * pair.weight * loss(pair, teacher.detach(),
                                                                    student)
    return terms


def flatten_neurons(features: Tensor) -> Tensor:
    """``(B, C, H, W)`` or ``(B, C)`` -> ``(C, B·H·W)``: one row per neuron (channel)."""
    if features.dim() == 2:
        return features.t()
    if features.dim() != 4:
        raise ConfigError(f"features must be (B, C) or (B, C, H, W), got shape "
                          f"{tuple(features.shape)}")
    return features.transpose(0, 1).reshape(features.shape[1], -1)


def pool_to(features: Tensor, size: tuple[int, ...]) -> Tensor:
    """Adaptive-average-pool a ``(B, C, H, W)`` map to ``size``; a map of that size (or a
    ``(B, C)`` one, for ``size == ()``) is returned as is."""
    return features if features.shape[2:] == size else F.adaptive_avg_pool2d(features, size)


def pool_to_smaller(first: Tensor, second: Tensor) -> tuple[Tensor, Tensor]:
    """Adaptive-average-pool the larger of two ``(B, C, H, W)`` maps to the smaller size."""
    size = tuple(min(a, b) for a, b in zip(first.shape[2:], second.shape[2:], strict=True))
    return pool_to(first, size), pool_to(second, size)


def pooled(features: Tensor) -> Tensor:
    """``(B, C, H, W)`` -> ``(B, C)`` by global average pooling; ``(B, C)`` is returned as is."""
    if features.dim() == 4:
        return features.mean(dim=(2, 3))
    if features.dim() != 2:
        raise ConfigError(f"features must be (B, C) or (B, C, H, W), got shape "
                          f"{tuple(features.shape)}")
    return features


def default_pairs(pairs: Sequence[Any], choice: LayerChoice) -> list[Any]:
    """The stage pairs a method uses by default, from all of them (shallow -> deep).

    ``middle`` is the second stage when there are three or four, as RepDistiller's
    ``--hint_layer 2`` (its feature list starts with the stem); in general ``(n - 1) // 2``.
    """
    if choice == "all" or not pairs:
        return list(pairs)
    return [pairs[(len(pairs) - 1) // 2]] if choice == "middle" else [pairs[-1]]


def deepest_pair(pairs: tuple[LayerPair, ...], method: str) -> LayerPair:
    """The last pair: default pairs run shallow -> deep, so it is the deepest stage."""
    if not pairs:
        raise ConfigError(f"method {method!r} needs at least one layer pair")
    return pairs[-1]
