"""Teachers: trained once by the same loop (scenario ``source``), cached by a hash of their
full config, loaded with ``torch.load(weights_only=True)``.

A cache file that is corrupt or was made for another config is an error naming the file and
the fix, never a silent reuse. Workers that need the same teacher wait on a file lock, so it is
trained once.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout
from torch import nn

from otbench.errors import ConfigError, OtbenchError
from otbench.methods import TransferContext, get_method

from . import tracking
from .config import TeacherConfig, flatten
from .data import TaskData, TaskSpec, load_task
from .models import build_model
from .train import Student, accuracy, run_epochs

CACHE_FORMAT = 1


class TeacherCacheError(OtbenchError):
    """A teacher cache file cannot be trusted."""


@dataclass(frozen=True)
class TeacherRequest:
    """Everything that determines a teacher's weights."""

    config: TeacherConfig
    task: TaskSpec | None
    image_size: int | None

    def key(self) -> dict[str, Any]:
        weights = self.config.weights
        return {"format": CACHE_FORMAT, "model": self.config.model,
                "task": None if self.task is None else str(self.task),
                "val_fraction": None if self.task is None else self.task.val_fraction,
                "split_seed": None if self.task is None else self.task.split_seed,
                "image_size": self.image_size, "seed": self.config.seed,
                "train": self.config.train.model_dump(),
                "weights": None if weights is None else _file_digest(weights)}

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.key(), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Teacher:
    model: nn.Module
    num_classes: int
    in_channels: int
    source: str  # the cache file or weights file it came from


def _file_digest(path: str) -> str:
    if path == "imagenet":
        return path
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"teacher.weights: file {path!r} does not exist; give a state_dict "
                          "file saved with torch.save(model.state_dict(), path)")
    return hashlib.sha256(file.read_bytes()).hexdigest()


def cache_path(request: TeacherRequest, results_dir: str | Path) -> Path:
    task = str(request.task or "weights").replace("/", "_").replace(":", "_").replace("@", "_")
    return Path(results_dir) / "teachers" / f"{request.config.model}_{task}_{request.digest()}.pt"


def read_cache(path: Path, request: TeacherRequest) -> dict[str, Any]:
    """Load and check a cache file; refuses a corrupt or mismatched one."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise TeacherCacheError(f"teacher cache {str(path)!r} is corrupt ({type(err).__name__}: "
                                f"{reason}); delete it to retrain the teacher") from None
    if not isinstance(payload, Mapping) or not {"key", "state_dict"} <= set(payload):
        raise TeacherCacheError(f"teacher cache {str(path)!r} is not an otbench teacher file; "
                                "delete it to retrain the teacher")
    if payload["key"] != request.key():
        raise TeacherCacheError(f"teacher cache {str(path)!r} was made for another config "
                                f"({payload['key']}); delete it to retrain the teacher")
    return dict(payload)


def write_cache(path: Path, payload: Mapping[str, Any]) -> None:
    """Atomic write: a crash mid-save never leaves a half-written cache file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    torch.save(dict(payload), partial)
    os.replace(partial, path)


def get_teacher(request: TeacherRequest, *, device: torch.device, data_dir: str,
                download: bool, results_dir: str, tracking_uri: str, experiment: str,
                progress: bool) -> Teacher:
    """The teacher for ``request``: from its weights file, its cache, or trained now."""
    if request.config.weights is not None:
        return _from_weights(request, device)
    path = cache_path(request, results_dir)
    with FileLock(str(path) + ".lock"):
        if not path.exists():
            task = load_task(request.task, data_dir=data_dir, download=download, device=device,
                             image_size=request.image_size)
            write_cache(path, _train(request, task, device, results_dir, tracking_uri,
                                     experiment, progress, path))
        payload = read_cache(path, request)
    model = build_model(request.config.model, payload["num_classes"], payload["in_channels"])
    model.load_state_dict(payload["state_dict"])
    return Teacher(_frozen(model.to(device)), payload["num_classes"], payload["in_channels"],
                   str(path))


def close_orphaned_teacher_runs(tracking_uri: str, experiment: str) -> list[str]:
    """Close the RUNNING teacher runs of ``experiment`` whose process is gone, by the rule
    training follows: only the holder of a cache's lock trains that teacher, so a run whose
    cache lock is free lost its process. Found otherwise only by the next process to train
    the same teacher, a teacher never trained again would stay RUNNING forever. Runs whose
    cache folder is not on this machine are left to the machine that has it."""
    closed = []
    for run in tracking.running_runs(tracking_uri, experiment, {"stage": "teacher"}):
        cache = run.data.tags.get("teacher_cache")
        if not cache or not Path(cache).parent.is_dir():
            continue
        try:
            with FileLock(cache + ".lock", timeout=0):
                if tracking.end_orphaned_run(tracking_uri, run.info.run_id,
                                             "its process died while training this teacher; "
                                             "found at the start of a sweep"):
                    closed.append(run.info.run_id)
        except Timeout:  # a live process is training it
            continue
    return closed


def _from_weights(request: TeacherRequest, device: torch.device) -> Teacher:
    cfg = request.config
    if cfg.num_classes is None:
        raise ConfigError("teacher.num_classes is required with teacher.weights (the head size "
                          "of the weights file, e.g. 1000 for ImageNet)")
    model = build_model(cfg.model, cfg.num_classes, cfg.in_channels, weights=cfg.weights)
    return Teacher(_frozen(model.to(device)), cfg.num_classes, cfg.in_channels, cfg.weights)


def _frozen(model: nn.Module) -> nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model


def _train(request: TeacherRequest, task: TaskData, device: torch.device, results_dir: str,
           tracking_uri: str, experiment: str, progress: bool, path: Path) -> dict[str, Any]:
    """Train a teacher from scratch with the shared loop, logged as an MLflow run."""
    cfg = request.config
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, task.num_classes, task.in_channels).to(device)
    method = get_method("finetune")(TransferContext(teacher=model, student=model, pairs=()))
    tags = tracking.standard_tags("teacher", scenario="source", task=str(request.task),
                                  method="finetune", seed=cfg.seed, model=cfg.model,
                                  teacher_cache=str(path))
    # Only the holder of this cache's lock trains it: a run still RUNNING for it lost its
    # process (killed outright, no chance to close it).
    tracking.end_orphaned_runs(tracking_uri, experiment, {"teacher_cache": str(path)},
                               "its process died while training this teacher; found by the "
                               "next process to train it")
    with tracking.mlflow_run(tracking_uri, experiment, run_name=f"teacher {cfg.model} "
                             f"{request.task}", tags=tags,
                             artifact_root=Path(results_dir) / "artifacts") as run:
        run.log_params(flatten({"teacher": cfg.model_dump(), "task": str(request.task)}))
        run.log_dict(request.key(), "teacher_key.yaml")
        generator = torch.Generator().manual_seed(cfg.seed)
        run_epochs(Student(model, method), task, cfg.train, generator=generator,
                   on_epoch=lambda log: run.log_metrics(log.metrics(), step=log.epoch),
                   progress=progress, description=f"teacher {cfg.model}")
        val_acc, test_acc = accuracy(model, task.val, task), accuracy(model, task.test, task)
        run.log_metrics({"val/acc_final": val_acc, "test/acc": test_acc})
    return {"key": request.key(), "state_dict": {k: v.cpu() for k, v in
                                                 model.state_dict().items()},
            "num_classes": task.num_classes, "in_channels": task.in_channels,
            "val_acc": val_acc, "test_acc": test_acc}
