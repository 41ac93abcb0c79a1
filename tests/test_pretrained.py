"""Pretrained weights: timm layout conversion (exact logits), our checkpoints, safetensors, errors."""
import pytest
import timm
import torch
from safetensors.torch import save_file

from backbone import create_backbone, load_pretrained, mobilenet_v1


def _perturb_bn(model: torch.nn.Module, seed: int = 0) -> None:
    """Make BN statistics non-trivial so that a wrong mapping cannot give equal logits by accident."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)


@pytest.fixture(scope="module")
def timm_mobilenetv1(tmp_path_factory):
    torch.manual_seed(0)
    model = timm.create_model("mobilenetv1_100").eval()
    _perturb_bn(model)
    path = tmp_path_factory.mktemp("w") / "timm_mobilenetv1_100.pth"
    torch.save(model.state_dict(), path)
    return model, path


def test_timm_layout_gives_the_same_logits(timm_mobilenetv1):
    reference, path = timm_mobilenetv1
    ours = load_pretrained(mobilenet_v1(act="relu6"), path).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        diff = (ours(x) - reference(x)).abs().max().item()
    assert diff < 1e-4


def test_safetensors_and_own_checkpoint_round_trip(tmp_path):
    src = mobilenet_v1(0.25, num_classes=10).eval()
    _perturb_bn(src, seed=1)
    save_file(src.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save({"model": src.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    x = torch.randn(1, 3, 64, 64)
    for name in ("w.safetensors", "ckpt.pt"):
        dst = load_pretrained(mobilenet_v1(0.25, num_classes=10), tmp_path / name).eval()
        with torch.no_grad():
            assert torch.equal(dst(x), src(x))


def test_wrong_alpha_names_the_tensors(timm_mobilenetv1):
    _, path = timm_mobilenetv1
    with pytest.raises(ValueError, match=r"features\.conv0\.conv\.weight: checkpoint \(32, 3, 3, 3\) vs model \(16, 3, 3, 3\)"):
        load_pretrained(mobilenet_v1(0.5, act="relu6"), path)


def test_other_classifier_is_dropped_with_warning(timm_mobilenetv1):
    _, path = timm_mobilenetv1
    model = mobilenet_v1(num_classes=120, act="relu6")
    fresh_fc = model.classifier.weight.detach().clone()
    with pytest.warns(UserWarning, match="classifier"):
        load_pretrained(model, path)
    assert torch.equal(model.classifier.weight, fresh_fc)
    ref = timm.create_model("mobilenetv1_100")
    ref.load_state_dict(torch.load(path, weights_only=True))
    assert torch.equal(model.features.conv5.pointwise.conv.weight, ref.blocks[2][1].conv_pw.weight)
    with pytest.raises(ValueError, match="classifier"):
        load_pretrained(mobilenet_v1(num_classes=120, act="relu6"), path, strict_classifier=True)


def test_variant_mismatch_and_bad_files(tmp_path, timm_mobilenetv1):
    _, path = timm_mobilenetv1
    with pytest.raises(ValueError, match="separable"):
        load_pretrained(mobilenet_v1(shallow=True), path)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_pretrained(mobilenet_v1(0.25), tmp_path / "missing.pth")
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth"):
        load_pretrained(mobilenet_v1(0.25), bad)
    torch.save({"conv0.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="missing"):
        load_pretrained(mobilenet_v1(0.25), tmp_path / "other.pth")


def test_timm_backbone_loads_its_own_layout(tmp_path):
    src = timm.create_model("mobilenetv2_100").eval()
    _perturb_bn(src)
    torch.save(src.state_dict(), tmp_path / "v2.pth")
    dst = load_pretrained(create_backbone("mobilenetv2_100"), tmp_path / "v2.pth").eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(dst(x), src(x))
