"""Every method against an independent computation on hand-made tensors, and the registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from otbench.errors import ConfigError
from otbench.methods import (
    HyperParam,
    LayerPair,
    StepOutputs,
    TransferContext,
    TransferMethod,
    get_method,
    method_names,
    register_method,
)
from otbench.methods.base import default_pairs
from otbench.methods.catalog import builtin_methods, markdown_table, references_table
from otbench.methods.fitnets import make_regressor


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def context(pairs=(), **kwargs) -> TransferContext:
    kwargs.setdefault("teacher", nn.Identity())
    kwargs.setdefault("student", nn.Identity())
    return TransferContext(pairs=list(pairs), **kwargs)


def step(student=None, teacher=None, s_logits=None, t_logits=None) -> StepOutputs:
    logits = s_logits if s_logits is not None else torch.zeros(4, 3)
    return StepOutputs(student_logits=logits, targets=torch.zeros(len(logits), dtype=torch.long),
                       student_features=student or {}, teacher_features=teacher or {},
                       teacher_logits=t_logits)


def test_the_six_required_methods_are_registered() -> None:
    assert {"finetune", "ot", "l2sp", "fitnets", "at", "kd"} <= set(method_names())


def test_finetune_adds_nothing() -> None:
    assert get_method("finetune")(context())(step()) == {}


def test_kd_matches_numpy() -> None:
    s_logits, t_logits = rand(5, 4, seed=1), rand(5, 4, seed=2)
    method = get_method("kd")(context(same_labels=True), alpha=0.7, temperature=3.0)
    terms = method(step(s_logits=s_logits, t_logits=t_logits))

    def softmax(x: np.ndarray) -> np.ndarray:
        e = np.exp(x - x.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    p_t, p_s = softmax(t_logits.numpy() / 3), softmax(s_logits.numpy() / 3)
    kl = (p_t * (np.log(p_t) - np.log(p_s))).sum(1).mean()
    assert terms["kd/soft"].item() == pytest.approx(0.7 * 9 * kl, rel=1e-5)
    assert method.task_loss_weight() == pytest.approx(0.3)


def test_at_matches_numpy() -> None:
    t, s = rand(3, 6, 4, 4, seed=3), rand(3, 2, 4, 4, seed=4)
    pair = LayerPair("t", "s", (6, 4, 4), (2, 4, 4))
    terms = get_method("at")(context([pair]), weight=100.0)(step({"s": s}, {"t": t}))

    def attention(x: np.ndarray) -> np.ndarray:
        a = (x**2).mean(1).reshape(len(x), -1)
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    expected = ((attention(s.numpy()) - attention(t.numpy())) ** 2).mean()
    # the authors' cifar.py and RepDistiller: β · Σ mean (Q_S − Q_T)², no ½
    assert terms["at/s"].item() == pytest.approx(100.0 * expected, rel=1e-5)


def test_fitnets_with_an_identity_regressor_is_plain_mse() -> None:
    t, s = rand(4, 3, 2, 2, seed=5), rand(4, 3, 2, 2, seed=6)
    pair = LayerPair("t", "s", (3, 2, 2), (3, 2, 2))
    method = get_method("fitnets")(context([pair]), weight=2.0).eval()
    conv, bn, _ = method.regressors["s"]
    with torch.no_grad():
        conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
    expected = ((np.maximum(s.numpy() / np.sqrt(1 + bn.eps), 0) - t.numpy()) ** 2).mean()
    assert method(step({"s": s}, {"t": t}))["fitnets/s"].item() == pytest.approx(
        2.0 * expected, rel=1e-5)


def test_fitnets_regressors_are_trainable_and_bridge_widths() -> None:
    pair = LayerPair("t", "s", (8, 4, 4), (3, 4, 4))
    method = get_method("fitnets")(context([pair]))
    params = list(method.parameters())
    assert params and all(p.requires_grad for p in params)
    method(step({"s": rand(2, 3, 4, 4)}, {"t": rand(2, 8, 4, 4)}))["fitnets/s"].backward()
    assert all(p.grad is not None for p in params)


def test_l2sp_matches_hand_computation() -> None:
    student = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    start = {n: p.detach().clone() for n, p in student.named_parameters()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.5)
    head = frozenset({"1.weight", "1.bias"})
    method = get_method("l2sp")(context(student=student, start_weights=start, head=head),
                                alpha=0.1, beta=0.01)
    terms = method(step())
    drift = sum(((p.detach() - start[n]) ** 2).sum().item()
                for n, p in student.named_parameters() if n not in head)
    assert drift == pytest.approx(0.25 * (12 + 4))
    head_norm = sum((p.detach() ** 2).sum().item() for n, p in student.named_parameters()
                    if n in head)
    assert terms["l2sp/start"].item() == pytest.approx(0.05 * drift, rel=1e-6)
    assert terms["l2sp/head"].item() == pytest.approx(0.005 * head_norm, rel=1e-6)
    assert not list(method.parameters())  # the starting point is not trainable


@pytest.mark.parametrize(("name", "ctx", "reason"), [
    ("l2sp", {"same_architecture": False, "scenario": "cross"}, "same architecture"),
    ("kd", {"same_labels": False, "scenario": "transfer"}, "same label set"),
    ("ot", {}, "needs at least one layer pair"),
])
def test_inapplicable_pairings_are_refused_with_the_reason(name, ctx, reason) -> None:
    with pytest.raises(ConfigError, match=f"{name}.*{reason}"):
        get_method(name)(context(**ctx))


def test_at_refuses_flat_layers() -> None:
    with pytest.raises(ConfigError, match=r"'at'.*'fc'.*\(10,\).*pair two"):
        get_method("at")(context([LayerPair("fc", "fc", (10,), (10,))]))


def test_unknown_method_and_hyperparameters_suggest_the_fix() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'fitnets'"):
        get_method("fitnet")
    pair = LayerPair("t", "s", (2, 2, 2), (2, 2, 2))
    with pytest.raises(ConfigError, match="Did you mean 'weight'"):
        get_method("ot")(context([pair]), wieght=1.0)
    with pytest.raises(ConfigError, match="'solver'.*not one of"):
        get_method("ot")(context([pair]), solver="magic")
    with pytest.raises(ConfigError, match="'weight'.*expected a float"):
        get_method("ot")(context([pair]), weight="big")
    with pytest.raises(ConfigError, match="'weight'.*must be >= 0"):
        get_method("ot")(context([pair]), weight=-1.0)


def test_registering_a_name_twice_is_refused() -> None:
    with pytest.raises(ConfigError, match="'ot' is already registered"):
        @register_method("ot")
        class Impostor(TransferMethod):
            def forward(self, step):
                return {}


def test_bad_declared_spaces_are_refused() -> None:
    with pytest.raises(ConfigError, match="low <= high"):
        HyperParam("w", "float", 1.0, 10.0, 1.0)
    with pytest.raises(ConfigError, match="log range needs low > 0"):
        HyperParam("w", "float", 1.0, 0.0, 1.0, log=True)
    with pytest.raises(ConfigError, match="not one of"):
        HyperParam("c", "categorical", "x", choices=("a", "b"))


def test_every_method_declares_a_valid_interface() -> None:
    for name in method_names():
        cls = get_method(name)
        assert cls.name == name and cls.summary
        for hp in cls.hyperparams:
            assert hp.validate(hp.default) == hp.default


def test_fitnets_regressor_is_conv_bn_relu() -> None:
    # RepDistiller models/util.py ConvReg: conv → BatchNorm2d → ReLU (use_relu=True for FitNets)
    regressor = make_regressor(LayerPair("t", "s", (8, 4, 4), (3, 4, 4)))
    assert [type(m) for m in regressor] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    conv = regressor[0]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (3, 8, (1, 1))
    out = regressor(rand(4, 3, 4, 4))
    assert out.shape == (4, 8, 4, 4) and (out >= 0).all()


# Each default pinned to its reference (method, parameter, value, reference).
REFERENCE_DEFAULTS = [
    ("fitnets", "weight", 100.0),  # RepDistiller run_cifar_distill.sh -b 100; mdistiller 100
    ("at", "weight", 1000.0),  # attention-transfer cifar.py β=1e3; RepDistiller -b 1000
    ("at", "p", 2),  # RepDistiller distiller_zoo/AT.py p=2
    ("nst", "weight", 50.0),  # RepDistiller run_cifar_distill.sh -b 50
    ("sp", "weight", 3000.0),  # RepDistiller -b 3000
    ("pkt", "weight", 30000.0),  # RepDistiller -b 30000
    ("rkd", "distance_weight", 25.0),  # RepDistiller RKDLoss w_d
    ("rkd", "angle_weight", 50.0),  # RepDistiller RKDLoss w_a
    ("crd", "weight", 0.8),  # RepDistiller -b 0.8
    ("crd", "temperature", 0.07),  # RepDistiller --nce_t
    ("crd", "feat_dim", 128),  # RepDistiller --feat_dim
    ("kd", "alpha", 0.9),  # RepDistiller -a 0.9 -r 0.1
    ("kd", "temperature", 4.0),  # RepDistiller --kd_T 4
    ("delta", "alpha", 0.01 * 64),  # tllib --trade-off-backbone 0.01, summed over batch 64
    ("delta", "beta", 0.01),  # tllib --trade-off-head 0.01
    ("l2sp", "alpha", 0.01),  # tllib delta.py l2_sp --trade-off-backbone 0.01
    ("l2sp", "beta", 0.01),  # tllib --trade-off-head 0.01
    ("bss", "weight", 1e-3),  # Chen et al. 2019 η; tllib bss.py --trade-off 0.001
    ("bss", "k", 1),  # Chen et al. 2019; tllib bss.py -k 1
]


@pytest.mark.parametrize(("method", "param", "value"), REFERENCE_DEFAULTS)
def test_defaults_match_their_reference(method: str, param: str, value: float) -> None:
    hp = {h.name: h for h in get_method(method).hyperparams}[param]
    assert hp.default == pytest.approx(value)
    assert hp.low <= hp.default <= hp.high
    assert hp.source, f"{method}.{param} says nowhere where its default comes from"


# Stage pairs each method uses by default: RepDistiller helper/loops.py reads feat[hint_layer=2]
# for FitNets, feat[1:-1] (all stages) for AT and NST, feat[-2] for SP, feat[-1] for RKD,
# PKT and CRD; the paper's OT uses all stages.
DEFAULT_LAYERS = {"fitnets": "middle", "at": "all", "nst": "all", "ot": "all", "sp": "last",
                  "rkd": "last", "pkt": "last", "crd": "last", "bss": "last"}


@pytest.mark.parametrize(("method", "layers"), DEFAULT_LAYERS.items())
def test_default_layers_follow_the_reference(method: str, layers: str) -> None:
    assert get_method(method).layers == layers


def test_default_pairs_pick_the_middle_or_last_stage() -> None:
    three, four = ["s1", "s2", "s3"], ["l1", "l2", "l3", "l4"]
    assert default_pairs(three, "middle") == ["s2"]  # RepDistiller feat[2] on a 3-stage CIFAR net
    assert default_pairs(four, "middle") == ["l2"]  # feat[2] on a 4-stage ResNet
    assert default_pairs(three, "last") == ["s3"]
    assert default_pairs(three, "all") == three


def test_every_method_names_its_sources() -> None:
    builtin = builtin_methods()
    assert len(builtin) == 17
    for cls in builtin:
        assert cls.reference, cls.name
        assert all(hp.source for hp in cls.hyperparams), cls.name


def test_methods_doc_lists_every_default_with_its_source() -> None:
    doc = (Path(__file__).parents[1] / "docs" / "methods.md").read_text()
    assert markdown_table() in doc, "docs/methods.md is stale: paste markdown_table()'s output"
    assert references_table() in doc


def test_l2sp_and_delta_anchor_the_transferred_weights_only() -> None:
    student = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    start = {n: p.detach().clone() for n, p in student.named_parameters()}
    head = frozenset({"1.weight", "1.bias"})
    l2sp = get_method("l2sp")(context(student=student, start_weights=start, head=head))
    assert l2sp.anchored_parameters() == {"0.weight", "0.bias"}
    pair = LayerPair("0", "0", (4,), (4,))
    delta = get_method("delta")(context([pair], student=student, start_weights=start, head=head))
    assert delta.anchored_parameters() == {"0.weight", "0.bias"}
    assert get_method("ot")(context([pair])).anchored_parameters() == frozenset()
