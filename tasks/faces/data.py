"""Training batches for face embeddings: P identities x K images (FaceNet Section 3.2, Hermans et al.).

Online triplet mining needs every batch to hold several images of each of several identities. The
shared engine (``tasks.engine.fit``) shuffles a map-style dataset with a seeded sampler, so the P x K
structure lives in the dataset: item ``i`` of :class:`PKBatches` is one whole batch, drawn from a
generator seeded by ``(seed, epoch, i)``. The engine then runs with ``batch_size=1`` and
:func:`collate_single`. Batches therefore depend only on the seed and the epoch (set by the
engine's sampler through :meth:`PKBatches.set_epoch`... which the sampler does not call, so the epoch
is advanced by the loss function, see ``tasks.faces.train``), and a resumed run sees the same ones.
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageEnhance

from datasets.faces import IdentityFolder, image_to_tensor
from datasets.images import load_rgb_image

__all__ = ["PKBatches", "TrainAugment", "collate_single"]


class TrainAugment:
    """Light augmentation for aligned faces: flip, small shift/scale, brightness/contrast jitter.

    Picklable (a class, not a lambda) so it works in DataLoader workers. Randomness comes from the
    ``random.Random`` passed per call, which keeps batches a function of the batch seed.
    """

    def __init__(self, flip: bool = True, max_shift: float = 0.06, scale: tuple[float, float] = (0.9, 1.0),
                 jitter: float = 0.2):
        self.flip, self.max_shift, self.scale, self.jitter = flip, max_shift, scale, jitter

    def __call__(self, img: Image.Image, rng: random.Random) -> Image.Image:
        w, h = img.size
        s = rng.uniform(*self.scale)
        cw, ch = max(1, int(w * s)), max(1, int(h * s))
        dx = int(rng.uniform(-self.max_shift, self.max_shift) * w)
        dy = int(rng.uniform(-self.max_shift, self.max_shift) * h)
        left = min(max((w - cw) // 2 + dx, 0), w - cw)
        top = min(max((h - ch) // 2 + dy, 0), h - ch)
        img = img.crop((left, top, left + cw, top + ch))
        if self.flip and rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        if self.jitter > 0:
            img = ImageEnhance.Brightness(img).enhance(1 + rng.uniform(-self.jitter, self.jitter))
            img = ImageEnhance.Contrast(img).enhance(1 + rng.uniform(-self.jitter, self.jitter))
        return img


class PKBatches(torch.utils.data.Dataset):
    """Each item is a batch of ``P`` identities x ``K`` images: ``(images [P*K,3,R,R], labels [P*K])``.

    Identities with fewer than ``K`` images are sampled with replacement (they still give positives if
    they have two or more images); identities with one image are only ever negatives, and are left out
    as anchors by the losses.

    Args:
        folder: the identity-folder dataset (its resolution/crop are used).
        p: identities per batch.
        k: images per identity.
        batches_per_epoch: ``len(self)``; by default one epoch shows about every image once.
        augment: a :class:`TrainAugment` or None.
        seed: base seed.
    """

    def __init__(self, folder: IdentityFolder, p: int, k: int, *, batches_per_epoch: int | None = None,
                 augment: TrainAugment | None = None, seed: int = 0):
        for name, v, low in (("P (identities per batch)", p, 2), ("K (images per identity)", k, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
        self.folder = folder
        by_label: dict[int, list[int]] = {}
        for i, lab in enumerate(folder.labels):
            by_label.setdefault(lab, []).append(i)
        self.by_label = [by_label[lab] for lab in sorted(by_label)]
        if len(self.by_label) < p:
            raise ValueError(f"{folder.root} has {len(self.by_label)} identities; a batch needs P={p} "
                             "(lower --identities-per-batch)")
        if not any(len(v) >= 2 for v in self.by_label):
            raise ValueError(f"{folder.root}: no identity has two images, so no positive pair can be formed")
        self.p, self.k = p, k
        self.augment = augment
        self.seed = seed
        self.batches = batches_per_epoch or max(1, math.ceil(len(folder) / (p * k)))

    @property
    def num_classes(self) -> int:
        return len(self.folder.identities)

    def __len__(self) -> int:
        return self.batches

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        draw = int(torch.randint(0, 2**62, (1,)).item())
        rng = np.random.default_rng([self.seed, draw, int(i)])
        py = random.Random(int(rng.integers(2**63)))
        ids = rng.choice(len(self.by_label), self.p, replace=False)
        images, labels = [], []
        for lab in ids:
            pool = self.by_label[lab]
            pick = rng.choice(len(pool), self.k, replace=len(pool) < self.k)
            for j in pick:
                img = load_rgb_image(self.folder.samples[pool[j]].path)
                if self.augment is not None:
                    img = self.augment(img, py)
                images.append(image_to_tensor(img, self.folder.resolution, self.folder.center_crop))
                labels.append(int(lab))
        return torch.stack(images), torch.tensor(labels, dtype=torch.long)


def collate_single(items: list[Any]) -> Any:
    """Collate for ``batch_size=1`` over :class:`PKBatches`: the item already is the batch."""
    if len(items) != 1:
        raise ValueError(f"PKBatches must be loaded with batch_size=1, got {len(items)} items")
    return items[0]
