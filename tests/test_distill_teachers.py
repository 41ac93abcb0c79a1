"""Every teacher kind loads, is fed correctly (resize + re-normalisation) and is checked against the task."""

from __future__ import annotations

import textwrap
import uuid
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from distill.teachers import (
    TeacherConfig,
    TeacherOutputError,
    load_teacher,
    parse_teacher_spec,
    sidecar_config_path,
)

STUDENT_MEAN = (0.485, 0.456, 0.406)
STUDENT_STD = (0.229, 0.224, 0.225)
TEACHER_CFG = {"input_size": 40, "mean": [0.5, 0.4, 0.3], "std": [0.25, 0.2, 0.3], "num_outputs": 5}


class TinyNet(nn.Module):
    """A small CNN standing in for a large teacher."""

    def __init__(self, outputs: int = 5):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, outputs)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        return self.fc(x.mean((2, 3)))


def _net(outputs: int = 5) -> TinyNet:
    torch.manual_seed(0)
    net = TinyNet(outputs)
    with torch.no_grad():  # non-trivial BN statistics, so eval vs train mode would differ
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
    return net.eval()


def _batch(n: int = 3, size: int = 56) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    raw = torch.rand(n, 3, size, size, generator=g)
    mean = torch.tensor(STUDENT_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STUDENT_STD).view(1, 3, 1, 1)
    return (raw - mean) / std


def _reference(net: nn.Module, student_batch: torch.Tensor, cfg: dict = TEACHER_CFG) -> torch.Tensor:
    """What the teacher must compute: un-normalise, resize (antialiased), re-normalise, run."""
    raw = student_batch * torch.tensor(STUDENT_STD).view(1, 3, 1, 1) + torch.tensor(STUDENT_MEAN).view(1, 3, 1, 1)
    size = cfg["input_size"]
    x = F.interpolate(raw, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    x = (x - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        return net(x)


def _write_yaml(path, cfg=TEACHER_CFG):
    path.write_text(yaml.safe_dump(cfg))


def _torchscript(tmp_path, net=None):
    net = net or _net()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(net, torch.zeros(1, 3, 40, 40)), str(tmp_path / "teacher.pt"))
    _write_yaml(tmp_path / "teacher.yaml")
    return f"torchscript:{tmp_path / 'teacher.pt'}", net


def _export(tmp_path, dynamic=True):
    net = _net()
    dyn = ({0: torch.export.Dim("batch", min=1, max=64)},) if dynamic else None
    program = torch.export.export(net, (torch.zeros(2, 3, 40, 40),), dynamic_shapes=dyn)
    torch.export.save(program, str(tmp_path / "teacher.pt2"))
    _write_yaml(tmp_path / "teacher.yaml")
    return f"export:{tmp_path / 'teacher.pt2'}", net


def _onnx(tmp_path):
    net = _net()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 3, 40, 40),), str(tmp_path / "teacher.onnx"), input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, dynamo=False)
    # No YAML: the static 40x40 input comes from the graph, mean/std from the flags.
    return f"onnx:{tmp_path / 'teacher.onnx'}", net


def _module(tmp_path, monkeypatch, body: str | None = None):
    """A test helper module on sys.path whose factory builds the teacher (module: kind)."""
    net = _net()
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    src = body or f"""
        import torch
        from torch import nn
        import torch.nn.functional as F

        class TinyNet(nn.Module):
            def __init__(self, outputs=5):
                super().__init__()
                self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
                self.bn = nn.BatchNorm2d(8)
                self.fc = nn.Linear(8, outputs)
                self.input_size = 40
                self.mean = (0.5, 0.4, 0.3)
                self.std = (0.25, 0.2, 0.3)

            def forward(self, x):
                x = F.relu(self.bn(self.conv(x)))
                return self.fc(x.mean((2, 3)))

        def make_teacher(outputs=5):
            net = TinyNet(outputs)
            net.load_state_dict(torch.load({str(tmp_path / 'weights.pt')!r}, weights_only=True))
            net.train()  # the wrapper must put it in eval mode
            return net
    """
    name = f"distill_test_teacher_{uuid.uuid4().hex[:8]}"  # fresh name: no stale sys.modules entry
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(src))
    monkeypatch.syspath_prepend(str(tmp_path))
    return f"module:{name}:make_teacher", net


def test_parse_spec():
    assert parse_teacher_spec("torchscript:/a/b.pt") == ("torchscript", "/a/b.pt", None)
    assert parse_teacher_spec("timm:resnet18") == ("timm", "resnet18", None)
    assert parse_teacher_spec("timm:resnet18:/x/c:k.pth") == ("timm", "resnet18", "/x/c:k.pth")
    assert parse_teacher_spec("module:pkg.mod:make") == ("module", "pkg.mod", "make")
    for bad in ("teacher.pt", "caffe:x", "module:pkg.mod", "onnx:", "module:pkg:1bad"):
        with pytest.raises(ValueError):
            parse_teacher_spec(bad)


