"""User methods from outside the project: ``--plugin PATH_OR_MODULE`` and entry points.

A plugin is a Python file or an importable module that registers methods with
``@register_method``. Plugins named on the command line are also exported in
``OTBENCH_PLUGINS`` so that sweep workers in other processes load the same ones.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Iterable
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType

from otbench.errors import ConfigError

ENTRY_POINT_GROUP = "otbench.methods"
ENV_VAR = "OTBENCH_PLUGINS"

_loaded: set[str] = set()


def load_plugin(spec: str) -> ModuleType | None:
    """Import one plugin (a ``.py`` path or a module name) once per process."""
    path = Path(spec).expanduser()
    key = str(path.resolve()) if spec.endswith(".py") else spec
    if key in _loaded:
        return None
    try:
        module = _import_file(path) if spec.endswith(".py") else importlib.import_module(spec)
    except ConfigError as err:  # e.g. a name registered twice, a bad search space
        raise ConfigError(f"plugin {spec!r}: {err}") from None
    except Exception as err:
        raise ConfigError(f"plugin {spec!r} failed to import ({type(err).__name__}: {err}); "
                          "fix the plugin or check the path/module name") from None
    _loaded.add(key)
    return module


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    name = f"otbench_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def load_plugins(specs: Iterable[str] = ()) -> list[str]:
    """Load installed entry points, ``OTBENCH_PLUGINS`` and ``specs``; export them all."""
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.value not in _loaded:
            try:
                entry.load()
            except Exception as err:
                raise ConfigError(f"installed plugin {entry.name!r} ({entry.value}) failed to "
                                  f"load ({type(err).__name__}: {err})") from None
            _loaded.add(entry.value)
    inherited = [s for s in os.environ.get(ENV_VAR, "").split(os.pathsep) if s]
    specs = [*inherited, *(str(Path(s).resolve()) if s.endswith(".py") else s for s in specs)]
    for spec in specs:
        load_plugin(spec)
    unique = list(dict.fromkeys(specs))
    if unique:
        os.environ[ENV_VAR] = os.pathsep.join(unique)
    return unique
