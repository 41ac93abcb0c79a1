"""DDP smoke test: tasks.engine.fit under torchrun with 2 CPU processes (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import torch

from tasks.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).with_name("_ddp_script.py")
EPOCHS = 2
N = 24  # dataset size in _ddp_script.py; 12 per rank, 3 batches of 4


def _torchrun(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    out, shards = tmp_path / "out", tmp_path / "shards"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",
    }
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
        str(SCRIPT), "--output-dir", str(out), "--shard-dir", str(shards), "--epochs", str(EPOCHS), *extra,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, [json.loads((shards / f"rank{r}.json").read_text()) for r in range(2)]


def test_fit_under_torchrun_two_cpu_ranks(tmp_path):
    out = tmp_path / "out"
    proc, ranks = _torchrun(tmp_path)

    # Only rank 0 printed the summary and wrote files.
    assert (proc.stdout + proc.stderr).count("training finished") == 1
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "config.yaml", "last.pt", "metrics.jsonl"]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(1, EPOCHS + 1))

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


def test_batch_sampler_gives_each_rank_its_own_batches(tmp_path):
    """fit(batch_sampler=PKSampler) under torchrun: each rank trains on its shard of one seeded plan."""
    from tasks.faces.data import PKSampler

    proc, ranks = _torchrun(tmp_path, "--pk")
    assert (proc.stdout + proc.stderr).count("training finished") == 1
    labels = ranks[0]["labels"]
    whole = PKSampler(labels, 2, 2, seed=0, num_replicas=1, rank=0)  # the single-process plan, 6 batches
    per_rank = len(whole.plan(0)) // 2
    for e in range(EPOCHS):
        plan = whole.plan(e)
        got = []
        for r in ranks:
            seen = r["seen"][e * per_rank * 4:(e + 1) * per_rank * 4]
            got.append([seen[i:i + 4] for i in range(0, len(seen), 4)])
        assert got[0] == plan[0::2] and got[1] == plan[1::2]  # rank r: batches r, r + 2, ... of the plan
        assert not set(map(tuple, got[0])) & set(map(tuple, got[1])), f"epoch {e}: ranks share a batch"
        for batch in got[0] + got[1]:
            assert sorted(Counter(labels[i] for i in batch).values()) == [2, 2]  # P=2 identities x K=2
    assert ranks[0]["seen"][:per_rank * 4] != ranks[0]["seen"][per_rank * 4:2 * per_rank * 4]  # new epoch
    assert ranks[0]["params"] == ranks[1]["params"]
