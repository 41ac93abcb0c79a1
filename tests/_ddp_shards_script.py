"""Run by tests/test_geo_shards.py under ``torchrun --nproc_per_node=2``: ``tasks.engine.fit`` over a
``ShardStream`` of geotagged tar shards (gloo on CPU, data-loader workers per rank).

Each rank writes ``<record_dir>/rank<R>.json``: the sample indices of every batch it trained on, its step
count and the loader's announced length (that file is this script's own, not the engine's output).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from datasets.geotagged import GeotaggedShards
from datasets.images import build_image_transform
from tasks.distributed import DistInfo
from tasks.engine import EngineConfig, build_train_loader, fit


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shards", required=True)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--record-dir", required=True)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4)
    args = p.parse_args()
    torch.set_num_threads(1)

    stream = GeotaggedShards(args.shards, build_image_transform(8, mean=None, std=None)).stream(shuffle_buffer=3)
    batches: list[list[int]] = []

    def loss_fn(model, batch, device):
        batches.append(batch["index"].tolist())
        north = (batch["target"][:, 0] > 0).long()
        return {"ce": F.cross_entropy(model(batch["image"].to(device)), north.to(device))}

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    cfg = EngineConfig(epochs=args.epochs, batch_size=args.batch_size, lr=0.05)
    result = fit(model, stream, cfg=cfg, output_dir=args.output_dir, loss_fn=loss_fn, num_workers=args.workers,
                 device="cpu")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    announced = len(build_train_loader(stream, args.batch_size, num_workers=0,
                                       dist=DistInfo(rank=rank, world_size=world, is_main=rank == 0)))
    record = {"rank": rank, "world_size": world, "batches": batches, "steps": result.steps, "announced": announced,
              "samples": len(stream)}
    out = Path(args.record_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
