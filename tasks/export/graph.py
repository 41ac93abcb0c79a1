"""The exportable graph of any task's network: BN folded, one float32 NCHW input, named outputs.

MobileNets are built to run on small devices (paper, Section 1 and Figures 4-5: accuracy against
Mult-Adds and parameters). Deploying them means one traced graph per checkpoint that ONNX Runtime
runs, fp32 or int8. What each kind of network becomes:

* classifier (attributes, distillation students, fine-grained, geolocation): ``input -> logits [N, D]``
  (geolocation's hierarchical heads: the partitions' logits side by side, as the PyTorch network).
* face embedder: ``input -> embedding [N, E]`` (unit vectors; the ImageNet normalisation stays inside).
* SSD / SSDLite: ``input -> boxes [M, 4], scores [M], labels [M], batch_index [M]``: box decoding and
  NMS are in the graph. torchvision's ``SSD.postprocess_detections`` loops over images and classes in
  Python with data-dependent shapes, so a traced copy would bake in one image's counts. :class:`SSDGraph`
  does the same computation batched: the anchors are constants (the input size is fixed), per-class
  top-k then score threshold, NMS per (image, class), then at most ``detections_per_img`` per image.
  The NMS is :class:`GroupedNMS`, which exports as one ONNX ``NonMaxSuppression`` over the
  (image, class) groups. NMS over every candidate of the batch with per-(image, class) coordinate offsets
  (``torchvision.ops.batched_nms``'s trick) exports too and gave the same detections, but ONNX Runtime's
  NMS then costs candidates x kept: 9 minutes to calibrate a random-weight SSD 300 with 91 classes, where every anchor
  passes the 0.01 threshold. Boxes are xyxy pixels of the input; labels are the contiguous ones
  (``model.json`` maps them to the dataset's category ids).
* Faster R-CNN: ``torchvision``'s own graph (resize, RPN, RoIAlign, per-class NMS) for batch 1, when the
  exporter takes it; otherwise :class:`ExportError` says why.

BatchNorm is folded into the preceding convolution (or linear layer) before tracing, so the fp32 graph
and the int8 graph derived from it hold no BatchNormalization node.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from backbone.mobilenet_v1 import MIN_INPUT_SIZE

__all__ = ["ExportError", "GraphSpec", "GroupedNMS", "SSDGraph", "FasterRCNNGraph", "fold_batchnorm", "build_graph",
           "count_batchnorm"]


class ExportError(ValueError):
    """A checkpoint that cannot be exported as asked (the message says which and why)."""


@dataclass
class GraphSpec:
    """What :func:`build_graph` returns: the module to trace and how its graph is named."""

    module: nn.Module
    kind: str  # "classifier" | "embedding" | "detector"
    output_names: list[str]
    batch_axes: dict[str, int]  # output name -> its symbolic axis when the batch is dynamic
    fixed_batch: int | None = None  # the only batch the graph can take (Faster R-CNN: 1)
    notes: list[str] = field(default_factory=list)


def _fold_sequential(seq: nn.Sequential) -> int:
    names = list(seq._modules)
    folded = 0
    for a, b in zip(names, names[1:]):
        conv, bn = seq._modules[a], seq._modules[b]
        if isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d and bn.track_running_stats:
            seq._modules[a] = fuse_conv_bn_eval(conv, bn)
            seq._modules[b] = nn.Identity()
            folded += 1
    return folded


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``model`` (eval mode) with every BatchNorm that follows a conv / linear folded into it.

    Covers the layouts of this suite: ``Conv2d -> BatchNorm2d`` inside an ``nn.Sequential`` (every
    MobileNet layer, the SSD extras and SSDLite heads) and the face embedder's ``embed -> bn`` pair.
    Returns (folded copy, number of BN layers folded); the original is untouched.
    """
    from tasks.faces.model import FaceEmbedder

    model = copy.deepcopy(model).eval()
    folded = 0
    for m in list(model.modules()):
        if isinstance(m, nn.Sequential):
            folded += _fold_sequential(m)
    if isinstance(model, FaceEmbedder) and type(model.bn) is nn.BatchNorm1d:
        model.embed = fuse_linear_bn_eval(model.embed, model.bn)
        model.bn = nn.Identity()
        folded += 1
    return model, folded


