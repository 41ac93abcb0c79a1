"""The one training loop every task of the suite uses.

A plain loop in the style of the torchvision reference scripts: :func:`train_one_epoch` runs one
pass over the data, :func:`evaluate` calls a task's evaluation function, and :func:`fit` strings
them together with checkpointing, resume, logging and DDP. Tasks supply a ``loss_fn``
(batch -> dict of named losses) and optionally an ``evaluate_fn`` (model -> dict of metrics).

Paper settings (MobileNets, Howard et al. 2017, Section 3.2 "Training"): RMSprop with asynchronous
gradient descent as in Inception V3, "less regularization and data augmentation", and "very little
or no weight decay (l2 regularization) on the depthwise filters since there are so few parameters in
them". Hence the RMSprop defaults (decay 0.9, momentum 0.9, epsilon 1.0 as in the TF-slim training
scripts) and the weight-decay exclusion of depthwise filters, normalisation layers and biases.
Note that ``torch.optim.RMSprop`` adds epsilon outside the square root and starts its running
average at zero, whereas TensorFlow adds it inside and starts at one; with epsilon = 1 both damp
small-gradient steps the same way, but the update is not bit-identical to TensorFlow's.

Conventions:
    * ``epoch`` in checkpoints, ``metrics.jsonl`` and messages counts *completed* epochs (1-based).
    * ``step`` is the global iteration count; the learning rate schedule is stepped per iteration.
    * Data order is a function of ``(cfg.seed, epoch)`` only (a seeded ``DistributedSampler`` even
      in single-process runs, or a task's batch sampler told the epoch the same way) and every RNG
      is checkpointed, so ``resume`` reproduces an uninterrupted run exactly (bitwise on CPU with
      the same settings and world size).
"""

from __future__ import annotations

import bisect
import contextlib
import json
import math
import random
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
import yaml
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, Sampler
from tqdm import tqdm

from tasks.checkpoint import (
    CheckpointError,
    atomic_write_text,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    to_plain,
)
from tasks.config import build_section
from tasks.distributed import (
    DistInfo,
    all_gather_object,
    barrier,
    broadcast_object,
    cleanup_distributed,
    init_distributed,
)

__all__ = [
    "EngineConfig",
    "EpochStats",
    "FitResult",
    "NonFiniteLossError",
    "build_optimizer",
    "build_param_groups",
    "build_scheduler",
    "build_train_loader",
    "evaluate",
    "fit",
    "lr_factor",
    "seed_everything",
    "train_one_epoch",
]

LossFn = Callable[[nn.Module, Any, torch.device], Mapping[str, Tensor] | Tensor]
EvaluateFn = Callable[[nn.Module], Mapping[str, Any]]

_OPTIMIZERS = ("sgd", "rmsprop", "adamw")
_SCHEDULES = ("cosine", "step", "constant")
_NORM_LAYERS = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
    nn.LayerNorm,
)
_CONV_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


# --------------------------------------------------------------------------------------------
# Configuration and results
# --------------------------------------------------------------------------------------------


