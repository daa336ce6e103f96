"""A sweep worker: takes the next piece of work from the shared Optuna storage until none is
left. Local processes and other machines run this same loop against one storage.

Work, in order of preference: a trial of a study whose budget is not yet claimed (or a trial
queued again after its worker died), then a final-stage seed of a study that is done. When
the only work left is other workers' running trials, the worker waits and keeps checking
heartbeats, so a trial whose worker died is retried here.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from otbench.benchmark.plugins import load_plugins
from otbench.benchmark.tracking import tracking_uri_for

from . import final, search
from .studies import make_storage, open_study, quiet_optuna
from .suite import load_suite
from .trials import State, StudyWork, Worker


@dataclass(frozen=True)
class WorkerJob:
    """What a worker process needs; plain data, so the spawn start method can pickle it."""

    suite_ref: str
    settings: dict[str, Any]
    storage_url: str
    parent_runs: dict[str, str]  # study name -> its MLflow parent run
    progress: bool = False
    verbose: bool = True
    workers: int = 1  # local workers on this machine, which share its cores
    parent_pid: int | None = None  # a spawned worker's sweep process (see parent_gone)


def run_worker(job: WorkerJob) -> None:
    """The worker loop (also the entry point of a spawned worker process)."""
    load_plugins()  # a spawned process gets the parent's --plugin list from the environment
    quiet_optuna()
    suite = load_suite(job.suite_ref, job.settings)
    threads = suite.threads or (default_threads(job.workers) if job.workers > 1 else None)
    if threads is not None:
        torch.set_num_threads(threads)
    uri = tracking_uri_for(suite.tracking_uri, suite.results_dir)
    storage = make_storage(job.storage_url, suite.heartbeat, uri)
    works = [StudyWork(spec, open_study(storage, spec.name, suite.pruner),
                       open_study(storage, final.study_name(spec.name), None),
                       job.parent_runs[spec.name]) for spec in suite.studies]
    worker = Worker(suite, uri, job.progress, job.verbose)
    while (step := next_step(worker, works)) is not State.DONE:
        if parent_gone(job):
            print(f"otbench worker {os.getpid()}: its sweep process ended; stopping",
                  file=sys.stderr)
            return
        if step is State.BUSY:
            time.sleep(min(suite.heartbeat.interval_s, 5))
        else:
            step()


def parent_gone(job: WorkerJob) -> bool:
    """Whether a spawned worker's sweep process died (killed outright, no chance to stop its
    workers): the worker is then re-parented. It stops before its next piece of work rather
    than carry on with a sweep nobody will report; rerunning the sweep resumes it."""
    return job.parent_pid is not None and os.getppid() != job.parent_pid


def next_step(worker: Worker, works: list[StudyWork]) -> Callable[[], None] | State:
    """Search trials first (spreads workers over studies), then final seeds of done studies."""
    states = [(work, search.state(worker, work)) for work in works]
    for work, state in states:
        if state is State.WORK:
            return lambda work=work: search.run_trial(worker, work)
    busy = False
    for work, state in states:
        if state is State.BUSY:
            busy = True
            continue
        final_state = final.state(worker, work)
        if final_state is State.WORK:
            return lambda work=work: final.run_seed(worker, work)
        busy |= final_state is State.BUSY
    return State.BUSY if busy else State.DONE


def default_threads(workers: int) -> int:
    """Threads per local worker, so that workers do not oversubscribe the CPU cores."""
    return max(1, (os.cpu_count() or 1) // workers)