def count_batchnorm(model: nn.Module) -> int:
    """BatchNorm layers left in ``model`` (after :func:`fold_batchnorm`: the ones it could not fold)."""
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class GroupedNMS(torch.autograd.Function):
    """NMS within each group: boxes [G, K, 4] xyxy, scores [G, K] -> kept (group, index) pairs [M, 2],
    by group, best first within a group. Exported as ONNX ``NonMaxSuppression`` (groups as its batch)."""

    @staticmethod
    def forward(ctx: Any, boxes: Tensor, scores: Tensor, iou_thresh: float, score_thresh: float) -> Tensor:
        from torchvision.ops import nms

        kept = []
        for g in range(boxes.shape[0]):
            cand = torch.nonzero(scores[g] > score_thresh).squeeze(1)
            idx = cand[nms(boxes[g, cand], scores[g, cand], iou_thresh)]
            kept.append(torch.stack((torch.full_like(idx, g), idx), dim=1))
        return torch.cat(kept) if kept else boxes.new_zeros((0, 2), dtype=torch.int64)

    @staticmethod
    def symbolic(g: Any, boxes: Any, scores: Any, iou_thresh: float, score_thresh: float) -> Any:
        per_group = g.op("Constant", value_t=torch.tensor([2**31 - 1], dtype=torch.int64))
        iou = g.op("Constant", value_t=torch.tensor([iou_thresh], dtype=torch.float32))
        low = g.op("Constant", value_t=torch.tensor([score_thresh], dtype=torch.float32))
        picked = g.op("NonMaxSuppression", boxes, g.op("Unsqueeze", scores, g.op(
            "Constant", value_t=torch.tensor([1], dtype=torch.int64))), per_group, iou, low)  # [M, (g, 0, i)]
        return g.op("Gather", picked, g.op("Constant", value_t=torch.tensor([0, 2], dtype=torch.int64)), axis_i=1)


