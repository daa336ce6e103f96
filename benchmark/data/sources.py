"""Dataset sources: where the images of each registered dataset come from.

A source exposes the *labels* of its train (and, where official, test) pool up front and
decodes *images* only for the indices a task selects, so a 20-class slice of a large
ImageFolder tree decodes 20 classes, not all of them. Everything a task needs beyond that
(class subset, test/val/train carving) lives in :mod:`.tasks`.
"""

from __future__ import annotations

import gzip
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from otbench.errors import ConfigError

from .generated import is_generated, unverified

#: Decoder for one pool: (pool, indices, image_size, device) -> uint8 (N, C, S, S) on device.
ImageFn = Callable[[str, np.ndarray, int, torch.device], Tensor]
#: Stored sizes (width, height) of a pool's images at some indices, read without decoding.
SizesFn = Callable[[str, np.ndarray], set[tuple[int, int]]]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Source:
    """Labels of a dataset's pools plus a decoder for the images a task selects.

    ``test_y is None`` means the dataset has no official test split; the task layer then
    carves a fixed one from the train pool; ``val_y is None`` likewise for validation. Pools
    are named ``train``, ``val`` and ``test``. ``native_size is None`` (image folders): the
    images' sizes vary by dataset and are read from the selected files by ``sizes``.
    """

    train_y: np.ndarray
    test_y: np.ndarray | None
    images: ImageFn
    num_classes: int
    class_names: tuple[str, ...]
    in_channels: int
    native_size: int | None
    val_y: np.ndarray | None = None
    sizes: SizesFn | None = None


@dataclass(frozen=True)
class DatasetInfo:
    """Registry entry: how to open a dataset and how to normalize/augment its images."""

    open: Callable[[Path | None, Path, bool], Source]
    family: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    needs_root: bool = False
    #: Images in the official training split (known without opening the data), or None.
    train_images: int | None = None


# --------------------------------------------------------------------------- tensor pools


def resize_uint8(x: Tensor, size: int, chunk: int = 2048) -> Tensor:
    """Resize square uint8 images to ``size`` (antialiased bilinear), chunked to cap memory."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    out = torch.empty((*x.shape[:2], size, size), dtype=torch.uint8, device=x.device)
    for start in range(0, x.shape[0], chunk):
        part = x[start:start + chunk].float()
        part = F.interpolate(part, size=(size, size), mode="bilinear", antialias=True,
                             align_corners=False)
        out[start:start + chunk] = part.round_().clamp_(0, 255).to(torch.uint8)
    return out


def tensor_source(train: tuple[Tensor, np.ndarray], test: tuple[Tensor, np.ndarray] | None,
                  class_names: tuple[str, ...]) -> Source:
    """A source whose images are already a uint8 (N, C, H, W) tensor in memory."""
    pools = {"train": train[0], "test": test[0] if test else None}

    def images(pool: str, idx: np.ndarray, size: int, device: torch.device) -> Tensor:
        x = pools[pool]
        assert x is not None, f"{pool} pool requested from a source without one"
        picked = x[torch.from_numpy(np.asarray(idx, dtype=np.int64))]
        return resize_uint8(picked.to(device), size)  # resize after the move: GPU is faster

    return Source(
        train_y=np.asarray(train[1], dtype=np.int64),
        test_y=None if test is None else np.asarray(test[1], dtype=np.int64),
        images=images, num_classes=len(class_names), class_names=class_names,
        in_channels=train[0].shape[1], native_size=train[0].shape[-1],
    )


# --------------------------------------------------------------------------- digits


@lru_cache(maxsize=1)
def open_digits(root: Path | None, data_dir: Path, download: bool) -> Source:
    """scikit-learn's 8x8 digits (ships with sklearn): 0..16 intensities rescaled to 0..255."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    names = tuple(str(n) for n in bunch.target_names)
    return tensor_source((torch.from_numpy(x), bunch.target), None, names)


# --------------------------------------------------------------------------- torchvision


def _missing(display: str, folder: Path, download: bool, err: Exception) -> ConfigError:
    """The error for absent/corrupt files: name the folder and both ways to fix it."""
    if download:
        return ConfigError(f"dataset {display!r}: download into {folder} failed ({err}). "
                           f"Check the network, or place the files there by hand and pass "
                           f"--data-dir pointing at their parent folder.")
    return ConfigError(
        f"dataset {display!r}: files not found or corrupted in {folder} ({err}). "
        f"Pass --data-dir pointing at the folder that holds {_relative(folder)}, "
        f"or enable download (--download)."
    )


