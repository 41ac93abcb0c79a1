"""Mult-Adds and parameters of the detectors beside Table 13 (Section 4.6) of the MobileNets paper.

``python -m tasks.detection.profile`` builds each detector (MobileNet v1, alpha 1, 91 classes: TF's 90 COCO
ids + background, as torchvision counts them), runs one image through it in eval mode and counts conv and
FC multiply-adds with ``backbone.profile.count_mult_adds`` (forward hooks; BN, activations, pooling, RoIAlign,
NMS are free). Faster R-CNN is forced to exactly 300 proposals (the paper's "300 RPN proposal boxes per
image"): an untrained RPN's NMS could otherwise leave fewer. The notes printed at the end derive, from
these counts, what the paper must have measured.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from tqdm import tqdm

from backbone.profile import count_mult_adds

from .build import build_detector
from tasks.cli import run_cli
from tasks.distributed import pick_device

__all__ = ["DetectorProfile", "profile_detector", "PAPER_TABLE13", "main"]

# arch -> (billion Mult-Adds, million parameters) as printed for MobileNet in Table 13.
PAPER_TABLE13: dict[str, tuple[float, float]] = {
    "ssd300": (1.2, 6.8),
    "faster_rcnn300": (25.2, 6.1),
    "faster_rcnn600": (30.5, 6.1),
}
PROPOSALS = 300

# Parts of each detector, by module-name prefix (the first match wins).
PARTS = {
    "ssd": [
        ("backbone to stride 16 (conv0-11)", "backbone.trunk."),
        ("backbone stride 32 (conv12-13)", "backbone.rest."),
        ("extra layers", "backbone.extras."),
        ("box + class heads", "head."),
    ],
    "faster_rcnn": [
        ("backbone to stride 16 (conv0-11)", "backbone.body."),
        ("RPN head", "rpn.head."),
        ("2nd stage (conv12-13) x RoIs", "roi_heads.box_head."),
        ("box + class predictor x RoIs", "roi_heads.box_predictor."),
    ],
}


@dataclass
class DetectorProfile:
    """Counts for one image. ``params_weights``: conv + FC weights (the paper's convention for Tables 2-9);
    ``params_total``: every parameter (BN and biases included). ``parts``: name -> (mult-adds, params_total).
    ``rois``: RoIs through the second stage (Faster R-CNN only)."""

    arch: str
    image_hw: tuple[int, int]
    mult_adds: int
    params_weights: int
    params_total: int
    parts: dict[str, tuple[int, int]]
    rois: int | None = None


def _family(model: nn.Module) -> str:
    return "faster_rcnn" if hasattr(model, "rpn") else "ssd"


def profile_detector(model: nn.Module, image_hw: tuple[int, int], *, proposals: int = PROPOSALS) -> DetectorProfile:
    """Count one ``image_hw`` image through ``model`` (eval mode, no grad; its mode is restored).

    For Faster R-CNN, RPN NMS is switched off during the pass so that exactly ``proposals`` boxes reach the
    second stage (restored afterwards).
    """
    family = _family(model)
    device = next(model.parameters()).device
    image = torch.rand(3, *image_hw, device=device)
    rois: list[int] = []
    saved = None
    hook = None
    if family == "faster_rcnn":
        rpn = model.rpn
        saved = (rpn.nms_thresh, dict(rpn._post_nms_top_n), dict(rpn._pre_nms_top_n))
        rpn.nms_thresh = 1.0  # IoU never exceeds 1: nothing is suppressed
        rpn._post_nms_top_n["testing"] = proposals
        rpn._pre_nms_top_n["testing"] = max(proposals, rpn._pre_nms_top_n["testing"])
        hook = model.roi_heads.box_head.register_forward_hook(lambda m, a, o: rois.append(a[0].shape[0]))
    try:
        result = count_mult_adds(model, [image])
    finally:
        if hook is not None:
            hook.remove()
        if saved is not None:
            model.rpn.nms_thresh, post, pre = saved
            model.rpn._post_nms_top_n.update(post)
            model.rpn._pre_nms_top_n.update(pre)

    parts: dict[str, tuple[int, int]] = {}
    for label, prefix in PARTS[family]:
        ma = sum(v for k, v in result.per_module.items() if k.startswith(prefix))
        params = sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefix))
        parts[label] = (ma, params)
    return DetectorProfile(
        arch=getattr(model, "arch", family),
        image_hw=tuple(image_hw),
        mult_adds=result.mult_adds,
        params_weights=result.params,
        params_total=result.params_total,
        parts=parts,
        rois=rois[0] if rois else None,
    )


def _b(x: int) -> str:
    return f"{x / 1e9:.2f}"


def _m(x: int) -> str:
    return f"{x / 1e6:.2f}"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    fmt = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [fmt(head), fmt(["-" * w for w in widths]), *[fmt(r) for r in rows]]


def _notes(p: dict[tuple[str, tuple[int, int]], DetectorProfile], ssd_model: nn.Module) -> list[str]:
    """Derive the paper's measurement conditions from our counts (see the module docstring)."""
    out = []
    ssd = p[("ssd300", (300, 300))]
    heads = ssd.parts["box + class heads"][0]
    num_classes = ssd_model.num_classes
    cls_params = sum(q.numel() for n, q in ssd_model.named_parameters() if n.startswith("head.classification_head"))
    with_81 = ssd.params_total - cls_params // num_classes * (num_classes - 81)
    out.append(
        f"SSD 300: {_b(ssd.mult_adds)} B / {_m(ssd.params_total)} M vs 1.2 B / 6.8 M. The match needs TF's 1x1 "
        f"box/class convs (heads: {heads / 1e6:.0f} M Mult-Adds); 3x3 heads would cost 9x that, "
        f"{_b(ssd.mult_adds + 8 * heads)} B in all. Params: {_m(ssd.params_total)} M with BN and biases, "
        f"{_m(ssd.params_weights)} M conv/FC weights only; with 81 classes it would be {_m(with_81)} M, so the paper "
        f"counted TF's 90 classes + background ({num_classes} here)."
    )
    f3, f6 = p[("faster_rcnn300", (300, 300))], p[("faster_rcnn600", (600, 600))]
    per_roi = sum(f3.parts[k][0] for k in ("2nd stage (conv12-13) x RoIs", "box + class predictor x RoIs")) / f3.rois
    first3, first6 = f3.mult_adds - per_roi * f3.rois, f6.mult_adds - per_roi * f6.rois
    out.append(
        f"Faster R-CNN: the second stage costs {per_roi / 1e6:.1f} M per RoI (conv12 on a 14x14 crop -> 7x7, conv13, "
        f"predictor), x {PROPOSALS} proposals = {per_roi * PROPOSALS / 1e9:.2f} B, the bulk of both Table 13 rows; "
        f"the first stage (conv0-conv11 + RPN 3x3x512 conv) costs {first3 / 1e9:.2f} B at 300x300 and "
        f"{first6 / 1e9:.2f} B at 600x600."
    )
    # Paper: 25.2 = F300 + R, 30.5 = F600 + R with F600 = 4 F300 for the same aspect ratio.
    f300_paper = (30.5 - 25.2) / 3
    r_paper = 25.2 - f300_paper
    out.append(
        "Solving the paper's two rows (first stage x4 from 300 to 600 px): "
        f"first stage {f300_paper:.2f} B at 300 px, second stage {r_paper:.2f} B = {r_paper * 1e3 / PROPOSALS:.1f} M per proposal. Ours: {first3 / 1e9:.2f} B and "
        f"{per_roi / 1e6:.1f} M. So Table 13 is reproduced by square 300x300 / 600x600 inputs, 300 proposals, "
        "14x14 crops and no pooling before conv12 (a 2x2 max pool first, as TF does for its ResNet/Inception "
        "Faster R-CNNs, would leave 4x4 instead of 7x7 maps after conv12: 16/49 of the second stage)."
    )
    for key in (("faster_rcnn300", (300, 400)), ("faster_rcnn600", (600, 800))):
        if key in p:
            q = p[key]
            out.append(
                f"{key[0]} on a typical 4:3 COCO image ({key[1][0]}x{key[1][1]}): {_b(q.mult_adds)} B; only the first "
                "stage grows with the image."
            )
    out.append(
        f"Faster R-CNN params: {_m(f3.params_total)} M vs 6.1 M: backbone (3.2 M without its FC) + RPN 3x3 conv "
        f"512->512 (2.36 M) + objectness/box convs + predictor 1024 x (91 + 91*4). TF predicts boxes for the 90 "
        f"classes only (4096 fewer weights); the count does not depend on the input or the proposals."
    )
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tasks.detection.profile", description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="mobilenet_v1")
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--num-classes", type=int, default=91, help="including background (default 91, see the notes)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.device = pick_device(args.device)
    if args.num_classes < 2:
        raise ValueError(f"--num-classes must be >= 2, got {args.num_classes}")
    runs = [
        ("ssd300", (300, 300)),
        ("ssdlite300", (300, 300)),
        ("faster_rcnn300", (300, 300)),
        ("faster_rcnn300", (300, 400)),
        ("faster_rcnn600", (600, 600)),
        ("faster_rcnn600", (600, 800)),
    ]
    results: dict[tuple[str, tuple[int, int]], DetectorProfile] = {}
    models: dict[str, nn.Module] = {}
    for arch, hw in tqdm(runs, desc="profiling", leave=False):
        if arch not in models:
            model = build_detector(arch, args.num_classes, backbone=args.backbone, alpha=args.alpha)
            models[arch] = model.to(args.device)
        results[(arch, hw)] = profile_detector(models[arch], hw)

    print(f"Table 13 (MobileNet rows) vs ours: backbone {args.backbone}, alpha {args.alpha:g}, "
          f"{args.num_classes} classes incl. background, 1 image, eval mode")
    rows = []
    for (arch, hw), r in results.items():
        paper = PAPER_TABLE13.get(arch)
        rows.append([
            arch, f"{hw[0]}x{hw[1]}", _b(r.mult_adds), f"{paper[0]}" if paper else "-",
            _m(r.params_total), _m(r.params_weights), f"{paper[1]}" if paper else "-",
            str(r.rois) if r.rois is not None else "-",
        ])
    print("\n".join(_table(
        ["arch", "input", "Mult-Adds (B)", "paper", "params (M)", "weights only", "paper", "RoIs"], rows)))
    print()
    for (arch, hw), r in results.items():
        if hw[0] != hw[1]:
            continue
        print(f"{arch} {hw[0]}x{hw[1]}: " + "; ".join(
            f"{name} {ma / 1e9:.3f} B / {par / 1e6:.2f} M" for name, (ma, par) in r.parts.items()))
    print()
    if args.backbone == "mobilenet_v1" and args.alpha == 1.0 and args.num_classes == 91:
        for line in _notes(results, models["ssd300"]):
            print("- " + line)
    return 0


if __name__ == "__main__":
    run_cli(main)
