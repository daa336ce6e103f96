"""Sweeps end to end on tiny digits suites: validation, dry runs, studies, final stage, resume
after a killed worker, failing trials and several workers on one SQLite storage."""

from __future__ import annotations

import gc
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import yaml
from filelock import FileLock
from mlflow import MlflowClient
from optuna.trial import TrialState

from otbench.benchmark import cli
from otbench.benchmark.config import deep_merge
from otbench.benchmark.tracking import default_tracking_uri, experiment_id
from otbench.methods import get_method
from otbench.sweeps import final, search
from otbench.sweeps.driver import prepare, warn_small_data
from otbench.sweeps.space import build_space
from otbench.sweeps.studies import (
    LOOP_SECONDS,
    SEED,
    SKIPPED,
    TrialSeededTPE,
    default_storage_url,
    make_storage,
    open_study,
    overhead_seconds,
)
from otbench.sweeps.suite import bundled_suites, load_suite
from otbench.sweeps.trials import State, StudyWork, TrialTakenOverWarning, Worker, run_one

#: A suite small enough to run in seconds: cnn-s teacher and student, 2 epochs.
TINY: dict[str, Any] = {
    "name": "tiny",
    "defaults": {"teacher": {"model": "cnn-s", "train": {"epochs": 2}},
                 "train": {"epochs": 2, "batch_size": 32}},
    "scenarios": [{"id": "cross", "scenario": "cross", "task": "digits:5-9@10",
                   "student": "cnn-s", "teacher": {"task": "digits:0-4"},
                   "methods": ["finetune", "ot"]}],
    "budget": {"trials": 3},
    "pruner": {"kind": "none"},
    "final": {"seeds": 2},
    "heartbeat": {"interval_s": 1, "grace_s": 3},
    "threads": 1,  # tiny models; spinning threads would slow a shared 2-core machine
}
OT = "tiny/cross/digits:5-9@10/ot"
FINETUNE = "tiny/cross/digits:5-9@10/finetune"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@pytest.fixture(autouse=True)
def restore_threads() -> Any:
    """A sweep run in this process sets torch's threads (the suite's ``threads: 1``)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def write_suite(folder: Path, **changes: Any) -> Path:
    path = folder / "suite.yaml"
    path.write_text(yaml.safe_dump(deep_merge(TINY, changes)))
    return path


def sweep_command(suite: Path, results: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "otbench.benchmark.cli", "sweep", str(suite),
            "--results-dir", str(results), "--quiet", *extra]


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}


def trials(results: Path, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study,
                             storage=default_storage_url(results)).get_trials(deepcopy=False)


def finished(results: Path, study: str) -> int:
    return sum(t.state in FINISHED for t in trials(results, study))


def mlflow_runs(results: Path, experiment: str = "tiny") -> list[Any]:
    client = MlflowClient(default_tracking_uri(results))
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], max_results=5000)


def by_stage(runs: list[Any], stage: str, study: str | None = None) -> list[Any]:
    return [r for r in runs if r.data.tags.get("stage") == stage
            and (study is None or r.data.tags.get("study") == study)]


def assert_nothing_running(results: Path) -> None:
    statuses = Counter(r.info.status for r in mlflow_runs(results))
    assert statuses["RUNNING"] == 0, statuses


def assert_one_final_run_per_seed(results: Path, study: str, seeds: int) -> None:
    finals = by_stage(mlflow_runs(results), "final", study)
    done = [r for r in finals if r.info.status == "FINISHED"]
    assert sorted(int(r.data.tags["seed"]) for r in done) == list(range(seeds))
    assert all("test/acc" in r.data.metrics for r in done)


def assert_overhead_measured(results: Path, out: str, complete: int = 3 + 1 + 2 * 2) -> None:
    """Every completed run knows its epoch-loop time, which is inside its trial's wall time;
    the summary states the per-run overhead, within issue #6's budget of a second.
    ``complete``: ot and finetune trials, 2 final seeds each (by default)."""
    storage = f"sqlite:///{results / 'optuna.db'}"
    done = [t for name in optuna.get_all_study_names(storage)
            for t in optuna.load_study(study_name=name, storage=storage).get_trials()
            if t.state == TrialState.COMPLETE]
    assert len(done) == complete
    overheads = overhead_seconds(done)
    assert len(overheads) == len(done) and all(seconds > 0 for seconds in overheads)
    assert all(t.user_attrs[LOOP_SECONDS] > 0 for t in done)
    assert f"median {statistics.median(overheads):.2f} s" in out
    assert statistics.median(overheads) < 1.0


# --- validation: exit code 2, nothing written ---------------------------------------------

@pytest.mark.parametrize(("changes", "expected"), [
    ({"budgett": {"trials": 2}}, "budgett: unknown key; did you mean 'budget'"),
    ({"budget": {"trails": 2}}, "budget.trails: unknown key; did you mean 'trials'"),
    ({"scenarios": [{**TINY["scenarios"][0], "metods": ["ot"]}]},
     "metods: unknown key; did you mean 'methods'"),
    ({"defaults": {"trian": {}}}, "trian: unknown key; did you mean 'train'"),
    ({"scenarios": [{**TINY["scenarios"][0], "methods": ["l2sp"]}]},
     "method 'l2sp': method 'l2sp' does not apply to scenario 'cross'"),
    ({"scenarios": [{**TINY["scenarios"][0], "methods": ["ott"]}]}, "Did you mean 'ot'"),
    ({"search": {"ot": {"wieght": {"low": 0.1}}}}, "Did you mean 'weight'"),
    ({"search": {"oot": {"weight": {"low": 0.1}}}}, "unknown method (in search:) 'oot'"),
    ({"search": {"ot": {"weight": {"low": 10, "high": 1}}}},
     "search.ot.weight: hyper-parameter 'weight': numeric range needs low <= high"),
    ({"search": {"ot": {"solver": {"low": 1}}}}, "search.ot.solver: a categorical"),
    ({"search": {"ot": {"solver": {"choices": ["simplex"]}}}},
     "search.ot.solver: hyper-parameter 'solver': 'simplex' is not one of"),
    ({"defaults": {"method": "ot"}}, "defaults.method: not allowed here"),
    ({"scenarios": [{**TINY["scenarios"][0], "overrides": {"results_dir": "x"}}]},
     "overrides.results_dir: not allowed here"),
    ({"scenarios": [{**TINY["scenarios"][0], "search": {"kd": {"alpha": {"low": 0.1}}}}]},
     "scenarios[0] (id 'cross').search.kd: method 'kd' is not run in this entry"),
    ({"scenarios": [{**TINY["scenarios"][0], "search": {"ot": {"plan_evry": {}}}}]},
     "Did you mean 'plan_every'"),
    ({"report": {"refrence": "finetune"}}, "report: unknown report option 'refrence'"),
    ({"report": {"test": "welch"}}, "report: unknown test 'welch'"),
    ({"plugins": ["missing.py"]}, "plugins: 'missing.py' is not a file"),
    ({"final": {"seeds": 2, "episode": True}}, "did you mean 'episodes'"),
])
def test_bad_suites_exit_2_and_write_nothing(tmp_path, capsys, changes, expected) -> None:
    results = tmp_path / "results"
    code = cli.main(["sweep", str(write_suite(tmp_path, **changes)),
                     "--results-dir", str(results)])
    assert code == 2
    assert expected in capsys.readouterr().err
    assert not results.exists()


def test_unreachable_storage_is_a_clear_error(tmp_path, capsys) -> None:
    results = tmp_path / "results"
    code = cli.main(["sweep", str(write_suite(tmp_path)), "--results-dir", str(results),
                     "--storage", "postgresql://user:secret@127.0.0.1:1/optuna"])
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot open the Optuna storage" in err and "secret" not in err
    assert not results.exists()


def test_unknown_suite_name_suggests_a_bundled_one(capsys) -> None:
    assert cli.main(["sweep", "quik", "--dry-run"]) == 2
    assert "Did you mean 'quick'" in capsys.readouterr().err


@pytest.mark.parametrize(("gpu_in_use", "full_collections"), [(False, 0), (True, 1)])
def test_a_full_garbage_collection_follows_a_trial_only_in_a_process_using_a_gpu(
        monkeypatch, gpu_in_use, full_collections) -> None:
    study = optuna.create_study()
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: gpu_in_use)
    generations: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            generations.append(info["generation"])

    gc.collect()  # nothing pending: no automatic full collection during the trial
    gc.callbacks.append(count)
    try:
        run_one(study, lambda trial: 1.0, on_done=lambda trial: None)
    finally:
        gc.callbacks.remove(count)
    assert generations.count(2) == full_collections
    assert study.trials[0].state == TrialState.COMPLETE


@pytest.mark.parametrize("when", ["while it trains", "as it reports"])
def test_a_trial_failed_as_stale_by_another_worker_does_not_stop_this_one(
        tmp_path, monkeypatch, when) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(storage=url, study_name="s")
    other_worker = optuna.load_study(study_name="s", storage=url)

    def fail_elsewhere(trial_id: int) -> None:  # another worker's stale-trial check
        other_worker._storage.set_trial_state_values(trial_id, TrialState.FAIL)

    def objective(trial: optuna.Trial) -> float:
        if when == "while it trains":  # Optuna sees a FAIL trial when told the result
            fail_elsewhere(trial._trial_id)
        return 1.0

    if when == "as it reports":  # between Optuna's read of the state and its write
        write = study._storage.set_trial_state_values

        def late_write(trial_id: int, *args: Any, **kwargs: Any) -> bool:
            fail_elsewhere(trial_id)
            return write(trial_id, *args, **kwargs)

        monkeypatch.setattr(study._storage, "set_trial_state_values", late_write)
    done: list[optuna.trial.FrozenTrial] = []
    with pytest.warns(TrialTakenOverWarning, match="heartbeat.grace_s"):
        run_one(study, objective, on_done=done.append)
    monkeypatch.undo()
    run_one(study, lambda trial: 2.0, on_done=done.append)  # the worker goes on
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.COMPLETE]
    assert [t.value for t in done] == [2.0]


def test_an_error_reporting_a_trial_this_worker_finished_is_raised() -> None:
    study = optuna.create_study()

    def broken_callback(trial: optuna.trial.FrozenTrial) -> None:
        raise RuntimeError("callback bug")

    with pytest.raises(RuntimeError, match="callback bug"):
        run_one(study, lambda trial: 1.0, on_done=broken_callback)


def test_search_override_widens_and_makes_fixed_parameters_searched() -> None:
    from otbench.sweeps.schema import SearchRange

    ot = get_method("ot")
    default = build_space(ot, {})
    assert [hp.name for hp in default] == ["weight"]
    space = build_space(ot, {"weight": SearchRange(low=1e-3, high=1.0),
                             "solver": SearchRange(choices=["exact", "sinkhorn"])})
    by_name = {hp.name: hp for hp in space}
    assert (by_name["weight"].low, by_name["weight"].high, by_name["weight"].log) == \
        (1e-3, 1.0, True)
    assert by_name["solver"].choices == ("exact", "sinkhorn")
    assert build_space(get_method("finetune"), {}) == ()


def test_concurrent_workers_propose_different_points_reproducibly() -> None:
    """Per-trial seeding: a rerun proposes the same points, two workers different ones."""
    def proposals() -> list[float]:
        study = optuna.create_study(sampler=TrialSeededTPE(42), direction="maximize")
        asked = [study.ask() for _ in range(3)]  # three workers, all before any result
        return [t.suggest_float("w", 1e-4, 10, log=True) for t in asked]

    first = proposals()
    assert len(set(first)) == 3
    assert proposals() == first


def study_work(tmp_path: Path, method: str = "ot") -> tuple[Worker, StudyWork]:
    """A worker's view of one study of the tiny suite, on a fresh SQLite storage."""
    results = tmp_path / "results"
    suite = load_suite(str(write_suite(tmp_path)), {"results_dir": str(results)})
    spec = next(s for s in suite.studies if s.method == method)
    uri = default_tracking_uri(results)
    storage = make_storage(default_storage_url(results), suite.heartbeat, uri)
    work = StudyWork(spec, open_study(storage, spec.name, suite.pruner),
                     open_study(storage, final.study_name(spec.name), None), "no-parent")
    return Worker(suite, uri, progress=False, verbose=False), work


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")  # ask() by hand
def test_a_trial_beyond_the_claimed_budget_is_skipped_not_run(tmp_path) -> None:
    """Two workers may both see one free slot; the later trial number gives way."""
    worker, work = study_work(tmp_path)
    for _ in range(3):  # the budget: three trials running on other workers
        work.study.ask()
    search.run_trial(worker, work)  # this worker asked at the same moment
    extra = work.study.trials[-1]
    assert extra.state == TrialState.FAIL and SKIPPED in extra.user_attrs
    assert "fail_reason" not in extra.user_attrs  # not a failure
    assert search.state(worker, work) is State.BUSY  # wait for the others, start nothing
    assert not (tmp_path / "results" / "mlflow.db").exists()  # nothing was trained


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")  # ask() by hand
def test_a_seed_queued_twice_runs_once(tmp_path) -> None:
    worker, work = study_work(tmp_path)
    for _ in range(2):  # two workers queued seed 0 at the same instant
        work.final.enqueue_trial({}, user_attrs={SEED: 0, "params": {}, "source_trial": 0})
    assert work.final.ask().user_attrs[SEED] == 0  # the first copy runs elsewhere
    final.run_seed(worker, work)
    twin = work.final.trials[-1]
    assert twin.state == TrialState.FAIL and "already trial 0's" in twin.user_attrs[SKIPPED]


