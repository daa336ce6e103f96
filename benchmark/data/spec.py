"""Task specifications and their compact spelling.

A task is a dataset, a class subset, a number of training examples per class and a split
seed. Compact spelling (case-insensitive dataset names)::

    TASK      := DATASET [":" CLASSES] ["@" PER_CLASS]
    DATASET   := digits | mnist | fashion-mnist | cifar10 | cifar100 | imagefolder=PATH
    CLASSES   := ITEM ("," ITEM)*      ITEM := INDEX | INDEX "-" INDEX   (inclusive range)
               | NAME ("," NAME)*      (class names, e.g. an image folder's sub-folders)
    PER_CLASS := positive integer (training examples per class, validation excluded)

Examples: ``digits``, ``digits:0-4``, ``digits:5-9@10``, ``cifar100:0-49@50``,
``mnist:0,2,4``, ``imagefolder=/data/cub_200:0-19@30``, ``imagefolder=/data/pets:cat,dog``.
Class indices are positions among the dataset's original labels (for an image folder: its
sorted sub-folder names); a list that is not made only of indices and ranges is read as
class names. A task relabels its classes 0..k-1 in the order given. The PATH of an image
folder is everything after ``=`` up to an optional trailing ``:CLASSES`` (no ``/`` in it) /
``@PER_CLASS``; a folder whose own name ends like that must be given through
:class:`TaskSpec` directly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from otbench.errors import ConfigError, unknown_name

from .sources import DATASETS

GRAMMAR = ("DATASET[:CLASSES][@PER_CLASS], e.g. 'digits', 'cifar100:0-49@50', 'mnist:0,2,4', "
           "'imagefolder=/data/cub:0-19@30' or 'imagefolder=/data/pets:cat,dog'")

_PLAIN = re.compile(r"^(?P<name>[A-Za-z0-9_.\-]+)(?::(?P<classes>[^@]*))?(?:@(?P<per>.*))?$")
_FOLDER = re.compile(r"^(?P<path>.+?)(?::(?P<classes>[^:/\\@]+))?(?:@(?P<per>\d+))?$")
_ITEM = re.compile(r"^(\d+)(?:-(\d+))?$")


def _bad(text: str, why: str) -> ConfigError:
    return ConfigError(f"task {text!r}: {why}. Expected {GRAMMAR}.")


def parse_classes(text: str, where: str,
                  names: bool = False) -> tuple[int, ...] | tuple[str, ...]:
    """``'0-4,7'`` -> ``(0, 1, 2, 3, 4, 7)``; order kept, ranges inclusive and ascending.
    With ``names`` (image folders), a list with any item that is not an index or a range is
    class names: ``'cat,dog'``."""
    items = [item.strip() for item in text.split(",")]
    if names and not all(_ITEM.match(item.replace(" ", "")) for item in items):
        if not all(items):
            raise _bad(where, f"empty class name in {text!r} (separate names by single commas)")
        return tuple(items)
    out: list[int] = []
    for item in text.replace(" ", "").split(","):
        m = _ITEM.match(item)
        if not m:
            raise _bad(where, f"bad class item {item!r} in {text!r} (use indices like 3 or "
                              f"ranges like 0-4, separated by commas)")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise _bad(where, f"class range {item!r} runs backwards (write {hi}-{lo})")
        out.extend(range(lo, hi + 1))
    return tuple(out)


def format_classes(classes: tuple[int, ...] | tuple[str, ...]) -> str:
    """Inverse of :func:`parse_classes`: ascending runs of 3+ become ``a-b``."""
    if any(isinstance(c, str) for c in classes):
        return ",".join(str(c) for c in classes)
    parts, i = [], 0
    while i < len(classes):
        j = i
        while j + 1 < len(classes) and classes[j + 1] == classes[j] + 1:
            j += 1
        if j - i >= 2:
            parts.append(f"{classes[i]}-{classes[j]}")
        else:
            parts.extend(str(c) for c in classes[i:j + 1])
        i = j + 1
    return ",".join(parts)


def _parse_per_class(text: str, where: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise _bad(where, f"per-class count {text!r} after '@' must be a positive integer")
    return int(text)


@dataclass(frozen=True)
class TaskSpec:
    """What to train and evaluate on; ``str(spec)`` is its compact spelling.

    ``per_class`` counts *training* examples per class; the validation split is carved on
    top of them so that it is ``val_fraction`` of the task's labelled data, unless the
    dataset has its own validation split (an image folder's ``val/``; see
    :mod:`otbench.benchmark.data.tasks`). ``split_seed`` moves train/val, never test.
    """

    dataset: str
    classes: tuple[int, ...] | tuple[str, ...] | None = None
    per_class: int | None = None
    split_seed: int = 0
    val_fraction: float = 0.2
    root: str | None = None

    def __post_init__(self) -> None:
        name = str(self.dataset).lower()
        if name not in DATASETS:
            raise unknown_name("dataset", self.dataset, DATASETS)
        object.__setattr__(self, "dataset", name)
        if self.classes is not None:
            names = [c for c in self.classes if isinstance(c, str)]
            object.__setattr__(self, "classes", tuple(str(c) for c in self.classes) if names
                               else tuple(int(c) for c in self.classes))
        self._check()

    def _check(self) -> None:
        """Reject impossible values early, naming the field and what is allowed."""
        if self.classes is not None:
            if not self.classes:
                raise ConfigError("task classes: empty; use None for all classes")
            if all(isinstance(c, int) for c in self.classes) and min(self.classes) < 0:
                raise ConfigError(f"task classes: negative index in {self.classes}")
            dup = sorted({c for c in self.classes if self.classes.count(c) > 1})
            if dup:
                raise ConfigError(f"task classes: {dup} listed more than once")
        if self.per_class is not None and (isinstance(self.per_class, bool)
                                           or int(self.per_class) != self.per_class
                                           or self.per_class < 1):
            raise ConfigError(f"task per_class: must be a positive integer or None, "
                              f"got {self.per_class!r}")
        if isinstance(self.split_seed, bool) or not isinstance(self.split_seed, int) \
                or self.split_seed < 0:
            raise ConfigError(f"task split_seed: must be an integer >= 0, "
                              f"got {self.split_seed!r}")
        if not 0.0 <= float(self.val_fraction) < 1.0:
            raise ConfigError(f"task val_fraction: must be in [0, 1), got {self.val_fraction!r}")
        needs_root = DATASETS[self.dataset].needs_root
        if needs_root and not self.root:
            raise ConfigError(f"task {self.dataset!r}: needs a root folder; spell it "
                              f"'imagefolder=PATH'")
        if not needs_root and self.root is not None:
            raise ConfigError(f"task root: only 'imagefolder' takes a root, not "
                              f"{self.dataset!r}")

    @classmethod
    def parse(cls, text: str, split_seed: int = 0) -> TaskSpec:
        """Read the compact spelling (see module docstring); errors show the grammar."""
        text = str(text).strip()
        head, sep, rest = text.partition("=")
        if sep:
            if head.strip().lower() != "imagefolder":
                raise _bad(text, f"only 'imagefolder' takes '=PATH', not {head!r}")
            m = _FOLDER.match(rest.strip())
            if not m:
                raise _bad(text, "missing folder path after 'imagefolder='")
            root: str | None = m.group("path")
            name = "imagefolder"
        else:
            m = _PLAIN.match(text)
            if not m:
                raise _bad(text, "cannot read it")
            root, name = None, m.group("name")
        classes = m.group("classes")
        per = m.group("per")
        return cls(
            dataset=name,
            classes=None if classes is None else parse_classes(classes, text,
                                                               names=root is not None),
            per_class=None if per is None else _parse_per_class(per, text),
            split_seed=split_seed,
            root=root,
        )

    def __str__(self) -> str:
        out = f"imagefolder={self.root}" if self.root is not None else self.dataset
        if self.classes is not None:
            out += ":" + format_classes(self.classes)
        if self.per_class is not None:
            out += f"@{self.per_class}"
        return out
