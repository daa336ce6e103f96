"""Per-epoch diagnostics: logged for every method, equal to the functions, training unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from otbench.benchmark.config import resolve_run_config
from otbench.benchmark.diagnostics import (
    TeacherLayer,
    TeacherProbe,
    compare,
    is_recorded,
    layer_snapshot,
)
from otbench.benchmark.models import build_model, default_layer_pairs, get_model_spec
from otbench.benchmark.runner import execute_run
from otbench.benchmark.tracking import default_tracking_uri
from otbench.errors import ConfigError
from otbench.methods import LayerPair, ot_distance
from otbench.methods.similarity import linear_cka

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
EPOCHS = 3


def run(results: Path, method: str, *overrides: str):
    cfg = resolve_run_config(CONFIGS / "cross.yaml", [
        f"method={method}", f"train.epochs={EPOCHS}", "teacher.train.epochs=2",
        f"results_dir={results}", *overrides])
    return execute_run(cfg, progress=False)


def test_the_snapshot_equals_the_functions_on_the_same_tensors() -> None:
    g = torch.Generator().manual_seed(0)
    t, s = torch.randn(16, 8, 3, 3, generator=g), torch.randn(16, 5, 3, 3, generator=g)
    snap = layer_snapshot(t, s)
    assert snap.ot == pytest.approx(ot_distance(t, s).item(), rel=1e-6)
    assert snap.cka == pytest.approx(linear_cka(t, s).item(), rel=1e-6)
    assert snap.identity is None and snap.matching.shape == (5,)
    teacher = TeacherLayer.of(t)  # a run's cached teacher side, used twice
    for cached in (layer_snapshot(teacher, s), layer_snapshot(teacher, s)):
        assert (cached.cka, cached.ot, cached.entropy) == (snap.cka, snap.ot, snap.entropy)


def test_a_cached_teacher_side_pools_the_larger_map_like_ot_distance() -> None:
    g = torch.Generator().manual_seed(1)
    teacher = TeacherLayer.of(torch.randn(12, 6, 4, 4, generator=g))
    for student in (torch.randn(12, 3, 2, 2, generator=g), torch.randn(12, 3, 8, 8, generator=g),
                    torch.randn(12, 3, 2, 2, generator=g)):
        snap = layer_snapshot(teacher, student)
        assert snap.ot == pytest.approx(ot_distance(teacher.features, student).item(), rel=1e-6)


def test_a_cached_teacher_probe_gives_the_same_snapshots_as_the_teacher_itself() -> None:
    torch.manual_seed(0)
    teacher, student = build_model("cnn-l", 10, 1).eval(), build_model("cnn-s", 10, 1)
    names = default_layer_pairs(get_model_spec("cnn-l"), get_model_spec("cnn-s"))
    pairs = [LayerPair(t, s, (), ()) for t, s in names]  # shapes unused by the diagnostics
    probe = torch.randn(20, 1, 8, 8)
    direct = compare(teacher, student, pairs, probe)
    cached = compare(TeacherProbe.of(teacher, [t for t, _ in names], probe), student, pairs,
                     probe)
    assert direct.keys() == cached.keys()
    for key, snap in direct.items():
        assert (snap.ot, snap.cka, snap.entropy) == pytest.approx(
            (cached[key].ot, cached[key].cka, cached[key].entropy), rel=1e-6)
        assert torch.equal(snap.matching, cached[key].matching)


@pytest.mark.parametrize("method", ["finetune", "fitnets"])
def test_every_epoch_logs_diagnostics_and_the_matchings_artifact(tmp_path, method) -> None:
    result = run(tmp_path, method)
    client = MlflowClient(default_tracking_uri(tmp_path))
    metrics = client.get_run(result.run_id).data.metrics
    layers = sorted(k.removeprefix("diag/ot/") for k in metrics if k.startswith("diag/ot/"))
    assert layers == ["stage1", "stage2", "stage3"]
    assert not any(k.startswith(("diag/entropy", "diag/identity")) for k in metrics)
    for quantity in ("ot", "cka", "stability"):
        history = client.get_metric_history(result.run_id, f"diag/{quantity}/stage3")
        first = 1 if quantity == "stability" else 0  # stability compares with the epoch before
        assert sorted(m.step for m in history) == list(range(first, EPOCHS + 1)), quantity
    seconds = client.get_metric_history(result.run_id, "time/diagnostics")
    assert sorted(m.step for m in seconds) == list(range(EPOCHS + 1))
    assert all(0 < m.value < 60 for m in seconds)
    folder = client.download_artifacts(result.run_id, "diagnostics.npz", str(tmp_path))
    arrays = np.load(folder)
    assert arrays["epochs"].tolist() == list(range(EPOCHS + 1))
    assert arrays["matching/stage3"].shape[0] == EPOCHS + 1
    assert arrays["plan_first/stage3"].sum() == pytest.approx(1.0, abs=1e-5)
    entropy = arrays["entropy/stage3"]  # cnn-l -> cnn-s: unequal widths, no identity distance
    assert entropy.shape == (EPOCHS + 1,) and (entropy >= 0).all()
    assert "identity/stage3" not in arrays.files


def test_diagnostics_do_not_change_training(tmp_path) -> None:
    on = run(tmp_path, "ot", "diagnostics=true")
    off = run(tmp_path, "ot", "diagnostics=false")
    client = MlflowClient(default_tracking_uri(tmp_path))
    weights = []
    for result in (on, off):
        path = client.download_artifacts(result.run_id, "model.pt", str(tmp_path / result.run_id))
        weights.append(torch.load(path, weights_only=True))
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name
    off_metrics = client.get_run(off.run_id).data.metrics
    assert "diag/ot/stage1" not in off_metrics and "time/diagnostics" not in off_metrics


def test_diagnostics_every_k_records_the_first_every_kth_and_the_last_epoch() -> None:
    assert [e for e in range(8) if is_recorded(e, 3, 7)] == [0, 3, 6, 7]
    assert [e for e in range(7) if is_recorded(e, 3, 6)] == [0, 3, 6]
    assert [e for e in range(4) if is_recorded(e, 1, 3)] == [0, 1, 2, 3]
    assert [e for e in range(3) if is_recorded(e, 10, 2)] == [0, 2]


def test_diagnostics_every_k_in_a_run(tmp_path) -> None:
    result = run(tmp_path, "finetune", "diagnostics_every=2")
    client = MlflowClient(default_tracking_uri(tmp_path))
    steps = {quantity: sorted(m.step for m in client.get_metric_history(
        result.run_id, f"diag/{quantity}/stage3")) for quantity in ("ot", "stability")}
    assert steps == {"ot": [0, 2, 3], "stability": [2, 3]}  # EPOCHS = 3: the last too
    folder = client.download_artifacts(result.run_id, "diagnostics.npz", str(tmp_path))
    assert np.load(folder)["epochs"].tolist() == [0, 2, 3]
    assert sorted(m.step for m in client.get_metric_history(result.run_id, "val/acc")) == [
        1, 2, 3]  # training's own metrics every epoch


@pytest.mark.parametrize("value", ["0", "-1", "1.5"])
def test_diagnostics_every_must_be_a_positive_integer(value: str) -> None:
    with pytest.raises(ConfigError, match="diagnostics_every"):
        resolve_run_config(CONFIGS / "cross.yaml", [f"diagnostics_every={value}"])
