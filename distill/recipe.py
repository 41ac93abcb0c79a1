"""The learning rate ``distill.train`` uses when ``--lr`` is not given: a rule of batch size and width.

Distilling into a small MobileNet from a few hundred unlabeled images is a short run: 600 images at
batch 64 for 30 epochs are 270 optimiser steps. With so few steps the learning rate decides how far
the student gets; AdamW at a fixed 1e-3 left a 0.25 MobileNet-64 near the majority baseline on the
teachers of ``benchmarks/distill_lr.py``, while 1e-2 and more got much further (docs/distill.md has
the table). The recipe:

* peak lr ``REFERENCE_LR * sqrt(B / REFERENCE_BATCH) / alpha`` for AdamW, capped at ``MAX_LR``,
  where ``B`` is the batch over all processes and ``alpha`` the student's width multiplier:

  - square root of the batch: the usual rule for Adam-type optimisers (the gradient noise falls
    with the square root of the batch; SGD's linear rule overshoots with Adam);
  - ``1 / alpha``: Adam's per-weight steps have a fixed size, so a layer's output moves in
    proportion to its fan-in; a thinner network takes larger steps for the same change (the
    width rule of maximal-update parametrisation for hidden layers).

  ``REFERENCE_LR`` is the embedded default's own setting read through the rule: its 4e-3 at batch 16
  and alpha 0.5 (``configs/distill/default.yaml``) is 4e-3 at batch 64 and alpha 1.
* a linear warmup over the first ``WARMUP_ITERS`` iterations (from 0.1 % of the peak; the engine's
  ``warmup_factor``), a guard for the first Adam steps at these rates; the cosine decay to 0 of
  ``tasks.engine`` follows as before.

Only AdamW (``distill.train``'s optimiser) was measured; with ``--optimizer sgd`` or ``rmsprop``
and no ``--lr`` the previous default ``FALLBACK_LR`` is kept.
"""

from __future__ import annotations

import math
import os
from typing import Any

__all__ = ["FALLBACK_LR", "MAX_LR", "REFERENCE_BATCH", "REFERENCE_LR", "WARMUP_ITERS", "apply_recipe",
           "default_lr", "default_warmup_iters"]

REFERENCE_LR = 4e-3      # AdamW peak lr of a 1.0 MobileNet at batch 64
REFERENCE_BATCH = 64
MAX_LR = 3e-2            # highest rate measured to train stably (0.25 MobileNet-64, batch 64)
WARMUP_ITERS = 20
FALLBACK_LR = 1e-3       # --lr default before the recipe; kept for optimisers the recipe was not measured on


def default_lr(batch_size: int, alpha: float, *, optimizer: str = "adamw", world_size: int = 1) -> float:
    """Peak learning rate for a student of width ``alpha`` trained at ``batch_size`` per process.

    Args:
        batch_size: images per step in one process.
        alpha: the student's width multiplier (Section 3.3 of the MobileNets paper).
        optimizer: "adamw" follows the rule; other optimisers get ``FALLBACK_LR``.
        world_size: processes under torchrun; the rule uses the total batch.

    Returns:
        ``min(MAX_LR, REFERENCE_LR * sqrt(batch_size * world_size / REFERENCE_BATCH) / alpha)``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an int >= 1, got {world_size!r}")
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a number > 0, got {alpha!r}")
    if optimizer != "adamw":
        return FALLBACK_LR
    lr = REFERENCE_LR * math.sqrt(batch_size * world_size / REFERENCE_BATCH) / float(alpha)
    return min(MAX_LR, lr)


def default_warmup_iters(optimizer: str = "adamw") -> int:
    """Linear warmup length in iterations that goes with :func:`default_lr` (0 for the fallback)."""
    return WARMUP_ITERS if optimizer == "adamw" else 0


def apply_recipe(train: Any, alpha: float, *, lr_given: bool, warmup_given: bool) -> str | None:
    """Fill in the recipe where the user left the learning rate unset; returns a line saying so.

    Args:
        train: the run's ``tasks.engine.EngineConfig`` (``lr``, ``warmup_iters``, ``batch_size``,
            ``optimizer``); modified in place, so the run's ``config.yaml`` holds the resolved values
            and ``--config`` repeats the run exactly.
        alpha: the student's width multiplier.
        lr_given: a learning rate was set (flag or YAML): nothing changes and ``None`` is returned.
        warmup_given: a warmup was set (flag or YAML): it is kept.
    """
    if lr_given:
        return None
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    train.lr = default_lr(train.batch_size, alpha, optimizer=train.optimizer, world_size=world_size)
    if not warmup_given:
        train.warmup_iters = default_warmup_iters(train.optimizer)
    if train.optimizer != "adamw":
        return f"lr      : {train.lr:g} (no --lr; the recipe of distill.recipe is for adamw only)"
    batch = f"{train.batch_size}x{world_size}" if world_size > 1 else f"{train.batch_size}"
    return (f"lr      : {train.lr:.3g} (no --lr: distill.recipe, {REFERENCE_LR:g} x sqrt({batch}/{REFERENCE_BATCH}) / "
            f"alpha {alpha:g}{', capped' if train.lr == MAX_LR else ''}), warmup {train.warmup_iters} iterations")
