"""Training batches for face embeddings: P identities x K images (FaceNet Section 3.2, Hermans et al.).

Online triplet mining needs every batch to hold several images of each of several identities.
:class:`PKSampler` is a batch sampler over the identity dataset (``datasets.faces.IdentityFolder``):
``tasks.engine.fit(batch_sampler=...)`` loads its index lists as batches and calls
:meth:`PKSampler.set_epoch` every epoch, as it does for the ``DistributedSampler``.

An epoch's batches are a function of ``(seed, epoch)`` only, so a resumed run sees the same ones. They
are drawn as one global sequence: identities in shuffled order (each identity once before any
repeats), the images of each identity in shuffled order (each image once before any repeats), so an
epoch of ``len(dataset) / (P*K)`` batches shows about every image once. Under DDP rank ``r`` of ``W``
takes batches ``r, r + W, r + 2W, ...`` of that sequence: the ranks' batches are disjoint slices of
the single-process plan.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch.distributed as torch_dist

__all__ = ["PKSampler"]


class _Stream:
    """Endless shuffled passes over ``items``: each item once per pass, a fresh permutation per pass.

    Within one :meth:`take` no item repeats while others are left: at a pass boundary the new
    permutation puts the items already taken last (a batch never shows an identity twice, nor an image
    twice unless its identity has fewer than K).
    """

    def __init__(self, items: Sequence[int], rng: np.random.Generator) -> None:
        self.items = list(items)
        self.rng = rng
        self.queue: list[int] = []  # reversed: the next item is at the end (pop() is O(1))

    def take(self, n: int) -> list[int]:
        out: list[int] = []
        for _ in range(n):
            if not self.queue:
                perm = [self.items[i] for i in self.rng.permutation(len(self.items))]
                taken = set(out)
                self.queue = ([x for x in perm if x not in taken] + [x for x in perm if x in taken])[::-1]
            out.append(self.queue.pop())
        return out


class PKSampler:
    """Batch sampler: each batch is ``P`` identities x ``K`` images, as dataset indices (see module doc).

    Identities with fewer than ``K`` images repeat images within their group (they still give positives
    with two or more); identities with one image are only ever negatives, and are left out as anchors by
    the losses.

    Args:
        labels: identity label of every dataset index (``IdentityFolder.labels``).
        p: identities per batch (>= 2).
        k: images per identity (>= 1).
        batches_per_epoch: batches of one epoch over all ranks; by default about every image once.
        seed: base seed; the epoch's batches come from ``(seed, epoch)``.
        num_replicas, rank: the DDP world; default from ``torch.distributed`` when initialised (like
            ``DistributedSampler``), else one process.
        source: what the labels belong to, for error messages (e.g. the data root).

    Raises:
        ValueError: fewer than ``P`` identities, no identity with two images, or bad ``P``/``K``.
    """

    def __init__(self, labels: Sequence[int], p: int, k: int, *, batches_per_epoch: int | None = None,
                 seed: int = 0, num_replicas: int | None = None, rank: int | None = None,
                 source: str = "the training set") -> None:
        for name, v, low in (("P (identities per batch)", p, 2), ("K (images per identity)", k, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
        by_label: dict[int, list[int]] = {}
        for i, lab in enumerate(labels):
            by_label.setdefault(int(lab), []).append(i)
        self.by_label = [by_label[lab] for lab in sorted(by_label)]
        if len(self.by_label) < p:
            raise ValueError(f"{source} has {len(self.by_label)} identities; a batch needs P={p} "
                             "(lower --identities-per-batch)")
        if not any(len(v) >= 2 for v in self.by_label):
            raise ValueError(f"{source}: no identity has two images, so no positive pair can be formed")
        in_ddp = torch_dist.is_available() and torch_dist.is_initialized()
        if num_replicas is None:
            num_replicas = torch_dist.get_world_size() if in_ddp else 1
        if rank is None:
            rank = torch_dist.get_rank() if in_ddp else 0
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        self.p, self.k, self.seed = p, k, int(seed)
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.batches_per_epoch = batches_per_epoch or max(1, math.ceil(len(labels) / (p * k)))
        self.epoch = 0

    @property
    def batch_size(self) -> int:
        return self.p * self.k

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next iteration yields (the engine calls this)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Batches this rank yields per epoch (the epoch's batches split over the ranks, padded evenly)."""
        return math.ceil(self.batches_per_epoch / self.num_replicas)

    def plan(self, epoch: int) -> list[list[int]]:
        """All ranks' batches of ``epoch``, in order (``len(self) * num_replicas`` of them)."""
        rng = np.random.default_rng([self.seed, epoch])
        groups = _Stream(range(len(self.by_label)), rng)
        images = [_Stream(pool, rng) for pool in self.by_label]
        batches = []
        for _ in range(len(self) * self.num_replicas):
            batch: list[int] = []
            for g in groups.take(self.p):
                batch += images[g].take(self.k)
            batches.append(batch)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.plan(self.epoch)[self.rank::self.num_replicas]
