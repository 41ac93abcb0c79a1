"""Mult-Adds and parameters of the Stanford Dogs MobileNets beside Table 10 (Section 4.3) of the MobileNets paper.

``python -m tasks.finegrained.profile`` builds each Table 10 model exactly as ``tasks.finegrained.train`` does
(``tasks.classifier.build_classifier``: MobileNet v1 with a 120-way head) and counts conv + FC multiply-adds and
weights with ``backbone.profile.count_mult_adds`` (the paper's convention: BN and biases are free and not
counted). The gap it explains: the printed Mult-Adds are those of the 1000-way ImageNet models of Table 6/7
(569 M for 1.0-224), not of the 120-way models whose parameters the same row prints (3.3 M = 3.2 M of body +
0.12 M of head); a 120-way head saves (1000 - 120) x width multiply-adds, under 0.2 % of the total.
"""
from __future__ import annotations

import argparse
from typing import Any, Sequence

import torch

from backbone.profile import count_mult_adds
from tasks.classifier import build_classifier
from tasks.cli import run_cli

__all__ = ["PAPER_TABLE10", "main", "profile_table10"]

# (alpha, resolution) -> (million Mult-Adds, million parameters, top-1 %) as printed in Table 10.
PAPER_TABLE10: dict[tuple[float, int], tuple[float, float, float]] = {
    (1.0, 224): (569.0, 3.3, 83.3),
    (0.75, 224): (325.0, 1.9, 81.9),
    (1.0, 192): (418.0, 3.3, 81.9),
    (0.75, 192): (239.0, 1.9, 80.5),
}
NUM_BREEDS = 120


def profile_table10(num_classes: int = NUM_BREEDS) -> list[dict[str, Any]]:
    """One row per Table 10 model: our counts with ``num_classes`` outputs and with 1000, and the paper's."""
    rows = []
    for (alpha, res), (p_ma, p_params, p_top1) in PAPER_TABLE10.items():
        x = torch.zeros(1, 3, res, res)
        ours = {}
        for n in (num_classes, 1000):
            model = build_classifier(num_outputs=n, alpha=alpha).eval()
            with torch.no_grad():
                ours[n] = count_mult_adds(model, x)
        rows.append({"alpha": alpha, "resolution": res, "mult_adds_m": ours[num_classes].mult_adds / 1e6,
                     "params_m": ours[num_classes].params / 1e6, "mult_adds_1000_m": ours[1000].mult_adds / 1e6,
                     "params_1000_m": ours[1000].params / 1e6, "paper_mult_adds_m": p_ma,
                     "paper_params_m": p_params, "paper_top1": p_top1})
    return rows


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(prog="python -m tasks.finegrained.profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--num-classes", type=int, default=NUM_BREEDS, help="head width (Stanford Dogs: 120)")
    p.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    args = p.parse_args(argv)
    if args.num_classes < 1:
        raise ValueError(f"--num-classes {args.num_classes}: must be >= 1")
    rows = profile_table10(args.num_classes)
    n = args.num_classes
    print(f"Table 10 (Stanford Dogs) models: conv + FC Mult-Adds and weights, one {n}-way head, one image")
    print(f"{'model':<18s} {'M Mult-Adds':>12s} {'(1000-way)':>11s} {'paper':>7s}   {'M params':>9s} "
          f"{'(1000-way)':>11s} {'paper':>6s}   paper top-1")
    for r in rows:
        name = f"{r['alpha']:g} MobileNet-{r['resolution']}"
        print(f"{name:<18s} {r['mult_adds_m']:12.1f} {r['mult_adds_1000_m']:11.1f} {r['paper_mult_adds_m']:7.0f}   "
              f"{r['params_m']:9.2f} {r['params_1000_m']:11.2f} {r['paper_params_m']:6.1f}   {r['paper_top1']:.1f}%")
    print("\nThe paper's Mult-Adds match the 1000-way column (its ImageNet models), its parameters the "
          f"{n}-way one:\nTable 10 reused the ImageNet Mult-Adds; the {n}-way head is "
          "(1000 - 120) x width multiply-adds cheaper (< 0.2 %).")
    return rows


if __name__ == "__main__":
    run_cli(main)
