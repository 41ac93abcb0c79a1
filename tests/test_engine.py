"""Tests for tasks/engine.py and tasks/checkpoint.py on CPU with tiny models and synthetic data."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from tasks.checkpoint import (
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from tasks.engine import (
    EngineConfig,
    NonFiniteLossError,
    build_optimizer,
    build_param_groups,
    build_train_loader,
    fit,
    lr_factor,
)

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_CLASSES = 4
DIM = 8




def blobs(n: int, seed: int) -> TensorDataset:
    """Four well-separated Gaussian clusters in 8-D: learnable, chance accuracy is 25 %."""
    g = torch.Generator().manual_seed(1234)
    centers = torch.randn(NUM_CLASSES, DIM, generator=g) * 3.0
    g.manual_seed(seed)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    x = centers[y] + torch.randn(n, DIM, generator=g)
    return TensorDataset(x, y)


class NoisyBlobs(Dataset):
    """Adds random noise in __getitem__ so worker RNG seeding matters for reproducibility."""

    def __init__(self, base: TensorDataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        x, y = self.base[i]
        return x + 0.1 * torch.randn_like(x), y


def mlp(seed: int = 0, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(DIM, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, NUM_CLASSES))


def ce_loss(model, batch, device):
    x, y = batch
    return {"ce": F.cross_entropy(model(x.to(device)), y.to(device))}


def accuracy_fn(dataset: TensorDataset):
    x, y = dataset.tensors

    def evaluate_fn(model):
        assert not model.training and not torch.is_grad_enabled()
        return {"acc1": (model(x).argmax(1) == y).float().mean().item()}

    return evaluate_fn


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_learns_a_synthetic_problem(tmp_path):
    cfg = EngineConfig(epochs=5, lr=0.1, metric="acc1", metric_mode="max", warmup_iters=3)
    model = mlp()
    res = fit(
        model, blobs(128, 0), cfg=cfg, batch_size=16, output_dir=tmp_path, loss_fn=ce_loss,
        evaluate_fn=accuracy_fn(blobs(200, 1)), meta={"classes": ["a", "b", "c", "d"], "label_to_id": {1: 7}},
        config_dict={"task": "toy", "engine": cfg.to_dict()},
    )
    recs = read_metrics(tmp_path)
    assert [r["epoch"] for r in recs] == [1, 2, 3, 4, 5]
    losses = [r["train"]["loss"] for r in recs]
    assert losses[-1] < 0.5 * losses[0]
    assert recs[-1]["train"]["ce"] == pytest.approx(losses[-1])
    assert recs[-1]["eval"]["acc1"] > 0.9  # chance is 0.25
    assert res.best_metric == max(r["eval"]["acc1"] for r in recs)
    assert res.epochs == 5 and res.steps == 5 * 8
    assert res.best_path == tmp_path / "best.pt" and res.last_path == tmp_path / "last.pt"
    ck = load_checkpoint(tmp_path / "last.pt")
    assert ck["meta"] == {"classes": ["a", "b", "c", "d"], "label_to_id": {1: 7}}
    assert ck["config"]["task"] == "toy"
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["engine"]["lr"] == 0.1
    assert "epochs completed : 5" in res.summary()


class _Interrupted(Exception):
    pass


def _rng_heavy_loss(model, batch, device):
    """Uses Python's and NumPy's global RNGs too, so all of them must be restored on resume."""
    x, y = batch
    x = x + 0.01 * float(np.random.randn())
    return {"ce": F.cross_entropy(model(x.to(device)), y.to(device)) * (1.0 + 0.01 * random.random())}


@pytest.mark.parametrize(
    "case",
    [
        # SGD + cosine over 4 epochs, killed during epoch 3, random augmentation in a DataLoader worker.
        dict(cfg=dict(optimizer="sgd", nesterov=True, lr=0.05, schedule="cosine"), interrupt=True, workers=1),
        # RMSprop + warmup + step: first run is configured for 2 epochs, the resume extends to 4.
        dict(
            cfg=dict(optimizer="rmsprop", lr=0.01, schedule="step", milestones=[1, 3], warmup_iters=5, grad_clip=1.0),
            interrupt=False,
            workers=0,
        ),
    ],
    ids=["sgd-cosine-interrupted", "rmsprop-step-warmup-extended"],
)
def test_resume_reproduces_uninterrupted_run(tmp_path, case):
    data = NoisyBlobs(blobs(48, 0))
    evaluate_fn = accuracy_fn(blobs(64, 1))
    kw = dict(batch_size=8, loss_fn=_rng_heavy_loss, evaluate_fn=evaluate_fn, num_workers=case["workers"])
    full_cfg = EngineConfig(epochs=4, metric="acc1", metric_mode="max", **case["cfg"])

    fit(mlp(dropout=0.2), data, cfg=full_cfg, output_dir=tmp_path / "full", **kw)

    part = tmp_path / "part"
    if case["interrupt"]:
        calls = {"n": 0}

        def dying_loss(model, batch, device):
            calls["n"] += 1
            if calls["n"] == 2 * 6 + 3:  # third batch of epoch 3
                raise _Interrupted
            return _rng_heavy_loss(model, batch, device)

        with pytest.raises(_Interrupted):
            fit(mlp(dropout=0.2), data, cfg=full_cfg, output_dir=part, **{**kw, "loss_fn": dying_loss})
    else:
        short = EngineConfig(epochs=2, metric="acc1", metric_mode="max", **case["cfg"])
        fit(mlp(dropout=0.2), data, cfg=short, output_dir=part, **kw)
    assert load_checkpoint(part / "last.pt")["epoch"] == 2

    # A fresh model with different init: everything must come from the checkpoint.
    res = fit(mlp(seed=99, dropout=0.2), data, cfg=full_cfg, output_dir=part, resume=part / "last.pt", **kw)
    assert res.resumed_from == part / "last.pt" and res.epochs == 4

    full, resumed = read_metrics(tmp_path / "full"), read_metrics(part)
    assert [r["epoch"] for r in resumed] == [1, 2, 3, 4]
    for a, b in zip(full, resumed):
        assert a["train"] == b["train"]  # exact float equality
        assert a["eval"] == b["eval"] and a["lr"] == b["lr"] and a["step"] == b["step"]
    wa = load_checkpoint(tmp_path / "full" / "last.pt")["model"]
    wb = load_checkpoint(part / "last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


class PairBatches:
    """A task's own batch sampler: each batch pairs indices of one class with another's, seeded by (seed, epoch)."""

    def __init__(self, labels: torch.Tensor, batches: int, seed: int = 0) -> None:
        self.by_class = [torch.nonzero(labels == c).flatten().tolist() for c in range(NUM_CLASSES)]
        self.batches, self.seed, self.epoch = batches, seed, 0
        self.epochs_seen: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.epochs_seen.append(epoch)

    def __len__(self) -> int:
        return self.batches

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        for _ in range(self.batches):
            a, b = rng.choice(NUM_CLASSES, 2, replace=False)
            yield [int(i) for c in (a, b) for i in rng.choice(self.by_class[c], 3)]


def test_batch_sampler_resume_reproduces_uninterrupted_run(tmp_path):
    base = blobs(48, 0)
    data = NoisyBlobs(base)
    kw = dict(loss_fn=_rng_heavy_loss, evaluate_fn=accuracy_fn(blobs(64, 1)), num_workers=1)
    cfg = EngineConfig(epochs=4, optimizer="sgd", lr=0.05, metric="acc1", metric_mode="max")
    full_sampler = PairBatches(base.tensors[1], batches=5)
    fit(mlp(dropout=0.2), data, cfg=cfg, batch_sampler=full_sampler, output_dir=tmp_path / "full", **kw)
    assert full_sampler.epochs_seen == [0, 1, 2, 3]  # told the epoch every epoch, like the DistributedSampler
    recs = read_metrics(tmp_path / "full")
    assert [r["step"] for r in recs] == [5, 10, 15, 20]  # len(sampler) batches per epoch

    part = tmp_path / "part"
    calls = {"n": 0}

    def dying_loss(model, batch, device):
        calls["n"] += 1
        if calls["n"] == 2 * 5 + 2:  # second batch of epoch 3
            raise _Interrupted
        return _rng_heavy_loss(model, batch, device)

    with pytest.raises(_Interrupted):
        fit(mlp(dropout=0.2), data, cfg=cfg, batch_sampler=PairBatches(base.tensors[1], 5), output_dir=part,
            **{**kw, "loss_fn": dying_loss})
    resumed_sampler = PairBatches(base.tensors[1], 5)
    fit(mlp(seed=99, dropout=0.2), data, cfg=cfg, batch_sampler=resumed_sampler, output_dir=part,
        resume=part / "last.pt", **kw)
    assert resumed_sampler.epochs_seen == [2, 3]
    for a, b in zip(read_metrics(tmp_path / "full"), read_metrics(part)):
        assert a["train"] == b["train"] and a["eval"] == b["eval"]  # exact float equality
    wa = load_checkpoint(tmp_path / "full" / "last.pt")["model"]
    wb = load_checkpoint(part / "last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_batch_sampler_contract_errors(tmp_path):
    data = blobs(16, 0)
    sampler = PairBatches(data.tensors[1], batches=2)
    kw = dict(cfg=EngineConfig(epochs=1), output_dir=tmp_path, loss_fn=ce_loss)
    with pytest.raises(ValueError, match="batch_size or batch_sampler, not both"):
        fit(mlp(), data, batch_size=8, batch_sampler=sampler, **kw)
    # without either, the loader takes cfg.batch_size: 16 samples in batches of 4
    assert fit(mlp(), data, **{**kw, "cfg": EngineConfig(epochs=1, batch_size=4)}).steps == 4
    sampler.num_replicas = 2  # built for a two-process run
    with pytest.raises(ValueError, match="built for 2 process"):
        fit(mlp(), data, batch_sampler=sampler, **kw)
    with pytest.raises(ValueError, match="yields no batches"):
        build_train_loader(data, None, batch_sampler=PairBatches(data.tensors[1], batches=0))


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path):
    calls = {"n": 0}
    snap = {}

    def files():
        return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.glob("*.pt")}

    def loss_fn(model, batch, device):
        out = ce_loss(model, batch, device)
        calls["n"] += 1
        if calls["n"] == 7:  # global step 6: third batch of epoch 2 (4 batches per epoch)
            snap.update(files())
            out["ce"] = out["ce"] * float("nan")
        return out

    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 6: loss=nan, ce=nan") as info:
        fit(mlp(), blobs(32, 0), cfg=EngineConfig(epochs=3), batch_size=8, output_dir=tmp_path, loss_fn=loss_fn)
    assert info.value.epoch == 2 and info.value.step == 6 and math.isnan(info.value.losses["ce"])
    # Nothing was written after the NaN: the epoch-1 checkpoints are byte-identical and untouched.
    assert set(snap) == {"last.pt", "best.pt"}
    assert files() == snap
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1
    assert len(read_metrics(tmp_path)) == 1
    assert not list(tmp_path.glob(".*tmp"))


def test_non_finite_without_resume_never_writes_a_checkpoint(tmp_path):
    def loss_fn(model, batch, device):
        return {"ce": ce_loss(model, batch, device)["ce"] + float("inf")}

    with pytest.raises(NonFiniteLossError, match="epoch 1, step 0"):
        fit(mlp(), blobs(16, 0), cfg=EngineConfig(epochs=2), batch_size=8, output_dir=tmp_path, loss_fn=loss_fn)
    assert not list(tmp_path.glob("*.pt"))


def test_checkpoint_is_weights_only_loadable_and_atomic(tmp_path):
    cfg = EngineConfig(epochs=2, optimizer="adamw", lr=1e-3, metric="acc1", metric_mode="max")
    fit(mlp(), blobs(32, 0), cfg=cfg, batch_size=8, output_dir=tmp_path, loss_fn=ce_loss,
        evaluate_fn=accuracy_fn(blobs(32, 1)))
    ck = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=True)
    for key in ("model", "optimizer", "scheduler", "scaler", "epoch", "step", "rng", "best_metric", "config", "meta"):
        assert key in ck
    assert ck["epoch"] == 2 and ck["step"] == 8
    rng = ck["rng"][0]
    assert isinstance(rng["torch"], torch.Tensor) and isinstance(rng["numpy"]["keys"], torch.Tensor)
    assert len(rng["python"]["internal"]) == 625
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "config.yaml", "last.pt", "metrics.jsonl"]


def test_save_checkpoint_failure_leaves_old_file_and_no_temp(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"a": torch.ones(3)})
    good = path.read_bytes()
    with pytest.raises(Exception):
        save_checkpoint(path, {"a": lambda: 0})  # not picklable: torch.save fails mid-write
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


class _NotPlain:
    pass


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    save_checkpoint(tmp_path / "ok.pt", {"w": torch.arange(1000)})
    (tmp_path / "trunc.pt").write_bytes((tmp_path / "ok.pt").read_bytes()[:200])
    with pytest.raises(CheckpointError, match="trunc.pt"):
        load_checkpoint(tmp_path / "trunc.pt")
    torch.save({"obj": _NotPlain()}, tmp_path / "unsafe.pt")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(tmp_path / "unsafe.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_checkpoint(tmp_path / "list.pt")


def test_rng_state_round_trip_through_weights_only_file(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leaves a cached Gaussian in NumPy's state
    save_checkpoint(tmp_path / "rng.pt", {"rng": capture_rng_state()})
    first = (random.random(), np.random.randn(3).tolist(), torch.rand(3).tolist())
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert (random.random(), np.random.randn(3).tolist(), torch.rand(3).tolist()) == first


@pytest.mark.parametrize("mode, expected_epoch", [("max", 2), ("min", 1)])
def test_best_checkpoint_follows_metric(tmp_path, mode, expected_epoch):
    scripted = iter([0.3, 0.7, 0.5])
    cfg = EngineConfig(epochs=3, metric="score", metric_mode=mode)
    res = fit(mlp(), blobs(16, 0), cfg=cfg, batch_size=8, output_dir=tmp_path, loss_fn=ce_loss,
              evaluate_fn=lambda m: {"score": next(scripted), "other": 1})
    best = load_checkpoint(tmp_path / "best.pt")
    expected = {1: 0.3, 2: 0.7}[expected_epoch]
    assert best["epoch"] == expected_epoch and best["best_metric"] == expected
    assert res.best_epoch == expected_epoch and res.best_metric == expected
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 3
    assert [r["best_epoch"] for r in read_metrics(tmp_path)][-1] == expected_epoch


def test_without_evaluate_fn_best_is_lowest_train_loss(tmp_path):
    res = fit(mlp(), blobs(64, 0), cfg=EngineConfig(epochs=3, lr=0.1), batch_size=16, output_dir=tmp_path,
              loss_fn=ce_loss)
    recs = read_metrics(tmp_path)
    assert [r["eval"]["loss"] for r in recs] == [r["train"]["loss"] for r in recs]
    assert res.best_metric == min(r["train"]["loss"] for r in recs)
    with pytest.raises(ValueError, match="need an evaluate_fn"):
        fit(mlp(), blobs(16, 0), cfg=EngineConfig(epochs=1, metric="acc1", metric_mode="max"), batch_size=8,
            output_dir=tmp_path / "x", loss_fn=ce_loss)


class TinyMobileBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 16, 1, bias=False)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=2)  # grouped, not depthwise
        self.fc = nn.Linear(16, 3)
        self.frozen = nn.Linear(3, 3)
        self.frozen.requires_grad_(False)


def _group_ids(groups):
    return {g["name"]: {id(p) for p in g["params"]} for g in groups}


def test_weight_decay_groups_exclude_depthwise_norm_and_bias():
    m = TinyMobileBlock()
    groups = _group_ids(build_param_groups(m, 4e-5))
    assert groups["decay"] == {id(m.pw.weight), id(m.grouped.weight), id(m.fc.weight)}
    assert groups["no_decay"] == {
        id(m.dw.weight), id(m.bn1.weight), id(m.bn1.bias), id(m.grouped.bias), id(m.fc.bias)
    }

    groups = _group_ids(build_param_groups(m, 4e-5, decay_depthwise=True))
    assert id(m.dw.weight) in groups["decay"] and id(m.bn1.weight) in groups["no_decay"]
    groups = _group_ids(build_param_groups(m, 4e-5, decay_depthwise=True, decay_norm_bias=True))
    assert set(groups) == {"decay"}

    opt = build_optimizer(m, EngineConfig(optimizer="rmsprop", weight_decay=1e-4))
    wd = {g["name"]: g["weight_decay"] for g in opt.param_groups}
    assert wd == {"decay": 1e-4, "no_decay": 0.0}
    assert opt.param_groups[0]["alpha"] == 0.9 and opt.param_groups[0]["eps"] == 1.0
    assert opt.param_groups[0]["momentum"] == 0.9


def test_amp_bf16_on_cpu_runs_an_epoch(tmp_path):
    seen = []

    def loss_fn(model, batch, device):
        x, y = batch
        logits = model(x.to(device))
        seen.append(logits.dtype)
        return {"ce": F.cross_entropy(logits, y.to(device))}

    res = fit(mlp(), blobs(32, 0), cfg=EngineConfig(epochs=1, amp=True, grad_clip=5.0), batch_size=8,
              output_dir=tmp_path, loss_fn=loss_fn)
    assert set(seen) == {torch.bfloat16}
    assert math.isfinite(res.history[0]["train"]["loss"])
    assert load_checkpoint(tmp_path / "last.pt")["scaler"] == {}  # no GradScaler on CPU


def test_metrics_one_line_per_evaluation_and_config_yaml(tmp_path):
    evals = []
    cfg = EngineConfig(epochs=5, eval_every=2, metric="acc1", metric_mode="max")

    def evaluate_fn(model):
        evals.append(1)
        return accuracy_fn(blobs(16, 1))(model)

    fit(mlp(), blobs(16, 0), cfg=cfg, batch_size=8, output_dir=tmp_path, loss_fn=ce_loss,
        evaluate_fn=evaluate_fn, config_dict={"engine": cfg.to_dict(), "data": {"root": Path("/d")}})
    recs = read_metrics(tmp_path)
    assert len(evals) == 3 and [r["epoch"] for r in recs] == [2, 4, 5]
    assert [r["step"] for r in recs] == [4, 8, 10]
    assert all("acc1" in r["eval"] and r["metric"] == "acc1" and "lr" in r and "time" in r for r in recs)
    assert yaml.safe_load((tmp_path / "config.yaml").read_text()) == {"engine": cfg.to_dict(), "data": {"root": "/d"}}
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 5  # last.pt is written every epoch


def test_resume_of_a_finished_run_only_reports(tmp_path):
    fit(mlp(), blobs(16, 0), cfg=EngineConfig(epochs=2), batch_size=8, output_dir=tmp_path, loss_fn=ce_loss)
    snap = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}

    def never(*a):
        raise AssertionError("must not train")

    res = fit(mlp(), blobs(16, 0), cfg=EngineConfig(epochs=2), batch_size=8, output_dir=tmp_path, loss_fn=never,
              resume=tmp_path / "last.pt")
    assert res.epochs == 2 and res.history == [] and res.steps == 4
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == snap


def test_resume_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        fit(mlp(), blobs(16, 0), cfg=EngineConfig(epochs=1), batch_size=8, output_dir=tmp_path, loss_fn=ce_loss,
            resume=tmp_path / "missing.pt")
    fit(mlp(), blobs(16, 0), cfg=EngineConfig(epochs=1), batch_size=8, output_dir=tmp_path, loss_fn=ce_loss)
    other = nn.Sequential(nn.Linear(DIM, 5), nn.ReLU(), nn.Linear(5, NUM_CLASSES))
    with pytest.raises(CheckpointError, match="do not fit this model"):
        fit(other, blobs(16, 0), cfg=EngineConfig(epochs=2), batch_size=8, output_dir=tmp_path, loss_fn=ce_loss,
            resume=tmp_path / "last.pt")


def test_lr_schedule_shapes():
    ipe = 10
    cos = EngineConfig(epochs=3, lr=0.1, warmup_iters=5, warmup_factor=0.1, min_lr=0.001)
    assert lr_factor(0, cos, ipe) == pytest.approx(0.1)
    assert lr_factor(5, cos, ipe) == pytest.approx(1.0)
    assert lr_factor(30, cos, ipe) == pytest.approx(0.01)
    assert lr_factor(2, cos, ipe) < lr_factor(4, cos, ipe)
    assert lr_factor(10, cos, ipe) > lr_factor(20, cos, ipe)
    step = EngineConfig(epochs=5, schedule="step", milestones=[2, 4], gamma=0.5)
    assert [lr_factor(e * ipe, step, ipe) for e in range(5)] == [1.0, 1.0, 0.5, 0.5, 0.25]
    assert lr_factor(19, step, ipe) == 1.0
    assert lr_factor(7, EngineConfig(schedule="constant"), ipe) == 1.0


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(optimizer="adam"), "optimizer"),
        (dict(schedule="poly"), "schedule"),
        (dict(metric_mode="best"), "metric_mode"),
        (dict(epochs=0), "epochs"),
        (dict(milestones=[3, 2]), "milestones"),
        (dict(lr=-1.0), "lr"),
        (dict(grad_clip=0.0), "grad_clip"),
        (dict(nesterov=True, optimizer="adamw"), "nesterov"),
    ],
)
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"EngineConfig.{field}="):
        EngineConfig(**kwargs)


def test_config_from_dict_rejects_unknown_keys():
    assert EngineConfig.from_dict({"epochs": 3, "milestones": [1, 2]}).milestones == [1, 2]
    with pytest.raises(ValueError, match=r"cfg.yaml: unknown key 'lr_decay'"):
        EngineConfig.from_dict({"lr_decay": 0.1}, source="cfg.yaml")


def test_loader_order_depends_only_on_seed_and_epoch():
    ds = TensorDataset(torch.arange(20))

    def order(seed, epoch):
        loader = build_train_loader(ds, 4, seed=seed)
        loader.sampler.set_epoch(epoch)
        torch.manual_seed(epoch * 7 + 1)  # global RNG must not influence the order
        return torch.cat([b[0] for b in loader]).tolist()

    assert order(0, 1) == order(0, 1)
    assert order(0, 1) != order(0, 2) and order(0, 1) != order(1, 1)
    assert sorted(order(0, 3)) == list(range(20))
    with pytest.raises(ValueError, match="empty"):
        build_train_loader(TensorDataset(torch.zeros(0)), 4)
    with pytest.raises(ValueError, match="batch_size=0"):
        build_train_loader(ds, 0)


def test_loss_fn_contract_errors(tmp_path):
    kw = dict(cfg=EngineConfig(epochs=1), batch_size=8, output_dir=tmp_path)
    with pytest.raises(TypeError, match="scalar tensor"):
        fit(mlp(), blobs(16, 0), loss_fn=lambda m, b, d: {"ce": torch.ones(2)}, **kw)
    with pytest.raises(ValueError, match="reserved"):
        fit(mlp(), blobs(16, 0), loss_fn=lambda m, b, d: {"loss": ce_loss(m, b, d)["ce"], "x": torch.zeros(())}, **kw)
    # A bare tensor is accepted as the total loss.
    res = fit(mlp(), blobs(16, 0), loss_fn=lambda m, b, d: ce_loss(m, b, d)["ce"], **kw)
    assert set(res.history[0]["train"]) == {"loss"}


def test_nan_metric_never_becomes_best(tmp_path):
    scripted = iter([float("nan"), 0.4, float("nan")])
    cfg = EngineConfig(epochs=3, metric="score", metric_mode="max")
    res = fit(mlp(), blobs(16, 0), cfg=cfg, batch_size=8, output_dir=tmp_path, loss_fn=ce_loss,
              evaluate_fn=lambda m: {"score": next(scripted)})
    assert res.best_epoch == 2 and res.best_metric == 0.4
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 2
    with pytest.raises(TypeError, match="must be a number"):
        fit(mlp(), blobs(16, 0), cfg=cfg, batch_size=8, output_dir=tmp_path / "x", loss_fn=ce_loss,
            evaluate_fn=lambda m: {"score": "high"})


@pytest.mark.parametrize("n, steps", [(16, 2), (17, 2), (18, 3), (1, 1)])
def test_a_last_training_batch_of_one_is_dropped(n, steps, capsys):
    """BatchNorm cannot train on one sample at a 1x1 map (SSD's extras): that batch is dropped, and said."""
    from torch.utils.data import TensorDataset

    from tasks.engine import build_train_loader

    loader = build_train_loader(TensorDataset(torch.zeros(n, 3)), batch_size=8 if n > 1 else 4)
    assert len(loader) == steps and sum(len(b[0]) for b in loader) == (n - 1 if n == 17 else n)
    assert ("last batch of one" in capsys.readouterr().out) == (n == 17)
