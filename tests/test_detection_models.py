"""Detection models of Table 13: SSD / SSDLite 300 and Faster R-CNN 300 / 600 on MobileNet backbones."""
import math

import pytest
import torch
from torchvision.ops import box_iou

from backbone import mobilenet_v1
from tasks.detection.anchors import TFSSDAnchorGenerator, rpn_anchor_sizes, ssd_scales
from tasks.detection.build import ARCHS, build_detector
from tasks.detection.common import IMAGENET_MEAN
from tasks.detection.profile import profile_detector
from tasks.detection.ssd import extra_depths_for

pytestmark = pytest.mark.usefixtures("one_thread")

SSD_ARCHS = ["ssd300", "ssdlite300"]
FRCNN_ARCHS = ["faster_rcnn300", "faster_rcnn600"]
SSD_LOSSES = {"bbox_regression", "classification"}
FRCNN_LOSSES = {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}




def small(arch, num_classes=4, **kw):
    """alpha 0.25 at a small input size: seconds per test on a CPU."""
    size = 128 if arch in SSD_ARCHS else 96
    kw.setdefault("alpha", 0.25)
    return build_detector(arch, num_classes, size=size, **kw)


def batch(h, w, with_negative=True):
    torch.manual_seed(0)
    images = [torch.rand(3, h, w), torch.rand(3, h, w)]
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, w * 0.6, h * 0.7], [w * 0.5, h * 0.1, w - 2.0, h * 0.5]]),
         "labels": torch.tensor([1, 3])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    if not with_negative:
        targets[1] = {"boxes": torch.tensor([[10.0, 10.0, w * 0.5, h * 0.5]]), "labels": torch.tensor([2])}
    return images, targets


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------- building


@pytest.mark.parametrize("arch", list(ARCHS))
def test_build_alpha_1_and_half(arch):
    full = build_detector(arch, 91)
    half = build_detector(arch, 91, alpha=0.5)
    # Table 13: SSD 300 6.8 M, Faster R-CNN 6.1 M parameters (MobileNet, COCO's 91 classes).
    paper = {"ssd300": 6.8, "faster_rcnn300": 6.1, "faster_rcnn600": 6.1}.get(arch)
    if paper is not None:
        assert round(n_params(full) / 1e6, 1) == paper
    assert 0 < n_params(half) < 0.6 * n_params(full)
    assert full.build_args["alpha"] == 1.0 and half.build_args["alpha"] == 0.5


def test_ssd_feature_maps_follow_feature_info_and_alpha():
    for alpha, c16, c32 in [(1.0, 512, 1024), (0.5, 256, 512)]:
        model = build_detector("ssd300", 5, alpha=alpha)
        assert model.backbone.out_channels == [c16, c32, *extra_depths_for(alpha)]
        with torch.no_grad():
            maps = model.eval().backbone(torch.zeros(1, 3, 300, 300))
        assert [m.shape[1] for m in maps.values()] == model.backbone.out_channels
        assert [m.shape[-1] for m in maps.values()] == [19, 10, 5, 3, 2, 1]


def test_extra_depths_rule():
    assert extra_depths_for(1.0) == (512, 256, 256, 128)
    assert extra_depths_for(0.5) == (256, 128, 128, 64)
    assert extra_depths_for(0.1) == (51, 25, 25, 16)  # TF's min_depth 16


@pytest.mark.parametrize("arch,name", [("ssd300", "mobilenetv2_100"), ("ssdlite300", "mobilenetv2_100"),
                                       ("faster_rcnn300", "mobilenetv3_large_100")])
def test_timm_backbones_train_and_eval(arch, name):
    size = 128 if arch in SSD_ARCHS else 96
    fewer_rois = {} if arch in SSD_ARCHS else {"rpn_post_nms_top_n_test": 50, "box_batch_size_per_image": 16}
    model = build_detector(arch, 4, backbone=name, size=size, **fewer_rois)
    assert model.transform.image_mean == list(IMAGENET_MEAN)  # from timm's pretrained config
    images, targets = batch(size, size)
    losses = model.train()(images, targets)
    assert set(losses) == (SSD_LOSSES if arch in SSD_ARCHS else FRCNN_LOSSES)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.parameters())  # no unused layers (timm's conv_head is dropped)
    with torch.no_grad():
        out = model.eval()(images)
    assert len(out) == 2 and out[0]["boxes"].shape[1] == 4