@pytest.mark.parametrize("kind", ["torchscript", "export", "onnx", "module"])
def test_every_kind_runs_like_the_reference(kind, tmp_path, monkeypatch):
    if kind == "torchscript":
        spec, net = _torchscript(tmp_path)
        extra = {}
    elif kind == "export":
        spec, net = _export(tmp_path)
        extra = {}
    elif kind == "onnx":
        spec, net = _onnx(tmp_path)
        extra = {"mean": TEACHER_CFG["mean"], "std": TEACHER_CFG["std"]}
    else:
        spec, net = _module(tmp_path, monkeypatch)
        extra = {}
    teacher = load_teacher(spec, task="attributes", **extra)
    assert teacher.kind == kind and teacher.input_size == (40, 40)
    images = _batch(5)
    out = teacher(images, mean=STUDENT_MEAN, std=STUDENT_STD)
    assert out.shape == (5, 5) and out.dtype == torch.float32 and not out.requires_grad
    torch.testing.assert_close(out, _reference(net, images), atol=1e-4, rtol=1e-4)
    # Cost: the same conv + FC work for every kind (8*27*20*20 + 8*5 per image).
    assert teacher.mult_adds() == 8 * 27 * 20 * 20 + 8 * 5
    assert teacher.num_parameters() >= 8 * 27 + 8 * 5


def test_timm_teacher_from_local_checkpoint(tmp_path):
    import timm

    torch.manual_seed(0)
    net = timm.create_model("resnet10t", num_classes=4).eval()
    # An engine-style checkpoint ({"model": state_dict}) with a YAML next to it.
    torch.save({"model": net.state_dict(), "epoch": 3}, tmp_path / "ckpt.pth")
    cfg = {"input_size": 64, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    _write_yaml(tmp_path / "ckpt.yaml", cfg)
    teacher = load_teacher(f"timm:resnet10t:{tmp_path / 'ckpt.pth'}", task="classification")
    images = _batch(2, size=80)
    out = teacher(images, mean=STUDENT_MEAN, std=STUDENT_STD)
    assert out.shape == (2, 4)  # num_classes read from the checkpoint's classifier
    torch.testing.assert_close(out, _reference(net, images, cfg), atol=1e-4, rtol=1e-4)
    maps = teacher.intermediates(images, [1], mean=STUDENT_MEAN, std=STUDENT_STD)
    assert maps[0].dim() == 4 and maps[0].shape[0] == 2


def test_timm_teacher_checkpoint_that_does_not_fit(tmp_path):
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="bad.pth"):
        load_teacher(f"timm:resnet10t:{tmp_path / 'bad.pth'}", input_size=64, mean=[0.5] * 3, std=[0.5] * 3)


def test_timm_defaults_come_from_pretrained_cfg(tmp_path):
    import timm

    net = timm.create_model("resnet10t", num_classes=3)
    torch.save(net.state_dict(), tmp_path / "w.pth")
    teacher = load_teacher(f"timm:resnet10t:{tmp_path / 'w.pth'}")
    cfg = net.pretrained_cfg
    assert teacher.input_size == tuple(cfg["input_size"][1:])
    assert teacher.config.mean == pytest.approx(cfg["mean"]) and teacher.config.std == pytest.approx(cfg["std"])


def test_resize_renormalise_and_channel_order(tmp_path, monkeypatch):
    """A probe teacher returns the per-channel means and the size of what it receives."""
    body = """
        import torch
        from torch import nn

        class Probe(nn.Module):
            def forward(self, x):
                size = torch.tensor([x.shape[2], x.shape[3]], dtype=x.dtype).expand(x.shape[0], 2)
                return torch.cat([x.mean((2, 3)), size], dim=1)

        def make():
            return Probe()
    """
    spec, _ = _module(tmp_path, monkeypatch, body)
    spec = spec.replace("make_teacher", "make")
    raw = torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1).expand(2, 3, 50, 70)
    images = (raw - torch.tensor(STUDENT_MEAN).view(1, 3, 1, 1)) / torch.tensor(STUDENT_STD).view(1, 3, 1, 1)
    for order, expect_raw in (("RGB", [0.2, 0.4, 0.6]), ("BGR", [0.6, 0.4, 0.2])):
        teacher = load_teacher(spec, input_size=[24, 32], mean=[0.1, 0.2, 0.3], std=[0.5, 0.25, 2.0],
                               channel_order=order)
        out = teacher(images, mean=STUDENT_MEAN, std=STUDENT_STD)
        expected = (torch.tensor(expect_raw) - torch.tensor([0.1, 0.2, 0.3])) / torch.tensor([0.5, 0.25, 2.0])
        torch.testing.assert_close(out[:, :3], expected.expand(2, 3), atol=1e-5, rtol=1e-5)
        assert out[0, 3:].tolist() == [24.0, 32.0]


def test_export_with_fixed_batch_runs_any_batch(tmp_path):
    spec, net = _export(tmp_path, dynamic=False)
    teacher = load_teacher(spec)
    images = _batch(5)  # program compiled for batch 2: chunks of 2, last one padded
    torch.testing.assert_close(teacher(images, mean=STUDENT_MEAN, std=STUDENT_STD), _reference(net, images),
                               atol=1e-4, rtol=1e-4)


