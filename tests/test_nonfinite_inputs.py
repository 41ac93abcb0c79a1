"""Images holding NaN or inf: what the backbone, the detectors and the training engine do with them.

What the code defines (read from it, held here):
* backbone, eval mode: a non-finite pixel spreads through the convolutions of its own image only, so
  that image's outputs are non-finite (nothing masks them) and every other image of the batch gets
  exactly what it gets in a clean batch (BatchNorm uses its running statistics);
* backbone, training mode: BatchNorm's batch statistics carry it into every image of the batch;
* detectors, eval mode: no crash and no NaN in the predictions; a NaN score never passes the score
  threshold, so a fully non-finite image has no detections, and the other images are unaffected;
* detectors, training mode: the losses become NaN, and ``tasks.engine.fit`` stops with
  ``NonFiniteLossError`` (epoch and step named) before writing anything after that step.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from backbone import mobilenet_v1
from datasets.coco import collate_detection
from tasks.checkpoint import load_checkpoint
from tasks.detection.build import build_detector
from tasks.engine import EngineConfig, NonFiniteLossError, fit

pytestmark = pytest.mark.usefixtures("one_thread")

BAD = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}
DETECTORS = ("ssd300", "ssdlite300", "faster_rcnn300")
SIZES = {"ssd300": 128, "ssdlite300": 128, "faster_rcnn300": 96}  # small inputs: well under a second a batch




def _detector(arch: str) -> nn.Module:
    """alpha 0.25 at a small size, few RoIs: the cheap build of tests/test_detection_models.py."""
    torch.manual_seed(0)
    fewer_rois = {} if arch.startswith("ssd") else {"rpn_post_nms_top_n_test": 50, "box_batch_size_per_image": 16}
    return build_detector(arch, 4, alpha=0.25, size=SIZES[arch], **fewer_rois)


# -------------------------------------------------------------------------------------------- backbone


@pytest.mark.parametrize("alpha", [0.25, 0.5])
@pytest.mark.parametrize("bad", list(BAD))
def test_backbone_eval_keeps_a_bad_pixel_inside_its_image(alpha, bad):
    torch.manual_seed(0)
    model = mobilenet_v1(alpha, num_classes=10).eval()
    clean = torch.rand(3, 3, 64, 64)
    poisoned = clean.clone()
    poisoned[1, 0, 20, 30] = BAD[bad]  # one pixel of one channel of the middle image
    with torch.no_grad():
        ref, out = model(clean), model(poisoned)
        maps = model.forward_intermediates(poisoned)
    assert torch.isfinite(ref).all()
    assert not torch.isfinite(out[1]).any()  # propagated to every logit of its image, not hidden
    torch.testing.assert_close(out[[0, 2]], ref[[0, 2]], rtol=0, atol=0)  # the other images: bit for bit
    for info, fmap in zip(model.feature_info, maps):
        assert torch.isfinite(fmap[[0, 2]]).all(), info["name"]
        assert not torch.isfinite(fmap[1]).all(), info["name"]


def test_backbone_training_mode_spreads_a_nan_through_batch_statistics():
    torch.manual_seed(0)
    model = mobilenet_v1(0.25, num_classes=10).train()
    x = torch.rand(3, 3, 64, 64)
    x[1, 0, 20, 30] = float("nan")
    out = model(x)
    # BatchNorm normalises with the batch mean/variance, which the NaN image makes NaN for all images;
    # this is why the engine must check the loss rather than trust the other samples of a batch
    assert not torch.isfinite(out).any(dim=1).any()
    assert not torch.isfinite(model.features.conv0.bn.running_mean).all()


# ------------------------------------------------------------------------------------ detectors, eval


def _well_formed(pred: dict[str, torch.Tensor]) -> int:
    """Check one image's predictions (shapes, dtypes, finite values); returns the number of detections."""
    n = pred["boxes"].shape[0]
    assert pred["boxes"].shape == (n, 4) and pred["scores"].shape == (n,) and pred["labels"].shape == (n,)
    assert pred["labels"].dtype == torch.int64
    assert torch.isfinite(pred["boxes"]).all() and torch.isfinite(pred["scores"]).all()
    return n