@dataclass
class EngineConfig:
    """Optimisation and bookkeeping settings shared by every task.

    Attributes:
        epochs: total number of epochs (resuming continues up to this count).
        batch_size: images (samples) per batch and process.
        optimizer: "sgd", "rmsprop" or "adamw".
        lr: peak learning rate (reached after warmup).
        momentum: SGD / RMSprop momentum.
        nesterov: Nesterov momentum for SGD.
        weight_decay: L2 / decoupled weight decay for the "decay" parameter group.
        decay_depthwise: apply weight decay to depthwise conv filters (the paper uses little or
            none; a conv is depthwise when ``groups > 1 and groups == in_channels``).
        decay_norm_bias: apply weight decay to normalisation-layer parameters and biases.
        rmsprop_alpha: RMSprop decay of the squared-gradient average (TF's "decay").
        rmsprop_eps: RMSprop epsilon.
        adamw_betas: AdamW betas.
        adamw_eps: AdamW epsilon.
        schedule: "cosine" (to ``min_lr`` at the last iteration), "step" (times ``gamma`` at each
            epoch in ``milestones``) or "constant".
        warmup_iters: linear warmup length in *iterations*, from ``warmup_factor * lr`` to ``lr``.
        warmup_factor: starting fraction of the learning rate during warmup.
        milestones: epochs (counted from 0) at which the step schedule multiplies lr by ``gamma``.
        gamma: step-schedule factor.
        min_lr: final learning rate of the cosine schedule.
        grad_clip: max total gradient norm, or None for no clipping.
        amp: mixed precision: fp16 autocast + GradScaler on CUDA, bf16 autocast on CPU.
        eval_every: evaluate every this many epochs (and always after the last one).
        metric: key of the evaluation dict that selects ``best.pt``. Without an ``evaluate_fn``
            the only metric is "loss" (mean training loss of the epoch).
        metric_mode: "max" (higher is better) or "min".
        seed: seeds Python, NumPy and torch (plus the rank) and the data order.
        log_every: refresh the progress-bar loss/lr every this many iterations.
        sync_bn: convert BatchNorm to SyncBatchNorm under DDP.
        find_unused_parameters: passed to DistributedDataParallel.
        drop_last: drop the last incomplete batch of each epoch.
    """

    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 4e-5
    decay_depthwise: bool = False
    decay_norm_bias: bool = False
    rmsprop_alpha: float = 0.9
    rmsprop_eps: float = 1.0
    adamw_betas: tuple[float, float] = (0.9, 0.999)
    adamw_eps: float = 1e-8
    schedule: str = "cosine"
    warmup_iters: int = 0
    warmup_factor: float = 0.001
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    min_lr: float = 0.0
    grad_clip: float | None = None
    amp: bool = False
    eval_every: int = 1
    metric: str = "loss"
    metric_mode: str = "min"
    seed: int = 0
    log_every: int = 10
    sync_bn: bool = False
    find_unused_parameters: bool = False
    drop_last: bool = False

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"EngineConfig.{name}={getattr(self, name)!r}: {why}")

        for name in ("epochs", "batch_size", "eval_every", "log_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise bad(name, "must be an integer >= 1")
        if self.optimizer not in _OPTIMIZERS:
            raise bad("optimizer", f"must be one of {_OPTIMIZERS}")
        if self.schedule not in _SCHEDULES:
            raise bad("schedule", f"must be one of {_SCHEDULES}")
        if self.metric_mode not in ("max", "min"):
            raise bad("metric_mode", "must be 'max' or 'min'")
        if not isinstance(self.metric, str) or not self.metric:
            raise bad("metric", "must be a non-empty string")
        for name in ("lr", "rmsprop_eps", "adamw_eps", "gamma"):
            if not float(getattr(self, name)) > 0:
                raise bad(name, "must be > 0")
        for name in ("momentum", "weight_decay", "min_lr"):
            if not float(getattr(self, name)) >= 0:
                raise bad(name, "must be >= 0")
        if not 0 < self.rmsprop_alpha < 1:
            raise bad("rmsprop_alpha", "must be in (0, 1)")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise bad("nesterov", "needs optimizer='sgd' and momentum > 0")
        if isinstance(self.warmup_iters, bool) or not isinstance(self.warmup_iters, int) or self.warmup_iters < 0:
            raise bad("warmup_iters", "must be an integer >= 0")
        if not 0 < self.warmup_factor <= 1:
            raise bad("warmup_factor", "must be in (0, 1]")
        if self.grad_clip is not None and not float(self.grad_clip) > 0:
            raise bad("grad_clip", "must be > 0 or None")
        betas = tuple(self.adamw_betas)
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise bad("adamw_betas", "must be two numbers in [0, 1)")
        self.adamw_betas = (float(betas[0]), float(betas[1]))
        ms = list(self.milestones)
        if any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in ms) or ms != sorted(set(ms)):
            raise bad("milestones", "must be strictly increasing integers >= 1 (epochs)")
        self.milestones = ms
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise bad("seed", "must be an integer >= 0")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "config") -> EngineConfig:
        """Build from a YAML mapping through the one config check (``tasks.config.build_section``)."""
        return build_section(cls, d, source)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (lists instead of tuples) for YAML and checkpoints."""
        return to_plain(asdict(self), "EngineConfig")


class NonFiniteLossError(RuntimeError):
    """The loss (or, when clipping, the gradient norm) became NaN/inf; training stopped.

    A user error for the command line (``user_error``): the data or the settings diverge, and the
    message says where.

    Raised before the offending batch touches the weights; no checkpoint is written after it.

    Attributes:
        epoch: 1-based epoch in which it happened.
        step: global iteration index (0-based) of the offending batch.
        losses: the loss components at that step (the total under "loss").
        what: "loss" or "gradient norm".
    """

    user_error = True

    def __init__(self, epoch: int, step: int, losses: Mapping[str, float], what: str = "loss") -> None:
        self.epoch, self.step, self.losses, self.what = epoch, step, dict(losses), what
        parts = ", ".join(f"{k}={v:.6g}" for k, v in self.losses.items())
        super().__init__(
            f"non-finite {what} at epoch {epoch}, step {step}: {parts}. "
            "Training stopped; no checkpoint was written after this point, the last good one is intact."
        )


@dataclass
class EpochStats:
    """What :func:`train_one_epoch` reports: mean of each loss over the epoch (all ranks)."""

    losses: dict[str, float]
    steps: int
    lr: float
    time_s: float


@dataclass
class FitResult:
    """Summary of a :func:`fit` call (also printed by rank 0)."""

    output_dir: Path
    epochs: int
    steps: int
    metric: str
    metric_mode: str
    best_metric: float | None
    best_epoch: int | None
    best_path: Path | None
    last_path: Path | None
    wall_time_s: float
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: Path | None = None

    def summary(self) -> str:
        best = "n/a" if self.best_metric is None else f"{self.best_metric:.6g} at epoch {self.best_epoch}"
        lines = [
            f"epochs completed : {self.epochs} ({self.steps} steps)",
            f"best metric      : {self.metric} ({self.metric_mode}) = {best}",
            f"best checkpoint  : {self.best_path or '-'}",
            f"last checkpoint  : {self.last_path or '-'}",
            f"wall time        : {self.wall_time_s:.1f} s",
        ]
        if self.resumed_from is not None:
            lines.append(f"resumed from     : {self.resumed_from}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Seeding, data, optimiser, schedule
# --------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global RNG and torch (CPU and all CUDA devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_train_loader(
    dataset: Dataset,
    batch_size: int | None,
    collate_fn: Callable | None = None,
    num_workers: int = 0,
    seed: int = 0,
    dist: DistInfo | None = None,
    *,
    drop_last: bool = False,
    pin_memory: bool = False,
    batch_sampler: Sampler[list[int]] | None = None,
) -> DataLoader:
    """A shuffling training loader whose order depends only on ``(seed, epoch)``.

    A ``DistributedSampler`` is used even for one process (``num_replicas=1``): its permutation
    is seeded by ``seed + epoch`` (call ``loader.sampler.set_epoch(epoch)``; :func:`fit` does),
    which is what makes resumed runs see the same batches. Under DDP each rank gets a disjoint
    shard (padded by repetition to equal length). Worker processes are seeded by the DataLoader
    from the global torch RNG, which the checkpoint restores; they are not persistent because
    persistent workers would keep their first-epoch seeds across a resume boundary.

    A task that composes its own batches (faces' P identities x K images) passes a
    ``batch_sampler`` instead of ``batch_size``: it yields lists of dataset indices, already this
    rank's share under DDP, and for exact resumes its batches must depend only on its seed and the
    epoch given to its ``set_epoch(epoch)``, which :func:`fit` calls as for the DistributedSampler.

    A streamed dataset (an ``IterableDataset``, e.g. ``datasets.shards.ShardStream`` over tar shards)
    splits itself: it offers ``batches(batch_size=, rank=, world_size=, seed=, drop_last=, collate_fn=)``,
    an iterable of this rank's collated batches whose ``len()`` is the same on every rank (so no rank
    waits for another in DDP's collectives) and whose order follows its ``set_epoch(epoch)``. The loader
    iterates it with ``batch_size=None``; the data-loader workers split it among themselves.

    Args:
        dataset: map-style dataset, or a streamed one (above).
        batch_size: per-process batch size (``None`` with a ``batch_sampler``).
        collate_fn: passed to the DataLoader (e.g. a detection collate that keeps lists).
        num_workers: DataLoader worker processes.
        seed: data-order seed.
        dist: process placement; ``None`` means a single process.
        drop_last: drop the last incomplete batch.
        pin_memory: pin host memory (useful on CUDA).
        batch_sampler: yields the batches (index lists) itself; exclusive with ``batch_size``.

    Returns:
        The DataLoader.
    """
    if batch_sampler is not None and batch_size is not None:
        raise ValueError(f"pass batch_size or batch_sampler, not both (got batch_size={batch_size!r})")
    if batch_sampler is None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size={batch_size!r} must be an integer >= 1")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers={num_workers!r} must be an integer >= 0")
    if isinstance(dataset, DataLoader):
        raise TypeError("build_train_loader expects a Dataset, got a DataLoader")
    dist = dist or DistInfo()
    if isinstance(dataset, IterableDataset):
        if batch_sampler is not None:
            raise ValueError(f"streamed dataset {type(dataset).__name__} composes its own batches; no batch_sampler")
        if not hasattr(dataset, "batches"):
            raise TypeError(f"streamed dataset {type(dataset).__name__} has no batches(...) that splits it over "
                            "ranks with equal step counts (see datasets.shards.ShardStream)")
        if len(dataset) == 0:
            raise ValueError(f"training dataset {type(dataset).__name__} is empty")
        stream = dataset.batches(batch_size=batch_size, rank=dist.rank, world_size=dist.world_size, seed=seed,
                                 drop_last=drop_last, collate_fn=collate_fn)
        return DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory)
    try:
        n = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"dataset {type(dataset).__name__} has no len(); a map-style Dataset is required") from None
    if n == 0:
        raise ValueError(f"training dataset {type(dataset).__name__} is empty")
    if batch_sampler is None:
        sampler = DistributedSampler(
            dataset, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=seed, drop_last=False
        )
        if not drop_last and len(sampler) > batch_size and len(sampler) % batch_size == 1:
            # BatchNorm cannot train on a batch of one where a feature map is 1x1 (SSD's extra layers, any
            # MobileNet at 32 px); the shuffled sampler leaves out a different sample each epoch.
            if dist.is_main:
                print(f"note: {len(sampler)} training samples per process with batch_size={batch_size} leave a "
                      "last batch of one, which BatchNorm cannot train on; it is dropped (one sample per epoch)")
            drop_last = True
        batching: dict[str, Any] = {"batch_size": batch_size, "sampler": sampler, "drop_last": drop_last}
        empty = f"{len(sampler)} samples per process < batch_size={batch_size} with drop_last"
    else:
        # A sampler built for another world size would give ranks overlapping or missing batches.
        replicas = getattr(batch_sampler, "num_replicas", dist.world_size)
        if replicas != dist.world_size:
            raise ValueError(f"batch sampler {type(batch_sampler).__name__} was built for {replicas} process(es), "
                             f"this run has {dist.world_size}")
        batching = {"batch_sampler": batch_sampler}
        empty = f"batch sampler {type(batch_sampler).__name__} yields no batches"
    loader = DataLoader(dataset, collate_fn=collate_fn, num_workers=num_workers, pin_memory=pin_memory, **batching)
    if len(loader) == 0:
        raise ValueError(f"training loader is empty: {empty}")
    return loader


def _is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, _CONV_LAYERS) and module.groups > 1 and module.groups == module.in_channels


def build_param_groups(
    model: nn.Module,
    weight_decay: float,
    *,
    decay_depthwise: bool = False,
    decay_norm_bias: bool = False,
) -> list[dict[str, Any]]:
    """Split trainable parameters into a "decay" and a "no_decay" group.

    "no_decay" receives depthwise conv filters unless ``decay_depthwise`` (MobileNets Sec. 3.2),
    and normalisation-layer weights/biases plus every ``bias`` unless ``decay_norm_bias``.
    Shared parameters are counted once; frozen ones (``requires_grad=False``) are left out.

    Returns:
        Optimizer parameter groups ``{"name", "params", "weight_decay"}``; empty groups omitted.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if isinstance(module, _NORM_LAYERS) or pname == "bias":
                exempt = not decay_norm_bias
            elif _is_depthwise(module) and pname == "weight":
                exempt = not decay_depthwise
            else:
                exempt = False
            (no_decay if exempt else decay).append(p)
    groups = [
        {"name": "decay", "params": decay, "weight_decay": float(weight_decay)},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError(f"model {type(model).__name__} has no trainable parameters")
    return groups


def build_optimizer(model: nn.Module, cfg: EngineConfig) -> torch.optim.Optimizer:
    """SGD, RMSprop or AdamW over :func:`build_param_groups` of ``model``."""
    groups = build_param_groups(
        model, cfg.weight_decay, decay_depthwise=cfg.decay_depthwise, decay_norm_bias=cfg.decay_norm_bias
    )
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(
            groups, lr=cfg.lr, alpha=cfg.rmsprop_alpha, eps=cfg.rmsprop_eps, momentum=cfg.momentum
        )
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.adamw_betas, eps=cfg.adamw_eps)


def lr_factor(step: int, cfg: EngineConfig, iters_per_epoch: int) -> float:
    """Multiplier of ``cfg.lr`` at global iteration ``step`` (warmup times the main schedule).

    Warmup rises linearly from ``warmup_factor`` to 1 over ``warmup_iters`` iterations. Cosine
    decays from 1 at the end of warmup to ``min_lr / lr`` at the last iteration of
    ``cfg.epochs``; step multiplies by ``gamma`` once per milestone epoch reached.
    """
    warm = 1.0
    if step < cfg.warmup_iters:
        warm = cfg.warmup_factor + (1.0 - cfg.warmup_factor) * step / cfg.warmup_iters
    if cfg.schedule == "constant":
        main = 1.0
    elif cfg.schedule == "step":
        main = cfg.gamma ** bisect.bisect_right(cfg.milestones, step // iters_per_epoch)
    else:
        total = cfg.epochs * iters_per_epoch
        t = min(max((step - cfg.warmup_iters) / max(1, total - cfg.warmup_iters), 0.0), 1.0)
        floor = cfg.min_lr / cfg.lr
        main = floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))
    return warm * main


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: EngineConfig, iters_per_epoch: int) -> LambdaLR:
    """Per-iteration ``LambdaLR`` following :func:`lr_factor`.

    The factor is recomputed from the step count (not chained), so a resumed run with a different
    ``cfg.epochs`` simply follows the new schedule from the restored step.
    """
    if iters_per_epoch < 1:
        raise ValueError(f"iters_per_epoch={iters_per_epoch} must be >= 1")

    def factor(step: int) -> float:
        return lr_factor(step, cfg, iters_per_epoch)

    return LambdaLR(optimizer, factor)


