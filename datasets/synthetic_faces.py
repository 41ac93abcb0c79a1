"""Drawn faces: the embedded face data for Section 4.5 (face attributes, Table 12) and Section 4.7
(face embeddings, Table 14) of the MobileNets paper.

Real face sets (CelebA, the paper's in-house YFCC-like set, LFW) are the user's to bring. This module
draws cartoon faces whose appearance is fully described by a :class:`FaceParams`:

* ``identity`` (:class:`Identity`): what stays the same for one person: face shape and jaw, skin tone,
  eye spacing/size/colour, nose length, mouth width, brow thickness, hair colour and style. The face
  embedding task samples one identity per person and renders it many times.
* ``attributes`` (:class:`Attributes`): the binary face attributes of :data:`ATTRIBUTE_NAMES`, each a
  visible feature (glasses, smile, hat, beard, mustache, bangs, earrings, rosy cheeks).
* ``nuisance`` (:class:`Nuisance`): what changes from photo to photo: pose (shift, rotation, scale),
  light (brightness, direction), expression (brows, mouth curvature), background, clothing and
  accessory colours, sensor noise.

``render_face(params, size, rng)`` draws one face; everything geometric comes from ``params``, and
``rng`` only supplies the background texture and pixel noise, so the same parameters with another
generator give the same face in another "photo". Faces are drawn at twice the output size and
down-sampled, which antialiases the edges.

:func:`write_face_attribute_split` / :func:`ensure_face_attributes` write an attribute data set in the
formats ``datasets.attributes`` reads (CelebA's ``list_attr_celeba.txt`` with 1/-1, and a CSV with 0/1),
cached like every built-in set (``datasets.cache.ensure_cached``). The identity set for face embeddings,
drawn with the same renderer, is ``datasets.synthetic_identities``.

Usage: ``python -m datasets.synthetic_faces [--cache-dir DIR] [--num-labeled N --num-unlabeled N --num-val N]
[--nuisance-strength S] [--preview grid.png]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from datasets.cache import CACHE_ENV, default_cache_dir, ensure_cached
from datasets.io import run_cli

__all__ = [
    "ATTRIBUTE_NAMES",
    "ATTRIBUTE_PRIORS",
    "Attributes",
    "FaceParams",
    "Identity",
    "Nuisance",
    "default_cache_dir",
    "ensure_face_attributes",
    "random_face_params",
    "render_face",
    "sample_attributes",
    "sample_identity",
    "sample_nuisance",
    "write_face_attribute_split",
    "main",
]

# Bump when the drawing changes, so cached sets from an older renderer are not reused.
GENERATOR_VERSION = 3

ATTRIBUTE_NAMES: tuple[str, ...] = (
    "Eyeglasses",
    "Smiling",
    "Wearing_Hat",
    "Beard",
    "Mustache",
    "Bangs",
    "Wearing_Earrings",
    "Rosy_Cheeks",
)
# Marginal probabilities used by sample_attributes (Mustache is drawn conditionally on Beard).
ATTRIBUTE_PRIORS: dict[str, float] = {
    "Eyeglasses": 0.30,
    "Smiling": 0.45,
    "Wearing_Hat": 0.25,
    "Beard": 0.20,
    "Mustache": 0.20,
    "Bangs": 0.30,
    "Wearing_Earrings": 0.25,
    "Rosy_Cheeks": 0.25,
}
_MUSTACHE_GIVEN_BEARD = 0.6

Color = tuple[int, int, int]

_SKIN_TONES: tuple[Color, ...] = (
    (255, 224, 196), (241, 194, 160), (224, 172, 125), (198, 134, 86), (141, 85, 54), (96, 60, 38),
)
_HAIR_COLORS: tuple[Color, ...] = (
    (25, 20, 18), (70, 45, 28), (125, 85, 50), (215, 180, 110), (165, 70, 35), (170, 170, 170),
)
_EYE_COLORS: tuple[Color, ...] = ((60, 40, 25), (40, 90, 150), (60, 120, 70), (110, 80, 50), (90, 90, 100))
HAIR_STYLES = ("short", "long", "curly")
FACE_ZOOM = 1.25


# --------------------------------------------------------------------------------------------------
# parameters


def _check_color(c: Any, name: str) -> None:
    ok = isinstance(c, (tuple, list)) and len(c) == 3
    if not (ok and all(isinstance(v, (int, np.integer)) and 0 <= v <= 255 for v in c)):
        raise ValueError(f"{name}={c!r} must be three ints in 0..255")


@dataclass(frozen=True)
class Identity:
    """Traits that define a person (unit: fractions of the image side unless noted).

    Attributes:
        face_shape: head width / height, 0.68 (narrow) .. 0.9 (round).
        jaw: superellipse exponent of the lower face, 2 (round chin) .. 3.2 (square jaw).
        skin_tone: RGB.
        eye_spacing: distance between the eye centres, 0.13 .. 0.19.
        eye_size: scale of the eyes, 0.8 .. 1.25.
        eye_height: vertical offset of the eyes, -0.02 .. 0.02.
        eye_color: RGB of the iris.
        nose_length: 0.07 .. 0.12.
        mouth_width: half-width of the mouth, 0.05 .. 0.08.
        brow_thickness: 0.007 .. 0.018.
        hair_color: RGB.
        hair_style: one of ``HAIR_STYLES``.
    """

    face_shape: float
    jaw: float
    skin_tone: Color
    eye_spacing: float
    eye_size: float
    eye_height: float
    eye_color: Color
    nose_length: float
    mouth_width: float
    brow_thickness: float
    hair_color: Color
    hair_style: str

    def __post_init__(self) -> None:
        if self.hair_style not in HAIR_STYLES:
            raise ValueError(f"Identity.hair_style={self.hair_style!r}; expected one of {HAIR_STYLES}")
        for name, lo, hi in (("face_shape", 0.5, 1.1), ("jaw", 1.5, 4.0), ("eye_spacing", 0.08, 0.25),
                             ("eye_size", 0.5, 1.6), ("nose_length", 0.04, 0.16), ("mouth_width", 0.03, 0.1),
                             ("brow_thickness", 0.0, 0.03), ("eye_height", -0.05, 0.05)):
            v = getattr(self, name)
            if not lo <= v <= hi:
                raise ValueError(f"Identity.{name}={v!r} outside [{lo}, {hi}]")
        for name in ("skin_tone", "eye_color", "hair_color"):
            _check_color(getattr(self, name), f"Identity.{name}")


@dataclass(frozen=True)
class Attributes:
    """The binary attributes of :data:`ATTRIBUTE_NAMES` (field names in lower case)."""

    eyeglasses: bool = False
    smiling: bool = False
    wearing_hat: bool = False
    beard: bool = False
    mustache: bool = False
    bangs: bool = False
    wearing_earrings: bool = False
    rosy_cheeks: bool = False

    def as_vector(self) -> np.ndarray:
        """0/1 vector in the order of :data:`ATTRIBUTE_NAMES`."""
        return np.array([int(getattr(self, n.lower())) for n in ATTRIBUTE_NAMES], dtype=np.int64)

    @classmethod
    def from_vector(cls, values: Any) -> Attributes:
        values = list(values)
        if len(values) != len(ATTRIBUTE_NAMES):
            raise ValueError(f"expected {len(ATTRIBUTE_NAMES)} attribute values, got {len(values)}")
        return cls(**{n.lower(): bool(v) for n, v in zip(ATTRIBUTE_NAMES, values)})


@dataclass(frozen=True)
class Nuisance:
    """Photo-to-photo variation that carries no identity or attribute.

    Attributes:
        shift: (dx, dy) translation as fractions of the side, about +-0.06.
        rotation: in-plane rotation in degrees, about +-15.
        scale: zoom, about 0.85 .. 1.12.
        brightness: global light multiplier, 0.65 .. 1.2.
        light_angle: direction of the light gradient in radians.
        light_strength: strength of the gradient, 0 .. 0.35.
        expression: -1 .. 1; raises/lowers the brows and bends a non-smiling mouth a little.
        mouth_open: a smiling mouth is drawn open (teeth visible).
        background: RGB of the background.
        background_kind: 0 flat, 1 gradient, 2 blotches.
        clothing: RGB of the shoulders.
        hat_color, glasses_color, earring_color: accessory colours (used only when the attribute is on).
        glasses_tint: 0 clear lenses .. 1 dark sunglasses.
        cheek_strength: opacity of rosy cheeks, 0.5 .. 0.8 (used only when the attribute is on).
        noise: standard deviation of the pixel noise on 0..255.
    """

    shift: tuple[float, float] = (0.0, 0.0)
    rotation: float = 0.0
    scale: float = 1.0
    brightness: float = 1.0
    light_angle: float = 0.0
    light_strength: float = 0.0
    expression: float = 0.0
    mouth_open: bool = False
    background: Color = (150, 160, 170)
    background_kind: int = 0
    clothing: Color = (60, 80, 120)
    hat_color: Color = (120, 40, 40)
    glasses_color: Color = (20, 20, 20)
    earring_color: Color = (230, 190, 60)
    glasses_tint: float = 0.0
    cheek_strength: float = 0.45
    noise: float = 0.0

    def __post_init__(self) -> None:
        if len(self.shift) != 2:
            raise ValueError(f"Nuisance.shift must be (dx, dy), got {self.shift!r}")
        if not 0.3 <= self.scale <= 2.0:
            raise ValueError(f"Nuisance.scale={self.scale!r} outside [0.3, 2]")
        if not 0.0 <= self.brightness <= 3.0:
            raise ValueError(f"Nuisance.brightness={self.brightness!r} outside [0, 3]")
        if not -1.0 <= self.expression <= 1.0:
            raise ValueError(f"Nuisance.expression={self.expression!r} outside [-1, 1]")
        if self.background_kind not in (0, 1, 2):
            raise ValueError(f"Nuisance.background_kind={self.background_kind!r}; expected 0, 1 or 2")
        if self.noise < 0:
            raise ValueError(f"Nuisance.noise={self.noise!r} must be >= 0")
        for name in ("background", "clothing", "hat_color", "glasses_color", "earring_color"):
            _check_color(getattr(self, name), f"Nuisance.{name}")


@dataclass(frozen=True)
class FaceParams:
    """Everything :func:`render_face` draws: who (identity), what (attributes), how (nuisance)."""

    identity: Identity
    attributes: Attributes = dataclasses.field(default_factory=Attributes)
    nuisance: Nuisance = dataclasses.field(default_factory=Nuisance)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _jitter(rng: np.random.Generator, color: Color, amount: float) -> Color:
    arr = np.asarray(color, dtype=np.float64) * rng.uniform(1 - amount, 1 + amount) + rng.normal(0, 6, 3)
    return tuple(int(v) for v in np.clip(arr, 0, 255))  # type: ignore[return-value]


def _random_color(rng: np.random.Generator, lo: int = 20, hi: int = 235) -> Color:
    return tuple(int(v) for v in rng.integers(lo, hi, 3))  # type: ignore[return-value]


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw a random person."""
    return Identity(
        face_shape=float(rng.uniform(0.68, 0.9)),
        jaw=float(rng.uniform(2.0, 3.2)),
        skin_tone=_jitter(rng, _SKIN_TONES[int(rng.integers(len(_SKIN_TONES)))], 0.06),
        eye_spacing=float(rng.uniform(0.13, 0.19)),
        eye_size=float(rng.uniform(0.8, 1.25)),
        eye_height=float(rng.uniform(-0.02, 0.02)),
        eye_color=_jitter(rng, _EYE_COLORS[int(rng.integers(len(_EYE_COLORS)))], 0.1),
        nose_length=float(rng.uniform(0.07, 0.12)),
        mouth_width=float(rng.uniform(0.05, 0.08)),
        brow_thickness=float(rng.uniform(0.007, 0.018)),
        hair_color=_jitter(rng, _HAIR_COLORS[int(rng.integers(len(_HAIR_COLORS)))], 0.1),
        hair_style=HAIR_STYLES[int(rng.integers(len(HAIR_STYLES)))],
    )


