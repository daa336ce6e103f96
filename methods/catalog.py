"""The methods' defaults and their provenance, as text: for ``otbench methods`` and the table
in ``docs/methods.md`` (a test keeps the two equal to what the methods declare)."""

from __future__ import annotations

from .base import HyperParam, TransferMethod, get_method, method_names

LAYER_TEXT = {"all": "all stages", "middle": "middle stage", "last": "last stage"}


def describe(cls: type[TransferMethod]) -> list[str]:
    """Lines describing one method: summary, reference, scope, layers, and every default
    with its search range and source."""
    reads = ", ".join(sorted(cls.reads)) or "nothing"
    lines = [f"{cls.name}: {cls.summary}", f"  reference: {cls.reference}",
             f"  applies: {cls.applicability()}; reads: {reads}"]
    if cls.needs_layer_pairs:
        lines.append(f"  layers by default: {LAYER_TEXT[cls.layers]} (a run's `layers` "
                     "overrides)")
    for hp in cls.hyperparams:
        lines.append(f"  {hp.describe()}" + (f"  — {hp.help}" if hp.help else ""))
        lines.append(f"      source: {hp.source}")
    return lines


def builtin_methods() -> list[type[TransferMethod]]:
    """The registered methods shipped with otbench (not plugins), by name."""
    return [cls for cls in map(get_method, method_names())
            if cls.__module__.startswith(__package__ + ".")]


def _space(hp: HyperParam) -> str:
    if hp.kind == "categorical":
        return ", ".join(map(str, hp.choices or ()))
    if hp.kind == "bool":
        return "true, false"
    return f"[{hp.low:g}, {hp.high:g}]{' log' if hp.log else ''}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table() -> str:
    """One Markdown table: every built-in method's parameters, defaults, ranges and sources."""
    lines = ["| method | layers | parameter | default | range (searched?) | source |",
             "|---|---|---|---|---|---|"]
    for cls in builtin_methods():
        name = cls.name
        layers = LAYER_TEXT[cls.layers] if cls.needs_layer_pairs else "—"
        if not cls.hyperparams:
            lines.append(f"| `{name}` | {layers} | — | — | — | {_cell(cls.reference)} |")
        for hp in cls.hyperparams:
            searched = "searched" if hp.searchable else "fixed"
            lines.append(f"| `{name}` | {layers} | `{hp.name}` | {hp.default!r} | "
                         f"{_cell(_space(hp))} ({searched}) | {_cell(hp.source)} |")
    return "\n".join(lines)


def references_table() -> str:
    """One Markdown table: every built-in method's paper and reference code."""
    lines = ["| method | summary | paper and reference code |", "|---|---|---|"]
    for cls in builtin_methods():
        lines.append(f"| `{cls.name}` | {_cell(cls.summary)} | {_cell(cls.reference)} |")
    return "\n".join(lines)
