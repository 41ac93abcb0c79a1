"""Parameters and Mult-Adds of PlaNet on MobileNet beside the paper's text (MobileNets Section 4.4, Table 11).

    python -m tasks.geolocation.profile [--config configs/geolocation/planet_mobilenet.yaml] [--cells 10000] [--json]

Section 4.4: the Inception v3 PlaNet has 52 million parameters and 5.74 billion mult-adds; the MobileNet one
"13 million parameters with the usual 3 million for the body and 10 million for the final layer and 0.58
Million mult-adds". The last figure can only mean 0.58 billion: the body alone (1.0 MobileNet-224) costs
569 million (Table 8), and a final layer over about 10,000 cells adds 1024 x 10,000 = 10 million more.
Counted with ``backbone.profile.count_mult_adds`` (the paper's convention: conv and FC weights, no biases
or batch norm) on the meta device, so nothing is computed.
"""
from __future__ import annotations

import argparse
import json
from typing import Any, Sequence

import torch

from backbone.profile import count_mult_adds
from tasks.cli import run_cli
from tasks.config import build_section, read_yaml_mapping
from tasks.geolocation.train import CONFIG_DIR, GeolocationConfig

__all__ = ["main", "profile_planet"]

PAPER_CONFIG = CONFIG_DIR / "planet_mobilenet.yaml"
PAPER = {"params_m": 13.0, "body_params_m": 3.0, "final_params_m": 10.0, "mult_adds_b": 0.58,
         "inception_params_m": 52.0, "inception_mult_adds_b": 5.74}
TABLE11 = {"2500 km": 79.3, "750 km": 60.3, "200 km": 45.2, "25 km": 31.7, "1 km": 11.4}  # PlaNet MobileNet, Im2GPS


def profile_planet(alpha: float = 1.0, resolution: int = 224, num_cells: int = 10000) -> dict[str, float]:
    """Body and final-layer parameters (millions) and Mult-Adds (billions) of MobileNet with a ``num_cells`` head."""
    from backbone import mobilenet_v1

    if isinstance(num_cells, bool) or not isinstance(num_cells, int) or num_cells < 2:
        raise ValueError(f"--cells must be an integer >= 2, got {num_cells!r}")
    with torch.device("meta"):
        model = mobilenet_v1(float(alpha), num_classes=num_cells)
        x = torch.empty(1, 3, int(resolution), int(resolution))
    res = count_mult_adds(model, x)
    final = model.classifier.weight.numel()
    fc_ma = res.per_module.get("classifier", final)
    return {"alpha": float(alpha), "resolution": int(resolution), "cells": int(num_cells),
            "params_m": res.params / 1e6, "body_params_m": (res.params - final) / 1e6, "final_params_m": final / 1e6,
            "mult_adds_b": res.mult_adds / 1e9, "body_mult_adds_b": (res.mult_adds - fc_ma) / 1e9}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m tasks.geolocation.profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(PAPER_CONFIG), help=f"the model section's alpha and resolution "
                   f"(default {PAPER_CONFIG.name})")
    p.add_argument("--cells", type=int, default=10000, help="cells of the final layer (default 10000, the paper's "
                   "10 M-parameter final layer)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    args = p.parse_args(argv)
    cfg = build_section(GeolocationConfig, read_yaml_mapping(args.config), str(args.config))  # no data needed
    ours = profile_planet(cfg.model.alpha, cfg.model.resolution, args.cells)
    if args.json:
        print(json.dumps({"ours": ours, "paper": PAPER}, indent=2))
        return ours
    name = f"{ours['alpha']:g} MobileNet-{ours['resolution']}, {ours['cells']} cells"
    rows = [("parameters (M)", f"{ours['params_m']:.2f}", "13"),
            ("  body (M)", f"{ours['body_params_m']:.2f}", "3"),
            ("  final layer (M)", f"{ours['final_params_m']:.2f}", "10"),
            ("Mult-Adds (B)", f"{ours['mult_adds_b']:.3f}", "0.58 (printed \"Million\")"),
            ("  body (B)", f"{ours['body_mult_adds_b']:.3f}", "-")]
    print(f"PlaNet on MobileNet (Section 4.4, Table 11): ours ({name}) vs the paper's text")
    print(f"{'':<20}{'ours':>10}  paper")
    for label, value, paper in rows:
        print(f"{label:<20}{value:>10}  {paper}")
    print(f"Inception v3 PlaNet (paper): {PAPER['inception_params_m']:g} M parameters, "
          f"{PAPER['inception_mult_adds_b']:g} B Mult-Adds")
    print("Table 11, PlaNet MobileNet on Im2GPS: " + ", ".join(f"{k} {v}%" for k, v in TABLE11.items()))
    return ours


if __name__ == "__main__":
    run_cli(main)