def sample_attributes(rng: np.random.Generator, priors: dict[str, float] | None = None) -> Attributes:
    """Draw attributes independently from ``priors`` (default :data:`ATTRIBUTE_PRIORS`), except that
    a mustache is much more likely on a bearded face, so the two attributes are correlated as in
    real data. The marginal of Mustache stays near its prior."""
    p = dict(ATTRIBUTE_PRIORS)
    if priors:
        unknown = sorted(set(priors) - set(p))
        if unknown:
            raise ValueError(f"unknown attribute(s) {unknown}; known: {list(ATTRIBUTE_NAMES)}")
        p.update(priors)
    values = {n: bool(rng.random() < p[n]) for n in ATTRIBUTE_NAMES if n != "Mustache"}
    pb, pm = p["Beard"], p["Mustache"]
    given_beard = min(1.0, _MUSTACHE_GIVEN_BEARD) if pb > 0 else 0.0
    # Solve pm = pb * given_beard + (1 - pb) * given_no_beard for the no-beard rate.
    given_no_beard = min(1.0, max(0.0, (pm - pb * given_beard) / max(1e-9, 1 - pb)))
    values["Mustache"] = bool(rng.random() < (given_beard if values["Beard"] else given_no_beard))
    return Attributes(**{n.lower(): values[n] for n in ATTRIBUTE_NAMES})