# --------------------------------------------------------------------------------------------
# One epoch, one evaluation
# --------------------------------------------------------------------------------------------


def _autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    if not enabled:
        return contextlib.nullcontext()
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    if device.type == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    raise ValueError(f"amp is supported on cuda and cpu, not on device {device}")


def _loss_dict(out: Any) -> dict[str, Tensor]:
    """Validate what ``loss_fn`` returned; a bare tensor counts as ``{"loss": tensor}``."""
    if isinstance(out, Tensor):
        out = {"loss": out}
    if not isinstance(out, Mapping) or not out:
        raise TypeError(f"loss_fn must return a non-empty dict of scalar tensors, got {type(out).__name__}")
    losses: dict[str, Tensor] = {}
    for k, v in out.items():
        if not isinstance(k, str):
            raise TypeError(f"loss_fn returned a non-string key {k!r}")
        if not isinstance(v, Tensor) or v.numel() != 1:
            shape = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise TypeError(f"loss_fn returned {k!r} = {shape}; each loss must be a scalar tensor")
        losses[k] = v.reshape(())
    if "loss" in losses and len(losses) > 1:
        raise ValueError(f"loss_fn returned 'loss' next to {sorted(losses)}; 'loss' is reserved for their sum")
    return losses


def train_one_epoch(
    model: nn.Module,
    loss_fn: LossFn,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: LambdaLR,
    *,
    device: torch.device,
    epoch: int,
    start_step: int,
    cfg: EngineConfig,
    scaler: torch.amp.GradScaler | None = None,
    dist: DistInfo | None = None,
) -> EpochStats:
    """Train for one pass over ``loader``.

    Args:
        model: the (possibly DDP-wrapped) model; put in train mode here.
        loss_fn: ``loss_fn(model, batch, device)`` -> dict of named scalar losses, summed for backward.
        loader: training loader (its sampler's epoch must already be set).
        optimizer, scheduler: stepped once per iteration.
        device: training device.
        epoch: 0-based epoch index (messages show it 1-based).
        start_step: global iteration count before this epoch.
        cfg: grad clipping, amp, logging interval.
        scaler: an enabled GradScaler for fp16 on CUDA, else None.
        dist: process placement; losses are averaged over ranks for logging and the NaN check,
            so every rank stops together instead of leaving the others waiting in a collective.

    Returns:
        :class:`EpochStats` with the mean of each loss ("loss" is the total) over the epoch.

    Raises:
        NonFiniteLossError: before the step that would apply a NaN/inf loss (or gradient norm).
    """
    dist = dist or DistInfo(device=device)
    model.train()
    use_scaler = scaler is not None and scaler.is_enabled()
    sums: dict[str, float] = {}
    steps = 0
    step = start_step
    t0 = time.perf_counter()
    bar = tqdm(
        loader,
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        disable=not dist.is_main,
        leave=False,
        dynamic_ncols=True,
    )
    for batch in bar:
        with _autocast(device, cfg.amp):
            losses = _loss_dict(loss_fn(model, batch, device))
            total = sum(losses.values())
        record = {"loss": total} if "loss" in losses else {"loss": total, **losses}
        values = torch.stack([v.detach().float() for v in record.values()])
        if dist.distributed:
            torch_dist.all_reduce(values)
            values /= dist.world_size
        logged = dict(zip(record, values.tolist()))
        if not all(math.isfinite(v) for v in logged.values()):
            raise NonFiniteLossError(epoch + 1, step, logged)

        optimizer.zero_grad(set_to_none=True)
        if use_scaler:
            scaler.scale(total).backward()
            if cfg.grad_clip is not None:
                # Clip the true gradients; inf/NaN from fp16 overflow are handled by the scaler.
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            total.backward()
            if cfg.grad_clip is not None:
                norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                if not math.isfinite(float(norm)):
                    raise NonFiniteLossError(epoch + 1, step, {**logged, "grad_norm": float(norm)}, "gradient norm")
            optimizer.step()
        scheduler.step()

        for k, v in logged.items():
            sums[k] = sums.get(k, 0.0) + v
        steps += 1
        step += 1
        if steps % cfg.log_every == 0 or steps == 1:
            bar.set_postfix(loss=f"{sums['loss'] / steps:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.3g}")
    bar.close()
    if steps == 0:
        raise ValueError("training loader produced no batches")
    return EpochStats(
        losses={k: v / steps for k, v in sums.items()},
        steps=steps,
        lr=float(optimizer.param_groups[0]["lr"]),
        time_s=time.perf_counter() - t0,
    )


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def _metric_value(key: str, value: Any) -> Any:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise TypeError(f"evaluate_fn returned {key!r} with shape {tuple(value.shape)}; metrics must be scalars")
        return float(value.item())
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        return float(value)
    return to_plain(value, f"evaluate_fn result[{key!r}]")


