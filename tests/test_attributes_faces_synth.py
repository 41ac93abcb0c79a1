"""The drawn-face renderer: deterministic, attributes visible, identity separate from nuisance; the cached set."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from datasets.attributes import read_attribute_file
from datasets.synthetic_faces import (
    ATTRIBUTE_NAMES,
    Attributes,
    FaceParams,
    Nuisance,
    ensure_face_attributes,
    random_face_params,
    render_face,
    sample_attributes,
    sample_identity,
    sample_nuisance,
)


def _arr(img) -> np.ndarray:
    return np.asarray(img, dtype=np.float32)


def _calm(seed: int = 0) -> FaceParams:
    rng = np.random.default_rng(seed)
    return FaceParams(sample_identity(rng), Attributes(), sample_nuisance(rng, strength=0.0))


def test_render_is_deterministic_and_sized():
    p = random_face_params(np.random.default_rng(1))
    a = render_face(p, 64, np.random.default_rng(5))
    b = render_face(p, 64, np.random.default_rng(5))
    assert a.size == (64, 64) and a.mode == "RGB"
    np.testing.assert_array_equal(_arr(a), _arr(b))
    # Another rng changes only noise/texture, not the face: the images stay close.
    c = render_face(p, 64, np.random.default_rng(6))
    assert np.abs(_arr(a) - _arr(c)).mean() < 25


@pytest.mark.parametrize("name", ATTRIBUTE_NAMES)
def test_every_attribute_changes_the_face(name):
    base = _calm(2)
    on = dataclasses.replace(base, attributes=dataclasses.replace(base.attributes, **{name.lower(): True}))
    img0 = _arr(render_face(base, 96, np.random.default_rng(0)))
    img1 = _arr(render_face(on, 96, np.random.default_rng(0)))
    changed = (np.abs(img1 - img0).max(axis=2) > 30).mean()
    assert changed > 0.002, f"{name} is not visible ({changed:.4f} of the pixels changed)"


def test_identity_and_nuisance_are_separate():
    rng = np.random.default_rng(3)
    person = sample_identity(rng)
    other = sample_identity(rng)
    photos = [FaceParams(person, Attributes(), sample_nuisance(np.random.default_rng(k), strength=0.0)) for k in range(2)]
    same = [_arr(render_face(p, 64, np.random.default_rng(0))) for p in photos]
    # Same person, nuisance strength 0: only background colour/clothes differ; the face region matches.
    face = (slice(18, 46), slice(22, 42))
    diff_same = np.abs(same[0][face] - same[1][face]).mean()
    diff_other = np.abs(same[0][face] - _arr(render_face(FaceParams(other, Attributes(), photos[0].nuisance), 64,
                                                          np.random.default_rng(0)))[face]).mean()
    assert diff_same < diff_other


def test_parameters_are_validated():
    idn = sample_identity(np.random.default_rng(0))
    with pytest.raises(ValueError, match="hair_style"):
        dataclasses.replace(idn, hair_style="mohawk")
    with pytest.raises(ValueError, match="eye_spacing"):
        dataclasses.replace(idn, eye_spacing=0.9)
    with pytest.raises(ValueError, match="skin_tone"):
        dataclasses.replace(idn, skin_tone=(300, 0, 0))
    with pytest.raises(ValueError, match="scale"):
        Nuisance(scale=5.0)
    with pytest.raises(ValueError):
        render_face(random_face_params(np.random.default_rng(0)), 16, np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown attribute"):
        sample_attributes(np.random.default_rng(0), {"Moustache": 0.5})
    assert Attributes.from_vector(Attributes(smiling=True).as_vector()).smiling
    assert isinstance(FaceParams(idn).to_dict()["identity"], dict)


def test_attribute_priors_and_beard_mustache_correlation():
    rng = np.random.default_rng(0)
    v = np.stack([sample_attributes(rng).as_vector() for _ in range(4000)])
    freq = dict(zip(ATTRIBUTE_NAMES, v.mean(0)))
    assert abs(freq["Smiling"] - 0.45) < 0.03 and abs(freq["Mustache"] - 0.2) < 0.03
    beard, mustache = v[:, ATTRIBUTE_NAMES.index("Beard")], v[:, ATTRIBUTE_NAMES.index("Mustache")]
    assert mustache[beard == 1].mean() > 0.5 > mustache[beard == 0].mean()


def test_ensure_face_attributes_writes_formats_and_caches(tmp_path):
    paths = ensure_face_attributes(str(tmp_path), num_labeled=6, num_unlabeled=5, num_val=4, image_size=48, seed=1)
    labeled = read_attribute_file(paths["labeled_labels"])
    val = read_attribute_file(paths["val_labels"])
    assert paths["labeled_labels"].endswith("list_attr_celeba.txt") and paths["val_labels"].endswith(".csv")
    assert labeled.attribute_names == list(ATTRIBUTE_NAMES) == val.attribute_names
    assert len(labeled.image_names) == 6 and len(val.image_names) == 4
    assert len(os.listdir(paths["unlabeled_images"])) == 5
    assert not any(f.endswith((".txt", ".csv")) for f in os.listdir(os.path.dirname(paths["unlabeled_images"])))
    stamp = os.path.getmtime(paths["labeled_labels"])
    again = ensure_face_attributes(str(tmp_path), num_labeled=6, num_unlabeled=5, num_val=4, image_size=48, seed=1)
    assert again == paths and os.path.getmtime(paths["labeled_labels"]) == stamp  # reused, not rewritten
    assert [p for p in os.listdir(tmp_path) if p.startswith(".") and not p.endswith(".lock")] == []  # no temp left
