"""The protocol of a comparison: refit final runs, optimizer settings, weight decay groups,
default layer choices, the search starting from the authors' defaults, and how the report and
the dry run state all of it."""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from torch import nn

from otbench.benchmark import cli, runner, train
from otbench.benchmark.config import TrainConfig, resolve_run_config
from otbench.benchmark.data import load_task
from otbench.benchmark.runner import execute_run, plan_run
from otbench.benchmark.tracking import default_tracking_uri
from otbench.methods import get_method
from otbench.reports.options import ReportOptions
from otbench.reports.tables import Column, final_results, render_markdown, summarize
from otbench.sweeps import final
from otbench.sweeps.driver import queue_defaults
from otbench.sweeps.space import build_space, suggest

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FAST = ["train.epochs=2", "teacher.train.epochs=2"]


def config(scenario: str, results: Path, *overrides: str):
    return resolve_run_config(CONFIGS / f"{scenario}.yaml",
                              [*FAST, f"results_dir={results}", *overrides])


def test_a_refit_trains_on_train_and_val_and_scores_test_once_after_the_last_epoch(
        tmp_path, monkeypatch) -> None:
    cfg = config("transfer", tmp_path, "method=l2sp", "refit=true", "evaluate_test=true",
                 "train.batch_size=13",  # 65 images: no last batch of one to drop
                 "diagnostics=false")
    plan = plan_run(cfg)
    task = load_task(plan.task)
    events: list[tuple[str, int]] = []
    seen: list[int] = []

    def counting_step(run, x, y, amp):
        seen.append(len(y))
        return real_step(run, x, y, amp)

    def scoring(model, split, task, batch_size=512):
        events.append(("score", len(split)))
        return real_accuracy(model, split, task, batch_size)

    def epoch(*args, **kwargs):
        log = real_epoch(*args, **kwargs)
        events.append(("epoch", sum(seen)))
        seen.clear()
        return log

    def teacher(*args, **kwargs):  # the teacher's own training is not the student's
        found = real_teacher(*args, **kwargs)
        events.clear()
        return found

    real_step, real_accuracy, real_epoch = train.train_step, train.accuracy, train._train_epoch
    real_teacher = runner.get_teacher
    monkeypatch.setattr(runner, "get_teacher", teacher)
    monkeypatch.setattr(train, "train_step", counting_step)
    monkeypatch.setattr(train, "accuracy", scoring)
    monkeypatch.setattr(runner, "accuracy", scoring)
    monkeypatch.setattr(train, "_train_epoch", epoch)
    result = execute_run(cfg, progress=False)

    labelled = len(task.train) + len(task.val)
    # every epoch sees train + val; nothing is scored until test, once, after the last epoch
    assert events == [("epoch", labelled), ("epoch", labelled), ("score", len(task.test))]
    run = MlflowClient(default_tracking_uri(tmp_path)).get_run(result.run_id)
    assert run.data.params["train_examples"] == str(labelled)
    assert run.data.params["refit"] == "true"
    assert "val/acc" not in run.data.metrics and "val/acc_final" not in run.data.metrics
    assert "refit on train+val" in run.data.tags["protocol"]


def test_without_refit_the_validation_split_stays_out_of_training(tmp_path) -> None:
    cfg = config("transfer", tmp_path, "method=finetune", "diagnostics=false")
    task = load_task(plan_run(cfg).task)
    result = execute_run(cfg, progress=False)
    params = MlflowClient(default_tracking_uri(tmp_path)).get_run(result.run_id).data.params
    assert params["train_examples"] == str(len(task.train))


@pytest.mark.parametrize(("nesterov", "momentum", "expected"),
                         [(False, 0.9, False), (True, 0.9, True), (True, 0.0, False)])
def test_nesterov_only_when_asked(nesterov: bool, momentum: float, expected: bool) -> None:
    cfg = TrainConfig(nesterov=nesterov, momentum=momentum)
    optimizer = train.make_optimizer([nn.Parameter(torch.zeros(2))], cfg)
    assert optimizer.defaults["nesterov"] is expected
    assert TrainConfig().nesterov is False  # RepDistiller train_student.py: plain momentum


