"""Shared fixtures."""

from __future__ import annotations

import pytest

from otbench.benchmark import plugins
from otbench.methods import base


@pytest.fixture
def isolated_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plugins loaded in the test process register into copies of the registry, forgotten
    afterwards: other tests see only the built-in methods."""
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    monkeypatch.setattr(plugins, "_loaded", set(plugins._loaded))
    # setenv, not delenv: delenv of an unset variable records nothing to undo, so a plugin
    # list that load_plugins exports during the test would outlive it
    monkeypatch.setenv(plugins.ENV_VAR, "")
