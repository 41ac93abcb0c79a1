"""Face training data: the P x K batch sampler (seeded per epoch, rank-sharded) and the v2 face transforms."""

from __future__ import annotations

import pickle
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.faces import IdentityFolder, face_transform
from tasks.faces.data import PKSampler

# 10 identities with 1..7 images each (identity 0 has a single image: only ever a negative).
LABELS = [lab for lab in range(10) for _ in range(1 + lab % 7)]


def test_batches_are_p_identities_times_k_images():
    s = PKSampler(LABELS, 4, 3, batches_per_epoch=20, seed=1)
    batches = list(s)
    assert len(batches) == len(s) == 20
    for batch in batches:
        assert len(batch) == 12 == s.batch_size
        per_identity = Counter(LABELS[i] for i in batch)
        assert sorted(per_identity.values()) == [3, 3, 3, 3]  # P distinct identities, K each
        for lab in per_identity:
            pool = [i for i in batch if LABELS[i] == lab]
            have = LABELS.count(lab)
            assert len(set(pool)) == min(3, have)  # no repeated image unless the identity has fewer than K


def test_an_epoch_walks_identities_and_images_evenly():
    # 6 identities x 4 images, P=2 K=2: 6 batches show every image exactly once.
    labels = [lab for lab in range(6) for _ in range(4)]
    batches = list(PKSampler(labels, 2, 2, seed=0))
    assert len(batches) == 6
    assert sorted(i for b in batches for i in b) == list(range(24))


def test_batches_depend_only_on_seed_and_epoch():
    a, b = PKSampler(LABELS, 3, 2, seed=5), PKSampler(LABELS, 3, 2, seed=5)
    torch.manual_seed(0)
    np.random.seed(0)
    first = list(a)
    torch.manual_seed(1)  # the global generators do not matter
    np.random.seed(1)
    assert list(b) == first
    a.set_epoch(1)
    assert list(a) != first
    a.set_epoch(0)
    assert list(a) == first
    assert list(PKSampler(LABELS, 3, 2, seed=6)) != first


def test_ranks_get_disjoint_shards_of_the_single_process_plan():
    whole = PKSampler(LABELS, 2, 2, batches_per_epoch=9, seed=3)
    ranks = [PKSampler(LABELS, 2, 2, batches_per_epoch=9, seed=3, num_replicas=3, rank=r) for r in range(3)]
    for epoch in (0, 4):
        for s in (whole, *ranks):
            s.set_epoch(epoch)
        mine = [list(s) for s in ranks]
        assert [len(m) for m in mine] == [3, 3, 3]
        assert [b for trio in zip(*mine) for b in trio] == list(whole)  # rank r takes batches r, r+3, ...
        assert mine[0] != mine[1] != mine[2]
    uneven = [PKSampler(LABELS, 2, 2, batches_per_epoch=5, num_replicas=2, rank=r) for r in range(2)]
    assert [len(s) for s in uneven] == [3, 3] and list(uneven[0]) != list(uneven[1])  # padded evenly


def test_sampler_rejects_impossible_batches():
    with pytest.raises(ValueError, match="10 identities; a batch needs P=11"):
        PKSampler(LABELS, 11, 2, source="faces/")
    with pytest.raises(ValueError, match="no identity has two images"):
        PKSampler([0, 1, 2, 3], 2, 2)
    with pytest.raises(ValueError, match="P"):
        PKSampler(LABELS, 1, 2)
    with pytest.raises(ValueError, match="K"):
        PKSampler(LABELS, 2, 0)
    with pytest.raises(ValueError, match="rank 2"):
        PKSampler(LABELS, 2, 2, num_replicas=2, rank=2)


# ---- transforms ----------------------------------------------------------------------------------------


def _face(size=(60, 40)) -> Image.Image:
    """Left half dark, right half bright, a red centre dot: flips, crops and jitter all show."""
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[:, size[0] // 2:] = 200
    arr[size[1] // 2 - 2:size[1] // 2 + 2, size[0] // 2 - 2:size[0] // 2 + 2] = (255, 0, 0)
    return Image.fromarray(arr)


def test_eval_transform_is_the_centre_square_in_unit_range():
    x = face_transform(16, 0.5)(_face())
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and 0.0 <= float(x.min()) <= float(x.max()) <= 1.0
    # The centre square of half the shorter side (20x20 of 60x40) holds the dark/bright edge in the middle.
    assert x[1, :, :4].mean() < 0.1 and x[1, :, -4:].mean() > 0.7
    assert torch.equal(face_transform(16, 0.5)(_face()), x)  # deterministic
    full = face_transform(16, 1.0)(_face())
    assert not torch.allclose(full, x)  # center_crop is honoured


def test_train_transform_augments_and_follows_the_torch_seed():
    t = face_transform(16, 1.0, augment=True)
    torch.manual_seed(0)
    a = torch.stack([t(_face()) for _ in range(8)])
    torch.manual_seed(0)
    b = torch.stack([t(_face()) for _ in range(8)])
    assert torch.equal(a, b)  # randomness from torch's generator: checkpointed, seeded in workers
    assert a.shape == (8, 3, 16, 16) and float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert len({tuple(v.flatten()[:64].tolist()) for v in a}) > 1  # the samples differ
    left_bright = (a[:, 1, :, :4].mean((1, 2)) > a[:, 1, :, -4:].mean((1, 2))).sum()
    assert 0 < int(left_bright) < 8  # some but not all were flipped
    pickle.loads(pickle.dumps(t))  # goes to DataLoader workers


def test_identity_folder_augmented_copy(tmp_path):
    for who in ("ann", "bob"):
        (tmp_path / who).mkdir()
        for j in range(2):
            _face().save(tmp_path / who / f"{who}_{j + 1:04d}.png")
    folder = IdentityFolder(tmp_path, resolution=16, center_crop=0.8)
    aug = folder.augmented()
    assert aug.labels == folder.labels and aug.samples == folder.samples
    assert torch.equal(folder[0][0], folder[0][0])  # the original stays deterministic
    torch.manual_seed(0)
    outs = {tuple(aug[0][0].flatten()[:64].tolist()) for _ in range(6)}
    assert len(outs) > 1
