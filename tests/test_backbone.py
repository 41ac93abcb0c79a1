"""MobileNet v1 backbone: Table 1 structure, alpha/rho, ablation variants, contract, bad input."""
import math

import pytest
import torch
from torch import nn

from backbone import create_backbone, mobilenet_v1, round_channels, select_features

ALPHAS = [1.0, 0.75, 0.5, 0.25]
VARIANTS = [("separable", False), ("separable", True), ("full", False)]
REDUCTIONS = [2, 2, 4, 4, 8, 8, 16, 16, 16, 16, 16, 16, 32, 32]

# Paper, Tables 4-6: million parameters, printed to one decimal (0.25 is printed as 0.5).
PAPER_PARAMS = {
    (1.0, "separable", False): 4.2,
    (0.75, "separable", False): 2.6,
    (0.5, "separable", False): 1.3,
    (0.25, "separable", False): 0.5,
    (1.0, "full", False): 29.3,
    (1.0, "separable", True): 2.9,
}


def weight_params(model: nn.Module) -> int:
    """Conv and FC weights: what the paper counts (Table 2's shares; BN is folded into the conv at inference)."""
    return sum(p.numel() for n, p in model.named_parameters() if ".bn." not in n and not n.endswith("bias"))


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("conv,shallow", VARIANTS)
def test_forward_shapes_grads_and_feature_info(alpha, conv, shallow):
    torch.manual_seed(0)
    model = mobilenet_v1(alpha, num_classes=10, conv=conv, shallow=shallow)
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, no_grad

    names = [f["name"] for f in model.feature_info]
    expected_names = [f"conv{i}" for i in range(14) if not (shallow and 7 <= i <= 11)]
    assert names == expected_names
    maps = model.forward_intermediates(x)
    assert len(maps) == len(model.feature_info)
    for info, fmap in zip(model.feature_info, maps):
        assert fmap.shape[1] == info["num_chs"]
        assert fmap.shape[-1] == math.ceil(64 / info["reduction"])
        assert model.get_submodule(info["module"]) is model.features[names.index(info["name"])]
    assert model.feature_info[-1]["num_chs"] == model.num_features == round_channels(1024 * alpha)


def test_reductions_match_table1():
    model = mobilenet_v1()
    assert [f["reduction"] for f in model.feature_info] == REDUCTIONS
    # The last depthwise layer is stride 1 (Table 1 prints s2 but the map stays 7x7).
    assert model.features.conv13.depthwise.conv.stride == (1, 1)
    assert model.features.conv12.depthwise.conv.stride == (2, 2)
    assert model.forward_features(torch.randn(1, 3, 224, 224)).shape == (1, 1024, 7, 7)


@pytest.mark.parametrize("key,paper", list(PAPER_PARAMS.items()))
def test_parameter_counts_match_paper(key, paper):
    alpha, conv, shallow = key
    model = mobilenet_v1(alpha, conv=conv, shallow=shallow)
    assert round(weight_params(model) / 1e6, 1) == pytest.approx(paper, abs=0.051)


def test_alpha_applies_to_every_layer():
    full, half = mobilenet_v1(1.0), mobilenet_v1(0.5)
    for a, b in zip(full.feature_info, half.feature_info):
        assert b["num_chs"] * 2 == a["num_chs"]


@pytest.mark.parametrize("value,expected", [(0.75 * 32, 24), (0.25 * 32, 8), (1.4 * 32, 48), (0.1 * 32, 8), (1.3 * 1024, 1328), (0.3 * 64, 24)])
def test_round_channels(value, expected):
    assert round_channels(value) == expected
    assert round_channels(value) % 8 == 0


@pytest.mark.parametrize("size", [32, 97, 160, 300])
def test_any_resolution(size):
    model = mobilenet_v1(0.25, num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size)).shape == (1, 5)


