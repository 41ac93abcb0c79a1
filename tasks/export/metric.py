"""The task's own metric of the exported graphs, fp32 and int8, on a labelled validation set.

A deployed MobileNet is worth its speed (paper, Figures 4-5) only at the accuracy it was trained to:
top-1 (fine-grained, Table 10), mean AP (attributes, Table 12), COCO AP (detection, Table 13),
verification accuracy (faces, Table 14), GeoScore and accuracy at 1-2500 km (geolocation, Table 11).
These numbers come from the SAME code the task's evaluate command runs: :class:`OrtNetwork` puts an
ONNX Runtime session behind the PyTorch network's call (a batch tensor in, logits / embeddings out;
for detectors a list of images in, a list of ``{"boxes", "scores", "labels"}`` out), and
:data:`TASK_METRICS` hands it to each task's scorer:

* finegrained: ``finegrained.evaluate.open_split`` + ``finegrained.scoring.score_split`` (top-1); labels
  from ``--val-ann`` (a ``path,label`` CSV) or the folder itself (Stanford Dogs' test split, class folders).
* attributes: ``attributes.evaluate.score_attributes`` (mean AP); ``--val-ann``: the attribute label file.
* distill: attribute students as attributes; classification students: ``distill.data.labelled_class_images``
  + ``distill.agreement.label_metric`` (top-1, as the student's validation); ``--val-ann``: an
  ``image,label`` CSV. Embedding students have no labelled metric.
* geolocation: ``geolocation.evaluate.open_geotagged`` + ``geolocation.train.evaluate_geolocation``
  (GeoScore, accuracy at 1-2500 km); ``--val-ann``: the geotagged CSV.
* faces: ``faces.evaluate.evaluate_pairs`` (10-fold verification accuracy); ``--val-ann``: LFW pairs.txt.
* detection: ``detection.evaluate.open_split`` + ``detection.inference.evaluate_dataset`` (COCO AP,
  pycocotools); ``--val-ann``: the COCO instances json.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .runtime import run_graph, session
from .verify import split_detections

__all__ = ["OrtNetwork", "TASK_METRICS", "TaskScore", "task_metric"]

CPU = torch.device("cpu")


class OrtNetwork(nn.Module):
    """An exported graph run by ONNX Runtime, called like the PyTorch network it came from.

    Args:
        path: the ``.onnx`` file.
        kind: ``classifier`` / ``embedding`` (``forward(x [N, 3, R, R]) -> [N, D]``) or ``detector``
            (``forward(list of [3, H, W] images) -> list of {"boxes", "scores", "labels"}``, as torchvision).
        resolution: the graph's input side (SSD graphs take exactly ``R x R`` images).
        fixed_batch: the graph's batch when it is not dynamic (inputs are split and padded to it).
        like: the PyTorch network: its ``cfg`` (face models) and ``input_spec`` (detectors) are copied, with
            the resolution of the graph, so the task's data pipeline prepares the inputs as for the network.
        threads: ONNX Runtime intra-op threads (None: its default).
    """

    def __init__(self, path: str | os.PathLike, kind: str, *, resolution: int, fixed_batch: int | None = None,
                 like: nn.Module | None = None, threads: int | None = None) -> None:
        super().__init__()
        self.path, self.kind, self.resolution, self.fixed_batch = str(path), kind, int(resolution), fixed_batch
        self.sess = session(path, threads=threads)
        self.square = kind == "detector" and "batch_index" in [o.name for o in self.sess.get_outputs()]
        cfg = getattr(like, "cfg", None)
        if dataclasses.is_dataclass(cfg) and hasattr(cfg, "resolution"):
            self.cfg = dataclasses.replace(cfg, resolution=self.resolution)
        spec = getattr(like, "input_spec", None)
        if spec is not None:
            self.input_spec = {**spec, "size": self.resolution} if spec.get("mode") == "square" else dict(spec)

    def _run(self, x: np.ndarray) -> list[list[np.ndarray]]:
        """Outputs per chunk of the graph's batch; the last chunk is padded by repeating its images."""
        step = self.fixed_batch or len(x)
        chunks = []
        for start in range(0, len(x), step):
            part = x[start:start + step]
            real = len(part)
            if real < step:
                part = np.concatenate([part, part[np.arange(step - real) % real]])
            chunks.append((run_graph(self.sess, np.ascontiguousarray(part, dtype=np.float32)), real))
        return chunks  # type: ignore[return-value]

    def forward(self, x: Any) -> Any:
        if self.kind == "detector":
            return self._detect(list(x))
        chunks = self._run(x.detach().float().cpu().numpy())
        out = np.concatenate([res[0][:real] for res, real in chunks])
        return torch.from_numpy(out).to(x.device)

    def _detect(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        if not images:
            return []
        if self.square:
            bad = [tuple(im.shape) for im in images if tuple(im.shape[-2:]) != (self.resolution, self.resolution)]
            if bad:
                raise ValueError(f"{self.path} takes {self.resolution}x{self.resolution} images, got {bad[0]}")
            groups = [torch.stack([im.detach().float().cpu() for im in images]).numpy()]
        else:  # Faster R-CNN: batch 1, any size (the graph resizes as the model does)
            groups = [im.detach().float().cpu().numpy()[None] for im in images]
        out: list[dict[str, Tensor]] = []
        for x in groups:
            for res, real in self._run(x):
                for d in split_detections(res, len(x) if not self.fixed_batch else self.fixed_batch)[:real]:
                    out.append({"boxes": torch.from_numpy(np.asarray(d["boxes"], dtype=np.float32)).reshape(-1, 4),
                                "scores": torch.from_numpy(np.asarray(d["scores"], dtype=np.float32)),
                                "labels": torch.from_numpy(np.asarray(d["labels"], dtype=np.int64))})
        return out


@dataclass
class TaskScore:
    """One graph's score: the task's headline metric name, every scalar metric, the images scored."""

    headline: str
    metrics: dict[str, float]
    images: int


def _loader(ds: Any, batch_size: int) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0)