# --- dry runs ------------------------------------------------------------------------------

def test_entry_search_overrides_the_suite_search_for_that_entry_only(tmp_path) -> None:
    other = {**TINY["scenarios"][0], "id": "cross-k4",
             "search": {"ot": {"plan_every": {"choices": [4]}}}}
    suite = write_suite(tmp_path, scenarios=[TINY["scenarios"][0], other],
                        search={"ot": {"weight": {"low": 0.01, "high": 1.0}}},
                        **{"x-unused-anchor": {"any": "thing"}})
    spaces = {s.entry: {hp.name: hp for hp in s.space}
              for s in load_suite(str(suite)).studies if s.method == "ot"}
    assert "plan_every" not in spaces["cross"]
    assert spaces["cross-k4"]["plan_every"].choices == (4,)
    assert (spaces["cross-k4"]["weight"].low, spaces["cross-k4"]["weight"].high) == (0.01, 1.0)


@pytest.mark.parametrize("suite", ["quick", "zoo", "cifar100-distill", "imagenet-transfer",
                                   "plan-reuse", "controls"])
def test_bundled_suites_dry_run_without_data_or_files(tmp_path, capsys, suite,
                                                     isolated_plugins) -> None:
    assert suite in bundled_suites()
    results = tmp_path / "results"
    assert cli.main(["sweep", suite, "--dry-run", "--results-dir", str(results)]) == 0
    out = capsys.readouterr().out
    for spec in load_suite(suite, {"results_dir": str(results)}).studies:
        assert spec.name in out
    assert "trials per study" in out and "nothing was trained or written" in out
    assert not results.exists()


