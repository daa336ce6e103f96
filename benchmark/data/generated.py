"""Datasets generated in the real datasets' file formats, for smoke runs of a suite.

The files are read by the very code that reads the real ones (torchvision's CIFAR classes,
:class:`torchvision.datasets.ImageFolder` and the JPEG decoder), so a smoke run goes through
every step a real run does except the pixels. A generated CIFAR folder holds a marker file:
its pickles cannot match the official archive's md5 sums, and only there are they read
without them (:func:`unverified`).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

#: File in a generated dataset folder that says its files are not the official ones.
GENERATED_MARKER = "GENERATED-BY-OTBENCH"
CIFAR_SIZE = 32


def unverified(cls: type) -> type:
    """torchvision's CIFAR class ``cls`` with its md5 sums removed (files must still exist)."""
    return type(cls.__name__, (cls,), {
        "train_list": [[name, None] for name, _ in cls.train_list],
        "test_list": [[name, None] for name, _ in cls.test_list],
        "meta": {**cls.meta, "md5": None},
    })


def is_generated(folder: Path) -> bool:
    return (folder / GENERATED_MARKER).is_file()


def _labels(num_classes: int, per_class: int) -> np.ndarray:
    return np.repeat(np.arange(num_classes), per_class)


def write_cifar(cls_name: str, data_dir: Path, train_per_class: int, test_per_class: int,
                seed: int = 0) -> Path:
    """A CIFAR-10/100 folder (``cls_name``: torchvision's class name) under ``data_dir`` with
    random images, ``train_per_class`` and ``test_per_class`` of each class: the pickled
    batches and meta file that torchvision's class reads, with its keys and file names."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    fine = cls_name == "CIFAR100"
    num_classes = 100 if fine else 10
    label_key = "fine_labels" if fine else "labels"
    folder = data_dir / cls.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for files, per_class in ((cls.train_list, train_per_class), (cls.test_list, test_per_class)):
        labels = rng.permutation(_labels(num_classes, per_class))
        images = rng.integers(0, 256, (len(labels), 3 * CIFAR_SIZE * CIFAR_SIZE), np.uint8)
        for part, (name, _) in zip(np.array_split(np.arange(len(labels)), len(files)), files,
                                   strict=True):
            batch = {"data": images[part], label_key: labels[part].tolist(),
                     "filenames": [f"generated_{i}.png" for i in part]}
            if fine:
                batch["coarse_labels"] = (labels[part] // 5).tolist()
            with open(folder / name, "wb") as out:
                pickle.dump(batch, out)
    names = {cls.meta["key"]: [f"class_{c:03d}" for c in range(num_classes)]}
    if fine:
        names["coarse_label_names"] = [f"superclass_{c:02d}" for c in range(20)]
    with open(folder / cls.meta["filename"], "wb") as out:
        pickle.dump(names, out)
    (folder / GENERATED_MARKER).touch()
    return folder


def write_imagefolder(root: Path, num_classes: int, train_per_class: int,
                      test_per_class: int, size: int, seed: int = 0) -> Path:
    """An ImageFolder tree of random ``size`` × ``size`` RGB JPEGs: ``train/`` and ``test/``,
    each with one sub-folder per class."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        for c in range(num_classes):
            folder = root / split / f"class_{c:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.jpg", quality=85)
    (root / GENERATED_MARKER).touch()
    return root
