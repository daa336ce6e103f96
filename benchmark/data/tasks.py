"""Loading a task: fixed test split, class subset, per-class train/val carving.

Invariants the benchmark relies on:

* the test split depends only on the dataset (official split, or a fixed stratified 30%
  carved with a constant seed) - never on ``split_seed``, ``per_class`` or the class subset
  (a subset's test set is the full test set restricted to those classes);
* train/val are carved per class with a generator seeded by ``(split_seed, class)``, so a
  class gets the same examples whichever other classes share the task, and training sets
  are nested as ``per_class`` grows;
* validation is ``val_fraction`` of each class's labelled data actually used: with
  ``per_class=P`` a class gets ``P`` train and ``round(P * f / (1 - f))`` (at least 1)
  validation examples, so low-shot tasks do not validate on far more data than they train on;
* a dataset with its own validation split (an image folder's ``val/``) validates on all of
  it (restricted to the task's classes) and ``val_fraction`` does not apply.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from otbench.errors import ConfigError

from .sources import DATASETS, Source
from .spec import TaskSpec

#: Share and seed of the fixed test split for datasets without an official one.
TEST_FRACTION = 0.3
TEST_SEED = 20_240_601
#: Image folders whose selected images differ in size are resized to this (ImageNet's
#: usual crop); folders of one size keep it.
DEFAULT_FOLDER_SIZE = 224

log = logging.getLogger(__name__)


@dataclass
class Split:
    """One split of a task: uint8 images (N, C, H, W) and int64 labels 0..k-1, same device."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class TaskData:
    """A loaded task: its three splits plus what models and transforms need to know."""

    spec: TaskSpec
    train: Split
    val: Split
    test: Split
    num_classes: int
    in_channels: int
    image_size: int
    family: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] = field(default=())


def dataset_names() -> list[str]:
    """Registered dataset names, for help texts and validation."""
    return sorted(DATASETS)


def _round(x: float) -> int:
    """Round half up: reproducible across numpy/Python rounding conventions."""
    return math.floor(x + 0.5)


def _holdout_size(n: int, fraction: float) -> int:
    """How many of a class's ``n`` examples to hold out: at least one, never all."""
    if fraction <= 0 or n < 2:
        return 0
    return min(max(1, _round(n * fraction)), n - 1)


def _val_size(n: int, per_class: int | None, fraction: float) -> int:
    """Validation examples for a class with ``n`` available (see module docstring)."""
    if per_class is None:
        return _holdout_size(n, fraction)
    if fraction <= 0:
        return 0
    return max(1, _round(per_class * fraction / (1.0 - fraction)))


def _permuted(idx: np.ndarray, *seed: int) -> np.ndarray:
    return np.random.default_rng(list(seed)).permutation(idx)