def sample_nuisance(rng: np.random.Generator, strength: float = 1.0) -> Nuisance:
    """Draw a random "photo"; ``strength`` scales pose, light, expression and noise (0 = frontal,
    evenly lit, neutral, clean)."""
    if not 0.0 <= strength <= 2.0:
        raise ValueError(f"strength={strength!r} must be in [0, 2]")
    s = strength
    return Nuisance(
        shift=(float(rng.uniform(-0.06, 0.06) * s), float(rng.uniform(-0.06, 0.06) * s)),
        rotation=float(rng.uniform(-15, 15) * s),
        scale=float(1.0 + rng.uniform(-0.15, 0.12) * s),
        brightness=float(1.0 + rng.uniform(-0.35, 0.2) * s),
        light_angle=float(rng.uniform(0, 2 * math.pi)),
        light_strength=float(rng.uniform(0, 0.35) * s),
        expression=float(np.clip(rng.uniform(-1, 1) * s, -1, 1)),
        mouth_open=bool(rng.random() < 0.7),
        background=_random_color(rng),
        background_kind=int(rng.integers(3)),
        clothing=_random_color(rng),
        hat_color=_random_color(rng),
        glasses_color=_random_color(rng, 0, 120),
        earring_color=_jitter(rng, ((240, 200, 40), (220, 220, 235), (60, 200, 230))[int(rng.integers(3))], 0.1),
        glasses_tint=float(rng.uniform(0.0, 0.9) if rng.random() < 0.3 else 0.0),
        cheek_strength=float(rng.uniform(0.5, 0.8)),
        noise=float(rng.uniform(1.0, 8.0) * s),
    )