@pytest.mark.parametrize("arch", DETECTORS)
@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_detector_eval_on_non_finite_images(arch, bad):
    model = _detector(arch).eval()
    size = SIZES[arch]
    torch.manual_seed(1)
    clean = [torch.rand(3, size, size), torch.rand(3, size, size)]
    patch = [clean[0].clone(), clean[1]]
    patch[0][:, 10:20, 30:40] = BAD[bad]
    full = [torch.full_like(clean[0], BAD[bad]), clean[1]]
    with torch.no_grad():
        ref = model(clean)
        outs = {"patch": model(patch), "full": model(full), "alone": model(full[:1])}
    assert _well_formed(ref[1]) > 0  # random weights and a 0.01 threshold: the clean image has detections
    for name, out in outs.items():
        assert len(out) == (1 if name == "alone" else 2), name
        counts = [_well_formed(p) for p in out]
        if name != "patch":
            assert counts[0] == 0, name  # every score of that image is NaN and fails the threshold
        if name != "alone":
            for key in ("boxes", "scores", "labels"):  # the clean image of the batch is untouched
                torch.testing.assert_close(out[1][key], ref[1][key], msg=f"{name} {key}")


# ---------------------------------------------------------------------------------- detectors, training


class TinyDetectionSet(Dataset):
    """Four random images with one box each; ``poison`` turns image ``bad_index`` into NaN pixels."""

    def __init__(self, size: int, bad_index: int = 2) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = [torch.rand(3, size, size, generator=g) for _ in range(4)]
        s = float(size)
        box = torch.tensor([[0.1 * s, 0.2 * s, 0.6 * s, 0.7 * s]])
        self.targets = [{"boxes": box, "labels": torch.tensor([1 + i % 3])} for i in range(4)]
        self.bad_index = bad_index
        self.poisoned = False

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        img = self.images[i]
        if self.poisoned and i == self.bad_index:
            img = torch.full_like(img, float("nan"))
        return img, self.targets[i]


def _detection_loss(model: nn.Module, batch, device: torch.device) -> dict[str, torch.Tensor]:
    images, targets = batch
    return model([im.to(device) for im in images], [{k: v.to(device) for k, v in t.items()} for t in targets])


def _files(out: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir() if p.is_file()}


@pytest.mark.parametrize("arch", DETECTORS)
def test_fit_stops_on_a_nan_image_and_keeps_the_last_good_checkpoint(tmp_path, arch):
    data = TinyDetectionSet(SIZES[arch])
    cfg = EngineConfig(epochs=1, lr=1e-3, weight_decay=0.0)
    kw = dict(batch_size=4, output_dir=tmp_path, loss_fn=_detection_loss, collate_fn=collate_detection)
    fit(_detector(arch), data, cfg=cfg, **kw)  # one clean epoch of one step: last.pt and best.pt
    before = _files(tmp_path)
    assert {"last.pt", "best.pt", "metrics.jsonl"} <= set(before)

    data.poisoned = True  # the second epoch's only batch holds the NaN image
    cfg2 = EngineConfig(epochs=3, lr=1e-3, weight_decay=0.0)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at epoch 2, step 1: loss=nan") as info:
        fit(_detector(arch), data, cfg=cfg2, resume=tmp_path / "last.pt", **kw)
    err = info.value
    assert (err.epoch, err.step, err.what) == (2, 1, "loss") and math.isnan(err.losses["loss"])

    after = _files(tmp_path)
    for name in ("last.pt", "best.pt"):  # same bytes, never even rewritten
        assert after[name] == before[name], f"{name} was written after the NaN"
    # resuming rewrites metrics.jsonl up to the resumed epoch; no record may follow it
    assert after["metrics.jsonl"][0] == before["metrics.jsonl"][0]
    assert [json.loads(line)["epoch"] for line in after["metrics.jsonl"][0].splitlines()] == [1]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    ckpt = load_checkpoint(tmp_path / "last.pt")  # weights_only=True inside
    assert ckpt["epoch"] == 1 and ckpt["step"] == 1
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())