def evaluate(model: nn.Module, evaluate_fn: EvaluateFn) -> dict[str, Any]:
    """Run ``evaluate_fn`` on the unwrapped model in eval mode under ``torch.no_grad()``.

    The model's previous train/eval mode is restored afterwards. Numbers (and scalar tensors) in
    the result become floats; other plain values (lists, strings) are kept for ``metrics.jsonl``.
    """
    net = _unwrap(model)
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = evaluate_fn(net)
    finally:
        net.train(was_training)
    if not isinstance(out, Mapping):
        raise TypeError(f"evaluate_fn must return a dict of metrics, got {type(out).__name__}")
    return {str(k): _metric_value(str(k), v) for k, v in out.items()}


# --------------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------------


def _improved(value: float, best: float | None, mode: str) -> bool:
    if not math.isfinite(value):  # a NaN metric never becomes "best"
        return False
    if best is None:
        return True
    return value > best if mode == "max" else value < best


def _set_epoch(loader: DataLoader, epoch: int) -> None:
    """Tell the sampler (the task's batch sampler, a streamed dataset) the epoch: data order is a function of it."""
    streamed = loader.dataset if isinstance(loader.dataset, IterableDataset) else None
    for sampler in (loader.sampler, loader.batch_sampler, streamed):
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)


