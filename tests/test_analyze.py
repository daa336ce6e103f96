"""``otbench analyze`` between two saved models equals a direct call of the functions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from otbench.benchmark import cli
from otbench.benchmark.analyze import format_table
from otbench.benchmark.config import resolve_run_config
from otbench.benchmark.data import TaskSpec, load_task
from otbench.benchmark.diagnostics import LayerSnapshot, probe_batch
from otbench.benchmark.models import FeatureTaps, build_model
from otbench.benchmark.runner import execute_run
from otbench.benchmark.tracking import default_tracking_uri
from otbench.methods import ot_distance
from otbench.methods.similarity import linear_cka

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, str, str]:
    results = tmp_path_factory.mktemp("analyze")
    cfg = resolve_run_config(CONFIGS / "cross.yaml", [
        "train.epochs=1", "teacher.train.epochs=1", f"results_dir={results}"])
    run_id = execute_run(cfg, progress=False).run_id
    (teacher,) = (results / "teachers").glob("*.pt")
    return results, str(teacher), run_id


def features(model_name: str, state: dict, layer: str, x: torch.Tensor) -> torch.Tensor:
    model = build_model(model_name, state["fc.weight"].shape[0], 1)
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad(), FeatureTaps(model, [layer]) as taps:
        model(x)
        return taps.features[layer]


def test_analyze_prints_the_values_of_a_direct_computation(trained, capsys) -> None:
    results, teacher_file, run_id = trained
    code = cli.main(["analyze", "--teacher", teacher_file, "--student", run_id,
                     "--results-dir", str(results), "--log-to", run_id])
    assert code == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()}

    from mlflow import MlflowClient
    client = MlflowClient(default_tracking_uri(results))
    student_state = torch.load(client.download_artifacts(run_id, "model.pt", str(results)),
                               weights_only=True)
    teacher_state = torch.load(teacher_file, weights_only=True)["state_dict"]
    task = load_task(TaskSpec.parse("digits:5-9@10"))
    probe = probe_batch(task.val, task, 256)
    for layer in ("stage1", "stage2", "stage3"):
        t = features("cnn-l", teacher_state, layer, probe)
        s = features("cnn-s", student_state, layer, probe)
        assert float(rows[layer][1]) == pytest.approx(ot_distance(t, s).item(), rel=1e-5)
        assert float(rows[layer][2]) == pytest.approx(linear_cka(t, s).item(), abs=1e-4)
    logged = client.get_run(run_id).data.metrics
    assert logged["analyze/ot/stage2"] == pytest.approx(float(rows["stage2"][1]), rel=1e-5)


def test_an_unknown_layer_names_the_valid_ones(trained, capsys) -> None:
    results, teacher_file, run_id = trained
    code = cli.main(["analyze", "--teacher", teacher_file, "--student", run_id,
                     "--results-dir", str(results), "--layers", "stage9:stage1"])
    assert code == 2
    assert "stage9" in (err := capsys.readouterr().err) and "stage3" in err


def test_a_task_the_models_cannot_read_is_explained(trained, capsys, tmp_path) -> None:
    results, teacher_file, run_id = trained
    from PIL import Image
    for label in ("a", "b"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(12):
            Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(tmp_path / "imgs" / label / f"{i}.png")
    code = cli.main(["analyze", "--teacher", teacher_file, "--student", run_id,
                     "--results-dir", str(results), "--task",
                     f"imagefolder={tmp_path / 'imgs'}"])
    assert code == 2
    assert "--task with the kind of data it was trained on" in capsys.readouterr().err


def test_an_unknown_reference_says_what_to_pass(trained, capsys) -> None:
    results, teacher_file, _ = trained
    code = cli.main(["analyze", "--teacher", teacher_file, "--student", "0" * 32,
                     "--results-dir", str(results)])
    assert code == 2
    assert "neither a teacher .pt file nor a run" in capsys.readouterr().err


def test_teacher_by_run_id_and_a_header_naming_the_inputs(trained, capsys) -> None:
    """A run's teacher by the run's id (no cache file hash to type), the same table as with
    the file, under a header naming both models, the task and the probe."""
    results, teacher_file, run_id = trained
    assert cli.main(["analyze", "--teacher", teacher_file, "--student", run_id,
                     "--results-dir", str(results)]) == 0
    by_file = capsys.readouterr().out
    assert cli.main(["analyze", "--teacher", run_id, "--student", run_id,
                     "--results-dir", str(results)]) == 0
    by_run = capsys.readouterr().out
    assert by_run == by_file
    assert by_run.splitlines()[:3] == [f"teacher: {teacher_file}", f"student: run {run_id}",
                                       "probe: 15 validation images of task digits:5-9@10"]
    assert "-0.0000" not in by_run


def test_entropy_rounding_below_zero_prints_unsigned() -> None:
    snapshot = LayerSnapshot(ot=1.0, cka=0.5, identity=None, entropy=-1e-7,
                             matching=torch.zeros(2), plan=torch.zeros(2, 2))
    row = format_table({"stage1": snapshot}).splitlines()[1]
    assert row.split()[-1] == "0.0000"
