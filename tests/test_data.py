"""Tests of the tasks-and-data layer: spelling, splits, loaders on tiny real-format files,
batching and augmentation. No network; every dataset file is written here in tmp_path."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from otbench.benchmark.data import (
    BatchIterator,
    Split,
    TaskSpec,
    clear_cache,
    crop_flip,
    dataset_names,
    load_task,
    make_augmenter,
    make_normalizer,
)
from otbench.errors import ConfigError, UnknownNameError

# --------------------------------------------------------------------------- spelling


@pytest.mark.parametrize("text, classes, per_class", [
    ("digits", None, None),
    ("digits:0-4", (0, 1, 2, 3, 4), None),
    ("digits:5-9@10", (5, 6, 7, 8, 9), 10),
    ("cifar100:0-49@50", tuple(range(50)), 50),
    ("mnist:0,2,4", (0, 2, 4), None),
    ("mnist:7,0-2,9", (7, 0, 1, 2, 9), None),
    ("fashion-mnist@3", None, 3),
    ("CIFAR10:1,0", (1, 0), None),
])
def test_parse_and_round_trip(text: str, classes, per_class) -> None:
    spec = TaskSpec.parse(text, split_seed=4)
    assert (spec.classes, spec.per_class, spec.split_seed) == (classes, per_class, 4)
    assert TaskSpec.parse(str(spec), split_seed=4) == spec
    assert str(TaskSpec.parse(str(spec))) == str(spec)


def test_imagefolder_spelling() -> None:
    spec = TaskSpec.parse("imagefolder=/data/cub_200:0-19,25@30")
    assert (spec.dataset, spec.root, spec.per_class) == ("imagefolder", "/data/cub_200", 30)
    assert spec.classes == (*range(20), 25)
    assert str(spec) == "imagefolder=/data/cub_200:0-19,25@30"
    assert TaskSpec.parse(str(spec)) == spec
    assert TaskSpec.parse("imagefolder=C:/d@x/y").root == "C:/d@x/y"  # not a suffix: kept


@pytest.mark.parametrize("text", ["digits:", "digits:0-", "digits:a", "digits:4-2",
                                  "digits@", "digits@0", "digits@-3", "digits@1.5",
                                  "cifar10=/x", "", "digits::1", "imagefolder="])
def test_bad_spelling_shows_grammar(text: str) -> None:
    with pytest.raises(ConfigError, match=r"DATASET\[:CLASSES\]\[@PER_CLASS\].*e\.g\."):
        TaskSpec.parse(text)


def test_bad_values() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'digits'"):
        TaskSpec.parse("digit")
    with pytest.raises(ConfigError, match="more than once"):
        TaskSpec.parse("digits:0,1,0")
    with pytest.raises(ConfigError, match="imagefolder=PATH"):
        TaskSpec.parse("imagefolder")
    with pytest.raises(ConfigError, match="val_fraction"):
        TaskSpec("digits", val_fraction=1.0)
    with pytest.raises(ConfigError, match="split_seed"):
        TaskSpec("digits", split_seed=-1)
    with pytest.raises(ConfigError, match="only 'imagefolder' takes a root"):
        TaskSpec("digits", root="/x")
    assert "digits" in dataset_names() and "imagefolder" in dataset_names()


# --------------------------------------------------------------------------- digits splits


def _rows(x: torch.Tensor) -> set[bytes]:
    return {bytes(r) for r in x.flatten(1).numpy()}


def test_digits_full_task() -> None:
    task = load_task(TaskSpec.parse("digits"))
    n = len(task.train) + len(task.val) + len(task.test)
    assert n == 1797
    assert abs(len(task.test) / n - 0.3) < 0.01
    assert abs(len(task.val) / (len(task.train) + len(task.val)) - 0.2) < 0.01
    assert (task.num_classes, task.in_channels, task.image_size, task.family) == (
        10, 1, 8, "digits")
    assert task.train.x.dtype == torch.uint8 and task.train.y.dtype == torch.int64
    assert task.train.x.shape[1:] == (1, 8, 8) and int(task.train.x.max()) == 255
    for part in (task.train, task.val, task.test):  # stratified: every class ~ its share
        counts = torch.bincount(part.y, minlength=10).float()
        assert counts.min() >= 0.9 * counts.mean()


def test_digits_subset_per_class_and_remap() -> None:
    task = load_task(TaskSpec.parse("digits:5-9@10"))
    assert task.num_classes == 5 and task.class_names == ("5", "6", "7", "8", "9")
    assert torch.bincount(task.train.y).tolist() == [10] * 5
    assert torch.bincount(task.val.y).tolist() == [3] * 5  # round(10 * .2 / .8) = 3
    assert set(task.test.y.tolist()) == set(range(5))
    full = load_task(TaskSpec.parse("digits"))
    # the subset's test set is the full test set restricted to those classes, relabelled
    keep = full.test.y >= 5
    assert torch.equal(task.test.x, full.test.x[keep])
    assert torch.equal(task.test.y, full.test.y[keep] - 5)
    order = load_task(TaskSpec.parse("digits:9,5"))
    assert order.class_names == ("9", "5")
    assert torch.equal(order.test.x[order.test.y == 0], full.test.x[full.test.y == 9])


def test_test_split_fixed_and_train_val_disjoint() -> None:
    a = load_task(TaskSpec.parse("digits@20", split_seed=0))
    b = load_task(TaskSpec.parse("digits@20", split_seed=1))
    c = load_task(TaskSpec.parse("digits", split_seed=1))
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.test.x, c.test.x)
    assert not torch.equal(a.train.x, b.train.x)
    a2 = load_task(TaskSpec.parse("digits@20", split_seed=0))
    assert torch.equal(a.train.x, a2.train.x) and torch.equal(a.val.y, a2.val.y)
    # digits has a few duplicate images, so compare with a small tolerance
    assert len(_rows(a.train.x) & _rows(a.test.x)) <= 2
    assert len(_rows(a.train.x) & _rows(a.val.x)) <= 2
    small = load_task(TaskSpec.parse("digits@5", split_seed=0))  # training sets nest
    assert _rows(small.train.x) <= _rows(a.train.x)


def test_per_class_too_large_names_class_and_count() -> None:
    with pytest.raises(ConfigError, match=r"class 0 has only \d+ training examples.*"
                                          r"per_class <= \d+"):
        load_task(TaskSpec.parse("digits:0-1@500"))
    with pytest.raises(ConfigError, match="class index 12 out of range.*0-9"):
        load_task(TaskSpec.parse("digits:3,12"))


def test_image_size_resizes_once() -> None:
    task = load_task(TaskSpec.parse("digits:0-1@4"), image_size=16)
    assert task.train.x.shape == (8, 1, 16, 16) and task.image_size == 16
    assert task.train.x.dtype == torch.uint8


# --------------------------------------------------------------------------- torchvision files


def _images(n: int, c: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, c, size, size), dtype=np.uint8)


def _pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


@pytest.fixture
def no_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    """CIFAR files are verified by md5 of the real archives, which no small test file can
    match; keep torchvision's file-exists check but drop the checksum (test-only patch)."""
    import torchvision.datasets.cifar as cifar

    original = cifar.check_integrity
    monkeypatch.setattr(cifar, "check_integrity", lambda fpath, md5=None: original(fpath))
    clear_cache()