def random_face_params(rng: np.random.Generator, *, nuisance_strength: float = 1.0) -> FaceParams:
    """A random person with random attributes in a random photo."""
    return FaceParams(sample_identity(rng), sample_attributes(rng), sample_nuisance(rng, nuisance_strength))


# --------------------------------------------------------------------------------------------------
# drawing


def _shade(color: Color, factor: float) -> Color:
    return tuple(int(np.clip(v * factor, 0, 255)) for v in color)  # type: ignore[return-value]


def _mix(a: Color, b: Color, t: float) -> Color:
    return tuple(int(round(x * (1 - t) + y * t)) for x, y in zip(a, b))  # type: ignore[return-value]


class _Canvas:
    """Draws in unit coordinates (0..1, y down) on an RGBA layer ``side`` pixels wide."""

    def __init__(self, side: int):
        self.side = side
        self.image = Image.new("RGBA", (side, side), (0, 0, 0, 0))
        self.draw = ImageDraw.Draw(self.image)

    def px(self, v: float) -> float:
        return v * self.side

    def pts(self, points: Any) -> list[tuple[float, float]]:
        return [(float(x) * self.side, float(y) * self.side) for x, y in points]

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, fill: Any = None, outline: Any = None,
                width: float = 0.0) -> None:
        box = [self.px(cx - rx), self.px(cy - ry), self.px(cx + rx), self.px(cy + ry)]
        self.draw.ellipse(box, fill=fill, outline=outline, width=max(1, round(self.px(width))) if outline else 0)

    def polygon(self, points: Any, fill: Any) -> None:
        self.draw.polygon(self.pts(points), fill=fill)

    def line(self, points: Any, fill: Any, width: float) -> None:
        self.draw.line(self.pts(points), fill=fill, width=max(1, round(self.px(width))), joint="curve")

    def overlay(self, draw_fn: Any, alpha: float) -> None:
        """Draw with ``draw_fn(canvas)`` on a fresh layer and composite it at opacity ``alpha``."""
        layer = _Canvas(self.side)
        draw_fn(layer)
        a = np.asarray(layer.image.getchannel("A"), dtype=np.float32) * alpha
        layer.image.putalpha(Image.fromarray(a.astype(np.uint8)))
        self.image.alpha_composite(layer.image)


def _superellipse(cx: float, cy: float, a: float, b: float, n_lower: float, t0: float, t1: float,
                  count: int = 48) -> np.ndarray:
    """Points of the head outline from angle t0 to t1 (y down, so t in (0, pi) is the lower half).
    The upper half is an ellipse, the lower half a superellipse of exponent ``n_lower`` (the jaw)."""
    t = np.linspace(t0, t1, count)
    c, s = np.cos(t), np.sin(t)
    n = np.where(s > 0, n_lower, 2.0)
    x = a * np.sign(c) * np.abs(c) ** (2.0 / n)
    y = b * np.sign(s) * np.abs(s) ** (2.0 / n)
    return np.stack([cx + x, cy + y], axis=1)