def _finegrained(net: nn.Module, meta: Mapping[str, Any], root: str, ann: str | None, res: int,
                 batch_size: int) -> TaskScore:
    from tasks.finegrained.evaluate import open_split
    from tasks.finegrained.scoring import score_split

    ds, names = open_split(dict(meta), root, ann, None, resolution=res)
    score = score_split(net, _loader(ds, batch_size), names, CPU)
    keep = ("top1", "top5", "mean_class_accuracy")
    return TaskScore("top1", {k: float(score.metrics[k]) for k in keep}, len(ds))


def _attributes(net: nn.Module, meta: Mapping[str, Any], root: str, ann: str | None, res: int,
                batch_size: int) -> TaskScore:
    from tasks.attributes.evaluate import score_attributes

    pre = meta["preprocess"]
    r = score_attributes(net, root, _need_ann(meta, ann), resolution=res, mean=pre["mean"], std=pre["std"],
                         names=list(meta["labels"]) or None, device=CPU, batch_size=batch_size, label="graph")
    if np.isnan(r.mean_ap):
        raise ValueError(f"--val-ann {ann}: no attribute has a known positive label, so there is no mean AP")
    return TaskScore("mean_ap", {"mean_ap": float(r.mean_ap)}, int(r.known.max()))


def _distill(net: nn.Module, meta: Mapping[str, Any], root: str, ann: str | None, res: int,
             batch_size: int) -> TaskScore:
    from datasets.images import build_image_transform
    from distill.agreement import label_metric
    from distill.data import labelled_class_images
    from tasks.classifier import predict_outputs

    output = meta.get("output", "attributes")
    if output == "attributes":
        return _attributes(net, meta, root, ann, res, batch_size)
    if output != "classification":
        raise ValueError(f"--val-ann: a distilled {output} student has no labelled metric (its training reports "
                         "agreement with the teacher); leave --val-ann out")
    pre = meta["preprocess"]
    ds = labelled_class_images(root, _need_ann(meta, ann), build_image_transform(res, mean=pre["mean"], std=pre["std"]))
    outputs, targets, _ = predict_outputs(net, _loader(ds, batch_size), CPU)
    lab = label_metric("classification", outputs, targets, None)
    if lab is None:
        raise ValueError(f"--val-ann {ann}: no image has a known class")
    return TaskScore(lab[0], {lab[0]: lab[1]}, len(ds))


def _geolocation(net: nn.Module, meta: Mapping[str, Any], root: str, ann: str | None, res: int,
                 batch_size: int) -> TaskScore:
    from tasks.geolocation.evaluate import open_geotagged
    from tasks.geolocation.model import CellDecoder
    from tasks.geolocation.train import evaluate_geolocation

    ds = open_geotagged(dict(meta), root, _need_ann(meta, ann), resolution=res)
    metrics = evaluate_geolocation(net, _loader(ds, batch_size), CellDecoder.from_meta(meta), ds.lat, ds.lon, CPU)[0]
    return TaskScore("geoscore", {k: float(v) for k, v in metrics.items() if k != "count"}, len(ds))