def _relative(folder: Path) -> str:
    """The part of ``folder`` torchvision appends to the data dir (``MNIST/raw``, ...)."""
    return f"{folder.parent.name}/{folder.name}/" if folder.name == "raw" else f"{folder.name}/"


def _construct(cls: type, data_dir: Path, train: bool, download: bool, display: str,
               folder: Path) -> object:
    """Build a torchvision dataset, turning its RuntimeError/URLError into a ConfigError."""
    try:
        return cls(str(data_dir), train=train, download=download)
    except (RuntimeError, OSError) as err:  # missing/corrupt files, or a failed download
        raise _missing(display, folder, download, err) from err


def _extract_idx_gz(raw: Path) -> None:
    """Unpack ``*-idx?-ubyte.gz`` files torchvision would only unpack while downloading.

    Lets a user drop the official .gz files into ``MNIST/raw`` and run with download off.
    """
    if not raw.is_dir():
        return
    for gz in raw.glob("*-idx?-ubyte.gz"):
        target = gz.with_suffix("")
        if not target.exists():
            with gzip.open(gz, "rb") as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)


def _mnist_like(cls_name: str, display: str) -> Callable[[Path | None, Path, bool], Source]:
    """Opener for torchvision's MNIST-format datasets (idx files under ``<Class>/raw``)."""

    @lru_cache(maxsize=1)
    def open_(root: Path | None, data_dir: Path, download: bool) -> Source:
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        raw = data_dir / cls_name / "raw"
        _extract_idx_gz(raw)
        pools = []
        for train in (True, False):
            ds = _construct(cls, data_dir, train, download, display, raw)
            pools.append((ds.data.unsqueeze(1).contiguous(), ds.targets.numpy()))
        names = tuple(str(c) for c in cls.classes)
        return tensor_source(pools[0], pools[1], names)

    return open_


def _cifar(cls_name: str, display: str) -> Callable[[Path | None, Path, bool], Source]:
    """Opener for torchvision's CIFAR-10/100 (python pickle batches); a generated folder's
    files are read without the official md5 sums."""

    @lru_cache(maxsize=1)
    def open_(root: Path | None, data_dir: Path, download: bool) -> Source:
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        folder = data_dir / cls.base_folder
        if is_generated(folder):
            cls = unverified(cls)
        pools, names = [], ()
        for train in (True, False):
            ds = _construct(cls, data_dir, train, download, display, folder)
            x = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
            pools.append((x, np.asarray(ds.targets)))
            names = tuple(ds.classes)
        return tensor_source(pools[0], pools[1], names)

    return open_


# --------------------------------------------------------------------------- image folders


def _unreadable(path: str, err: Exception) -> ConfigError:
    return ConfigError(f"image file {path!r} cannot be read ({type(err).__name__}: {err}); "
                       f"replace it or delete it from the image folder")