def _draw_face(cv: _Canvas, p: FaceParams) -> None:
    idn, att, nui = p.identity, p.attributes, p.nuisance
    cx, cy = 0.5, 0.52
    b = 0.27
    a = b * idn.face_shape
    skin = idn.skin_tone
    hair = idn.hair_color
    dark_hair = _shade(hair, 0.8)

    # Hair behind the head.
    if idn.hair_style == "long":
        cv.polygon([(cx - a * 1.18, cy - b * 0.5), (cx + a * 1.18, cy - b * 0.5),
                    (cx + a * 1.3, cy + b * 1.05), (cx - a * 1.3, cy + b * 1.05)], fill=hair)
        cv.ellipse(cx, cy - b * 0.45, a * 1.18, b * 0.62, fill=hair)
    # Shoulders and neck.
    cv.ellipse(cx, 1.08, 0.42, 0.2, fill=nui.clothing)
    cv.polygon([(cx - a * 0.45, cy + b * 0.6), (cx + a * 0.45, cy + b * 0.6),
                (cx + a * 0.5, 0.93), (cx - a * 0.5, 0.93)], fill=_shade(skin, 0.88))
    # Ears (and earrings hanging from them).
    for side in (-1, 1):
        cv.ellipse(cx + side * a * 0.98, cy + 0.005, 0.032, 0.055, fill=_shade(skin, 0.93))
    if att.wearing_earrings:
        for side in (-1, 1):
            ex = cx + side * a * 1.0
            cv.line([(ex, cy + 0.05), (ex, cy + 0.075)], fill=_shade(nui.earring_color, 0.7), width=0.008)
            cv.ellipse(ex, cy + 0.1, 0.034, 0.034, fill=nui.earring_color, outline=_shade(nui.earring_color, 0.5),
                       width=0.006)
    # Head.
    outline = _superellipse(cx, cy, a, b, idn.jaw, 0.0, 2 * math.pi, 96)
    cv.polygon(outline, fill=skin)
    if att.rosy_cheeks:
        def cheeks(layer: _Canvas) -> None:
            for side in (-1, 1):
                layer.ellipse(cx + side * a * 0.58, cy + 0.065, 0.055, 0.042, fill=(230, 60, 85))
        cv.overlay(cheeks, nui.cheek_strength)
    # Hair on top (a hat covers it).
    if not att.wearing_hat:
        box = [cv.px(cx - a * 1.07), cv.px(cy - b * 1.08), cv.px(cx + a * 1.07), cv.px(cy + b * 1.08)]
        cv.draw.chord(box, 212, 328, fill=hair)  # hairline well above the brows
        if idn.hair_style == "curly":
            for k in range(9):
                t = math.pi + math.pi * (k + 0.5) / 9
                cv.ellipse(cx + a * 1.02 * math.cos(t), cy - 0.02 + b * 1.02 * math.sin(t), 0.04, 0.04, fill=hair)
    # Beard: the lower face below the cheeks, textured with darker strokes.
    eye_y = cy - 0.03 + idn.eye_height
    mouth_y = cy + 0.13
    if att.beard:
        lower = _superellipse(cx, cy, a * 1.01, b * 1.02, idn.jaw, 0.12, math.pi - 0.12, 40)
        cv.polygon(list(lower) + [(cx - a * 0.7, cy + 0.06), (cx + a * 0.7, cy + 0.06)][::-1], fill=dark_hair)
        cv.ellipse(cx, mouth_y, idn.mouth_width * 1.15, 0.035, fill=_shade(skin, 0.95))
    # Eyes and brows.
    raise_ = 0.012 * nui.expression
    for side in (-1, 1):
        ex = cx + side * idn.eye_spacing / 2
        s = idn.eye_size
        cv.ellipse(ex, eye_y, 0.036 * s, 0.021 * s, fill=(245, 245, 240))
        cv.ellipse(ex, eye_y, 0.015 * s, 0.015 * s, fill=idn.eye_color)
        cv.ellipse(ex, eye_y, 0.007 * s, 0.007 * s, fill=(10, 10, 10))
        by = eye_y - 0.045 - raise_
        cv.line([(ex - 0.035, by + 0.005), (ex, by - 0.004), (ex + 0.035, by + 0.005)],
                fill=_shade(hair, 0.7), width=idn.brow_thickness)
    # Nose.
    cv.polygon([(cx, eye_y + 0.015), (cx - 0.02, eye_y + idn.nose_length), (cx + 0.02, eye_y + idn.nose_length)],
               fill=_shade(skin, 0.82))
    # Mustache.
    mw = idn.mouth_width
    if att.mustache:
        cv.polygon([(cx - mw * 1.2, mouth_y - 0.003), (cx - mw * 0.3, mouth_y - 0.05), (cx, mouth_y - 0.04),
                    (cx + mw * 0.3, mouth_y - 0.05), (cx + mw * 1.2, mouth_y - 0.003),
                    (cx, mouth_y - 0.015)], fill=_shade(hair, 0.6))
    # Mouth: a smile is wide and bends up strongly; other expressions bend it only a little either way.
    smile_w = mw * 1.4 if att.smiling else mw
    curve = 0.05 * (_smile_curvature(nui.expression) if att.smiling else 0.25 * nui.expression)
    xs = np.linspace(-smile_w, smile_w, 17)
    lower_lip = [(cx + x, mouth_y + curve * (1 - (x / smile_w) ** 2)) for x in xs]
    lip = _mix(_shade(skin, 0.6), (150, 20, 40), 0.6)
    if att.smiling and nui.mouth_open:
        upper_lip = [(cx + x, mouth_y + 0.2 * curve * (1 - (x / smile_w) ** 2)) for x in xs]
        cv.polygon(upper_lip + lower_lip[::-1], fill=(90, 20, 30))
        teeth = [(cx + x, mouth_y + 0.2 * curve * (1 - (x / smile_w) ** 2) + 0.007) for x in xs[3:-3]]
        cv.line(teeth, fill=(240, 240, 235), width=0.014)
        cv.line(upper_lip, fill=lip, width=0.009)
    cv.line(lower_lip, fill=lip, width=0.013)
    # Bangs: a fringe over the forehead down to the brows.
    if att.bangs:
        top = cy - b * 0.78
        bottom = eye_y - 0.05
        left, right = cx - a * 0.88, cx + a * 0.88
        teeth_n = 7
        pts = [(left, top), (right, top)]
        for k in range(teeth_n, -1, -1):
            x = left + (right - left) * k / teeth_n
            pts.append((x, bottom - (0.018 if k % 2 else 0.0)))
        cv.polygon(pts, fill=hair)
        cv.polygon([(left - 0.02, top - 0.02), (right + 0.02, top - 0.02), (right, top + 0.03), (left, top + 0.03)],
                   fill=hair)
    # Glasses: two round frames, a bridge and the arms, with optionally tinted lenses.
    if att.eyeglasses:
        r = 0.052 * max(1.0, idn.eye_size * 0.9)
        if nui.glasses_tint > 0:
            def lenses(layer: _Canvas) -> None:
                for side in (-1, 1):
                    layer.ellipse(cx + side * idn.eye_spacing / 2, eye_y, r, r * 0.8, fill=(20, 20, 30))
            cv.overlay(lenses, nui.glasses_tint)
        for side in (-1, 1):
            ex = cx + side * idn.eye_spacing / 2
            cv.ellipse(ex, eye_y, r, r * 0.8, outline=nui.glasses_color, width=0.015)
            cv.line([(ex + side * r, eye_y - 0.01), (cx + side * a * 0.98, eye_y - 0.015)],
                    fill=nui.glasses_color, width=0.009)
        cv.line([(cx - idn.eye_spacing / 2 + r, eye_y - 0.008), (cx, eye_y - 0.018),
                 (cx + idn.eye_spacing / 2 - r, eye_y - 0.008)], fill=nui.glasses_color, width=0.009)
    # Hat: crown, band and brim over the top of the head.
    if att.wearing_hat:
        hc = nui.hat_color
        crown_top, brim_y = cy - b * 1.4, cy - b * 0.62
        cv.polygon([(cx - a * 0.95, brim_y), (cx - a * 0.85, crown_top), (cx + a * 0.85, crown_top),
                    (cx + a * 0.95, brim_y)], fill=hc)
        cv.line([(cx - a * 0.93, brim_y - 0.03), (cx + a * 0.93, brim_y - 0.03)], fill=_shade(hc, 0.55), width=0.02)
        cv.ellipse(cx, brim_y, a * 1.45, 0.03, fill=_shade(hc, 0.8))


