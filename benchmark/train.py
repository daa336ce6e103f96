"""The training loop shared by teachers and students: task loss + the method's named terms."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from otbench.errors import OtbenchError
from otbench.methods import StepOutputs, TransferMethod

from .config import TrainConfig
from .data import BatchIterator, Split, TaskData, make_augmenter, make_normalizer
from .models import FeatureTaps


class NonFiniteLossError(OtbenchError, FloatingPointError):
    """A loss term became NaN or infinite; the message names the term."""


@dataclass
class EpochLog:
    """What one epoch measured; the tracker logs it as metrics at step = epoch."""

    epoch: int
    train_loss: float
    terms: dict[str, float]
    val_acc: float
    epoch_time: float
    regularizer_time: float

    def metrics(self) -> dict[str, float]:
        """The epoch's metrics; ``val/acc`` only when the epoch was validated."""
        out = {"train/loss": self.train_loss, "time/epoch": self.epoch_time,
               "time/regularizer": self.regularizer_time}
        if not math.isnan(self.val_acc):
            out["val/acc"] = self.val_acc
        out.update({f"train/{name}": value for name, value in self.terms.items()})
        return out


@dataclass
class Student:
    """A network being trained and, when a method needs them, its teacher and layer taps."""

    model: nn.Module
    method: TransferMethod
    teacher: nn.Module | None = None
    student_taps: list[str] = field(default_factory=list)
    teacher_taps: list[str] = field(default_factory=list)


Params = list[nn.Parameter] | list[dict[str, Any]]


def make_optimizer(params: Params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD or AdamW over ``params`` (parameters, or groups that may set their own
    ``weight_decay``)."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov and cfg.momentum > 0)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def parameter_groups(run: Student) -> list[dict[str, Any]]:
    """The trainable parameters of the student and the method, in two groups: those the
    method anchors to their starting values get no weight decay (it would pull them toward
    0 against the method); the rest get the configured one."""
    anchored = run.method.anchored_parameters()
    decayed, free = [], []
    for name, param in run.model.named_parameters():
        if param.requires_grad:
            (free if name in anchored else decayed).append(param)
    decayed += [p for p in run.method.parameters() if p.requires_grad]
    groups: list[dict[str, Any]] = [{"params": decayed}]
    if free:
        groups.append({"params": free, "weight_decay": 0.0})
    return groups


def make_scheduler(optimizer: torch.optim.Optimizer,
                   cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per epoch."""
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    if cfg.schedule == "step":
        milestones = sorted({max(1, round(f * cfg.epochs)) for f in cfg.milestones})
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=cfg.gamma)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def autocast_for(device: torch.device, enabled: bool) -> AbstractContextManager:
    """bfloat16 autocast on CUDA (no loss scaling needed); a no-op elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def synchronize(device: torch.device) -> None:
    """Make wall-clock timings honest on asynchronous devices."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def accuracy(model: nn.Module, split: Split, task: TaskData, batch_size: int = 512) -> float:
    """Top-1 accuracy on a split, in eval mode; restores the model's previous mode."""
    was_training = model.training
    model.eval()
    batches = BatchIterator(split, batch_size, shuffle=False, generator=None, augment=None,
                            normalize=make_normalizer(task))
    correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches)
    model.train(was_training)
    return correct / max(1, len(split.y))


def host_values(loss: Tensor, terms: dict[str, Tensor]) -> tuple[float, dict[str, float]]:
    """The total loss and each named term as floats, in one device-to-host copy.

    It replaces a finiteness check and an ``.item()`` per term: fewer tiny ops and, on CUDA,
    one sync per step instead of two per term.
    """
    values = torch.stack([loss.detach().reshape(()),
                          *(v.detach().reshape(()) for v in terms.values())]).tolist()
    return values[0], dict(zip(terms, values[1:], strict=True))


def check_finite(values: dict[str, float], where: str) -> None:
    """Raise naming the first term that is NaN or infinite (the task loss included)."""
    for name, value in values.items():
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"loss term {name!r} became {value} at {where}; lower that term's "
                "weight or the learning rate")