def test_quick_suite_covers_the_three_scenarios() -> None:
    studies = {s.name for s in load_suite("quick").studies}
    assert {f"quick/transfer/digits:5-9@10/{m}" for m in
            ("finetune", "l2sp", "fitnets", "at", "ot")} <= studies
    assert {f"quick/distill/digits/{m}" for m in
            ("finetune", "kd", "fitnets", "at", "ot")} <= studies
    assert {f"quick/cross/digits:5-9@10/{m}" for m in
            ("finetune", "fitnets", "at", "ot")} <= studies


def test_episodes_give_final_seed_s_its_own_draw_of_a_few_shot_task(tmp_path) -> None:
    """Split seed s for final seed s on a few-shot task, whatever the method; a full-data
    task (nothing to draw) and suites without episodes keep the study's split."""
    full = {**TINY["scenarios"][0], "id": "full", "task": "digits:5-9"}
    for episodes in (True, False):
        (tmp_path / str(episodes)).mkdir()
    suites = {episodes: load_suite(str(write_suite(
        tmp_path / str(episodes), scenarios=[TINY["scenarios"][0], full],
        final={"seeds": 3, "episodes": episodes}))) for episodes in (True, False)}
    for spec in suites[True].studies:
        splits = [final.episode_split(suites[True].final, spec, seed) for seed in range(3)]
        assert splits == ([0, 1, 2] if spec.entry == "cross" else [None] * 3), spec.name
        for seed, split in enumerate(splits):
            config = spec.run_config({}, seed=seed, split_seed=split)
            assert (config.seed, config.split_seed) == (seed, split or 0)
    assert all(final.episode_split(suites[False].final, spec, 2) is None
               for spec in suites[False].studies)