def _smile_curvature(expression: float) -> float:
    """Curvature of a smiling mouth: always strongly up, a little stronger with a lively expression."""
    return 0.75 + 0.25 * abs(expression)


def _background(rng: np.random.Generator, side: int, nui: Nuisance) -> np.ndarray:
    """float32 [side, side, 3] background in 0..255."""
    base = np.asarray(nui.background, dtype=np.float32)
    img = np.broadcast_to(base, (side, side, 3)).copy()
    if nui.background_kind == 1:
        other = np.clip(base * rng.uniform(0.6, 1.4) + rng.normal(0, 25, 3), 0, 255).astype(np.float32)
        ramp = np.linspace(0.0, 1.0, side, dtype=np.float32)
        t = ramp[None, :] if rng.random() < 0.5 else ramp[:, None]
        img = base * (1 - t[..., None]) + other * t[..., None]
    elif nui.background_kind == 2:
        cells = int(rng.integers(3, 7))
        low = rng.normal(0, 22, (cells, cells, 3)).astype(np.float32)
        blot = np.stack([np.asarray(Image.fromarray(low[..., c]).resize((side, side), Image.BILINEAR))
                         for c in range(3)], axis=-1)
        img = img + blot
    return img


def render_face(params: FaceParams, size: int, rng: np.random.Generator) -> Image.Image:
    """Draw one face.

    Args:
        params: identity, attributes and nuisance of the face (all geometry comes from here).
        size: side of the square output image in pixels (>= 32).
        rng: source of the background texture and pixel noise only.

    Returns:
        An RGB PIL image of ``size`` x ``size`` pixels.
    """
    if not isinstance(params, FaceParams):
        raise TypeError(f"params must be a FaceParams, got {type(params).__name__}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 32:
        raise ValueError(f"size must be an int >= 32, got {size!r}")
    nui = params.nuisance
    side = 2 * size  # supersampled, antialiased by the final down-sampling
    layer = _Canvas(side)
    _draw_face(layer, params)

    # Pose: rotate about the centre, scale, shift. PIL's affine maps output -> input coordinates.
    # FACE_ZOOM makes the face fill the frame as in aligned face crops (CelebA's are similar).
    theta = math.radians(nui.rotation)
    zoom = nui.scale * FACE_ZOOM
    c, s = math.cos(theta) / zoom, math.sin(theta) / zoom
    ox, oy = side / 2 + nui.shift[0] * side, side / 2 + nui.shift[1] * side
    coeffs = (c, -s, side / 2 - c * ox + s * oy, s, c, side / 2 - s * ox - c * oy)
    face = layer.image.transform((side, side), Image.AFFINE, coeffs, resample=Image.BILINEAR)
    # Down-sampling the RGBA layer antialiases the edges (Pillow premultiplies alpha when resizing);
    # compositing and lighting then run at the output size.
    face = face.resize((size, size), Image.LANCZOS)

    bg = _background(rng, size, nui)
    alpha = np.asarray(face.getchannel("A"), dtype=np.float32)[..., None] / 255.0
    img = bg * (1 - alpha) + np.asarray(face.convert("RGB"), dtype=np.float32) * alpha

    # Light: global brightness times a linear gradient across the image.
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    grad = xx * math.cos(nui.light_angle) + yy * math.sin(nui.light_angle)
    out = img * (nui.brightness * (1.0 + 2.0 * nui.light_strength * grad))[..., None]
    if nui.noise > 0:
        out = out + rng.normal(0.0, nui.noise, out.shape).astype(np.float32)
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8), mode="RGB")