def _decode(path: str, size: int) -> Tensor:
    """Decode one image: RGB, shorter side resized to ``size``, center-cropped square."""
    from PIL import Image
    from torchvision.transforms import functional as TF

    try:
        with Image.open(path) as img:
            img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale >= size, faster
            img = img.convert("RGB")
    except (OSError, ValueError, SyntaxError) as err:  # truncated, corrupt, not an image
        raise _unreadable(path, err) from None
    img = TF.resize(img, size, interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    return TF.pil_to_tensor(TF.center_crop(img, [size, size]))


def _stored_size(path: str) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding its pixels."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, ValueError, SyntaxError) as err:
        raise _unreadable(path, err) from None


def _threaded(fn: Callable[[str], object], paths: list[str]) -> list:
    """``fn`` over many files in threads (PIL releases the GIL while decoding/resizing)."""
    workers = min(8, os.cpu_count() or 1, max(len(paths), 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, paths))


def _decode_all(paths: list[str], size: int) -> Tensor:
    if not paths:
        return torch.empty((0, 3, size, size), dtype=torch.uint8)
    return torch.stack(_threaded(lambda p: _decode(p, size), paths))


def _scan(folder: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """Class names and (path, label) samples of one ImageFolder tree."""
    from torchvision.datasets import ImageFolder

    try:
        ds = ImageFolder(str(folder))
    except (FileNotFoundError, OSError) as err:
        raise ConfigError(
            f"imagefolder root {str(folder)!r}: {err}. Expected one sub-folder per class "
            f"holding images (optionally under train/, val/ and test/)."
        ) from err
    return ds.classes, ds.samples


def _resolve_root(root: Path | None, data_dir: Path) -> Path:
    """An absolute root as given; a relative one against the cwd, else against data_dir."""
    if root is None:
        raise ConfigError("imagefolder task needs a root: spell it 'imagefolder=PATH'")
    candidates = [root] if root.is_absolute() else [root, data_dir / root]
    for cand in candidates:
        if cand.is_dir():
            return cand
    tried = " or ".join(repr(str(c)) for c in candidates)
    raise ConfigError(f"imagefolder root not found: tried {tried}. Spell the task "
                      f"'imagefolder=PATH' with an existing folder (relative paths are "
                      f"tried against the working directory, then --data-dir).")


def _scan_split(base: Path, split: str, classes: list[str]) -> list[tuple[str, int]] | None:
    """The samples of ``base/split`` labelled by ``classes`` (train/'s), None when absent."""
    if not (base / split).is_dir():
        return None
    split_classes, samples = _scan(base / split)
    unknown = sorted(set(split_classes) - set(classes))
    if unknown:
        raise ConfigError(f"imagefolder root {str(base)!r}: {split}/ has classes missing "
                          f"from train/: {unknown[:5]}; give both the same class folders")
    remap = [classes.index(c) for c in split_classes]
    return [(p, remap[y]) for p, y in samples]


def _labels(samples: list[tuple[str, int]] | None) -> np.ndarray | None:
    return None if samples is None else np.array([y for _, y in samples], dtype=np.int64)


def open_imagefolder(root: Path | None, data_dir: Path, download: bool) -> Source:
    """Any ImageFolder tree: one sub-folder per class, or ``train/`` with optional ``val/``
    and ``test/`` beside it (each one sub-folder per class), used as those splits."""
    base = _resolve_root(root, data_dir)
    if (base / "train").is_dir():
        classes, train = _scan(base / "train")
        val, test = _scan_split(base, "val", classes), _scan_split(base, "test", classes)
    else:
        classes, train = _scan(base)
        val = test = None
    paths = {pool: [p for p, _ in samples or []]
             for pool, samples in (("train", train), ("val", val), ("test", test))}

    def images(pool: str, idx: np.ndarray, size: int, device: torch.device) -> Tensor:
        return _decode_all([paths[pool][i] for i in idx], size).to(device)

    def sizes(pool: str, idx: np.ndarray) -> set[tuple[int, int]]:
        return set(_threaded(_stored_size, [paths[pool][i] for i in idx]))

    return Source(
        train_y=np.array([y for _, y in train], dtype=np.int64),
        test_y=_labels(test), val_y=_labels(val),
        images=images, num_classes=len(classes), class_names=tuple(classes),
        in_channels=3, native_size=None, sizes=sizes,
    )


# --------------------------------------------------------------------------- registry

#: Registered datasets. Statistics: digits computed over all 1797 images; MNIST/Fashion and
#: CIFAR the usual published values (CIFAR-10 std is the per-pixel one, not 0.2023...).
DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(open_digits, "digits", (0.3053,), (0.3759,)),
    "mnist": DatasetInfo(_mnist_like("MNIST", "mnist"), "mnist", (0.1307,), (0.3081,),
                         train_images=60_000),
    "fashion-mnist": DatasetInfo(_mnist_like("FashionMNIST", "fashion-mnist"), "mnist",
                                 (0.2860,), (0.3530,), train_images=60_000),
    "cifar10": DatasetInfo(_cifar("CIFAR10", "cifar10"), "cifar",
                           (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                           train_images=50_000),
    "cifar100": DatasetInfo(_cifar("CIFAR100", "cifar100"), "cifar",
                            (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                            train_images=50_000),
    "imagefolder": DatasetInfo(open_imagefolder, "imagenet", IMAGENET_MEAN, IMAGENET_STD,
                               needs_root=True),
}


def clear_cache() -> None:
    """Forget the in-memory copies of tensor datasets (they are cached per data folder)."""
    for info in DATASETS.values():
        clear = getattr(info.open, "cache_clear", None)
        if clear is not None:
            clear()