class SSDGraph(nn.Module):
    """torchvision SSD inference (normalise, features, heads, decode, softmax, top-k, NMS) batched
    and traceable at a fixed input side (see the module docstring).

    Args:
        ssd: a ``tasks.detection.ssd.MobileNetSSD`` in eval mode.
        resolution: the input side the graph is for.
    """

    def __init__(self, ssd: nn.Module, resolution: int):
        super().__init__()
        from torchvision.models.detection.image_list import ImageList

        self.features = ssd.backbone
        self.head = ssd.head
        self.resolution = int(resolution)
        self.num_classes = int(ssd.num_classes)
        self.score_thresh = float(ssd.score_thresh)
        self.nms_thresh = float(ssd.nms_thresh)
        self.detections_per_img = int(ssd.detections_per_img)
        self.register_buffer("mean", torch.tensor(ssd.transform.image_mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(ssd.transform.image_std).view(1, 3, 1, 1))
        weights = ssd.box_coder.weights
        self.register_buffer("box_weights", torch.tensor(weights, dtype=torch.float32))
        self.box_clip = float(ssd.box_coder.bbox_xform_clip)
        with torch.no_grad():
            x = torch.zeros(1, 3, self.resolution, self.resolution, device=self.mean.device)
            maps = list(self.features((x - self.mean) / self.std).values())
            anchors = ssd.anchor_generator(ImageList(x, [(self.resolution, self.resolution)]), maps)[0]
        self.register_buffer("anchors", anchors.float())
        self.topk = min(int(ssd.topk_candidates), int(anchors.shape[0]))

    def decode(self, codes: Tensor) -> Tensor:
        """Box codes [N, A, 4] -> xyxy boxes [N, A, 4] clipped to the image (torchvision's ``BoxCoder``,
        the same float operations per coordinate). Written on (x, y) pairs with slices rather than one
        coordinate at a time: indexing ``codes[..., 0]`` traces to a Gather with a scalar index, through which
        OpenVINO's low-precision pipeline (2026.4, ``GatherTransformation``) moved the head's dequantization
        and failed a shape check, so the int8 SSD graph did not compile there."""
        a = self.anchors
        size = a[:, 2:] - a[:, :2]  # [A, 2] widths, heights
        centre = a[:, :2] + 0.5 * size
        d = codes / self.box_weights  # [N, A, 4]
        dxy, dwh = d[..., :2], torch.clamp(d[..., 2:], max=self.box_clip)
        pxy = dxy * size + centre
        pwh = torch.exp(dwh) * size
        boxes = torch.cat((pxy - 0.5 * pwh, pxy + 0.5 * pwh), dim=-1)
        return boxes.clamp(min=0.0, max=float(self.resolution))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        maps = list(self.features((images - self.mean) / self.std).values())
        out = self.head(maps)
        boxes = self.decode(out["bbox_regression"])  # [N, A, 4]
        scores = F.softmax(out["cls_logits"], dim=-1)[:, :, 1:]  # background dropped: [N, A, C-1]
        c = self.num_classes - 1
        top_scores, top_anchor = scores.transpose(1, 2).topk(self.topk, dim=2)  # [N, C-1, k] per class
        top_scores, top_anchor = top_scores.reshape(-1, self.topk), top_anchor.reshape(-1, self.topk)
        image_of_group = torch.arange(images.shape[0], device=images.device).repeat_interleave(c)
        cand = boxes[image_of_group[:, None], top_anchor]  # [N * (C-1), k, 4]
        kept = GroupedNMS.apply(cand, top_scores, self.nms_thresh, self.score_thresh)
        group, idx = kept[:, 0], kept[:, 1]
        image_idx, label = group // c, group % c + 1
        score, box = top_scores[group, idx], cand[group, idx]
        # grouped by image, best first; then at most detections_per_img per image
        order = torch.argsort(image_idx.to(score.dtype) * 2.0 - score)
        image_idx, label, score, box = image_idx[order], label[order], score[order], box[order]
        same = (image_idx[:, None] == torch.arange(images.shape[0], device=images.device)[None, :]).to(torch.int64)
        rank = same.cumsum(0).gather(1, image_idx[:, None]).squeeze(1) - 1
        keep = torch.nonzero(rank < self.detections_per_img).squeeze(1)
        return box[keep], score[keep], label[keep], image_idx[keep]


class FasterRCNNGraph(nn.Module):
    """torchvision Faster R-CNN inference on one image given as a [1, 3, H, W] batch."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        det = self.model([images[0]])[0]
        return det["boxes"], det["scores"], det["labels"]


def _family(model: nn.Module) -> str:
    from tasks.detection.faster_rcnn import MobileNetFasterRCNN
    from tasks.detection.ssd import MobileNetSSD

    if isinstance(model, MobileNetSSD):
        return "ssd"
    if isinstance(model, MobileNetFasterRCNN):
        return "faster_rcnn"
    raise ExportError(f"detector of type {type(model).__name__} has no export path (known: SSD, Faster R-CNN)")


def build_graph(model: nn.Module, meta: dict[str, Any], resolution: int) -> GraphSpec:
    """The module to trace for a checkpoint's network (``tasks.checkpoint.load_model``'s output).

    Args:
        model: the network in eval mode.
        meta: its checkpoint metadata (``meta["model"]["name"]`` selects the export path).
        resolution: the input side of the graph.
    Raises:
        ExportError: a builder this module does not know, or a resolution the network cannot take.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, int):
        raise ExportError(f"--resolution must be an integer number of pixels, got {resolution!r}")
    if resolution < MIN_INPUT_SIZE:
        raise ExportError(f"--resolution {resolution}: the network needs at least {MIN_INPUT_SIZE} px "
                          "(five stride-2 layers)")
    name = meta["model"].get("name")
    if name in ("classifier", "geo_classifier"):  # geolocation's heads: one logits row, partitions side by side
        spec = GraphSpec(model, "classifier", ["logits"], {"logits": 0})
    elif name == "face_embedder":
        spec = GraphSpec(model, "embedding", ["embedding"], {"embedding": 0})
    elif name == "detector":
        family = _family(model)
        if family == "ssd":
            spec = GraphSpec(SSDGraph(model, resolution), "detector", ["boxes", "scores", "labels", "batch_index"],
                             {})
        else:
            spec = GraphSpec(FasterRCNNGraph(model), "detector", ["boxes", "scores", "labels"], {}, fixed_batch=1,
                             notes=["Faster R-CNN: batch 1; the graph resizes as the model does"])
    else:
        raise ExportError(f"checkpoint model {name!r} has no export path (known: classifier, geo_classifier, "
                          "face_embedder, detector)")
    _try_resolution(spec, resolution)
    return spec


def _try_resolution(spec: GraphSpec, resolution: int) -> None:
    """Run the graph once at ``resolution`` so a size it cannot take fails here, by name."""
    device = next(spec.module.parameters()).device
    x = torch.rand(spec.fixed_batch or 2, 3, resolution, resolution, device=device)
    try:
        with torch.no_grad():
            spec.module.eval()(x)
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"--resolution {resolution}: the network cannot take a {resolution}x{resolution} "
                          f"input ({first})") from e