# --------------------------------------------------------------------------------------------------
# attribute data set on disk


def write_face_attribute_split(
    root: str,
    *,
    num_images: int,
    image_size: int,
    seed: int,
    labels: str | None = "celeba",
    label_file: str | None = None,
    nuisance_strength: float = 1.0,
    progress: bool = False,
    desc: str = "faces",
) -> dict[str, str]:
    """Write ``num_images`` faces to ``root/images/NNNNNN.jpg`` and, unless ``labels`` is None, their
    attributes to ``root/<label_file>``.

    Face ``i`` is drawn from ``np.random.default_rng([seed, i])``: the set depends only on the
    arguments (and the JPEG encoder).

    Args:
        root: split folder (created).
        num_images: number of faces.
        image_size: side in pixels.
        seed: non-negative seed; use different seeds for different splits.
        labels: "celeba" (``list_attr_celeba.txt``, 1/-1), "csv" (``attributes.csv``, 0/1) or None.
        label_file: file name of the labels (default by format).
        nuisance_strength: scales pose, light, expression and noise (:func:`sample_nuisance`).
        progress: show a tqdm bar.
        desc: progress-bar label.

    Returns:
        {"images": image folder, "labels": label file (absent when ``labels`` is None)}.
    """
    from datasets.attributes import write_attribute_file

    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
        raise ValueError(f"num_images must be an int >= 1, got {num_images!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    if labels not in ("celeba", "csv", None):
        raise ValueError(f"labels must be 'celeba', 'csv' or None, got {labels!r}")
    image_dir = os.path.join(root, "images")
    os.makedirs(image_dir, exist_ok=True)
    names: list[str] = []
    vectors: list[np.ndarray] = []
    indices: Any = range(num_images)
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc=desc, unit="img", leave=False)
    for i in indices:
        rng = np.random.default_rng([seed, i])
        params = random_face_params(rng, nuisance_strength=nuisance_strength)
        name = f"{i + 1:06d}.jpg"
        render_face(params, image_size, rng).save(os.path.join(image_dir, name), format="JPEG", quality=92)
        names.append(name)
        vectors.append(params.attributes.as_vector())
    out = {"images": image_dir}
    if labels is not None:
        default = "list_attr_celeba.txt" if labels == "celeba" else "attributes.csv"
        path = os.path.join(root, label_file or default)
        write_attribute_file(path, names, list(ATTRIBUTE_NAMES), np.stack(vectors).astype(np.float32), fmt=labels)
        out["labels"] = path
    return out


