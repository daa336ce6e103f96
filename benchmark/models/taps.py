"""Reading intermediate features: forward hooks, shape probing and teacher/student pairing."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from otbench.errors import UnknownNameError, unknown_name

from .registry import ModelSpec, spec_of


class FeatureTaps:
    """Capture the outputs of named modules during forward passes.

    ``features`` maps each tap to the output of the latest forward, still attached to the
    autograd graph so feature losses can backpropagate into the network. Use as a context
    manager (hooks are removed on exit) or call :meth:`remove` yourself.
    """

    def __init__(self, model: nn.Module, taps: Sequence[str]) -> None:
        modules = dict(model.named_modules())
        for name in taps:
            if name not in modules or name == "":
                raise _unknown_tap(model, name, modules)
        self.taps = tuple(taps)
        self.features: dict[str, Tensor] = {}
        self._handles: list[RemovableHandle] = [
            modules[name].register_forward_hook(self._hook(name)) for name in self.taps
        ]

    def _hook(self, name: str) -> Callable[[nn.Module, object, Tensor], None]:
        def store(_module: nn.Module, _inputs: object, output: Tensor) -> None:
            self.features[name] = output

        return store

    def remove(self) -> None:
        """Remove the hooks (idempotent); captured features stay readable."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> FeatureTaps:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()


def _unknown_tap(model: nn.Module, name: str, modules: dict[str, nn.Module]) -> UnknownNameError:
    """Suggest among the model's declared taps (or all modules for unregistered models)."""
    spec = spec_of(model)
    choices = spec.taps if spec is not None else [n for n in modules if n]
    err = unknown_name("tap", name, choices)
    if spec is not None:
        return UnknownNameError(f"{err} (Any path from model.named_modules() also works.)")
    return err


def feature_shapes(
    model: nn.Module, taps: Sequence[str], input_shape: tuple[int, int, int]
) -> dict[str, tuple[int, ...]]:
    """Per-example output shape of each tap, from one dummy forward.

    Runs in eval mode under no_grad on the model's device/dtype so BN statistics are not
    touched, then restores every module's own training flag (frozen parts stay frozen).
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with FeatureTaps(model, taps) as tapped, torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device, dtype=dtype))
    finally:
        for module, mode in modes.items():
            module.training = mode
    return {name: tuple(tapped.features[name].shape[1:]) for name in taps}


def default_layer_pairs(teacher: ModelSpec, student: ModelSpec) -> list[tuple[str, str]]:
    """Pair teacher and student taps stage by stage.

    Equal counts pair i-th with i-th; otherwise the deepest ``k = min(counts)`` stages are
    paired deepest-with-deepest, since late stages carry the most transferable semantics.
    """
    k = min(len(teacher.taps), len(student.taps))
    return list(zip(teacher.taps[-k:], student.taps[-k:], strict=True))