def test_suite_plugins_and_report_options(tmp_path, isolated_plugins) -> None:
    """A suite names its plugin files relative to itself, and its report's options."""
    plugin = tmp_path / "plugins" / "mine.py"
    plugin.parent.mkdir()
    plugin.write_text("from otbench.methods import register_method\n"
                      "from otbench.methods.finetune import FineTune\n"
                      "register_method('suite-plugin-copy')(type('Copy', (FineTune,), {}))\n")
    path = write_suite(tmp_path, plugins=["plugins/mine.py"],
                       report={"reference": "suite-plugin-copy"},
                       scenarios=[{**TINY["scenarios"][0],
                                   "methods": ["finetune", "suite-plugin-copy"]}])
    suite = load_suite(str(path))
    assert [s.method for s in suite.studies] == ["finetune", "suite-plugin-copy"]
    assert dict(suite.report) == {"reference": "suite-plugin-copy"}
    assert str(plugin.resolve()) in os.environ["OTBENCH_PLUGINS"]  # for spawned workers


def test_all_methods_means_the_applicable_ones(tmp_path) -> None:
    suite = write_suite(tmp_path, scenarios=[{**TINY["scenarios"][0], "methods": "all"}])
    methods = {s.method for s in load_suite(str(suite)).studies}
    assert {"finetune", "ot", "fitnets", "at"} <= methods
    assert not methods & {"l2sp", "kd"}  # need the same architecture / the same labels


