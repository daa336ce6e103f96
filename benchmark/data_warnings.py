"""Warnings about a task too small for its training settings, given before anything trains.

Neither case is an error (a user may want it), but both silently waste a run or a search:
an epoch of one optimizer step makes the epoch-based schedule and pruning meaningless, and a
validation split of a handful of images makes every search trial score the same.
"""

from __future__ import annotations

import math

#: An epoch should take at least this many optimizer steps.
MIN_STEPS_PER_EPOCH = 2
#: Below this many validation images, accuracy moves in steps of more than 5 points and
#: search trials tie.
MIN_VALIDATION_IMAGES = 20


def small_data_warnings(task: str, train_images: int, val_images: int,
                        batch_size: int) -> list[str]:
    """What is wrong with training ``train_images`` at ``batch_size`` and validating on
    ``val_images``; empty when nothing is."""
    found = []
    steps = max(1, math.ceil(train_images / batch_size))
    if steps < MIN_STEPS_PER_EPOCH:
        found.append(f"task {task}: {train_images} training images at batch_size {batch_size} "
                     f"make {steps} optimizer step per epoch; lower train.batch_size or raise "
                     f"the per-class count")
    if val_images < MIN_VALIDATION_IMAGES:
        found.append(f"task {task}: {val_images} validation images score accuracy in steps of "
                     f"{100 / max(val_images, 1):.0f} points, so search trials are likely to "
                     f"tie; raise val_fraction or the per-class count, or add a val/ folder")
    return found