# ----------------------------------------------------------------------------------------------- training


@pytest.mark.parametrize("arch", list(ARCHS))
def test_training_losses_with_a_negative_image(arch):
    model = small(arch).train()
    size = model.build_args["size"]
    images, targets = batch(size, size + 16)
    losses = model(images, targets)
    assert set(losses) == (SSD_LOSSES if arch in SSD_ARCHS else FRCNN_LOSSES)
    for k, v in losses.items():
        assert v.dim() == 0 and torch.isfinite(v), k
    assert sum(losses.values()) > 0


@pytest.mark.parametrize("arch", list(ARCHS))
def test_every_parameter_gets_a_gradient(arch):
    model = small(arch).train()
    size = model.build_args["size"]
    images, targets = batch(size, size, with_negative=False)
    sum(model(images, targets).values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    # The backbone, the extras / RPN and the predictors all learn from this batch.
    for prefix in ("backbone.", "head." if arch in SSD_ARCHS else "rpn.", "" if arch in SSD_ARCHS else "roi_heads."):
        grads = [p.grad.abs().sum() for n, p in model.named_parameters() if n.startswith(prefix)]
        assert grads and sum(grads) > 0, prefix


def test_ssd_all_negative_batch():
    images, _ = batch(128, 128)
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2
    tf = small("ssd300").train()(images, empty)  # TF's min_negatives_per_image = 0: nothing to learn
    assert tf["classification"].item() == 0.0 and tf["bbox_regression"].item() == 0.0
    mined = small("ssd300", min_negatives_per_image=3).train()(images, empty)
    assert mined["classification"].item() > 0 and mined["bbox_regression"].item() == 0.0
    mined["classification"].backward()  # negatives alone still train the class head


def test_ssd_hard_negative_mining_is_3_to_1():
    model = small("ssd300", num_classes=3)
    n = 20
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]]).repeat(n, 1)
    matched = torch.full((n,), -1)
    matched[[0, 1]] = 0  # two positives for one box
    logits = torch.zeros(1, n, 3)
    logits[0, 2:, 1] = torch.linspace(0.0, 5.0, n - 2)  # negatives: increasing loss
    out = model.compute_loss(
        [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([2])}],
        {"bbox_regression": torch.zeros(1, n, 4), "cls_logits": logits},
        [anchors],
        [matched],
    )
    ce = torch.nn.functional.cross_entropy(logits[0], torch.tensor([2, 2] + [0] * (n - 2)), reduction="none")
    expected = (ce[:2].sum() + ce[2:].topk(6).values.sum()) / 2  # 3 negatives per positive, hardest first
    assert torch.allclose(out["classification"], expected)
    assert out["bbox_regression"].item() == 0.0  # anchors equal the box: zero codes