# --- running sweeps ------------------------------------------------------------------------

def test_tiny_sweep_end_to_end_and_rerun_adds_nothing(tmp_path, capsys, monkeypatch) -> None:
    suite, results = write_suite(tmp_path), tmp_path / "results"
    argv = ["sweep", str(suite), "--results-dir", str(results), "--quiet"]
    monkeypatch.setattr(optuna.trial.Trial, "should_prune", lambda trial: trial.number == 1)
    assert cli.main(argv) == 0
    monkeypatch.undo()
    out = capsys.readouterr().out
    assert "test acc" in out
    assert finished(results, OT) == 3 and finished(results, FINETUNE) == 1  # nothing to search
    assert [t.state for t in trials(results, OT)][1] == TrialState.PRUNED
    assert_overhead_measured(results, out, complete=2 + 1 + 2 * 2)
    assert_at_home_in_mlflow_and_optuna(results)
    runs = mlflow_runs(results)
    for study, count in ((OT, 3), (FINETUNE, 1)):
        parents = by_stage(runs, "study", study)
        assert len(parents) == 1
        children = by_stage(runs, "trial", study)
        assert len(children) == count
        assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
        assert sorted(r.data.tags["trial"] for r in children) == [str(i) for i in range(count)]
        finals = by_stage(runs, "final", study)
        assert {r.data.tags["mlflow.parentRunId"] for r in finals} == {parents[0].info.run_id}
        # Diagnostics in final runs only: the suite leaves trial_diagnostics off.
        assert not any(k.startswith("diag/") for r in children for k in r.data.metrics)
        assert all(any(k.startswith("diag/ot/") for k in r.data.metrics) for r in finals)
        client = MlflowClient(default_tracking_uri(results))
        for final_run in finals:  # each epoch's at its step, the last one's included
            history = client.get_metric_history(final_run.info.run_id, "diag/ot/stage3")
            assert sorted(m.step for m in history) == [0, 1, 2]
        assert_one_final_run_per_seed(results, study, 2)
    assert_nothing_running(results)

    assert cli.main(argv) == 0  # the same command again: everything is done already
    assert len(mlflow_runs(results)) == len(runs)