def _features(model: nn.Module, taps: list[str], x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    if not taps:
        return model(x), {}
    with FeatureTaps(model, taps) as tapped:
        logits = model(x)
    return logits, dict(tapped.features)


def train_step(run: Student, x: Tensor, y: Tensor, amp: bool) -> tuple[Tensor, dict[str, Tensor],
                                                                       float]:
    """One forward pass; returns the total loss, the named terms and the regularizer time."""
    method = run.method
    device = x.device
    start = time.perf_counter()
    teacher_logits, teacher_features = None, {}
    if run.teacher is not None:
        with torch.no_grad(), autocast_for(device, amp):
            teacher_logits, teacher_features = _features(run.teacher, run.teacher_taps, x)
    teacher_time = time.perf_counter() - start
    with autocast_for(device, amp):
        logits, student_features = _features(run.model, run.student_taps, x)
        task_loss = F.cross_entropy(logits, y)
    synchronize(device)
    start = time.perf_counter()
    step = StepOutputs(student_logits=logits.float(), targets=y,
                       student_features={k: v.float() for k, v in student_features.items()},
                       teacher_features={k: v.float() for k, v in teacher_features.items()},
                       teacher_logits=None if teacher_logits is None else teacher_logits.float())
    terms = method(step)
    synchronize(device)
    regularizer_time = teacher_time + time.perf_counter() - start
    total = method.task_loss_weight() * task_loss.float()
    for value in terms.values():
        total = total + value
    return total, {"task": task_loss.detach(), **terms}, regularizer_time


def run_epochs(run: Student, task: TaskData, cfg: TrainConfig, *, generator: torch.Generator,
               on_epoch: Callable[[EpochLog], None] | None = None,
               progress: bool = True, description: str = "train",
               validate: bool = True) -> list[EpochLog]:
    """Train for ``cfg.epochs``; ``on_epoch`` may log, prune (raise) or checkpoint.
    ``validate=False`` (a refit, whose validation split is in its training data) leaves
    each epoch's ``val_acc`` NaN."""
    optimizer = make_optimizer(parameter_groups(run), cfg)
    scheduler = make_scheduler(optimizer, cfg)
    batches = BatchIterator(task.train, cfg.batch_size, shuffle=True, generator=generator,
                            augment=make_augmenter(task.family), normalize=make_normalizer(task),
                            drop_last=len(task.train.y) % cfg.batch_size == 1)  # BN needs 2
    if run.teacher is not None:
        run.teacher.eval()
    history = []
    bar = tqdm(range(1, cfg.epochs + 1), desc=description, disable=not progress, leave=False)
    for epoch in bar:
        log = _train_epoch(run, batches, optimizer, cfg, epoch)
        scheduler.step()
        if validate:
            log.val_acc = accuracy(run.model, task.val, task)
        history.append(log)
        bar.set_postfix(loss=f"{log.train_loss:.3f}", val=f"{log.val_acc:.3f}")
        if on_epoch is not None:
            on_epoch(log)
    return history


def _train_epoch(run: Student, batches: BatchIterator, optimizer: torch.optim.Optimizer,
                 cfg: TrainConfig, epoch: int) -> EpochLog:
    run.model.train()
    run.method.train()
    sums: dict[str, float] = defaultdict(float)
    total_loss, regularizer_time, steps = 0.0, 0.0, 0
    start = time.perf_counter()
    for index, (x, y) in enumerate(batches):
        loss, terms, seconds = train_step(run, x, y, cfg.amp)
        total, values = host_values(loss, terms)
        check_finite(values, f"epoch {epoch}, step {index}")
        if not math.isfinite(total):
            raise NonFiniteLossError(f"the total loss became {total} at epoch {epoch}, "
                                     f"step {index}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += total
        for name, value in values.items():
            sums[name] += value
        regularizer_time += seconds
        steps += 1
    synchronize(next(run.model.parameters()).device)
    steps = max(steps, 1)
    return EpochLog(epoch=epoch, train_loss=total_loss / steps,
                    terms={k: v / steps for k, v in sums.items()}, val_acc=math.nan,
                    epoch_time=time.perf_counter() - start, regularizer_time=regularizer_time)