def test_output_width_mismatch_is_a_clear_error(tmp_path):
    spec, _ = _torchscript(tmp_path)
    teacher = load_teacher(spec, task="attributes", num_outputs=None)
    # The YAML says 5 outputs: a label file with 8 attributes cannot use this teacher.
    with pytest.raises(TeacherOutputError, match=r"num_outputs=5.*needs 8"):
        teacher.expect_outputs(8, "labels.csv (8 attributes)")
    (tmp_path / "teacher.yaml").write_text(yaml.safe_dump({k: v for k, v in TEACHER_CFG.items() if k != "num_outputs"}))
    teacher = load_teacher(spec, task="attributes")
    teacher.expect_outputs(8, "labels.csv (8 attributes)")
    with pytest.raises(TeacherOutputError) as err:
        teacher(_batch(2), mean=STUDENT_MEAN, std=STUDENT_STD)
    msg = str(err.value)
    assert "outputs 5 values per image but 8 are expected" in msg and "labels.csv" in msg and "teacher.pt" in msg


def test_output_rank_and_multi_output_errors(tmp_path, monkeypatch):
    body = """
        import torch
        from torch import nn

        class Two(nn.Module):
            def forward(self, x):
                return x[:, :, :4, :4], x.mean((2, 3))

        def make():
            return Two()
    """
    spec, _ = _module(tmp_path, monkeypatch, body)
    spec = spec.replace("make_teacher", "make")
    kw = {"input_size": 8, "mean": [0.5] * 3, "std": [0.5] * 3}
    with pytest.raises(TeacherOutputError, match="output_index"):
        load_teacher(spec, **kw)(_batch(2))
    with pytest.raises(TeacherOutputError, match=r"\[batch, outputs\]"):
        load_teacher(spec, config={"output_index": 0}, **kw)(_batch(2))
    assert load_teacher(spec, config={"output_index": 1}, **kw)(_batch(2)).shape == (2, 3)


def test_probabilities_declared_but_logits_produced(tmp_path):
    spec, _ = _torchscript(tmp_path)
    with torch.no_grad():
        out = load_teacher(spec)(_batch(4) * 30, mean=STUDENT_MEAN, std=STUDENT_STD)
    assert (out < 0).any()
    with pytest.raises(TeacherOutputError, match="probabilities"):
        load_teacher(spec, output="probabilities")(_batch(4) * 30, mean=STUDENT_MEAN, std=STUDENT_STD)


def test_missing_input_declaration_names_the_flags(tmp_path):
    spec, _ = _torchscript(tmp_path)
    (tmp_path / "teacher.yaml").unlink()
    with pytest.raises(ValueError, match="--teacher-input-size"):
        load_teacher(spec)
    t = load_teacher(spec, input_size=40, mean=[0.5, 0.4, 0.3], std=[0.25, 0.2, 0.3])
    assert t.input_size == (40, 40)


def test_config_precedence_and_validation(tmp_path):
    spec, _ = _torchscript(tmp_path)
    assert sidecar_config_path(tmp_path / "teacher.pt") == tmp_path / "teacher.yaml"
    other = tmp_path / "other.yaml"
    _write_yaml(other, {"input_size": [30, 36]})
    t = load_teacher(spec, config=other)
    assert t.input_size == (30, 36) and t.config.mean == (0.5, 0.4, 0.3)  # rest from the sidecar
    assert load_teacher(spec, config=other, input_size=44).input_size == (44, 44)  # flags win
    _write_yaml(other, {"input_sise": 30})
    with pytest.raises(ValueError, match=r"other.yaml.*input_sise"):
        load_teacher(spec, config=other)
    with pytest.raises(ValueError, match="std"):
        TeacherConfig.from_mapping({"std": [1, 0, 1]}, "x.yaml")
    with pytest.raises(FileNotFoundError):
        load_teacher(f"onnx:{tmp_path / 'missing.onnx'}")


def test_onnx_fixed_input_size_conflict(tmp_path):
    spec, _ = _onnx(tmp_path)
    with pytest.raises(ValueError, match="fixed input of 40x40"):
        load_teacher(spec, input_size=64, mean=[0.5] * 3, std=[0.5] * 3)


def test_teacher_never_trains(tmp_path, monkeypatch):
    spec, net = _module(tmp_path, monkeypatch)
    teacher = load_teacher(spec)
    assert not teacher.module.training  # the factory returned it in train mode
    before = {k: v.clone() for k, v in teacher.module.state_dict().items()}
    teacher(_batch(4), mean=STUDENT_MEAN, std=STUDENT_STD)
    for k, v in teacher.module.state_dict().items():
        assert torch.equal(v, before[k]), k  # BN statistics untouched
    assert np.isfinite(teacher(_batch(1), mean=STUDENT_MEAN, std=STUDENT_STD).numpy()).all()
