"""Diagnostics recorded in a separate process: the same values as in the run's own process,
training unchanged, errors and a dead process reported, and when a sweep uses one."""

from __future__ import annotations

import os
import pickle
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from mlflow import MlflowClient
from torch import Tensor, nn

from otbench.benchmark.config import resolve_run_config
from otbench.benchmark.diagnostics import DiagnosticsRecorder
from otbench.benchmark.diagnostics_process import (
    BackgroundRecorder,
    DiagnosticsProcess,
    DiagnosticsProcessError,
    dumps,
)
from otbench.benchmark.models import build_model
from otbench.benchmark.runner import execute_run
from otbench.benchmark.tracking import RunLogger, client_for, default_tracking_uri
from otbench.methods import LayerPair
from otbench.sweeps import worker
from otbench.sweeps.suite import load_suite

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
EPOCHS = 3
PAIRS = [LayerPair(f"stage{i}", f"stage{i}", (), ()) for i in (1, 2, 3)]


@pytest.fixture(scope="module")
def process() -> Any:
    """One process for the tests that keep it alive (starting one imports torch: seconds)."""
    with DiagnosticsProcess() as shared:
        yield shared


def models(seed: int = 0) -> tuple[nn.Module, nn.Module, Tensor]:
    torch.manual_seed(seed)
    return build_model("cnn-l", 10, 1).eval(), build_model("cnn-s", 10, 1), torch.randn(
        24, 1, 8, 8)


def train_a_little(student: nn.Module) -> None:
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One MLflow store for the recordings of this module (creating one takes a second)."""
    uri = default_tracking_uri(tmp_path_factory.mktemp("store"))
    client_for(uri)
    return uri


def new_run(store: str) -> RunLogger:
    client = client_for(store)
    return RunLogger(client, client.create_run("0").info.run_id)


def logged(store: str, run_id: str) -> dict[int, dict[str, float]]:
    """A run's metrics as they are in the store, by step."""
    client = client_for(store)
    by_step: dict[int, dict[str, float]] = {}
    for key in client.get_run(run_id).data.metrics:
        for metric in client.get_metric_history(run_id, key):
            by_step.setdefault(metric.step, {})[key] = metric.value
    return by_step


def record_epochs(recorder: Any, student: nn.Module, epochs: int,
                  store: str) -> dict[int, dict[str, float]]:
    """Record ``epochs`` epochs of ``student`` (trained between them) into a new run, as a
    run does; the metrics logged there, by epoch."""
    run = new_run(store)
    recorder.attach(run)
    for epoch in range(epochs):
        recorder.submit(epoch)
        train_a_little(student)
    recorder.finish()
    with tempfile.TemporaryDirectory() as folder:
        recorder.save(Path(folder) / "diagnostics.npz")
    run.flush()
    return logged(store, run.run_id)


def run(results: Path, *overrides: str, process: DiagnosticsProcess | None = None):
    cfg = resolve_run_config(CONFIGS / "cross.yaml", [
        "method=ot", f"train.epochs={EPOCHS}", "teacher.train.epochs=2",
        f"results_dir={results}", *overrides])
    return execute_run(cfg, progress=False, diagnostics_process=process)


def test_tensors_travel_as_arrays_and_come_back_equal() -> None:
    student = build_model("cnn-s", 10, 1)
    copy = pickle.loads(dumps(student))
    for (name, a), b in zip(student.state_dict().items(), copy.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b) and a.dtype == b.dtype, name
    assert all(type(p) is nn.Parameter and p.requires_grad for p in copy.parameters())
    half = torch.arange(4, dtype=torch.bfloat16)  # NumPy has no bfloat16: torch's reduction
    assert torch.equal(pickle.loads(dumps(half)), half)


def assert_same_metrics(got: dict[int, dict[str, float]],
                        expected: dict[int, dict[str, float]]) -> None:
    """Equal steps and keys, values to float32's rounding: two processes do not agree bit for
    bit, since which MKL kernels run depends on the threads and the work a process has done
    before (seen here: CKA apart at the 7th digit on identical tensors)."""
    assert got.keys() == expected.keys()
    for step, metrics in expected.items():
        assert diagnostic_values(got[step]) == pytest.approx(diagnostic_values(metrics),
                                                             rel=1e-5), step


def test_a_run_recorded_in_the_process_logs_what_its_own_process_would(tmp_path,
                                                                       process) -> None:
    inline = run(tmp_path, process=None)
    background = run(tmp_path, process=process)
    off = run(tmp_path, "diagnostics=false", process=process)
    store = default_tracking_uri(tmp_path)
    expected = logged(store, inline.run_id)
    assert len(diagnostic_values(expected[1])) == 9  # ot, cka, stability of three layers
    assert_same_metrics(logged(store, background.run_id), expected)
    client = MlflowClient(store)
    arrays = [np.load(client.download_artifacts(r.run_id, "diagnostics.npz",
                                                str(tmp_path / r.run_id)))
              for r in (inline, background)]
    assert sorted(arrays[0].files) == sorted(arrays[1].files)
    for name in arrays[0].files:
        if name.startswith(("matching/", "epochs")):
            assert np.array_equal(arrays[0][name], arrays[1][name]), name
        else:
            assert np.allclose(arrays[0][name], arrays[1][name], rtol=1e-5, atol=1e-8), name
    weights = [torch.load(client.download_artifacts(r.run_id, "model.pt",
                                                    str(tmp_path / f"w{r.run_id}")),
                          weights_only=True) for r in (background, off)]
    for name, value in weights[0].items():  # training unchanged by the process
        assert torch.equal(value, weights[1][name]), name


