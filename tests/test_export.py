"""ONNX export (backbone.export): onnxruntime computes what PyTorch computes."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from backbone import mobilenet_v1
from backbone.export import TOLERANCE, check_onnx, export_onnx, main

ALPHA, RES = 0.25, 128


def realistic(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give a fresh model well-scaled outputs (fresh BN stats at eval make the logits ~1e-14, which would make
    any ONNX comparison pass): random BN affine, BN statistics from a few random batches, a larger FC."""
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.2, 0.2)
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, 3, RES, RES))
        torch.nn.init.normal_(model.classifier.weight, 0.0, 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return realistic(mobilenet_v1(ALPHA, num_classes=10))


def test_export_matches_pytorch(model, tmp_path):
    path = export_onnx(model, tmp_path / "sub" / "m.onnx", RES)
    assert path.is_file() and not list(path.parent.glob(".*tmp"))
    onnx.checker.check_model(str(path))
    assert max(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx")) >= 17
    diff = check_onnx(model, path, RES)
    assert diff <= TOLERANCE
    # the check is not vacuous: outputs are O(1) and a different model is caught
    with torch.no_grad():
        assert model(torch.randn(2, 3, RES, RES)).abs().max() > 0.1
    other = realistic(mobilenet_v1(ALPHA, num_classes=10), seed=1)
    assert check_onnx(other, path, RES) > 1e-2


def test_dynamic_batch(model, tmp_path):
    path = export_onnx(model, tmp_path / "m.onnx", RES, dynamic_batch=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert not isinstance(session.get_inputs()[0].shape[0], int)
    for batch in (1, 3):
        assert check_onnx(model, path, RES, batch=batch) <= TOLERANCE
    fixed = export_onnx(model, tmp_path / "fixed.onnx", RES)
    with pytest.raises(ValueError, match="batch 1"):
        check_onnx(model, fixed, RES, batch=2)


def test_cli_with_weights(model, tmp_path, capsys):
    weights = tmp_path / "w.pth"
    torch.save(model.state_dict(), weights)
    out = tmp_path / "cli.onnx"
    argv = ["--alpha", str(ALPHA), "--resolution", str(RES), "--out", str(out), "--num-classes", "10",
            "--weights", str(weights), "--dynamic-batch"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "max abs diff" in text and "OK" in text and "MiB" in text
    # the exported graph carries the saved weights: it matches the original model, not a fresh one
    assert check_onnx(model, out, RES) <= TOLERANCE
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((2, 3, RES, RES), dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(session.run(None, {"input": x})[0], expected, atol=TOLERANCE, rtol=0)


def test_cli_plain_and_headless(tmp_path, capsys):
    assert main(["--alpha", "0.25", "--resolution", "64", "--out", str(tmp_path / "a.onnx"), "--act", "relu6"]) == 0
    assert "random init" in capsys.readouterr().out
    assert main(["--alpha", "0.25", "--resolution", "64", "--out", str(tmp_path / "h.onnx"), "--num-classes", "0"]) == 0
    session = ort.InferenceSession(str(tmp_path / "h.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_outputs()[0].name == "features" and session.get_outputs()[0].shape == [1, 256]


def test_bad_input(model, tmp_path):
    with pytest.raises(ValueError, match="resolution"):
        export_onnx(model, tmp_path / "m.onnx", 16)
    with pytest.raises(TypeError, match="resolution"):
        export_onnx(model, tmp_path / "m.onnx", 128.0)
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        check_onnx(model, tmp_path / "missing.onnx", RES)
    with pytest.raises(FileNotFoundError):
        main(["--alpha", "0.25", "--resolution", "64", "--out", str(tmp_path / "x.onnx"), "--weights",
              str(tmp_path / "nope.pth")])
    torch.save(mobilenet_v1(0.5, num_classes=10).state_dict(), tmp_path / "w05.pth")
    with pytest.raises(ValueError, match="do not fit"):
        main(["--alpha", "0.25", "--resolution", "64", "--out", str(tmp_path / "x.onnx"), "--num-classes", "10",
              "--weights", str(tmp_path / "w05.pth")])