def assert_at_home_in_mlflow_and_optuna(results: Path) -> None:
    """What an MLflow or Optuna user reads: study parent runs that sum their study up and
    span their children, children named apart, a pruned trial FINISHED, MLflow's context
    tags, the classic experiment view, a student MLflow loads, named Optuna objectives and
    final seeds valued by validation (never a test-accuracy ``best_trial``)."""
    client = MlflowClient(default_tracking_uri(results))
    experiment = client.get_experiment_by_name("tiny")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = mlflow_runs(results)
    assert all(r.data.tags.get("mlflow.source.git.commit") for r in runs)
    assert all(r.data.tags.get("mlflow.user") for r in runs)
    storage = default_storage_url(results)
    for name in (OT, FINETUNE):
        (parent,) = by_stage(runs, "study", name)
        children = [r for r in runs
                    if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        names = sorted(r.info.run_name for r in children)
        assert len(set(names)) == len(names) and "final seed 1" in names and "trial 0" in names
        assert parent.info.status == "FINISHED" and "seed" not in parent.data.tags
        assert parent.info.start_time <= min(r.info.start_time for r in children)
        assert parent.info.end_time >= max(r.info.end_time for r in children)
        study = optuna.load_study(study_name=name, storage=storage)
        assert study.metric_names == ["val_acc"]
        assert study.user_attrs["mlflow_parent_run_id"] == parent.info.run_id
        params = parent.data.params
        assert int(params["best.trial"]) == study.best_trial.number
        for key, value in study.best_trial.params.items():
            assert float(params[f"best.{key}"]) == pytest.approx(value)
        finals = by_stage(runs, "final", name)
        tests = [r.data.metrics["test/acc"] for r in finals]
        metrics = parent.data.metrics
        assert metrics["test/acc_n"] == len(tests) == 2
        assert metrics["test/acc_mean"] == pytest.approx(statistics.mean(tests))
        assert metrics["test/acc_std"] == pytest.approx(statistics.stdev(tests))
        seeds = optuna.load_study(study_name=final.study_name(name), storage=storage)
        assert seeds.user_attrs["role"] == "final seeds"
        by_run = {r.info.run_id: r for r in finals}
        for trial in seeds.get_trials(states=(TrialState.COMPLETE,)):
            run = by_run[trial.user_attrs["mlflow_run_id"]]
            assert trial.value == pytest.approx(run.data.metrics["val/acc_final"])
            assert trial.user_attrs["test_acc"] == pytest.approx(run.data.metrics["test/acc"])
    (pruned,) = [r for r in by_stage(runs, "trial", OT) if r.data.tags["trial"] == "1"]
    assert pruned.info.status == "FINISHED" and pruned.data.tags["pruned"] == "true"
    assert_final_model_loads_with_mlflow(client, by_stage(runs, "final", OT)[0])


def assert_final_model_loads_with_mlflow(client: MlflowClient, run: Any) -> None:
    """The final run's logged model, loaded by MLflow, computes the state_dict's logits."""
    import mlflow.pytorch

    from otbench.benchmark.models import build_model

    (output,) = run.outputs.model_outputs
    logged = client.get_logged_model(output.model_id)  # MLflow 3's LoggedModel API
    assert logged.source_run_id == run.info.run_id and str(logged.status) == "READY"
    loaded = mlflow.pytorch.load_model(logged.artifact_location)
    reference = build_model("cnn-s", 5, 1)
    with tempfile.TemporaryDirectory() as folder:
        state = client.download_artifacts(run.info.run_id, "model.pt", folder)
        reference.load_state_dict(torch.load(state, map_location="cpu"))
    images = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded.eval()(images), reference.eval()(images))