def test_ssd_overfits_two_images():
    torch.manual_seed(0)
    model = build_detector("ssd300", 3, alpha=0.25, size=128)
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 128, 128, generator=g) * 0.2 for _ in range(2)]
    red, blue = torch.tensor([0.9, 0.2, 0.2])[:, None, None], torch.tensor([0.2, 0.2, 0.9])[:, None, None]
    images[0][:, 20:70, 30:100] = red
    images[1][:, 60:120, 10:50] = blue
    images[1][:, 10:40, 70:120] = red
    targets = [
        {"boxes": torch.tensor([[30.0, 20.0, 100.0, 70.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[10.0, 60.0, 50.0, 120.0], [70.0, 10.0, 120.0, 40.0]]), "labels": torch.tensor([2, 1])},
    ]
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    history = []
    for _ in range(100):
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert history[-1] < history[0] / 10  # ~16 -> 0.25..0.65 over seeds 0-9
    with torch.no_grad():
        detections = model.eval()(images)
    for det, tgt in zip(detections, targets):
        iou = box_iou(det["boxes"][:1], tgt["boxes"])[0]
        j = int(iou.argmax())
        assert iou[j] > 0.5 and det["labels"][0] == tgt["labels"][j]
        for box, label in zip(tgt["boxes"], tgt["labels"]):  # every object is found among the top 5
            top = det["labels"][:5] == label
            assert (box_iou(box[None], det["boxes"][:5][top]) > 0.5).any()


# ----------------------------------------------------------------------------------------------- inference


@pytest.mark.parametrize("arch", list(ARCHS))
def test_eval_structure_and_boxes_inside_the_input_image(arch):
    model = small(arch, score_thresh=0.0).eval()
    size = model.build_args["size"]
    shapes = [(size, size + 40), (size - 8, size)]  # SSD rescales back; FRCNN's resize stays in its limits
    with torch.no_grad():
        out = model([torch.rand(3, h, w) for h, w in shapes])
    assert len(out) == 2
    for det, (h, w) in zip(out, shapes):
        assert set(det) == {"boxes", "scores", "labels"}
        n = det["boxes"].shape[0]
        assert 0 < n <= 100 and det["boxes"].shape == (n, 4) and det["scores"].shape == det["labels"].shape == (n,)
        assert det["labels"].dtype == torch.int64 and det["labels"].min() >= 1 and det["labels"].max() < 4
        b = det["boxes"]
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
        assert (b[:, 2:] >= b[:, :2]).all()
        assert (det["scores"][:-1] >= det["scores"][1:]).all()
    if arch in SSD_ARCHS:
        assert all(d["boxes"].shape[0] == 100 for d in out)  # the limit binds with score_thresh 0


def test_model_transform_does_not_resize_again():
    ssd = small("ssd300").eval()
    x = torch.rand(3, 128, 128)
    images, _ = ssd.transform([x])
    mean = torch.tensor(ssd.transform.image_mean)[:, None, None]
    std = torch.tensor(ssd.transform.image_std)[:, None, None]
    assert torch.allclose(images.tensors[0], (x - mean) / std, atol=1e-6)
    frcnn = build_detector("faster_rcnn300", 4, alpha=0.25)
    assert frcnn.input_spec == {"mode": "shorter_side", "min_size": 300, "max_size": 500}
    images, _ = frcnn.eval().transform([torch.rand(3, 300, 400), torch.rand(3, 500, 300)])
    assert images.image_sizes == [(300, 400), (500, 300)]
    assert images.tensors.shape[-2] % 16 == 0 and images.tensors.shape[-1] % 16 == 0
    assert build_detector("faster_rcnn600", 4, alpha=0.25).input_spec["max_size"] == 1000



def test_skipping_the_same_size_resize_changes_nothing():
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    torch.manual_seed(0)
    ssd = small("ssd300")
    t = ssd.transform
    reference = GeneralizedRCNNTransform(t.min_size[0], t.max_size, t.image_mean, t.image_std, size_divisible=1,
                                         fixed_size=t.fixed_size)
    size = t.fixed_size[0]
    images = [torch.rand(3, size, size) for _ in range(2)]
    assert t.resize(images[0])[0] is images[0]  # no interpolation at all
    targets = [{"boxes": torch.tensor([[5.0, 6.0, 60.0, 70.0]]), "labels": torch.tensor([1])} for _ in range(2)]
    outputs = {}
    state = {k: v.clone() for k, v in ssd.state_dict().items()}  # training updates the BN statistics
    for name, transform in (("ours", t), ("torchvision", reference)):
        ssd.load_state_dict(state)
        ssd.transform = transform
        ssd.eval()
        with torch.no_grad():
            dets = ssd(images)
        ssd.train()
        torch.manual_seed(1)
        losses = ssd(images, [dict(x) for x in targets])
        outputs[name] = (dets, {k: v.item() for k, v in losses.items()})
    ssd.transform = t
    (ours, ours_loss), (ref, ref_loss) = outputs["ours"], outputs["torchvision"]
    assert ours_loss == ref_loss
    for a, b in zip(ours, ref):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(a[key], b[key])
    # another size is still resized (and the boxes follow)
    resized, tgt = t([torch.rand(3, size + 20, size - 10)], [dict(targets[0])])
    assert resized.tensors.shape[-2:] == (size, size) and not torch.equal(tgt[0]["boxes"], targets[0]["boxes"])


# ----------------------------------------------------------------------------------------------- anchors


def test_ssd_anchor_config():
    gen = TFSSDAnchorGenerator()
    assert gen.num_anchors_per_location() == [3, 6, 6, 6, 6, 6]
    assert gen.scales[:6] == pytest.approx([0.2, 0.35, 0.5, 0.65, 0.8, 0.95])
    r2 = math.sqrt(2)
    lowest = [v for wh in gen.box_shapes(0) for v in wh]
    assert lowest == pytest.approx([0.1, 0.1, 0.2 * r2, 0.2 / r2, 0.2 / r2, 0.2 * r2])
    shapes = gen.box_shapes(5)
    assert shapes[0] == pytest.approx((0.95, 0.95)) and shapes[-1] == pytest.approx((math.sqrt(0.95), math.sqrt(0.95)))
    assert shapes[3] == pytest.approx((0.95 * math.sqrt(3), 0.95 / math.sqrt(3)))
    assert ssd_scales(1, 0.2, 0.95) == [0.2, 1.0]
    with pytest.raises(ValueError):
        TFSSDAnchorGenerator(min_scale=0.9, max_scale=0.2)


@pytest.mark.parametrize("size", [128, 160, 192, 300])
def test_ssd_anchors_follow_the_feature_maps(size):
    model = build_detector("ssd300", 4, alpha=0.25, size=size)
    x = torch.zeros(1, 3, size, size)
    with torch.no_grad():
        maps = list(model.eval().backbone(x).values())
        images, _ = model.transform([x[0]])
        anchors = model.anchor_generator(images, maps)[0]
        head = model.head(maps)
    per_loc = model.anchor_generator.num_anchors_per_location()
    assert anchors.shape[0] == sum(m.shape[-2] * m.shape[-1] * a for m, a in zip(maps, per_loc))
    assert head["cls_logits"].shape[1] == anchors.shape[0] == head["bbox_regression"].shape[1]
    if size == 300:
        assert anchors.shape[0] == 1917  # TF ssd_mobilenet_v1's anchor count
    # First anchor: centre of the top-left cell of the stride-16 map, the 0.1-scale square.
    cell = size / maps[0].shape[-1]
    assert anchors[0].tolist() == pytest.approx([cell / 2 - 0.05 * size, cell / 2 - 0.05 * size,
                                                 cell / 2 + 0.05 * size, cell / 2 + 0.05 * size], abs=1e-3)


def test_rpn_anchors():
    assert rpn_anchor_sizes(300) == (32, 64, 128, 256)
    assert rpn_anchor_sizes(600) == (64, 128, 256, 512)
    model = build_detector("faster_rcnn300", 4, alpha=0.25)
    assert model.rpn.anchor_generator.num_anchors_per_location() == [12]
    assert model.rpn.anchor_generator.sizes == ((32, 64, 128, 256),)
    assert model.rpn._post_nms_top_n["testing"] == 300
    custom = build_detector("faster_rcnn300", 4, alpha=0.25, anchor_sizes=[16, 32])
    assert custom.rpn.anchor_generator.sizes == ((16, 32),)
    assert custom.rpn.head.cls_logits.out_channels == 6


# ----------------------------------------------------------------------------------------------- API


def test_rebuild_from_build_args_and_load_state():
    model = small("ssdlite300", aspect_ratios=[1, 2, 0.5], extra_depths=[64, 32, 32, 16])
    args = dict(model.build_args)
    assert args == {"arch": "ssdlite300", "num_classes": 4, "backbone": "mobilenet_v1", "alpha": 0.25,
                    "size": 128, "aspect_ratios": [1, 2, 0.5], "extra_depths": [64, 32, 32, 16]}
    again = build_detector(**args)
    again.load_state_dict(model.state_dict())
    assert again.anchor_generator.num_anchors_per_location() == [3, 4, 4, 4, 4, 4]
    x = [torch.rand(3, 128, 128)]
    with torch.no_grad():
        a, b = model.eval()(x)[0], again.eval()(x)[0]
    assert torch.equal(a["boxes"], b["boxes"])


def test_pretrained_backbone_from_state_dict(tmp_path):
    torch.manual_seed(1)
    source = mobilenet_v1(0.25)
    path = tmp_path / "mnv1.pth"
    torch.save(source.state_dict(), path)
    for arch in ("ssd300", "faster_rcnn300"):
        model = small(arch, pretrained_backbone=str(path))
        assert "pretrained_backbone" not in model.build_args
        ours = model.backbone.trunk if arch == "ssd300" else model.backbone.body
        rest = model.backbone.rest if arch == "ssd300" else model.roi_heads.box_head.body
        got = {**{k: v for k, v in ours.state_dict().items()}, **rest.state_dict()}
        want = {k[len("features."):]: v for k, v in source.state_dict().items() if k.startswith("features.")}
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want)
    with pytest.raises(ValueError):
        small("ssd300", alpha=0.5, pretrained_backbone=str(path))  # another width