def _write_cifar10(root: Path, per_batch: int = 6) -> dict[str, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    written = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        x = _images(per_batch, 3, 32, i)
        labels = [(i + j) % 3 for j in range(per_batch)]
        _pickle(folder / name, {"batch_label": name, "labels": labels,
                                "data": x.reshape(per_batch, -1), "filenames": []})
        written[name] = x
    _pickle(folder / "batches.meta", {"label_names": ["airplane", "automobile", "bird"],
                                      "num_cases_per_batch": per_batch})
    return written


def test_cifar10_loader(tmp_path: Path, no_md5: None) -> None:
    written = _write_cifar10(tmp_path)
    task = load_task(TaskSpec.parse("cifar10:2,0"), data_dir=tmp_path)
    assert (task.family, task.in_channels, task.image_size) == ("cifar", 3, 32)
    assert task.class_names == ("bird", "airplane")
    test_x = written["test_batch"]
    test_y = np.array([(5 + j) % 3 for j in range(6)])  # test_batch is written with i = 5
    keep = np.isin(test_y, [2, 0])
    assert torch.equal(task.test.x, torch.from_numpy(test_x[keep]))  # CHW order kept
    assert task.test.y.tolist() == [0 if y == 2 else 1 for y in test_y[keep]]
    assert len(task.train) + len(task.val) == int(sum(
        np.isin([(i + j) % 3 for j in range(6)], [2, 0]).sum() for i in range(5)))
    assert task.mean == (0.4914, 0.4822, 0.4465)


def test_cifar100_loader(tmp_path: Path, no_md5: None) -> None:
    folder = tmp_path / "cifar-100-python"
    for i, name in enumerate(["train", "test"]):
        n = 40 if name == "train" else 8
        x = _images(n, 3, 32, i)
        fine = [j % 4 for j in range(n)]
        _pickle(folder / name, {"filenames": [], "batch_label": name, "fine_labels": fine,
                                "coarse_labels": [0] * n, "data": x.reshape(n, -1)})
    _pickle(folder / "meta", {"fine_label_names": ["apple", "bear", "cat", "dog"],
                              "coarse_label_names": ["all"]})
    task = load_task(TaskSpec.parse("cifar100:1-3@4"), data_dir=tmp_path)
    assert task.class_names == ("bear", "cat", "dog")
    assert torch.bincount(task.train.y).tolist() == [4, 4, 4]
    assert len(task.test) == 6 and task.test.x.shape[1:] == (3, 32, 32)


def _idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    """Write ``arr`` (uint8) in the idx format of the MNIST files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    head = struct.pack(">I", 0x0800 + arr.ndim) + b"".join(struct.pack(">I", d)
                                                          for d in arr.shape)
    data = head + arr.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def _write_mnist(root: Path, folder: str, gz: bool) -> dict[str, np.ndarray]:
    raw = root / folder / "raw"
    out = {}
    for split, n in (("train", 30), ("t10k", 10)):
        x = _images(n, 1, 28, n)[:, 0]
        y = np.arange(n) % 10
        _idx(raw / f"{split}-images-idx3-ubyte", x, gz)
        _idx(raw / f"{split}-labels-idx1-ubyte", y, gz)
        out[split] = x
    return out


@pytest.mark.parametrize("name, folder, gz", [("mnist", "MNIST", False),
                                              ("fashion-mnist", "FashionMNIST", True)])
def test_mnist_loaders(tmp_path: Path, name: str, folder: str, gz: bool) -> None:
    clear_cache()
    written = _write_mnist(tmp_path, folder, gz)
    task = load_task(TaskSpec.parse(f"{name}:0-4@2"), data_dir=tmp_path)
    assert (task.family, task.in_channels, task.image_size) == ("mnist", 1, 28)
    assert torch.bincount(task.train.y).tolist() == [2] * 5
    assert torch.bincount(task.val.y).tolist() == [1] * 5
    assert task.test.y.tolist() == [0, 1, 2, 3, 4]
    assert torch.equal(task.test.x[:, 0], torch.from_numpy(written["t10k"][:5]))


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST/raw"),
                                          ("fashion-mnist", "FashionMNIST/raw"),
                                          ("cifar10", "cifar-10-batches-py"),
                                          ("cifar100", "cifar-100-python")])
def test_missing_files_raise_config_error(tmp_path: Path, name: str, folder: str) -> None:
    clear_cache()
    with pytest.raises(ConfigError, match=rf"{folder}.*--data-dir.*download"):
        load_task(TaskSpec.parse(name), data_dir=tmp_path, download=False)


# --------------------------------------------------------------------------- image folders


def _write_folder(root: Path, classes: dict[str, int], seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name, n in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)  # H=12, W=10
            Image.fromarray(arr).save(root / name / f"{i}.png")


def test_imagefolder_carves_fixed_test(tmp_path: Path) -> None:
    _write_folder(tmp_path / "birds", {"crow": 10, "duck": 10, "owl": 10})
    spec = TaskSpec.parse(f"imagefolder={tmp_path / 'birds'}:2,0@3")
    task = load_task(spec, image_size=8)
    assert task.train.x.shape == (6, 3, 8, 8) and task.train.x.dtype == torch.uint8
    assert task.class_names == ("owl", "crow") and task.family == "imagenet"
    assert torch.bincount(task.test.y).tolist() == [3, 3]  # round(10 * 0.3)
    other = load_task(TaskSpec.parse(str(spec), split_seed=5), image_size=8)
    assert torch.equal(task.test.x, other.test.x)
    # relative roots are also tried against data_dir
    rel = load_task(TaskSpec.parse("imagefolder=birds@2"), data_dir=tmp_path, image_size=8)
    assert rel.num_classes == 3


def test_imagefolder_train_test_subfolders(tmp_path: Path) -> None:
    _write_folder(tmp_path / "train", {"a": 5, "b": 5, "c": 5}, seed=1)
    _write_folder(tmp_path / "test", {"a": 2, "c": 3}, seed=2)
    task = load_task(TaskSpec.parse(f"imagefolder={tmp_path}:0,2"), image_size=6)
    assert task.test.y.tolist() == [0, 0, 1, 1, 1]  # test/c maps to train class 2 -> 1
    assert len(task.train) + len(task.val) == 10 and task.test.x.shape[1:] == (3, 6, 6)


def test_imagefolder_missing_root(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="imagefolder root not found"):
        load_task(TaskSpec.parse(f"imagefolder={tmp_path / 'nope'}"))


# --------------------------------------------------------------------------- batches


def _split(n: int = 23) -> Split:
    x = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 4, 4).contiguous()
    return Split(x=x, y=torch.arange(n))


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return x.float()


def test_batch_iterator_covers_epoch_once_and_is_deterministic() -> None:
    split = _split()
    ident = _as_float
    it = BatchIterator(split, 5, shuffle=True, generator=torch.Generator().manual_seed(0),
                       augment=None, normalize=ident)
    assert len(it) == 5
    epoch1 = torch.cat([y for _, y in it])
    epoch2 = torch.cat([y for _, y in it])
    assert sorted(epoch1.tolist()) == list(range(23)) == sorted(epoch2.tolist())
    assert not torch.equal(epoch1, epoch2)  # a fresh permutation each epoch
    again = BatchIterator(split, 5, shuffle=True, generator=torch.Generator().manual_seed(0),
                          augment=None, normalize=ident)
    assert torch.equal(torch.cat([y for _, y in again]), epoch1)
    for x, y in it:  # images travel with their labels
        assert torch.equal(x[:, 0, 0, 0], y.float())
    plain = BatchIterator(split, 5, shuffle=False, generator=None, augment=None,
                          normalize=ident, drop_last=True)
    assert len(plain) == 4 and torch.cat([y for _, y in plain]).tolist() == list(range(20))
    with pytest.raises(ConfigError, match="batch_size"):
        BatchIterator(split, 0, shuffle=False, generator=None, augment=None, normalize=ident)


def test_normalizer_matches_stats() -> None:
    task = load_task(TaskSpec.parse("digits"))
    x = make_normalizer(task)(task.train.x)
    assert x.dtype == torch.float32 and abs(float(x.mean())) < 0.05
    assert abs(float(x.std()) - 1) < 0.05


def test_augmenter_crops_and_flips() -> None:
    assert make_augmenter("digits") is None and make_augmenter("mnist") is None
    with pytest.raises(UnknownNameError):
        make_augmenter("cifarr")
    aug = make_augmenter("cifar")
    assert aug is not None
    n, pad = 64, 4
    x = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(1))
    out = aug(x, torch.Generator().manual_seed(2))
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert torch.equal(out, aug(x, torch.Generator().manual_seed(2)))
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    flipped = shifted = 0
    for i in range(n):  # every output is one crop (+ optional flip) of its padded input
        found = [(dy, dx, f) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                 for f in (False, True)
                 if torch.equal(out[i], (lambda c, f: c.flip(-1) if f else c)(
                     padded[i, :, dy:dy + 8, dx:dx + 8], f))]
        assert found, f"sample {i} is not a crop/flip of its input"
        dy, dx, f = found[0]
        flipped += f
        shifted += (dy, dx) != (pad, pad)
    assert 10 < flipped < n - 10 and shifted > n // 2
    big = crop_flip(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), None)
    assert big.shape == (2, 3, 32, 32)
    assert make_augmenter("imagenet")(x, None).shape == x.shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_pipeline() -> None:
    task = load_task(TaskSpec.parse("digits:0-4@10"), device="cuda", image_size=32)
    assert task.train.x.is_cuda and task.test.y.is_cuda
    it = BatchIterator(task.train, 16, shuffle=True, generator=torch.Generator().manual_seed(0),
                       augment=make_augmenter("cifar"), normalize=make_normalizer(task))
    x, y = next(iter(it))
    assert x.is_cuda and y.is_cuda and x.dtype == torch.float32 and x.shape[1:] == (1, 32, 32)
