"""Batching, augmentation and normalization as whole-batch tensor ops.

Splits live on the training device as uint8, so an epoch is a permutation plus slicing:
no DataLoader workers, no per-sample Python, and randomness comes only from the generator
the caller passes (reproducible runs).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from otbench.errors import ConfigError, unknown_name

from .tasks import Split, TaskData

Augment = Callable[[Tensor, "torch.Generator | None"], Tensor]
Normalize = Callable[[Tensor], Tensor]

FAMILIES = ("digits", "mnist", "cifar", "imagenet")


def _rand_device(x: Tensor, generator: torch.Generator | None) -> torch.device:
    """Draw on the generator's device (it can only fill tensors there), else on x's."""
    return generator.device if generator is not None else x.device


def crop_flip(x: Tensor, generator: torch.Generator | None, *, pad: int | None = None) -> Tensor:
    """Random crop after zero padding plus random horizontal flip, for a whole batch.

    ``pad=None`` pads ``H // 8`` pixels (4 on 32x32, 28 on 224x224). One gather does both:
    per-sample row/column indices into the padded batch, the columns reversed when flipped.
    """
    b, _, h, w = x.shape
    p = max(1, h // 8) if pad is None else pad
    dev = _rand_device(x, generator)
    off = torch.randint(0, 2 * p + 1, (2, b), generator=generator, device=dev).to(x.device)
    flip = torch.randint(0, 2, (b,), generator=generator, device=dev).to(x.device).bool()
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = off[0, :, None] + ar_h                                            # (B, H)
    cols = off[1, :, None] + torch.where(flip[:, None], w - 1 - ar_w, ar_w)  # (B, W)
    padded = F.pad(x, (p, p, p, p)) if p > 0 else x
    bidx = torch.arange(b, device=x.device)[:, None, None]
    out = padded[bidx, :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def make_augmenter(family: str) -> Augment | None:
    """The training augmentation of a family: crop+flip for natural images, none for
    digits/MNIST (flipping a digit changes its meaning)."""
    if family not in FAMILIES:
        raise unknown_name("augmentation family", family, FAMILIES)
    if family == "cifar":
        return partial(crop_flip, pad=4)
    if family == "imagenet":
        return partial(crop_flip, pad=None)
    return None


def make_normalizer(task: TaskData) -> Normalize:
    """uint8 -> float32 ``(x / 255 - mean) / std`` per channel, fused as ``x * a - b``."""
    dev = task.train.x.device
    std = torch.tensor(task.std, dtype=torch.float32, device=dev).view(1, -1, 1, 1)
    mean = torch.tensor(task.mean, dtype=torch.float32, device=dev).view(1, -1, 1, 1)
    scale, shift = 1.0 / (255.0 * std), mean / std

    def normalize(x: Tensor) -> Tensor:
        a, b = (scale, shift) if x.device == dev else (scale.to(x.device), shift.to(x.device))
        return x.to(torch.float32).mul_(a).sub_(b)

    return normalize


class BatchIterator:
    """Mini-batches of a :class:`Split`: ``(normalized float x, int64 y)`` on its device.

    Each ``iter()`` is one epoch; with ``shuffle`` it draws a fresh permutation from
    ``generator``, so a seeded generator fixes the whole sequence of epochs.
    """

    def __init__(self, split: Split, batch_size: int, *, shuffle: bool,
                 generator: torch.Generator | None = None, augment: Augment | None = None,
                 normalize: Normalize, drop_last: bool = False) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size: must be a positive integer, got {batch_size!r}")
        self.split, self.batch_size = split, batch_size
        self.shuffle, self.generator, self.drop_last = shuffle, generator, drop_last
        self.augment, self.normalize = augment, normalize

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _order(self) -> Tensor | None:
        if not self.shuffle:
            return None
        n, g = len(self.split), self.generator
        dev = g.device if g is not None else self.split.x.device
        return torch.randperm(n, generator=g, device=dev).to(self.split.x.device)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = self._order()
        for i in range(len(self)):
            sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
            if order is None:
                x, y = self.split.x[sl], self.split.y[sl]
            else:
                idx = order[sl]
                x, y = self.split.x[idx], self.split.y[idx]
            if self.augment is not None:
                x = self.augment(x, self.generator)
            yield self.normalize(x), y