def test_killed_sweep_resumes_without_losing_or_repeating_work(tmp_path) -> None:
    suite = write_suite(tmp_path, defaults={"train": {"epochs": 40}},
                        scenarios=[{**TINY["scenarios"][0], "methods": ["ot"]}],
                        budget={"trials": 2})
    results = tmp_path / "results"
    command = sweep_command(suite, results)
    first = subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    try:
        killed_trial = wait_for_running_trial(results / "optuna.db", first)
    finally:
        first.kill()  # SIGKILL: no cleanup code runs
        first.wait()
    assert first.returncode == -signal.SIGKILL

    rerun = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr

    assert finished(results, OT) == 2
    stale = [t for t in trials(results, OT) if t.state == TrialState.FAIL]
    assert [t.number for t in stale] == [killed_trial]
    killed_run = stale[0].user_attrs["mlflow_run_id"]
    run = MlflowClient(default_tracking_uri(results)).get_run(killed_run)
    assert run.info.status == "KILLED" and "died" in run.data.tags["stopped_reason"]
    assert_one_final_run_per_seed(results, OT, 2)
    assert_nothing_running(results)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_workers_stop_when_their_sweep_process_is_killed(tmp_path) -> None:
    suite = write_suite(tmp_path, defaults={"train": {"epochs": 40}},
                        scenarios=[{**TINY["scenarios"][0], "methods": ["ot"]}],
                        budget={"trials": 8})
    results = tmp_path / "results"
    sweep = subprocess.Popen(sweep_command(suite, results, "--workers", "2"),
                             env=subprocess_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    try:
        wait_for_running_trial(results / "optuna.db", sweep)
        workers = spawned_children(sweep.pid)
    finally:
        sweep.kill()  # SIGKILL: the sweep cannot stop its workers itself
        sweep.wait()
    assert len(workers) == 2
    deadline = time.monotonic() + 120
    while any(map(running, workers)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(map(running, workers))
    # Each finished the trial it was running, then stopped: not the rest of the sweep.
    assert finished(results, OT) < 8
    assert not by_stage(mlflow_runs(results), "final")


def spawned_children(pid: int) -> list[int]:
    """Processes ``pid`` started with multiprocessing's spawn (its workers)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        child = int(stat.parent.name)
        fields = process_status(child)
        try:
            command = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue  # ended meanwhile
        if fields and int(fields[1]) == pid and b"spawn_main" in command:
            children.append(child)
    return children


def running(pid: int) -> bool:
    """Alive and not a zombie (a container's init may never reap an orphan)."""
    fields = process_status(pid)
    return bool(fields) and fields[0] != "Z"


def process_status(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name (state, parent pid, ...);
    none once the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def wait_for_running_trial(db: Path, process: subprocess.Popen, timeout: float = 120) -> int:
    """The number of the first trial that is RUNNING with an MLflow run (mid-training)."""
    query = ("select t.number from trials t join trial_user_attributes a using (trial_id) "
             "where t.state = 'RUNNING' and a.key = 'mlflow_run_id'")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode()
        if db.exists():
            try:
                with sqlite3.connect(db, timeout=1) as connection:
                    row = connection.execute(query).fetchone()
            except sqlite3.OperationalError:  # tables not created yet, or locked
                row = None
            if row is not None:
                return row[0]
        time.sleep(0.1)
    raise AssertionError("no trial started training in time")


def test_failing_trials_are_recorded_and_the_sweep_goes_on(tmp_path, capsys) -> None:
    suite = write_suite(tmp_path, search={"ot": {"weight": {"low": 1e35, "high": 1e36}}},
                        budget={"trials": 3, "max_failures": 2})
    results = tmp_path / "results"
    code = cli.main(["sweep", str(suite), "--results-dir", str(results), "--quiet"])
    assert code == 1  # a study ended without any result
    assert OT in capsys.readouterr().err
    failed = trials(results, OT)
    assert [t.state for t in failed] == [TrialState.FAIL] * 2  # stopped at max_failures
    assert all("NonFiniteLossError" in t.user_attrs["fail_reason"] for t in failed)
    runs = by_stage(mlflow_runs(results), "trial", OT)
    assert [r.info.status for r in runs] == ["FAILED"] * 2
    assert all("nan" in r.data.tags["failure_reason"] for r in runs)
    assert finished(results, FINETUNE) == 1  # the other study went on
    assert_one_final_run_per_seed(results, FINETUNE, 2)
    assert not by_stage(mlflow_runs(results), "final", OT)
    assert_nothing_running(results)


def test_two_local_workers_share_the_studies_on_sqlite(tmp_path) -> None:
    # No failover here: a grace period this long keeps a heartbeat starved on a busy machine
    # from failing a live trial (the worker would go on, but retry a seed).
    suite = write_suite(tmp_path, budget={"trials": 4}, heartbeat={"grace_s": 60},
                        scenarios=[{**TINY["scenarios"][0], "methods": ["ot", "fitnets"]}])
    results = tmp_path / "results"
    done = subprocess.run(sweep_command(suite, results, "--workers", "2"),
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    runs = mlflow_runs(results)
    for study in (OT, "tiny/cross/digits:5-9@10/fitnets"):
        complete = [t for t in trials(results, study) if t.state in FINISHED]
        assert len(complete) == 4
        assert len({t.params["weight"] for t in complete}) == 4  # no point tried twice
        children = [r for r in by_stage(runs, "trial", study) if r.info.status == "FINISHED"]
        assert sorted(int(r.data.tags["trial"]) for r in children) == \
            sorted(t.number for t in complete)
        assert_one_final_run_per_seed(results, study, 2)
    assert_nothing_running(results)


def test_a_task_too_small_for_its_search_is_said_before_the_sweep(tmp_path) -> None:
    suite = load_suite(write_suite(tmp_path, defaults={"train": {"batch_size": 64}}),
                       {"results_dir": str(tmp_path)})
    with pytest.warns(UserWarning) as said:
        warn_small_data(suite)
    notes = [str(w.message) for w in said]
    assert notes == [
        "task digits:5-9@10: 50 training images at batch_size 64 make 1 optimizer step per "
        "epoch; lower train.batch_size or raise the per-class count",
        "task digits:5-9@10: 15 validation images score accuracy in steps of 7 points, so "
        "search trials are likely to tie; raise val_fraction or the per-class count, or add "
        "a val/ folder"]


def test_sweep_start_closes_teacher_runs_whose_process_is_gone(tmp_path) -> None:
    """A teacher run left RUNNING by a killed process is closed by the next sweep even when
    that teacher is never trained again; one whose lock a live process holds, or whose
    cache folder is on another machine, is left alone."""
    suite = load_suite(write_suite(tmp_path), {"results_dir": str(tmp_path)})
    client = MlflowClient(default_tracking_uri(tmp_path))
    experiment = experiment_id(client, "tiny")
    teachers = tmp_path / "teachers"
    teachers.mkdir()

    def teacher_run(cache: Path) -> str:
        return client.create_run(experiment, tags={"stage": "teacher",
                                                   "teacher_cache": str(cache)}).info.run_id

    dead = teacher_run(teachers / "not_in_this_suite.pt")
    busy = teacher_run(teachers / "training_now.pt")
    elsewhere = teacher_run(Path("/nonexistent/machine2/teachers/x.pt"))
    with FileLock(str(teachers / "training_now.pt") + ".lock"):
        prepare(suite, default_storage_url(tmp_path), progress=False)
    status = {run_id: client.get_run(run_id).info.status for run_id in (dead, busy, elsewhere)}
    assert status == {dead: "KILLED", busy: "RUNNING", elsewhere: "RUNNING"}
    assert "found at the start of a sweep" in client.get_run(dead).data.tags["stopped_reason"]