def test_the_replies_of_a_recording_stopped_early_are_not_the_next_ones(process,
                                                                       store) -> None:
    teacher, student, probe = models()
    abandoned = process.recorder(teacher, student, PAIRS, probe)
    abandoned.attach(new_run(store))
    for epoch in range(4):  # a pruned run: no finish
        abandoned.submit(epoch)
    teacher, student, probe = models(seed=1)
    got = record_epochs(process.recorder(teacher, student, PAIRS, probe), student, 2, store)
    teacher, student, probe = models(seed=1)  # the same weights, epoch by epoch, here
    expected = record_epochs(DiagnosticsRecorder(teacher, student, PAIRS, probe), student, 2,
                             store)
    assert set(expected) == {0, 1}
    assert_same_metrics(got, expected)


def diagnostic_values(metrics: dict[str, float]) -> dict[str, float]:
    """The ``diag/…`` metrics (not their time, nor a run's own metrics)."""
    return {k: v for k, v in metrics.items() if k.startswith("diag/")}


def test_an_error_in_the_process_is_raised_with_its_traceback(process, store) -> None:
    teacher, _, probe = models()
    recorder = process.recorder(teacher, Broken(), [LayerPair("stage1", "conv", (), ())],
                                probe)
    with pytest.raises(DiagnosticsProcessError, match="(?s)process failed.*unknown tap 'conv'"):
        record_epochs(recorder, nn.Linear(1, 1), 2, store)
    teacher, student, probe = models()  # the process serves the next run
    assert set(record_epochs(process.recorder(teacher, student, PAIRS, probe), student,
                             2, store)) == {0, 1}


def test_ctrl_c_is_left_to_the_run_s_process(process, store) -> None:
    teacher, student, probe = models()
    record_epochs(process.recorder(teacher, student, PAIRS, probe), student, 1, store)
    os.kill(process.process.pid, signal.SIGINT)  # as Ctrl-C sends it to the process group
    assert set(record_epochs(process.recorder(teacher, student, PAIRS, probe), student,
                             2, store)) == {0, 1}


def test_saving_before_finishing_is_an_error_not_a_wait(process) -> None:
    teacher, student, probe = models()
    recorder = process.recorder(teacher, student, PAIRS, probe)
    recorder.submit(0)
    with pytest.raises(RuntimeError, match=r"finish\(\) the recording before saving it"):
        recorder.save(Path("unused.npz"))


def test_models_that_cannot_be_pickled_are_recorded_in_the_run_s_process(process) -> None:
    teacher, student, probe = models()
    student.activation = lambda x: x  # a lambda: pickle refuses it
    with pytest.warns(RuntimeWarning, match="own process"):
        recorder = process.recorder(teacher, student, PAIRS, probe)
    assert isinstance(recorder, DiagnosticsRecorder)


def test_a_dead_process_is_a_clear_error_and_the_next_run_starts_another(store) -> None:
    with DiagnosticsProcess() as own:
        teacher, student, probe = models()
        recorder = own.recorder(teacher, student, PAIRS, probe)
        recorder.attach(new_run(store))
        recorder.submit(0)
        own.process.kill()
        own.process.join()
        with pytest.raises(DiagnosticsProcessError, match="stopped.*next run starts a new"):
            recorder.finish()
        dead = own.process.pid
        again = own.recorder(teacher, student, PAIRS, probe)
        assert isinstance(again, BackgroundRecorder) and own.process.pid != dead
        assert set(record_epochs(again, student, 2, store)) == {0, 1}


def test_closing_the_process_skips_its_interpreter_teardown(store) -> None:
    """The sweep closes it before writing its report: torch's teardown took 1.8 s here."""
    own = DiagnosticsProcess()
    teacher, student, probe = models()
    record_epochs(own.recorder(teacher, student, PAIRS, probe), student, 1, store)  # torch
    start = time.perf_counter()
    own.close()
    assert time.perf_counter() - start < 1.0
    assert own.process.exitcode == 0


class Broken(nn.Module):
    """A student without the tapped layer: recording it fails in the process."""

    def forward(self, x: Tensor) -> Tensor:
        return x


# --- when a sweep uses one ---------------------------------------------------------------

class FakeProcess:
    """Stands in for DiagnosticsProcess (no process started)."""


@pytest.mark.parametrize(("choice", "spare", "diagnostics", "expected"), [
    ("auto", 1, True, True),
    ("auto", 0, True, False),  # every core taken by the workers' threads
    ("auto", 1, False, False),  # nothing to record
    (True, 0, True, True),
    (False, 1, True, False),
])
def test_a_sweep_records_in_a_process_when_a_core_is_spare_or_asked(
        tmp_path, monkeypatch, choice, spare, diagnostics, expected) -> None:
    suite = {"name": "tiny", "defaults": {"diagnostics": diagnostics},
             "scenarios": [{"id": "d", "scenario": "distill", "task": "digits",
                            "methods": ["finetune"]}],
             "budget": {"trials": 1}, "background_diagnostics": choice}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    monkeypatch.setattr(worker, "DiagnosticsProcess", FakeProcess)
    monkeypatch.setattr(worker, "spare_cores", lambda workers, threads: spare * workers)
    made = worker.diagnostics_process_for(load_suite(str(path)), workers=1)
    assert isinstance(made, FakeProcess) is expected