def _faces(net: nn.Module, meta: Mapping[str, Any], root: str, ann: str | None, res: int,
           batch_size: int) -> TaskScore:
    from datasets.faces import read_pairs
    from tasks.faces.evaluate import evaluate_pairs

    pairs = read_pairs(_need_ann(meta, ann), root)
    result, _ = evaluate_pairs(net, pairs, batch_size=batch_size, device=CPU)
    return TaskScore("accuracy", {k: float(v) for k, v in result.metrics().items()}, len(pairs))


def _detection(net: nn.Module, meta: Mapping[str, Any], root: str, ann: str | None, res: int,
               batch_size: int) -> TaskScore:
    from tasks.detection.evaluate import open_split
    from tasks.detection.inference import evaluate_dataset

    label_to_cat_id = {int(k): int(v) for k, v in meta["label_to_cat_id"].items()}
    ds = open_split(net, {**meta, "label_to_cat_id": label_to_cat_id}, root, _need_ann(meta, ann))
    result, _ = evaluate_dataset(net, ds, label_to_cat_id, batch_size=batch_size, device=CPU, progress=False)
    return TaskScore("AP", {k: float(v) for k, v in result.stats.items()}, len(ds))


def _need_ann(meta: Mapping[str, Any], ann: str | None) -> str:
    if ann is None:  # task_metric only calls a scorer that needs labels with them
        raise AssertionError(f"{meta['task']}: no --val-ann")
    return ann


# task -> (scorer, whether --val-data-root alone can hold the labels)
TASK_METRICS: dict[str, tuple[Callable[..., TaskScore], bool]] = {
    "finegrained": (_finegrained, True),
    "attributes": (_attributes, False),
    "distill": (_distill, False),
    "geolocation": (_geolocation, False),
    "faces": (_faces, False),
    "detection": (_detection, False),
}
ANN_FORMAT = {"attributes": "the attribute label file", "distill": "the label file (attributes or 'image,label' CSV)",
              "geolocation": "the geotagged CSV", "faces": "the LFW-format pairs.txt",
              "detection": "the COCO instances json", "finegrained": "a 'path,label' CSV"}


def labelled(task: str, root: str | None, ann: str | None) -> bool:
    """Whether ``root`` / ``ann`` is a labelled validation set of ``task`` (raises on a task without a scorer
    when ``ann`` is given)."""
    if root is None:
        return False
    if task not in TASK_METRICS:
        if ann is not None:
            raise ValueError(f"--val-ann: no task metric for checkpoints of task {task!r} "
                             f"(known: {', '.join(sorted(TASK_METRICS))})")
        return False
    if ann is not None:
        return True
    if TASK_METRICS[task][1]:  # fine-grained: Stanford Dogs or class folders carry the labels
        from datasets.stanford_dogs import detect_format

        try:
            return detect_format(root) in ("stanford_dogs", "folders")
        except ValueError:
            return False
    return False


def task_metric(meta: Mapping[str, Any], graphs: Mapping[str, str], kind: str, *, like: nn.Module, resolution: int,
                fixed_batch: int | None, root: str, ann: str | None, batch_size: int) -> dict[str, Any]:
    """Score each graph (``{"fp32": path, "int8": path}``) with the task's own evaluation code.

    Returns:
        ``{"task", "metric" (the headline), "data_root", "ann", "images", "fp32": {...}, "int8": {...},
        "int8_minus_fp32": {...}, "seconds"}`` (the last two with an int8 graph).
    """
    start = time.perf_counter()
    scorer = TASK_METRICS[meta["task"]][0]
    scores = {name: scorer(OrtNetwork(path, kind, resolution=resolution, fixed_batch=fixed_batch, like=like),
                           meta, str(root), None if ann is None else str(ann), resolution, batch_size)
              for name, path in graphs.items()}
    first = next(iter(scores.values()))
    out: dict[str, Any] = {"task": meta["task"], "metric": first.headline, "data_root": str(root),
                           "ann": None if ann is None else str(ann), "images": first.images,
                           **{name: s.metrics for name, s in scores.items()}}
    if "fp32" in scores and "int8" in scores:
        a, b = scores["fp32"].metrics, scores["int8"].metrics
        out["int8_minus_fp32"] = {k: b[k] - a[k] for k in a if k in b}
    out["seconds"] = round(time.perf_counter() - start, 2)
    return out
