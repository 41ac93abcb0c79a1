"""``python -m tasks.geolocation.evaluate`` / ``.predict`` / ``.profile`` and the paper config."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from datasets.synthetic_geotagged import write_synthetic_geotagged
from eval.geolocation import haversine_km
from tasks.config import load_config
from tasks.geolocation import evaluate as geo_eval
from tasks.geolocation import predict as geo_predict
from tasks.geolocation import profile as geo_profile
from tasks.geolocation import train as geo_train

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
RES = 32


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("geo_eval")
    photos = write_synthetic_geotagged(root / "photos", num_train=400, num_val=60, image_size=RES, seed=7)
    out = root / "run"
    geo_train.main(["--data-root", photos["train_root"], "--ann", photos["train_ann"], "--val-data-root",
                    photos["val_root"], "--val-ann", photos["val_ann"], "--t-min", "3", "--t-max", "150", "50",
                    "--alpha", "0.25", "--resolution", str(RES), "--epochs", "1", "--batch-size", "32",
                    "--output-dir", str(out), "--device", "cpu"])
    return photos, out


def test_evaluate_writes_every_output(run, tmp_path):
    photos, out = run
    d = tmp_path / "eval"
    summary = geo_eval.main(["--checkpoint", str(out / "best.pt"), "--data-root", photos["val_root"], "--ann",
                             photos["val_ann"], "--out-dir", str(d), "--device", "cpu"])
    trained = json.loads((out / "summary.json").read_text())["metrics"]
    assert summary["metrics"]["geoscore"] == pytest.approx(trained["geoscore"])  # the same photos, the same path
    with open(d / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["IMG_ID", "lat", "lon", "pred_lat", "pred_lon", "km", "token"] and len(rows) == 60
    lat, lon, plat, plon, km = (np.array([float(r[k]) for r in rows])
                                for k in ("lat", "lon", "pred_lat", "pred_lon", "km"))
    assert np.allclose(haversine_km(lat, lon, plat, plon), km, atol=0.5)
    assert np.median(km) == pytest.approx(summary["metrics"]["median_km"], rel=1e-3)
    for name in ("error_cdf.png", "world.png"):
        assert (d / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((d / "summary.json").read_text())["baseline"]["count"] == 60


def test_predict_top_k_and_geojson(run, tmp_path):
    photos, out = run
    images = sorted(str(p) for p in Path(photos["val_root"]).glob("*.jpg"))[:3]
    geojson = tmp_path / "places.geojson"
    results = geo_predict.main(["--checkpoint", str(out / "best.pt"), *images, "--top-k", "4", "--geojson",
                                str(geojson), "--device", "cpu"])
    assert len(results) == 3 and all(len(r) == 4 for r in results)
    for cells in results:
        scores = [c["score"] for c in cells]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-6
    features = json.loads(geojson.read_text())["features"]
    assert len(features) == 12 and features[0]["geometry"]["coordinates"] == [results[0][0]["lon"],
                                                                               results[0][0]["lat"]]


def test_commands_end_with_one_error_line(run, tmp_path):
    photos, out = run
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "tasks.geolocation.predict", "--checkpoint", str(out / "best.pt"),
                           str(tmp_path / "missing.jpg")], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: ") and "missing.jpg" in proc.stderr
    with pytest.raises(ValueError, match="image id column"):
        geo_eval.main(["--checkpoint", str(out / "best.pt"), "--data-root", photos["val_root"], "--ann",
                       str(out / "cells_tmax150.csv"), "--device", "cpu"])


def test_profile_matches_the_paper_text(capsys):
    ours = geo_profile.main([])
    assert round(ours["params_m"]) == 13 and round(ours["body_params_m"]) == 3 and round(ours["final_params_m"]) == 10
    assert round(ours["mult_adds_b"], 2) == 0.58
    assert "0.58" in capsys.readouterr().out


def test_paper_config_loads_with_data():
    cfg = load_config(geo_train.GeolocationConfig, geo_train.CONFIG_DIR / "planet_mobilenet.yaml",
                      overrides={"data": {"root": "IMGS", "ann": "train.csv"}})
    assert (cfg.model.alpha, cfg.model.resolution, cfg.train.optimizer) == (1.0, 224, "rmsprop")
