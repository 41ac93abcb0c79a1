"""Face verification of a trained model on an LFW-format pairs file (MobileNets Table 14).

Usage:
    python -m tasks.faces.evaluate --pairs pairs.txt --data-root DIR --checkpoint best.pt [--out DIR]

Prints 10-fold accuracy (threshold chosen on the other nine folds), TAR at FAR 1e-3 and 1e-4 from the
ROC, and writes ``roc.png`` and ``verification.json`` to ``--out`` (default: the checkpoint's folder).
``tasks.faces.train`` calls :func:`evaluate_pairs` after every epoch, so training and this CLI score
models the same way.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from datasets.faces import PairList, read_pairs
from eval.verification import VerificationResult, pair_scores, plot_roc, verification_report
from datasets.io import prepare_output_dir
from tasks.checkpoint import atomic_write_text
from tasks.faces.embed import embed_paths
from tasks.faces.losses import collapse_score
from tasks.cli import run_cli
from tasks.distributed import pick_device
from tasks.faces.model import load_face_model
from tasks.flags import add_alias, add_eval_flags

__all__ = ["evaluate_pairs", "main"]


def evaluate_pairs(
    model: nn.Module,
    pairs: PairList,
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    flip: bool = False,
    progress: bool = False,
) -> tuple[VerificationResult, dict[str, float]]:
    """Embed every image of ``pairs`` once and score the pairs by cosine similarity.

    Returns:
        ``(result, extra)`` where ``extra`` holds ``embedding_spread`` (see
        :func:`tasks.faces.losses.collapse_score`; near 0 means the embeddings have collapsed).
    """
    paths = pairs.unique_paths()
    emb = embed_paths(model, paths, batch_size=batch_size, device=device, flip=flip,
                      progress="embedding pairs" if progress else False)
    row = {p: i for i, p in enumerate(paths)}
    ia = np.fromiter((row[p] for p in pairs.path_a), dtype=np.int64, count=len(pairs))
    ib = np.fromiter((row[p] for p in pairs.path_b), dtype=np.int64, count=len(pairs))
    scores = pair_scores(emb[ia], emb[ib])
    folds = pairs.folds if pairs.num_folds >= 2 else None
    result = verification_report(scores, pairs.same, folds)
    return result, {"embedding_spread": collapse_score(torch.from_numpy(emb))}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Face verification (LFW protocol) of a face-embedding checkpoint.")
    parser.add_argument("--pairs", required=True, help="LFW-format pairs.txt")
    parser.add_argument("--data-root", required=True, help="folder with <name>/<name>_<i:04d>.jpg images")
    add_eval_flags(parser, batch_size=64)
    add_alias(parser, "--out", "--out-dir")
    parser.add_argument("--flip", action="store_true", help="average embeddings with the mirrored image's")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    args.device = pick_device(args.device)

    t0 = time.perf_counter()
    pairs = read_pairs(args.pairs, args.data_root)
    model, fp = load_face_model(args.checkpoint, args.device)
    out = prepare_output_dir(args.out_dir if args.out_dir else Path(args.checkpoint).resolve().parent)
    result, extra = evaluate_pairs(model, pairs, batch_size=args.batch_size, device=args.device,
                                   flip=args.flip, progress=True)
    roc = plot_roc(result, out / "roc.png", title=f"{Path(args.pairs).name}: {Path(args.checkpoint).name}")
    record = {"pairs": str(args.pairs), "data_root": str(args.data_root), "checkpoint": str(args.checkpoint),
              "fingerprint": fp, **result.metrics(), **extra,
              "fold_accuracy": list(result.kfold.fold_accuracy),
              "tar": [vars(t) for t in result.tar]}
    atomic_write_text(out / "verification.json", json.dumps(record, indent=2) + "\n")
    print(result.summary())
    print(f"embedding spread : {extra['embedding_spread']:.3f} (about 1 = spread out, 0 = collapsed)")
    print(f"ROC plot         : {roc}")
    print(f"results          : {out / 'verification.json'}  ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    run_cli(main)