def test_headless_and_reset_classifier():
    model = mobilenet_v1(0.25, num_classes=0)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 256)
    model.reset_classifier(7)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)
    assert model.forward_head(model.forward_features(torch.randn(1, 3, 64, 64)), pre_logits=True).shape == (1, 256)


def test_forward_intermediates_by_name_and_order():
    model = mobilenet_v1(0.25).eval()
    x = torch.randn(1, 3, 300, 300)
    c13, c11 = model.forward_intermediates(x, ["conv13", "conv11"])
    assert c11.shape == (1, 128, 19, 19) and c13.shape == (1, 256, 10, 10)
    (last,) = model.forward_intermediates(x, -1)
    assert torch.equal(last, c13)
    assert select_features(model.feature_info, (16, 32)) == [11, 13]


def test_split_shares_modules_and_composes():
    model = mobilenet_v1(0.25).eval()
    trunk, rest = model.split("conv11")
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(rest(trunk(x)), model.forward_features(x))
    assert trunk.conv11 is model.features.conv11 and list(rest.children())[0] is model.features.conv12


def test_depthwise_init_keeps_activation_scale():
    torch.manual_seed(0)
    model = mobilenet_v1(0.5).eval()
    with torch.no_grad():
        out = model.forward_features(torch.randn(4, 3, 128, 128))
    assert 0.01 < out.std().item() < 10  # fan-out of a depthwise filter is 9, not 9 * channels


def test_activations_and_dropout():
    assert isinstance(mobilenet_v1(0.25, act="relu6").features.conv0.act, nn.ReLU6)
    assert isinstance(mobilenet_v1(0.25).features.conv0.act, nn.ReLU)
    assert mobilenet_v1(0.25, dropout=0.2).dropout.p == 0.2
    assert isinstance(mobilenet_v1(0.25).dropout, nn.Identity)


def test_in_chans():
    model = mobilenet_v1(0.25, in_chans=1, num_classes=3)
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 3)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": -0.5}, "alpha"),
        ({"alpha": 2.5}, "alpha"),
        ({"conv": "grouped"}, "conv"),
        ({"act": "gelu"}, "act"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mobilenet_v1(**kwargs)


def test_bad_alpha_type():
    with pytest.raises(TypeError, match="alpha"):
        mobilenet_v1("1.0")


def test_bad_inputs_name_the_problem():
    model = mobilenet_v1(0.25)
    with pytest.raises(ValueError, match="3-channel.*got 1 channels"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="16x16 px.*at least 32x32"):
        model(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="4-D"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="empty"):
        model.forward_intermediates(torch.randn(1, 3, 64, 64), [])
    with pytest.raises(ValueError, match="conv99"):
        model.forward_intermediates(torch.randn(1, 3, 64, 64), ["conv99"])


@pytest.mark.parametrize("name", ["mobilenetv2_100", "mobilenetv3_large_100"])
def test_timm_backbones_share_the_contract(name):
    model = create_backbone(name).eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        maps = model.forward_intermediates(x)
        assert len(maps) == len(model.feature_info)
        for info, fmap in zip(model.feature_info, maps):
            assert fmap.shape[1] == info["num_chs"]
            assert fmap.shape[-1] == 128 // info["reduction"]
        s16, s32 = select_features(model.feature_info, (16, 32))
        trunk, rest = model.split(model.feature_info[s16]["name"])
        assert torch.allclose(rest(trunk(x)), maps[s32], atol=1e-5)
    assert model(x).shape == (1, 1000)
    model.reset_classifier(0)
    assert model(x).shape == (1, model.head_hidden_size)


def test_create_backbone_routes_and_rejects():
    assert create_backbone("mobilenet_v1", alpha=0.5).alpha == 0.5
    with pytest.raises(ValueError, match="not_a_model"):
        create_backbone("not_a_model")
    with pytest.raises(ValueError, match="alpha"):
        create_backbone("mobilenetv2_100", alpha=0.5)
