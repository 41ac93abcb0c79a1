"""``python -m tasks.geolocation.train``: PlaNet cells on MobileNet, scored at 1 to 2500 km against the
most-populous-cell baseline; the hierarchical product; the config round trip."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from datasets.synthetic_geotagged import write_synthetic_geotagged
from tasks.checkpoint import load_model
from tasks.config import config_to_dict
from tasks.geolocation import train as geo_train
from tasks.geolocation.model import CellDecoder, GeoLoss, hierarchical_scores
from tasks.geolocation.partition import build_partitions, read_cells_csv

pytestmark = pytest.mark.usefixtures("one_thread")

RES = 32


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_synthetic_geotagged(tmp_path_factory.mktemp("geo"), num_train=1200, num_val=300, image_size=RES,
                                     seed=3)


def _args(photos, out, *extra):
    return ["--data-root", photos["train_root"], "--ann", photos["train_ann"], "--val-data-root", photos["val_root"],
            "--val-ann", photos["val_ann"], "--alpha", "0.25", "--resolution", str(RES), "--batch-size", "32",
            "--workers", "0", "--output-dir", str(out), "--device", "cpu", *extra]


def test_training_beats_the_most_populous_cell(tmp_path, photos):
    """The defaults' recipe, with thresholds for 1200 photos and fewer epochs; scored on held-out photos by the
    same evaluation as the report."""
    out = tmp_path / "run"
    summary = geo_train.main(_args(photos, out, "--t-min", "5", "--t-max", "120", "--epochs", "10"))
    m = summary["metrics"]
    # When written: acc@200/750/2500 km 6.3/34.0/79.7 % vs the baseline's 1.3/3.3/14.0 %
    for t, margin in ((200, 0.02), (750, 0.1), (2500, 0.2)):
        assert m[f"acc@{t}km"] > m[f"baseline/acc@{t}km"] + margin, (t, m)
    assert m["geoscore"] > 2 * m["baseline/geoscore"]
    saved = json.loads((out / "summary.json").read_text())
    assert saved["metrics"]["acc@750km"] == pytest.approx(m["acc@750km"])
    # photos outside every cell are left out of training and counted
    from datasets.geotagged import read_geotagged_csv

    table = read_geotagged_csv(photos["train_ann"])
    outside = int((read_cells_csv(out / "cells.csv").assign(table.lat, table.lon) < 0).sum())
    assert saved["partition"] == {"cells": [len(read_cells_csv(out / "cells.csv"))], "files": [str(out / "cells.csv")],
                                  "train_photos_outside": outside, "train_photos": len(table)}
    assert outside > 0
    assert (out / "error_cdf.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the checkpoint alone maps classes to places
    model, meta = load_model(out / "best.pt")
    cells = read_cells_csv(out / "cells.csv")
    assert meta["task"] == "geolocation" and meta["labels"] == cells.tokens
    assert np.allclose(meta["cells"][0]["lat_mean"], cells.lat_mean, atol=1e-6)
    assert model(torch.zeros(1, 3, RES, RES)).shape == (1, len(cells))


@pytest.mark.parametrize("extra", [["--t-max", "400", "120"], ["--t-max", "120", "--haversine-smoothing", "75"]],
                         ids=["hierarchical", "haversine_smoothing"])
def test_other_training_paths_learn_too(tmp_path, photos, extra):
    # When written: hierarchical 6.3/40.7/76.0 %, smoothing 8.3/40.7/78.3 % vs the baseline's 1.3/3.3/14.0 %
    m = geo_train.main(_args(photos, tmp_path / "run", "--t-min", "5", "--epochs", "10", *extra))["metrics"]
    for t, margin in ((200, 0.02), (750, 0.1), (2500, 0.2)):
        assert m[f"acc@{t}km"] > m[f"baseline/acc@{t}km"] + margin, (t, m)


def test_hierarchical_product_by_hand():
    coarse = np.array([[0.8, 0.2], [0.1, 0.9]])
    fine = np.array([[0.3, 0.3, 0.4], [0.5, 0.25, 0.25]])
    parent = np.array([0, 0, 1])  # fine cells 0, 1 lie in coarse cell 0; fine cell 2 in coarse cell 1
    got = hierarchical_scores([coarse, fine], [parent])
    want = np.array([[0.24, 0.24, 0.08], [0.05, 0.025, 0.225]])
    assert np.allclose(got, want)
    # the product changes the answer: photo 0's finest argmax (cell 2) loses to its coarse cell's children
    assert got.argmax(1).tolist() == [0, 2] and fine.argmax(1).tolist() == [2, 0]
    with pytest.raises(ValueError, match="lies in no cell"):
        hierarchical_scores([coarse, fine], [np.array([0, -1, 1])])


def test_decoder_of_nested_partitions(photos):
    from datasets.geotagged import read_geotagged_csv

    table = read_geotagged_csv(photos["train_ann"])
    parts = sorted(build_partitions(table.lat, table.lon, t_min=5, t_max=[400, 100]), key=len)
    dec = CellDecoder(parts)
    k0, k1 = len(parts[0]), len(parts[1])
    logits = np.zeros((1, k0 + k1), dtype=np.float32)
    logits[0, 0] = 10.0  # coarse cell 0 certain; among the fine cells, prefer one inside it
    inside = np.flatnonzero(dec.parents[0] == 0)
    logits[0, k0 + inside[-1]] = 1.0
    labels, scores = dec.top_k(logits, 3)
    assert labels[0, 0] == inside[-1] and scores[0, 0] >= scores[0, 1]


def test_haversine_smoothing_targets():
    loss = GeoLoss([3], [np.array([0.0, 0.0, 10.0])], [np.array([0.0, 1.0, 0.0])], tau_km=75.0)
    t = loss.soft_targets(0, torch.tensor([0.0]), torch.tensor([0.1]))
    d = np.array([11.1, 100.1, 1112.0])  # km from (0, 0.1) to the three cells, roughly
    want = np.exp(-(d - d.min()) / 75.0)
    assert torch.allclose(t[0].double(), torch.tensor(want / want.sum()), atol=5e-3)
    assert t.sum().item() == pytest.approx(1.0)


def test_hierarchical_training_and_smoothing_run(tmp_path, photos):
    out = tmp_path / "h"
    summary = geo_train.main(_args(photos, out, "--t-min", "5", "--t-max", "400", "100", "--epochs", "1",
                                   "--haversine-smoothing", "75"))
    assert len(summary["partition"]["cells"]) == 2 and (out / "cells_tmax400.csv").is_file()
    model, meta = load_model(out / "best.pt")
    assert meta["model"]["name"] == "geo_classifier" and len(meta["cells"]) == 2
    assert model(torch.zeros(2, 3, RES, RES)).shape == (2, sum(summary["partition"]["cells"]))


def test_config_round_trip(tmp_path, photos):
    out = tmp_path / "a"
    geo_train.main(_args(photos, out, "--t-min", "5", "--t-max", "120", "--epochs", "1",
                         "--haversine-smoothing", "70"))
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["loss"]["haversine_smoothing"] == 70.0 and saved["data"]["cells"] == [str(out / "cells.csv")]
    args = geo_train.build_parser().parse_args(["--config", str(out / "config.yaml")])
    cfg = geo_train.resolve_config(args)
    assert yaml.safe_load(yaml.safe_dump(config_to_dict(cfg))) == saved


def test_bad_input_names_the_problem(tmp_path, photos):
    with pytest.raises(ValueError, match="haversine_smoothing"):
        geo_train.main(_args(photos, tmp_path / "x", "--haversine-smoothing", "0"))
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        geo_train.main(_args(photos, tmp_path / "y", "--cells", str(tmp_path / "nope.csv"), "--epochs", "1"))
    with pytest.raises(ValueError, match="data.root and data.ann"):
        geo_train.main(["--config", str(geo_train.DEFAULT_CONFIG), "--data-root", photos["train_root"]])
    with pytest.raises(ValueError, match="t_min"):
        geo_train.main(_args(photos, tmp_path / "z", "--t-min", "5000", "--t-max", "6000", "--epochs", "1"))


def test_without_val_ann_a_held_out_tenth_validates(tmp_path, photos):
    out = tmp_path / "hold"
    summary = geo_train.main(["--data-root", photos["train_root"], "--ann", photos["train_ann"], "--alpha", "0.25",
                              "--resolution", str(RES), "--t-min", "5", "--t-max", "120", "--epochs", "1",
                              "--output-dir", str(out), "--device", "cpu"])
    assert summary["metrics"]["count"] == 120 and summary["partition"]["train_photos"] == 1080
    assert summary["selected_by"]["split"] == "val"
