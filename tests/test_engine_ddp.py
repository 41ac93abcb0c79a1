"""DDP smoke test: tasks.engine.fit under torchrun with 2 CPU processes (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from tasks.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).with_name("_ddp_script.py")
EPOCHS = 2
N = 24  # dataset size in _ddp_script.py; 12 per rank, 3 batches of 4


def test_fit_under_torchrun_two_cpu_ranks(tmp_path):
    out, shards = tmp_path / "out", tmp_path / "shards"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",
    }
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
        str(SCRIPT), "--output-dir", str(out), "--shard-dir", str(shards), "--epochs", str(EPOCHS),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # Only rank 0 printed the summary and wrote files.
    assert (proc.stdout + proc.stderr).count("training finished") == 1
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "config.yaml", "last.pt", "metrics.jsonl"]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(1, EPOCHS + 1))

    ranks = [json.loads((shards / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    per_rank_epoch = N // 2
    for e in range(EPOCHS):
        a = ranks[0]["seen"][e * per_rank_epoch : (e + 1) * per_rank_epoch]
        b = ranks[1]["seen"][e * per_rank_epoch : (e + 1) * per_rank_epoch]
        assert set(a).isdisjoint(b), f"epoch {e}: ranks overlap"
        assert sorted(a + b) == list(range(N))
    assert ranks[0]["seen"][:per_rank_epoch] != ranks[0]["seen"][per_rank_epoch:]  # reshuffled per epoch

    # DDP kept the parameters identical; the checkpoint holds rank 0's parameters and buffers
    # (BatchNorm running stats are per rank between DDP's buffer broadcasts, so only rank 0's count).
    assert ranks[0]["params"] == ranks[1]["params"]
    ck = load_checkpoint(out / "last.pt")
    assert ck["epoch"] == EPOCHS and ck["world_size"] == 2 and len(ck["rng"]) == 2
    for k, v in {**ranks[0]["params"], **ranks[0]["buffers"]}.items():
        assert torch.equal(ck["model"][k].flatten(), torch.tensor(v, dtype=ck["model"][k].dtype)), k
