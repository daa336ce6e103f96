"""Tasks and data: dataset registry, task spelling, loading and batch iteration.

See :mod:`.spec` for the task grammar (``digits:0-4@10``, ``imagefolder=/data/cub@30``) and
:mod:`.tasks` for how test/val/train are carved.
"""

from .batches import BatchIterator, crop_flip, make_augmenter, make_normalizer
from .sources import DATASETS, clear_cache
from .spec import GRAMMAR, TaskSpec
from .tasks import Selection, Split, TaskData, dataset_names, load_task, select_task

__all__ = [
    "DATASETS",
    "GRAMMAR",
    "BatchIterator",
    "Selection",
    "Split",
    "TaskData",
    "TaskSpec",
    "clear_cache",
    "crop_flip",
    "dataset_names",
    "load_task",
    "make_augmenter",
    "make_normalizer",
    "select_task",
]