def fixed_test_split(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pool, test) indices: a stratified TEST_FRACTION with a constant seed per class."""
    pool, test = [], []
    for c in np.unique(y):
        perm = _permuted(np.flatnonzero(y == c), TEST_SEED, int(c))
        k = _holdout_size(len(perm), TEST_FRACTION)
        test.append(perm[:k])
        pool.append(perm[k:])
    return np.sort(np.concatenate(pool)), np.sort(np.concatenate(test))


def _max_per_class(n: int, fraction: float) -> int:
    """Largest per_class a class with ``n`` examples can serve (for the error message)."""
    p = n
    while p > 0 and p + _val_size(n, p, fraction) > n:
        p -= 1
    return p


def carve_train_val(y: np.ndarray, pool: np.ndarray, spec: TaskSpec,
                    classes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices into ``y``: per class, val from the front of a seeded
    permutation and train from its back (so train sets nest as per_class grows)."""
    train, val = [], []
    for c in classes:
        perm = _permuted(pool[y[pool] == c], spec.split_seed, c)
        n = len(perm)
        n_val = _val_size(n, spec.per_class, spec.val_fraction)
        n_train = n - n_val if spec.per_class is None else spec.per_class
        if n_train + n_val > n or n_train < 1:
            raise ConfigError(
                f"task {str(spec)!r}: class {c} has only {n} training examples "
                f"(after the test split), but per_class={spec.per_class} needs "
                f"{n_train + n_val} ({n_train} train + {n_val} validation at "
                f"val_fraction={spec.val_fraction}); use per_class <= "
                f"{_max_per_class(n, spec.val_fraction)} or drop that class"
            )
        val.append(perm[:n_val])
        train.append(perm[n - n_train:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _check_classes(spec: TaskSpec, source: Source) -> tuple[int, ...]:
    """The task's classes (all by default) as original labels; names are looked up."""
    if spec.classes is None:
        return tuple(range(source.num_classes))
    if any(isinstance(c, str) for c in spec.classes):
        missing = [c for c in spec.classes if c not in source.class_names]
        if missing:
            shown = ", ".join(source.class_names[:20])
            more = "" if source.num_classes <= 20 else f" (and {source.num_classes - 20} more)"
            raise ConfigError(f"task {str(spec)!r}: no class named {missing[0]!r}; "
                              f"{spec.dataset} has classes {shown}{more}")
        return tuple(source.class_names.index(str(c)) for c in spec.classes)
    bad = [c for c in spec.classes if int(c) >= source.num_classes]
    if bad:
        raise ConfigError(f"task {str(spec)!r}: class index {bad[0]} out of range; "
                          f"{spec.dataset} has classes 0-{source.num_classes - 1}")
    return tuple(int(c) for c in spec.classes)


def _make_split(source: Source, pool: str, y_all: np.ndarray, idx: np.ndarray,
                lut: np.ndarray, size: int, device: torch.device) -> Split:
    x = source.images(pool, idx, size, device)
    y = torch.from_numpy(lut[y_all[idx]]).to(device)
    return Split(x=x, y=y)


def _default_size(source: Source, spec: TaskSpec,
                  picks: list[tuple[str, np.ndarray]]) -> int:
    """The dataset's native size; for an image folder, the selected images' own size when
    they all share one (its shorter side), else DEFAULT_FOLDER_SIZE. Logged: the choice
    decides a run's cost (28 px digits blown up to 224 px train ~100 times slower)."""
    if source.native_size is not None:
        return source.native_size
    assert source.sizes is not None
    sizes = set().union(*(source.sizes(pool, idx) for pool, idx in picks))
    if len(sizes) == 1:
        width, height = sizes.pop()
        size = min(width, height)
        log.info("task %s: image_size %d, the images' own size (%dx%d); set image_size to "
                 "change it", spec, size, width, height)
        return size
    log.info("task %s: image_size %d by default, since its images have %d different sizes; "
             "set image_size to change it", spec, DEFAULT_FOLDER_SIZE, len(sizes))
    return DEFAULT_FOLDER_SIZE


@dataclass(frozen=True)
class Selection:
    """Which images of a source each split of a task takes, before any is decoded:
    ``splits[name] = (pool, labels of that pool, indices into it)``."""

    spec: TaskSpec
    source: Source
    classes: tuple[int, ...]
    splits: dict[str, tuple[str, np.ndarray, np.ndarray]]

    def size(self, split: str) -> int:
        return len(self.splits[split][2])


def select_task(spec: TaskSpec, *, data_dir: str | Path = "data",
                download: bool = False) -> Selection:
    """The task's train/val/test images, from the labels alone (see the module docstring)."""
    root = Path(spec.root).expanduser() if spec.root is not None else None
    source = DATASETS[spec.dataset].open(root, Path(data_dir).expanduser().resolve(), download)
    classes = _check_classes(spec, source)
    if source.test_y is None:
        pool, test = fixed_test_split(source.train_y)
        test_pool, test_y = "train", source.train_y
    else:
        pool, test = np.arange(len(source.train_y)), np.arange(len(source.test_y))
        test_pool, test_y = "test", source.test_y
    test = test[np.isin(test_y[test], classes)]
    if source.val_y is None:
        train, val = carve_train_val(source.train_y, pool, spec, classes)
        val_pool, val_y = "train", source.train_y
    else:
        train, _ = carve_train_val(source.train_y, pool, replace(spec, val_fraction=0.0),
                                   classes)
        val_pool, val_y = "val", source.val_y
        val = np.flatnonzero(np.isin(val_y, classes))
        empty = [source.class_names[c] for c in classes if c not in set(val_y[val])]
        if empty:
            raise ConfigError(f"task {str(spec)!r}: its val/ folder has no images of class "
                              f"{empty[0]!r}; add some, or remove val/ to carve validation "
                              f"from train/ (val_fraction)")
    return Selection(spec, source, classes, {"train": ("train", source.train_y, train),
                                             "val": (val_pool, val_y, val),
                                             "test": (test_pool, test_y, test)})


def load_task(spec: TaskSpec, *, data_dir: str | Path = "data", download: bool = False,
              device: str | torch.device = "cpu", image_size: int | None = None) -> TaskData:
    """Load ``spec`` as uint8 tensors on ``device``; images are resized to ``image_size``
    (default: see :func:`_default_size`) once here, not per batch."""
    info = DATASETS[spec.dataset]
    if image_size is not None and image_size < 1:
        raise ConfigError(f"image_size: must be a positive integer, got {image_size!r}")
    chosen = select_task(spec, data_dir=data_dir, download=download)
    source, classes = chosen.source, chosen.classes
    lut = np.full(source.num_classes, -1, dtype=np.int64)
    lut[list(classes)] = np.arange(len(classes))
    size = image_size or _default_size(source, spec, [(pool, idx) for pool, _, idx
                                                      in chosen.splits.values()])
    dev = torch.device(device)
    splits = {name: _make_split(source, pool, y_all, idx, lut, size, dev)
              for name, (pool, y_all, idx) in chosen.splits.items()}
    return TaskData(
        spec=spec, train=splits["train"], val=splits["val"], test=splits["test"],
        num_classes=len(classes), in_channels=source.in_channels, image_size=size,
        family=info.family, mean=info.mean, std=info.std,
        class_names=tuple(source.class_names[c] for c in classes),
    )
