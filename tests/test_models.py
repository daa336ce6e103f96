"""Model zoo: every model runs, taps are consistent, sizes match published figures,
heads and weight files behave. CPU only, no network."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from otbench.benchmark import models as zoo
from otbench.benchmark.models import (
    FeatureTaps,
    ModelSpec,
    build_model,
    default_layer_pairs,
    feature_shapes,
    get_model_spec,
    head_parameter_names,
    model_names,
    replace_head,
)
from otbench.errors import ConfigError, UnknownNameError

#: Input side per family; imagenet models are probed at 64x64 to keep the test fast.
SIDE = {"cnn": 8, "cifar": 32, "imagenet": 64}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_the_required_models() -> None:
    required = {"cnn-s", "cnn-m", "cnn-l", "resnet8", "resnet14", "resnet20", "resnet32",
                "resnet44", "resnet56", "resnet110", "resnet8x4", "resnet32x4", "wrn-16-2",
                "wrn-40-2", "vgg8", "vgg13", "mobilenetv2", "resnet18", "resnet34", "resnet50"}
    assert required <= set(model_names())
    assert model_names() == sorted(model_names())


@pytest.mark.parametrize("name", model_names())
def test_forward_and_taps(name: str) -> None:
    spec = get_model_spec(name)
    # A non-RGB channel count proves the stem honours in_channels.
    in_ch = 1 if spec.family == "cnn" else 2
    side = SIDE[spec.family]
    model = build_model(name, num_classes=7, in_channels=in_ch)
    assert isinstance(model.get_submodule(spec.head), nn.Linear)

    model.train()
    model.get_submodule(spec.taps[0]).eval()  # a frozen part must stay frozen
    shapes = feature_shapes(model, spec.taps, (in_ch, side, side))
    assert model.training and not model.get_submodule(spec.taps[0]).training
    assert list(shapes) == list(spec.taps)

    x = torch.randn(2, in_ch, side, side)
    with FeatureTaps(model, spec.taps) as taps:
        logits = model(x)
    assert logits.shape == (2, 7)
    assert set(taps.features) == set(spec.taps)
    for tap, feat in taps.features.items():
        assert feat.shape == (2, *shapes[tap]), tap
        assert feat.grad_fn is not None  # still on the graph, so feature losses can train
    # Shallow -> deep: resolution never increases.
    sides = [shapes[t][-1] for t in spec.taps]
    assert sides == sorted(sides, reverse=True)
    assert all(not m._forward_hooks for m in model.modules())


def test_small_cnn_works_on_other_sizes() -> None:
    model = build_model("cnn-s", num_classes=3, in_channels=1)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 3)
    assert model(torch.randn(2, 1, 3, 5)).shape == (2, 3)


# Published sizes at 100 classes (CRD / RepDistiller tables; WRN paper).
PUBLISHED = {"resnet8x4": 1.23e6, "resnet32x4": 7.43e6, "resnet56": 0.86e6,
             "resnet20": 0.28e6, "wrn-40-2": 2.26e6, "wrn-16-2": 0.70e6}


@pytest.mark.parametrize(("name", "expected"), sorted(PUBLISHED.items()))
def test_parameter_counts_match_published(name: str, expected: float) -> None:
    assert n_params(build_model(name, 100)) == pytest.approx(expected, rel=0.03)


def spec(name: str, n: int) -> ModelSpec:
    return ModelSpec(name, "cifar", tuple(f"{name}{i}" for i in range(n)), "fc", nn.Identity)


def test_default_layer_pairs() -> None:
    assert default_layer_pairs(spec("t", 3), spec("s", 3)) == [
        ("t0", "s0"), ("t1", "s1"), ("t2", "s2")]
    assert default_layer_pairs(spec("t", 5), spec("s", 3)) == [
        ("t2", "s0"), ("t3", "s1"), ("t4", "s2")]
    assert default_layer_pairs(spec("t", 2), spec("s", 4)) == [("t0", "s2"), ("t1", "s3")]
    real = default_layer_pairs(get_model_spec("resnet50"), get_model_spec("resnet8x4"))
    assert real == [("layer2", "layer1"), ("layer3", "layer2"), ("layer4", "layer3")]


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2"])
def test_replace_head(name: str) -> None:
    s = get_model_spec(name)
    model = build_model(name, 10)
    before = {n: p.clone() for n, p in model.named_parameters()}
    assert replace_head(model, s, 4) is model
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)

    names = head_parameter_names(model, s)
    assert names == {f"{s.head}.weight", f"{s.head}.bias"}
    head_ids = {id(p) for p in model.get_submodule(s.head).parameters()}
    assert {n for n, p in model.named_parameters() if id(p) in head_ids} == names
    for n, p in model.named_parameters():  # the body is untouched
        if n not in names:
            assert torch.equal(p, before[n])


def test_weights_round_trip(tmp_path) -> None:
    src = build_model("cnn-m", 5, in_channels=1)
    with torch.no_grad():  # make BN buffers non-trivial too
        src(torch.randn(4, 1, 8, 8))
    path = tmp_path / "w.pt"
    torch.save(src.state_dict(), path)
    for weights in (path, str(path)):
        dst = build_model("cnn-m", 5, in_channels=1, weights=weights)
        for (k, a), (_, b) in zip(src.state_dict().items(), dst.state_dict().items(),
                                  strict=True):
            assert torch.equal(a, b), k
    # Training checkpoints that wrap the state_dict load too.
    torch.save({"model": src.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    dst = build_model("cnn-m", 5, in_channels=1, weights=tmp_path / "ckpt.pt")
    assert torch.equal(dst.fc.weight, src.fc.weight)


def test_bad_weight_files(tmp_path) -> None:
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="corrupt.pt"):
        build_model("cnn-s", 5, weights=corrupt)
    with pytest.raises(ConfigError, match="does not exist"):
        build_model("cnn-s", 5, weights=tmp_path / "missing.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ConfigError, match="state_dict"):
        build_model("cnn-s", 5, weights=tmp_path / "list.pt")
    # A body of another shape (here: other in_channels) is an error, not a silent skip.
    torch.save(build_model("cnn-s", 5, in_channels=3).state_dict(), tmp_path / "rgb.pt")
    with pytest.raises(ConfigError, match=r"stage1\.0\.weight"):
        build_model("cnn-s", 5, in_channels=1, weights=tmp_path / "rgb.pt")
    torch.save(build_model("cnn-m", 5).state_dict(), tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="does not fit"):
        build_model("cnn-s", 5, weights=tmp_path / "other.pt")


def test_head_mismatch_loads_body_with_warning(tmp_path) -> None:
    src = build_model("resnet8", 100)
    torch.save(src.state_dict(), tmp_path / "c100.pt")
    with pytest.warns(UserWarning, match="except the head"):
        dst = build_model("resnet8", 10, weights=tmp_path / "c100.pt")
    assert dst.fc.out_features == 10
    for k, v in dst.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(v, src.state_dict()[k]), k


def test_imagenet_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """The 'imagenet' path without network: stand in for torchvision's download."""
    published = build_model("resnet18", 1000).state_dict()
    monkeypatch.setattr(zoo.imagenet, "_fetch", lambda weights: published)
    with pytest.warns(UserWarning, match="head"):
        model = build_model("resnet18", 10, weights="imagenet")
    assert torch.equal(model.conv1.weight, published["conv1.weight"])

    def offline(weights: object) -> None:
        raise OSError("no network")

    monkeypatch.setattr(zoo.imagenet, "_fetch", offline)
    with pytest.raises(ConfigError, match="local file"):
        build_model("resnet18", 10, weights="imagenet")
    with pytest.raises(ConfigError, match="no built-in 'imagenet' weights"):
        build_model("resnet20", 10, weights="imagenet")


def test_unknown_names_suggest() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'resnet20'"):
        get_model_spec("resnt20")
    with pytest.raises(UnknownNameError, match="Did you mean 'wrn-40-2'"):
        build_model("wrn40-2", 10)
    model = build_model("resnet20", 10)
    with pytest.raises(ConfigError, match="Did you mean 'layer2'"):
        FeatureTaps(model, ["layer1", "layr2"])
    assert all(not m._forward_hooks for m in model.modules())
    with FeatureTaps(model, ["layer1.0.conv1"]) as taps:  # any module path is allowed
        model(torch.randn(1, 3, 32, 32))
    assert taps.features["layer1.0.conv1"].shape == (1, 16, 32, 32)


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_bad_sizes(bad: object) -> None:
    with pytest.raises(ConfigError, match="positive integer"):
        build_model("cnn-s", bad)  # type: ignore[arg-type]