def _say(dist: DistInfo, msg: str) -> None:
    if dist.is_main:
        tqdm.write(msg)


def _rewrite_metrics(path: Path, keep_upto_epoch: int) -> None:
    """Keep only records of epochs <= ``keep_upto_epoch``: a resumed run rewrites what follows."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("epoch"), int) and rec["epoch"] <= keep_upto_epoch:
            kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def _open_tensorboard(log_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: scalars go to metrics.jsonl only
        return None
    return SummaryWriter(log_dir=str(log_dir))


def _restore(
    ckpt: dict[str, Any],
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: LambdaLR,
    scaler: torch.amp.GradScaler,
) -> None:
    missing = [k for k in ("model", "optimizer", "scheduler", "epoch", "step", "rng") if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}; it was not written by tasks.engine.fit")
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path}: model weights do not fit this model: {e}") from e
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError) as e:
        raise CheckpointError(
            f"checkpoint {path}: optimizer state does not fit optimizer '{type(optimizer).__name__}': {e}"
        ) from e
    scheduler.load_state_dict(ckpt["scheduler"])
    if scaler.is_enabled() and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])


def fit(
    model: nn.Module,
    train_set: Dataset,
    *,
    cfg: EngineConfig,
    batch_size: int | None = None,
    output_dir: str | Path,
    loss_fn: LossFn,
    evaluate_fn: EvaluateFn | None = None,
    collate_fn: Callable | None = None,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    resume: str | Path | None = None,
    meta: Mapping[str, Any] | None = None,
    config_dict: Mapping[str, Any] | None = None,
    batch_sampler: Sampler[list[int]] | None = None,
) -> FitResult:
    """Train ``model`` on ``train_set`` for ``cfg.epochs`` epochs; the loop every task uses.

    Each epoch: ``model.train()``, one pass of :func:`train_one_epoch`, then (every
    ``cfg.eval_every`` epochs and after the last) an evaluation, a ``metrics.jsonl`` record and the
    checkpoints ``last.pt`` (every epoch) and ``best.pt`` (when ``cfg.metric`` improves).

    Evaluation: ``evaluate_fn(model)`` receives the *unwrapped* model already in eval mode under
    ``torch.no_grad()`` and returns a dict of metrics. Under DDP it runs on rank 0 only and the
    result is broadcast so every rank agrees on "best". Without ``evaluate_fn`` the metrics are
    ``{"loss": mean training loss of the epoch}`` and ``cfg`` must say metric "loss", mode "min".

    Under ``torchrun`` (RANK/WORLD_SIZE/LOCAL_RANK in the environment) the process group is
    created (gloo on CPU, nccl on CUDA) and torn down again if ``fit`` created it; the model is
    wrapped in DistributedDataParallel; only rank 0 prints and writes files. Every rank reads
    ``resume`` itself, so it must be on storage all ranks see.

    Args:
        model: plain (not DDP-wrapped) model; moved to ``device``.
        train_set: map-style training dataset, or a streamed one (see :func:`build_train_loader`).
        cfg: optimisation and bookkeeping settings.
        batch_size: per-process batch size (None: ``cfg.batch_size``; unused with ``batch_sampler``).
        output_dir: receives ``config.yaml``, ``metrics.jsonl``, ``last.pt``, ``best.pt`` (and
            ``tb/`` when tensorboard is installed).
        loss_fn: ``loss_fn(model, batch, device)`` -> dict of named scalar losses (or one tensor).
            It is called under autocast when ``cfg.amp``; it moves the batch to ``device``.
        evaluate_fn: see above.
        collate_fn: DataLoader collate function.
        num_workers: DataLoader workers.
        device: "cpu", "cuda" or "cuda:N".
        resume: a ``last.pt``/``best.pt`` written by ``fit``; training continues after its epoch up
            to ``cfg.epochs`` (nothing is trained if it is already there).
        meta: task metadata stored in every checkpoint (e.g. class names, label -> category id).
        config_dict: the task's resolved config, saved as ``config.yaml`` and in checkpoints;
            defaults to ``cfg`` itself.
        batch_sampler: composes the batches instead of ``batch_size`` + the seeded shuffle, e.g. faces'
            P x K identities; see :func:`build_train_loader`. Its ``set_epoch(epoch)``, if it has one,
            is called every epoch; under DDP it must yield this rank's own batches.

    Returns:
        A :class:`FitResult` (its ``summary()`` is printed by rank 0).

    Raises:
        NonFiniteLossError: a loss became NaN/inf; the last checkpoint on disk is the previous one.
        FileNotFoundError / CheckpointError: ``resume`` is missing, corrupt or does not fit.
    """
    if not isinstance(cfg, EngineConfig):
        raise TypeError(f"cfg must be an EngineConfig, got {type(cfg).__name__}")
    if isinstance(model, DistributedDataParallel):
        raise TypeError("fit expects the plain model; it wraps it in DistributedDataParallel itself")
    if evaluate_fn is None and (cfg.metric, cfg.metric_mode) != ("loss", "min"):
        raise ValueError(
            f"EngineConfig.metric={cfg.metric!r}, metric_mode={cfg.metric_mode!r} need an evaluate_fn; "
            "without one the metric is the mean training loss: use metric='loss', metric_mode='min'"
        )
    if batch_size is None and batch_sampler is None:
        batch_size = cfg.batch_size
    meta_plain = to_plain(dict(meta or {}), "meta")
    config_plain = to_plain(dict(config_dict), "config_dict") if config_dict is not None else cfg.to_dict()

    created_group = not (torch_dist.is_available() and torch_dist.is_initialized())
    dist = init_distributed(device)
    created_group = created_group and dist.distributed
    try:
        return _fit(
            model, train_set, cfg, batch_size, Path(output_dir), loss_fn, evaluate_fn, collate_fn,
            num_workers, dist, resume, meta_plain, config_plain, batch_sampler,
        )
    finally:
        if created_group:
            cleanup_distributed()


def _fit(
    model: nn.Module,
    train_set: Dataset,
    cfg: EngineConfig,
    batch_size: int | None,
    out: Path,
    loss_fn: LossFn,
    evaluate_fn: EvaluateFn | None,
    collate_fn: Callable | None,
    num_workers: int,
    dist: DistInfo,
    resume: str | Path | None,
    meta: dict[str, Any],
    config: dict[str, Any],
    batch_sampler: Sampler[list[int]] | None,
) -> FitResult:
    t_start = time.perf_counter()
    device = dist.device
    _autocast(device, cfg.amp)  # fail early on an unsupported amp device
    last_path, best_path = out / "last.pt", out / "best.pt"
    metrics_path = out / "metrics.jsonl"

    seed_everything(cfg.seed + dist.rank)
    if cfg.sync_bn and dist.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    loader = build_train_loader(
        train_set, batch_size, collate_fn, num_workers, cfg.seed, dist,
        drop_last=cfg.drop_last, pin_memory=device.type == "cuda", batch_sampler=batch_sampler,
    )
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, len(loader))
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and device.type == "cuda")

    start_epoch, step = 0, 0
    best: float | None = None
    best_epoch: int | None = None
    rng_state: dict[str, Any] | None = None
    resumed_from = Path(resume) if resume is not None else None
    if resumed_from is not None:
        ckpt = load_checkpoint(resumed_from, map_location="cpu")
        _restore(ckpt, resumed_from, model, optimizer, scheduler, scaler)
        start_epoch, step = int(ckpt["epoch"]), int(ckpt["step"])
        if (ckpt.get("metric"), ckpt.get("metric_mode")) == (cfg.metric, cfg.metric_mode):
            best, best_epoch = ckpt.get("best_metric"), ckpt.get("best_epoch")
        else:
            _say(dist, f"note: checkpoint tracked {ckpt.get('metric')!r} ({ckpt.get('metric_mode')}); "
                       f"now tracking {cfg.metric!r} ({cfg.metric_mode}), best is reset")
        rngs = ckpt["rng"] if isinstance(ckpt["rng"], list) else [ckpt["rng"]]
        if len(rngs) != dist.world_size:
            warnings.warn(
                f"checkpoint {resumed_from} was written by {len(rngs)} process(es), this run has "
                f"{dist.world_size}: training continues but will not match an uninterrupted run exactly",
                stacklevel=2,
            )
        rng_state = rngs[dist.rank % len(rngs)]
        del ckpt
        _say(dist, f"resumed from {resumed_from} at epoch {start_epoch}, step {step}")

    def result(history: list[dict[str, Any]], epochs_done: int) -> FitResult:
        return FitResult(
            output_dir=out, epochs=epochs_done, steps=step, metric=cfg.metric, metric_mode=cfg.metric_mode,
            best_metric=best, best_epoch=best_epoch,
            best_path=best_path if best_path.exists() else None,
            last_path=last_path if last_path.exists() else None,
            wall_time_s=time.perf_counter() - t_start, history=history, resumed_from=resumed_from,
        )

    if start_epoch >= cfg.epochs:
        res = result([], start_epoch)
        _say(dist, f"checkpoint already has {start_epoch} of {cfg.epochs} epochs; nothing to train\n{res.summary()}")
        return res

    train_model: nn.Module = model
    if dist.distributed:
        train_model = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.find_unused_parameters,
        )

    writer = None
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", yaml.safe_dump(config, sort_keys=False))
        _rewrite_metrics(metrics_path, start_epoch)
        writer = _open_tensorboard(out / "tb")
    if rng_state is not None:
        restore_rng_state(rng_state, device)

    history: list[dict[str, Any]] = []
    try:
        for epoch in range(start_epoch, cfg.epochs):
            _set_epoch(loader, epoch)
            stats = train_one_epoch(
                train_model, loss_fn, loader, optimizer, scheduler, device=device, epoch=epoch,
                start_step=step, cfg=cfg, scaler=scaler, dist=dist,
            )
            step += stats.steps
            done = epoch + 1

            record: dict[str, Any] | None = None
            if done % cfg.eval_every == 0 or done == cfg.epochs:
                t_eval = time.perf_counter()
                metrics = _evaluate_everywhere(model, evaluate_fn, stats, dist)
                if cfg.metric not in metrics:
                    raise ValueError(f"EngineConfig.metric={cfg.metric!r} is not among the metrics {sorted(metrics)}")
                value = metrics[cfg.metric]
                if not isinstance(value, float):
                    raise TypeError(f"metric {cfg.metric!r} must be a number, evaluate_fn returned {value!r}")
                improved = _improved(value, best, cfg.metric_mode)
                if improved:
                    best, best_epoch = value, done
                record = {
                    "epoch": done, "step": step, "lr": stats.lr, "train": stats.losses, "eval": metrics,
                    "metric": cfg.metric, "best_metric": best, "best_epoch": best_epoch,
                    "epoch_time_s": stats.time_s, "eval_time_s": time.perf_counter() - t_eval, "time": time.time(),
                }
                history.append(record)
            else:
                improved = False

            # Every rank contributes its RNG state so each can resume exactly where it was.
            rngs = all_gather_object(capture_rng_state(device), dist)
            if dist.is_main:
                if record is not None:
                    with metrics_path.open("a") as f:
                        f.write(json.dumps(record) + "\n")
                    _log_scalars(writer, record)
                    _say(dist, _epoch_line(record, cfg))
                ckpt = {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "epoch": done,
                    "step": step,
                    "rng": rngs,
                    "best_metric": best,
                    "best_epoch": best_epoch,
                    "metric": cfg.metric,
                    "metric_mode": cfg.metric_mode,
                    "world_size": dist.world_size,
                    "config": config,
                    "engine_config": cfg.to_dict(),
                    "meta": meta,
                }
                save_checkpoint(last_path, ckpt)
                if improved:
                    save_checkpoint(best_path, ckpt)
            barrier(dist)
    finally:
        if writer is not None:
            writer.close()

    res = result(history, cfg.epochs)
    _say(dist, "training finished\n" + res.summary())
    return res


def _evaluate_everywhere(
    model: nn.Module, evaluate_fn: EvaluateFn | None, stats: EpochStats, dist: DistInfo
) -> dict[str, Any]:
    """Evaluate on rank 0 and hand the result (or the failure) to every rank."""
    if evaluate_fn is None:
        return {"loss": stats.losses["loss"]}
    payload: tuple[str, Any] = ("ok", None)
    error: BaseException | None = None
    if dist.is_main:
        try:
            payload = ("ok", evaluate(model, evaluate_fn))
        except Exception as e:  # re-raised below, after the other ranks have been told
            error = e
            payload = ("error", f"{type(e).__name__}: {e}")
    payload = broadcast_object(payload, dist)
    if error is not None:
        raise error
    if payload[0] == "error":
        raise RuntimeError(f"evaluation failed on rank 0: {payload[1]}")
    return payload[1]


def _epoch_line(rec: dict[str, Any], cfg: EngineConfig) -> str:
    ev = " ".join(f"{k} {v:.4g}" for k, v in rec["eval"].items() if isinstance(v, float))
    best = "" if rec["best_metric"] is None else f" | best {cfg.metric} {rec['best_metric']:.4g} @ {rec['best_epoch']}"
    return (
        f"epoch {rec['epoch']}/{cfg.epochs} step {rec['step']} | train loss {rec['train']['loss']:.4f} "
        f"lr {rec['lr']:.3g} | eval {ev}{best} | {rec['epoch_time_s']:.1f}s"
    )


def _log_scalars(writer: Any, rec: dict[str, Any]) -> None:
    if writer is None:
        return
    step = rec["step"]
    writer.add_scalar("lr", rec["lr"], step)
    for k, v in rec["train"].items():
        writer.add_scalar(f"train/{k}", v, step)
    for k, v in rec["eval"].items():
        if isinstance(v, float):
            writer.add_scalar(f"eval/{k}", v, step)
    writer.flush()