def test_bad_input_raises():
    with pytest.raises(ValueError, match="unknown arch"):
        build_detector("yolo", 4)
    with pytest.raises(ValueError, match="num_classes"):
        build_detector("ssd300", 1)
    with pytest.raises(ValueError, match="unknown key"):
        build_detector("ssd300", 4, anchor_sizes=[32])  # a Faster R-CNN option
    with pytest.raises(ValueError, match="alpha"):
        build_detector("ssd300", 4, backbone="mobilenetv2_100", alpha=0.5)
    with pytest.raises(ValueError, match="size"):
        build_detector("ssd300", 4, size=16)
    with pytest.raises(ValueError, match="head"):
        build_detector("ssd300", 4, head="conv5x5")
    with pytest.raises(ValueError, match="detections_per_img"):
        build_detector("faster_rcnn300", 4, detections_per_img=0)
    with pytest.raises(ValueError, match="nms_thresh"):
        build_detector("ssd300", 4, nms_thresh=1.5)
    model = small("ssd300").train()
    images, targets = batch(128, 128, with_negative=False)
    for bad in (
        {"boxes": torch.tensor([[50.0, 10.0, 20.0, 40.0]]), "labels": torch.tensor([1])},  # x2 < x1
        {"boxes": torch.tensor([[5.0, 10.0, 20.0, 40.0]]), "labels": torch.tensor([0])},  # background label
        {"boxes": torch.tensor([[5.0, 10.0, 20.0, 40.0]]), "labels": torch.tensor([4])},  # out of range
        {"boxes": torch.tensor([[5.0, 10.0, 20.0, float("nan")]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([5.0, 10.0, 20.0, 40.0]), "labels": torch.tensor([1])},  # not [N, 4]
    ):
        with pytest.raises(ValueError, match=r"targets\[1\]"):
            model(images, [targets[0], bad])
    with pytest.raises(ValueError, match="targets"):
        model(images)
    with pytest.raises(TypeError):
        model([(images[0] * 255).to(torch.uint8)], targets[:1])


# ----------------------------------------------------------------------------------------------- profile


def test_profile_ssd300_matches_table13():
    r = profile_detector(build_detector("ssd300", 91), (300, 300))
    assert round(r.mult_adds / 1e9, 1) == 1.2 and round(r.params_total / 1e6, 1) == 6.8


def test_profile_faster_rcnn_second_stage_runs_300_rois():
    model = build_detector("faster_rcnn300", 91, alpha=0.25, size=96)
    r = profile_detector(model, (96, 96))
    assert r.rois == 300
    c, c2 = 128, 256  # conv11 / conv13 channels at alpha 0.25; conv12 maps 14x14 -> 7x7
    per_roi = 49 * (9 * c + c * c2 + 9 * c2 + c2 * c2)
    assert r.parts["2nd stage (conv12-13) x RoIs"][0] == 300 * per_roi
    assert r.parts["box + class predictor x RoIs"][0] == 300 * c2 * 91 * 5
    assert model.rpn.nms_thresh == 0.7  # restored after the pass
