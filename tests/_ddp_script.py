"""Run by tests/test_engine_ddp.py under ``torchrun --nproc_per_node=2``: a tiny fit with gloo on CPU.

Each rank records which dataset indices it trained on and its final weights in
``<shard_dir>/rank<R>.json`` (that file is this script's own, not the engine's output). With ``--pk``
the batches come from faces' P x K batch sampler (``fit(batch_sampler=...)``) instead of the
engine's shuffle.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from tasks.distributed import cleanup_distributed, init_distributed
from tasks.engine import EngineConfig, fit
from tasks.faces.data import PKSampler

N, DIM, CLASSES = 24, 6, 3


class IndexedBlobs(Dataset):
    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        centers = torch.randn(CLASSES, DIM, generator=torch.Generator().manual_seed(0)) * 3
        self.y = torch.randint(0, CLASSES, (n,), generator=g)
        self.x = centers[self.y] + torch.randn(n, DIM, generator=g)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i], i


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--output-dir", required=True)
    p.add_argument("--shard-dir", required=True)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--pk", action="store_true", help="P=2 x K=2 batches from tasks.faces.data.PKSampler")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    seen: list[int] = []

    def loss_fn(model, batch, device):
        x, y, idx = batch
        seen.extend(idx.tolist())
        return {"ce": F.cross_entropy(model(x.to(device)), y.to(device))}

    val = IndexedBlobs(30, 1)

    def evaluate_fn(model):
        return {"acc1": (model(val.x).argmax(1) == val.y).float().mean().item()}

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(DIM, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, CLASSES))
    cfg = EngineConfig(epochs=args.epochs, lr=0.1, metric="acc1", metric_mode="max", warmup_iters=2)
    train = IndexedBlobs(N, 0)
    if args.pk:
        init_distributed("cpu")  # as tasks.faces.train does: the sampler takes its rank from the group
        batching = {"batch_sampler": PKSampler(train.y.tolist(), 2, 2, seed=cfg.seed)}
    else:
        batching = {"batch_size": 4}
    fit(model, train, cfg=cfg, output_dir=args.output_dir, loss_fn=loss_fn, evaluate_fn=evaluate_fn, device="cpu",
        **batching)

    rank = int(os.environ["RANK"])
    shard_dir = Path(args.shard_dir)
    shard_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "rank": rank,
        "world_size": int(os.environ["WORLD_SIZE"]),
        "seen": seen,
        "labels": train.y.tolist(),
        "params": {k: v.detach().flatten().tolist() for k, v in model.named_parameters()},
        "buffers": {k: v.flatten().tolist() for k, v in model.named_buffers() if v.is_floating_point()},
    }
    (shard_dir / f"rank{rank}.json").write_text(json.dumps(record))
    cleanup_distributed()


if __name__ == "__main__":
    main()