def _split_paths(root: str) -> dict[str, str]:
    return {
        "root": root,
        "labeled_images": os.path.join(root, "labeled", "images"),
        "labeled_labels": os.path.join(root, "labeled", "list_attr_celeba.txt"),
        "unlabeled_images": os.path.join(root, "unlabeled", "images"),
        "val_images": os.path.join(root, "val", "images"),
        "val_labels": os.path.join(root, "val", "attributes.csv"),
    }


def ensure_face_attributes(
    cache_dir: str | None = None,
    *,
    num_labeled: int = 1200,
    num_unlabeled: int = 2400,
    num_val: int = 400,
    image_size: int = 128,
    seed: int = 0,
    nuisance_strength: float = 1.0,
    progress: bool = False,
) -> dict[str, str]:
    """Return the paths of the synthetic face-attribute set, writing it on first use.

    Three splits, as in the paper's story: a labeled split (CelebA layout, 1/-1) to train the
    teacher, an unlabeled split (images only) to distill from, and a labeled validation split (CSV
    with 0/1). The set lives in ``<cache_dir>/faces-attr-v<version>-<hash of the parameters>``, built
    once by ``datasets.cache.ensure_cached`` (temp folder renamed into place, completion marker), so
    concurrent callers never see half a set.

    Returns:
        {"root", "labeled_images", "labeled_labels", "unlabeled_images", "val_images", "val_labels"}.
    """
    for name, v in (("num_labeled", num_labeled), ("num_unlabeled", num_unlabeled), ("num_val", num_val)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 32:
        raise ValueError(f"image_size must be an int >= 32, got {image_size!r}")
    if not 0.0 <= nuisance_strength <= 2.0:
        raise ValueError(f"nuisance_strength must be in [0, 2], got {nuisance_strength!r}")
    params = {"num_labeled": num_labeled, "num_unlabeled": num_unlabeled, "num_val": num_val,
              "image_size": image_size, "seed": seed, "nuisance_strength": float(nuisance_strength)}

    def write(tmp: Path) -> None:
        # Disjoint seed streams per split: 3s, 3s + 1, 3s + 2.
        for split, offset, n, labels in (("labeled", 0, num_labeled, "celeba"), ("unlabeled", 1, num_unlabeled, None),
                                         ("val", 2, num_val, "csv")):
            write_face_attribute_split(str(tmp / split), num_images=n, image_size=image_size, seed=3 * seed + offset,
                                       labels=labels, nuisance_strength=nuisance_strength, progress=progress,
                                       desc=f"faces: {split}")

    root = ensure_cached("faces-attr", params, write, version=GENERATOR_VERSION, cache_dir=cache_dir)
    return _split_paths(str(root))


def main(argv: list[str] | None = None) -> dict[str, str]:
    parser = argparse.ArgumentParser(description="Write the synthetic face-attribute set (drawn faces).")
    parser.add_argument("--cache-dir", default=None, help=f"default ${CACHE_ENV} or ~/.cache/mobilenet_suite")
    parser.add_argument("--num-labeled", type=int, default=1200)
    parser.add_argument("--num-unlabeled", type=int, default=2400)
    parser.add_argument("--num-val", type=int, default=400)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nuisance-strength", type=float, default=1.0, help="pose/light/noise scale, 0..2")
    parser.add_argument("--preview", default=None, help="also write a PNG grid of 16 faces to this path")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        paths = ensure_face_attributes(args.cache_dir, num_labeled=args.num_labeled, num_unlabeled=args.num_unlabeled,
                                       num_val=args.num_val, image_size=args.image_size, seed=args.seed,
                                       nuisance_strength=args.nuisance_strength, progress=True)
    except ValueError as e:
        parser.error(str(e))
    if args.preview:
        grid = Image.new("RGB", (4 * args.image_size, 4 * args.image_size))
        for k in range(16):
            rng = np.random.default_rng([10_000 + args.seed, k])
            grid.paste(render_face(random_face_params(rng), args.image_size, rng),
                       ((k % 4) * args.image_size, (k // 4) * args.image_size))
        grid.save(args.preview)
    print(f"face-attribute set at {paths['root']} ({time.perf_counter() - t0:.1f} s)")
    for key in ("labeled_labels", "unlabeled_images", "val_labels"):
        print(f"  {key:17s}: {paths[key]}")
    return paths


if __name__ == "__main__":
    run_cli(main)