@pytest.mark.parametrize("method", ["l2sp", "delta"])
def test_anchored_weights_get_no_weight_decay(tmp_path, monkeypatch, method) -> None:
    """What L2-SP / DELTA pull toward their start gets no optimizer weight decay (tllib's
    examples run with weight decay 0); the new head keeps the configured decay."""
    built: list[torch.optim.Optimizer] = []

    def capture(params, cfg):
        built.append(real(params, cfg))  # the last one built is the student's
        return built[-1]

    real = train.make_optimizer
    monkeypatch.setattr(train, "make_optimizer", capture)
    cfg = config("transfer", tmp_path, f"method={method}", "train.epochs=1",
                 "train.weight_decay=0.001", "diagnostics=false")
    execute_run(cfg, progress=False)
    decayed, free = built[-1].param_groups
    assert decayed["weight_decay"] == 0.001 and free["weight_decay"] == 0.0
    # cnn-l: the new head is `fc`; everything else was transferred from the teacher
    spec = plan_run(cfg).student_spec
    names = [n for n, _ in spec.builder(num_classes=5, in_channels=1).named_parameters()]
    head = [n for n in names if n.startswith(spec.head + ".")]
    assert head and len(decayed["params"]) == len(head)
    assert len(free["params"]) == len(names) - len(head)


def test_finetune_keeps_weight_decay_on_everything() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    from otbench.methods import TransferContext

    method = get_method("finetune")(TransferContext(teacher=nn.Identity(), student=model,
                                                    pairs=[]))
    groups = train.parameter_groups(train.Student(model, method))
    assert len(groups) == 1 and len(groups[0]["params"]) == 4


def test_fitnets_run_uses_the_middle_stage_and_diagnostics_all(tmp_path) -> None:
    result = execute_run(config("distill", tmp_path, "method=fitnets", "train.epochs=1"),
                         progress=False)
    data = MlflowClient(default_tracking_uri(tmp_path)).get_run(result.run_id).data
    assert data.params["layer_pairs"] == "[[stage2, stage2]]"  # RepDistiller --hint_layer 2
    assert {f"diag/cka/stage{i}" for i in (1, 2, 3)} <= set(data.metrics)


def test_a_study_starts_from_the_methods_defaults() -> None:
    study = optuna.create_study(direction="maximize")
    space = build_space(get_method("fitnets"), {})
    queue_defaults(study, space)
    assert suggest(study.ask(), space) == {"weight": 100.0}  # RepDistiller -b 100
    assert suggest(study.ask(), space) != {"weight": 100.0}  # then the sampler's


def test_the_cifar100_dry_run_shows_the_crd_protocol(capsys) -> None:
    assert cli.main(["sweep", "cifar100-distill", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "refit on train+val (cifar100: all 50000 training images)" in out
    lines = out.splitlines()
    for method, weight, layers in (("fitnets", "weight=100.0", "(middle stage): layer2→layer2"),
                                   ("at", "weight=1000.0", "(all stages)")):
        at = next(i for i, line in enumerate(lines)
                  if line.strip().startswith(f"cifar100-distill/resnet32x4-resnet8x4/cifar100/"
                                             f"{method} "))
        assert weight in lines[at]
        assert "momentum 0.9 (plain)" in lines[at + 1] and layers in lines[at + 1]


def test_the_caption_states_each_columns_protocol() -> None:
    refit = "hyper-parameters chosen on validation; refit on train+val; test after the last epoch"
    held = "hyper-parameters chosen on validation; trained on train; test after the last epoch"
    final = pd.DataFrame({
        "stage": "final", "status": "FINISHED", "scenario": "distill", "task": "cifar100",
        "entry": ["a", "a", "b", "b"], "method": "kd", "test/acc": [0.70, 0.72, 0.74, 0.76],
        "protocol": [refit, refit, held, held]})
    options = ReportOptions()
    table = summarize(final_results(final, options), options)
    assert table.protocols == {Column("distill", "a", "cifar100"): refit,
                               Column("distill", "b", "cifar100"): held}
    text = render_markdown(table)
    assert f"Protocol (CIFAR-100 (a)): {refit}." in text
    assert f"Protocol (CIFAR-100 (b)): {held}." in text


def test_a_final_seed_is_valued_by_validation_and_a_refit_one_by_nothing_held_out() -> None:
    """A final study's value never carries the test score, so its best_trial cannot pick a
    seed by test; a refit seed has no held-out validation (NaN would fail the trial)."""
    assert final.seed_value(0.875, refit=False) == 0.875
    assert final.seed_value(None, refit=True) == 0.0
    assert final.seed_value(float("nan"), refit=True) == 0.0
