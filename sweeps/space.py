"""Search spaces: a method's declared hyper-parameters, narrowed or widened by a suite.

The method is the one place a default range lives; a suite's ``search:`` section
only overrides it. A space is a tuple of :class:`HyperParam` (the searched ones); every other
hyper-parameter stays at its default, filled in by the runner.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import optuna

from otbench.errors import ConfigError, unknown_name
from otbench.methods import HyperParam, TransferMethod

from .schema import SearchRange

Space = tuple[HyperParam, ...]


def build_space(method: type[TransferMethod], overrides: Mapping[str, SearchRange]) -> Space:
    """Searchable hyper-parameters plus overridden ones (an override makes a fixed one
    searched), in the method's declaration order."""
    declared = {hp.name: hp for hp in method.hyperparams}
    for name in overrides:
        if name not in declared:
            if not declared:
                raise ConfigError(f"search.{method.name}.{name}: method {method.name!r} takes "
                                  "no hyper-parameters; remove this entry")
            raise unknown_name(f"hyper-parameter of method {method.name!r} (in "
                               f"search.{method.name})", name, declared)
    return tuple(apply_override(hp, overrides[hp.name], method.name) if hp.name in overrides
                 else hp for hp in method.hyperparams if hp.searchable or hp.name in overrides)


def apply_override(hp: HyperParam, override: SearchRange, method: str) -> HyperParam:
    """``hp`` with the suite's range or choices; errors name ``search.<method>.<param>``."""
    where = f"search.{method}.{hp.name}"
    numeric = {k: v for k, v in override.model_dump(exclude_unset=True).items()
               if k in ("low", "high", "log")}
    try:
        if override.choices is not None:
            if numeric:
                raise ConfigError(f"give either choices or {'/'.join(numeric)}, not both")
            choices = tuple(hp.validate(value) for value in override.choices)
            default = hp.default if hp.default in choices else choices[0]
            return dataclasses.replace(hp, kind="categorical", choices=choices,
                                       default=default, searchable=True)
        if hp.kind not in ("float", "int"):
            raise ConfigError(f"a {hp.kind} hyper-parameter takes choices, not "
                              f"{'/'.join(numeric)} (e.g. choices: {list(hp.choices or ())})")
        return dataclasses.replace(hp, searchable=True, **numeric)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def suggest(trial: optuna.Trial, space: Space) -> dict[str, Any]:
    """Ask ``trial`` for a value of every searched hyper-parameter."""
    params: dict[str, Any] = {}
    for hp in space:
        if hp.choices is not None or hp.kind == "bool":
            params[hp.name] = trial.suggest_categorical(hp.name, list(hp.choices or (False, True)))
        elif hp.kind == "int":
            params[hp.name] = trial.suggest_int(hp.name, int(hp.low), int(hp.high), log=hp.log)
        else:
            params[hp.name] = trial.suggest_float(hp.name, hp.low, hp.high, log=hp.log)
    return params


def describe(space: Space) -> str:
    """One line for ``--dry-run``: each searched parameter, its default and its range."""
    return "; ".join(hp.describe() for hp in space) or "nothing to search (defaults only)"
