"""Anchor coverage: boxes vs an SSD's real anchor grid, and the CLI on a COCO-format file."""
import pytest
import torch

from datasets.synthetic_shapes import write_shapes_dataset
from tasks.detection import coverage
from tasks.detection.build import build_detector


def test_the_anchors_themselves_are_fully_covered():
    model = build_detector("ssd300", 3, alpha=0.25, size=96)
    anchors = coverage.ssd_anchors(model)
    boxes = anchors[torch.randperm(len(anchors), generator=torch.Generator().manual_seed(0))[:50]]
    cov = coverage.anchor_coverage(model, boxes)
    assert cov.num_anchors == len(anchors) and cov.num_boxes == 50
    assert cov.unmatched_fraction == 0.0 and cov.matches_per_box >= 1.0
    assert cov.best_iou_median == pytest.approx(1.0) and cov.best_iou_p10 == pytest.approx(1.0)
    assert cov.iou_thresh == 0.5


def test_a_larger_input_gives_small_boxes_more_matches():
    g = torch.Generator().manual_seed(0)
    centres = 0.15 + 0.7 * torch.rand(200, 2, generator=g)
    half = 0.05 + 0.05 * torch.rand(200, 1, generator=g)  # boxes 10-20% of the side
    boxes = torch.cat([centres - half, centres + half], 1)
    small = coverage.anchor_coverage(build_detector("ssd300", 3, alpha=0.25, size=96), boxes)
    large = coverage.anchor_coverage(build_detector("ssd300", 3, alpha=0.25, size=256), boxes)
    assert large.matches_per_box > 2 * small.matches_per_box
    assert large.unmatched_fraction < small.unmatched_fraction
    assert large.best_iou_median > small.best_iou_median


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="SSD"):
        coverage.anchor_coverage(build_detector("faster_rcnn300", 3, alpha=0.25, size=96), torch.rand(3, 4))
    ssd = build_detector("ssd300", 3, alpha=0.25, size=96)
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        coverage.anchor_coverage(ssd, torch.rand(3, 5))
    with pytest.raises(ValueError, match="no boxes"):
        coverage.anchor_coverage(ssd, torch.zeros(0, 4))


def test_cli_reports_each_size_for_a_coco_file(tmp_path, capsys):
    root, ann = write_shapes_dataset(tmp_path / "s", num_images=12, image_size=96, seed=3, split_name="train", max_objects=2)
    results = coverage.main(["--data-root", str(root), "--ann", str(ann), "--sizes", "96", "192"])
    out = capsys.readouterr().out
    assert [r.size for r in results] == [96, 192]
    assert results[0].num_boxes == results[1].num_boxes > 0
    assert results[1].matches_per_box > results[0].matches_per_box
    assert "unmatched" in out and str(ann) in out
    assert len([line for line in out.splitlines() if line.strip().startswith(("96 ", "192 "))]) == 2
