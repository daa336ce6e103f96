"""Runs a whole sweep on this machine: shared setup, then N local workers, then a summary.

Setup happens once, before any worker starts: the MLflow store and experiment, every Optuna
study, one MLflow parent run per study, and the teachers (cached on disk). Workers then only
load what exists, so concurrent first-time creation (which SQLite does not survive) never
happens. Running the same command on several machines against one ``--storage`` shares the
studies: each machine does this setup (idempotent) and runs its own workers.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import torch

from otbench.benchmark.data import select_task
from otbench.benchmark.data_warnings import small_data_warnings
from otbench.benchmark.runner import run_tags
from otbench.benchmark.teachers import close_orphaned_teacher_runs, get_teacher
from otbench.benchmark.tracking import close_run, open_shared_run, tracking_uri_for

from . import final
from .space import Space
from .studies import (
    Counts,
    count,
    describe_studies,
    make_storage,
    open_study,
    overhead_seconds,
)
from .suite import Suite
from .worker import WorkerJob, run_worker


@dataclass(frozen=True)
class StudyResult:
    name: str
    budget: int
    counts: Counts
    tests: list[float]
    overheads: list[float]  # seconds per completed trial and final run outside its epoch loop
    chosen: tuple[int, dict[str, Any]] | None  # (trial number, params) the final stage trains


def prepare(suite: Suite, storage_url: str, *, progress: bool) -> dict[str, str]:
    """Create the shared state; returns each study's MLflow parent run id. A parent run is
    RUNNING from here until :func:`close_parents` sums its study up."""
    if suite.threads is not None:
        torch.set_num_threads(suite.threads)  # teachers train here
    warn_small_data(suite)
    uri = tracking_uri_for(suite.tracking_uri, suite.results_dir)
    storage = make_storage(storage_url, suite.heartbeat, uri)
    parents = {}
    for spec in suite.studies:
        tags = {k: v for k, v in run_tags(spec.plan, "study").items() if k != "seed"}
        parents[spec.name] = open_shared_run(uri, suite.experiment, run_name=spec.name,
                                             tags=tags,
                                             key={"stage": "study", "study": spec.name},
                                             artifact_root=Path(suite.results_dir) / "artifacts")
        study = open_study(storage, spec.name, suite.pruner)
        if not study.get_trials(deepcopy=False):
            queue_defaults(study, spec.space)
        describe_studies(study, open_study(storage, final.study_name(spec.name), None),
                         spec, suite.name, parents[spec.name])
    close_orphaned_teacher_runs(uri, suite.experiment)
    prepare_teachers(suite, uri, progress=progress)
    return parents


def queue_defaults(study: optuna.Study, space: Space) -> None:
    """Make a new study's first trial the method's defaults (its authors' settings, where
    they give some), so the search always includes them; a default the suite's range
    excludes is left to the sampler."""
    inside = {hp.name: hp.default for hp in space
              if (hp.choices is not None and hp.default in hp.choices)
              or (hp.low is not None and hp.high is not None and hp.low <= hp.default <= hp.high)
              or hp.kind == "bool"}
    if inside:
        study.enqueue_trial(inside)


def warn_small_data(suite: Suite) -> None:
    """Each study's task too small for its batch size or its search, said before the sweep
    starts (each run also records it)."""
    seen = set()
    for spec in suite.studies:
        cfg = spec.plan.config
        if (spec.plan.task, cfg.train.batch_size) in seen:
            continue
        seen.add((spec.plan.task, cfg.train.batch_size))
        chosen = select_task(spec.plan.task, data_dir=cfg.data_dir, download=cfg.download)
        for note in small_data_warnings(cfg.task, chosen.size("train"), chosen.size("val"),
                                        cfg.train.batch_size):
            warnings.warn(note, stacklevel=2)


def prepare_teachers(suite: Suite, tracking_uri: str, *, progress: bool) -> None:
    """Train (or find cached) every teacher the suite needs, one at a time, before workers
    start: workers then all load them instead of waiting on each other's training."""
    seen = set()
    for spec in suite.studies:
        plan, cfg = spec.plan, spec.plan.config
        request = plan.teacher_request
        if request.config.weights is not None or request.digest() in seen:
            continue
        seen.add(request.digest())
        get_teacher(request, device=plan.device, data_dir=cfg.data_dir, download=cfg.download,
                    results_dir=cfg.results_dir, tracking_uri=tracking_uri,
                    experiment=cfg.experiment, progress=progress)


def run_workers(job: WorkerJob) -> int:
    """Run ``job.workers`` workers (in this process when 1); returns how many failed."""
    if job.workers == 1:
        run_worker(job)
        return 0
    context = multiprocessing.get_context("spawn")  # no forked torch/SQLite state
    job = replace(job, parent_pid=os.getpid())
    processes = [context.Process(target=worker_process, args=(job,),
                                 name=f"otbench-worker-{i}") for i in range(job.workers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    return sum(process.exitcode != 0 for process in processes)


def worker_process(job: WorkerJob) -> None:
    """A spawned worker: Ctrl-C (sent to the whole process group) ends it quietly, since the
    parent reports the interruption once."""
    try:
        run_worker(job)
    except KeyboardInterrupt:
        sys.exit(130)


def collect(suite: Suite, storage_url: str) -> list[StudyResult]:
    """Where every study stands, read back from the storage."""
    uri = tracking_uri_for(suite.tracking_uri, suite.results_dir)
    storage = make_storage(storage_url, suite.heartbeat, uri)
    results = []
    for spec in suite.studies:
        study = open_study(storage, spec.name, suite.pruner)
        final_study = open_study(storage, final.study_name(spec.name), None)
        trials = study.get_trials(deepcopy=False)
        final_trials = final_study.get_trials(deepcopy=False)
        results.append(StudyResult(spec.name, spec.trials, count(trials),
                                   final.test_accuracies(final_study),
                                   overhead_seconds(trials + final_trials),
                                   final.chosen_params(study, final_trials)))
    return results


def close_parents(suite: Suite, parents: Mapping[str, str], results: list[StudyResult]) -> None:
    """Sum each study up on its MLflow parent run and end it: the trial counts, the best
    trial (``best.trial``, ``best.<param>``) and validation accuracy, and the final runs'
    test accuracy (mean, std, n)."""
    uri = tracking_uri_for(suite.tracking_uri, suite.results_dir)
    for result in results:
        metrics = {"trials/finished": result.counts.finished,
                   "trials/pruned": result.counts.pruned, "trials/failed": result.counts.failed}
        if result.counts.best is not None:
            metrics["val/acc_best"] = result.counts.best
        if result.overheads:
            metrics["trials/overhead_median_s"] = statistics.median(result.overheads)
        if result.tests:
            metrics.update({"test/acc_mean": statistics.mean(result.tests),
                            "test/acc_n": len(result.tests)})
            if len(result.tests) > 1:
                metrics["test/acc_std"] = statistics.stdev(result.tests)
        params = {}
        if result.chosen is not None:
            number, chosen = result.chosen
            params = {"best.trial": number, **{f"best.{k}": v for k, v in chosen.items()}}
        close_run(uri, parents[result.name], params=params, metrics=metrics)


def abandon_parents(suite: Suite, parents: Mapping[str, str]) -> None:
    """End the parent runs of an interrupted sweep KILLED (a rerun opens them again)."""
    uri = tracking_uri_for(suite.tracking_uri, suite.results_dir)
    for run_id in parents.values():
        close_run(uri, run_id, killed=True)
