"""What the toy world's creatures are made of, and how each species is drawn.

The vocabulary (species, part names and their label indices, keypoint names) and one
builder per species (:data:`BUILDERS`): given a seeded generator, it returns the
creature's polygons, back to front, and its nominal keypoints, facing right in model
units. :mod:`e4e_lab.toy.world_render` then poses these shapes in the picture;
:mod:`e4e_lab.toy.world` is the public API.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

SPECIES: tuple[str, ...] = ("fish", "bird", "dog")
PART_NAMES: tuple[str, ...] = (
    "background", "body", "head", "tail", "legs", "wings", "fins", "ears", "beak", "eye",
)
PART_INDEX: dict[str, int] = {name: i for i, name in enumerate(PART_NAMES)}
SPECIES_PARTS: dict[str, tuple[str, ...]] = {
    "fish": ("body", "head", "tail", "fins", "eye"),
    "bird": ("body", "head", "tail", "legs", "wings", "beak", "eye"),
    "dog": ("body", "head", "tail", "legs", "ears", "eye"),
}
DETAIL_PARTS: frozenset[str] = frozenset({"eye", "beak"})
"""Small parts: too few pixels to measure a colour reliably, absent at small sizes."""

KEYPOINT_PARTS: dict[str, str] = {
    "head": "head", "nose": "head", "eye": "eye", "beak_tip": "beak",
    "body_center": "body", "tail_tip": "tail", "wing_tip": "wings",
    "dorsal_fin_tip": "fins", "pectoral_fin_tip": "fins",
    "front_foot": "legs", "hind_foot": "legs", "ear_tip": "ears",
}
"""Every keypoint name and the part whose pixels it lies on."""


# --- shapes ---------------------------------------------------------------------------
# Creatures are built facing right in model units (body length about 0.7), x right and
# y down; a positive angle turns +x towards +y (clockwise on screen).

Point = tuple[float, float]

_CIRCLE = np.array([(math.cos(2 * math.pi * k / 64), math.sin(2 * math.pi * k / 64))
                    for k in range(64)])


@dataclass
class Creature:
    """Polygons in drawing order (back to front) and nominal keypoints."""

    shapes: list[tuple[str, np.ndarray]]
    keypoints: dict[str, np.ndarray]


def rotate(points: np.ndarray | list, angle: float, about: Point = (0.0, 0.0)) -> np.ndarray:
    """(..., 2) points turned by ``angle`` radians about ``about``."""
    p = np.asarray(points, dtype=float) - about
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([p[..., 0] * c - p[..., 1] * s, p[..., 0] * s + p[..., 1] * c], -1) + about


def _ellipse(center: Point | np.ndarray, rx: float, ry: float, angle: float = 0.0
             ) -> np.ndarray:
    return rotate(_CIRCLE * (rx, ry), angle) + center


def _limb(a: np.ndarray, b: np.ndarray, ra: float, rb: float) -> np.ndarray:
    """A rounded, possibly tapered stroke from a (radius ra) to b (radius rb)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    heading = math.atan2(b[1] - a[1], b[0] - a[0])
    half = [-math.pi / 2 + math.pi * k / 12 for k in range(13)]
    cap_b = [_polar(b, rb, heading + t) for t in half]
    cap_a = [_polar(a, ra, heading + math.pi + t) for t in half]
    return np.array(cap_b + cap_a)


def _polar(origin: Point | np.ndarray, length: float, angle: float) -> np.ndarray:
    x, y = origin
    return np.array((x + length * math.cos(angle), y + length * math.sin(angle)))


def _fish(rng: np.random.Generator) -> Creature:
    """An oval body with a head cap behind a gill line, forked tail and three fins."""
    rx, ry = 0.36, rng.uniform(0.16, 0.25)
    gill = rng.uniform(0.1, 0.17)
    tail_angle = rng.uniform(-0.45, 0.45)
    dorsal_tip = (rng.uniform(-0.2, 0.02), -ry - rng.uniform(0.12, 0.2))
    anal_tip = (rng.uniform(-0.26, -0.1), ry + rng.uniform(0.08, 0.14))
    pectoral_angle = math.pi - rng.uniform(0.3, 1.0)
    eye_r = rng.uniform(0.035, 0.05)

    half_angle = math.acos(gill / rx)
    arc = [(rx * math.cos(t), ry * math.sin(t))
           for t in np.linspace(-half_angle, half_angle, 24)]
    edge = ry * math.sin(half_angle)
    gill_line = [(gill - 0.04 * math.cos(t), edge * math.sin(t))
                 for t in np.linspace(math.pi / 2, -math.pi / 2, 12)]
    head = np.array(arc + gill_line)

    tail_base = (-rx + 0.05, 0.0)
    tail = rotate(np.array([(0.03, -0.06), (-0.26, -0.23), (-0.15, 0.0), (-0.26, 0.23),
                             (0.03, 0.06)]) + tail_base, tail_angle, tail_base)
    dorsal = np.array([(0.12, -0.7 * ry), dorsal_tip, (-0.2, -0.6 * ry)])
    anal = np.array([(-0.02, 0.7 * ry), anal_tip, (-0.2, 0.6 * ry)])
    pectoral_base = (gill - 0.03, 0.25 * ry)
    pectoral = _ellipse(_polar(pectoral_base, 0.09, pectoral_angle), 0.1, 0.04, pectoral_angle)
    eye = ((gill + rx) / 2, -0.3 * ry)
    return Creature(
        shapes=[("tail", tail), ("fins", dorsal), ("fins", anal),
                ("body", _ellipse((0, 0), rx, ry)), ("head", head), ("fins", pectoral),
                ("eye", _ellipse(eye, eye_r, eye_r))],
        keypoints={
            "head": np.array(((gill + rx) / 2, 0.1 * ry)), "eye": np.array(eye),
            "body_center": np.array((-0.05, -0.2 * ry)),
            "tail_tip": rotate(np.array((-0.26, -0.23)) + tail_base, tail_angle, tail_base),
            "dorsal_fin_tip": np.array(dorsal_tip),
            "pectoral_fin_tip": _polar(pectoral_base, 0.19, pectoral_angle),
        },
    )


def _bird(rng: np.random.Generator) -> Creature:
    """A tilted oval body, round head with a beak, fan tail, two wings, two thin legs."""
    rx, ry = 0.3, rng.uniform(0.16, 0.21)
    pitch = -rng.uniform(0.0, 0.45)
    head_c = np.array((0.27, -ry - rng.uniform(0.0, 0.05)))
    head_r = rng.uniform(0.11, 0.14)
    beak_angle = rng.uniform(-0.35, 0.35)
    beak_len = head_r + rng.uniform(0.1, 0.16)
    tail_angle = rng.uniform(-0.3, 0.5)
    wing_angle = rng.uniform(0.0, 1.5)
    swings = rng.uniform(-0.35, 0.35, 2)
    leg_len = ry * 0.5 + rng.uniform(0.22, 0.3)
    eye_r = rng.uniform(0.028, 0.038)

    beak_tip = rotate(np.array((beak_len, 0.0)), beak_angle) + head_c
    beak = np.array([rotate(np.array((0.02, -0.07)), beak_angle) + head_c, beak_tip,
                     rotate(np.array((0.02, 0.07)), beak_angle) + head_c])
    tail_base = (-rx + 0.05, -0.02)
    tail_local = np.array([(0.04, -0.06), (-0.28, -0.11), (-0.31, 0.0), (-0.28, 0.1),
                           (0.04, 0.06)]) + tail_base
    tail = rotate(tail_local, tail_angle, tail_base)
    wing_local = np.array([(0.04, 0.0), (0.02, -0.07), (-0.12, -0.09), (-0.3, -0.06),
                           (-0.46, 0.0), (-0.3, 0.05), (-0.12, 0.08), (0.0, 0.06)])
    shoulder = np.array((0.1, -0.06))
    near_wing = rotate(wing_local, wing_angle) + shoulder
    far_wing = rotate(wing_local, wing_angle + 0.3) + shoulder + (-0.03, -0.02)
    eye = head_c + rotate(np.array((0.04, -0.03)), beak_angle)
    neck = _limb((0.16, -0.05), head_c, 0.09, 0.08)
    frame = [("wings", far_wing), ("tail", tail), ("body", _ellipse((0, 0), rx, ry)),
             ("body", neck), ("beak", beak), ("head", _ellipse(head_c, head_r, head_r)),
             ("wings", near_wing), ("eye", _ellipse(eye, eye_r, eye_r))]
    frame = [(name, rotate(points, pitch)) for name, points in frame]

    legs, feet = [], []
    for hip, swing in zip(((0.04, 0.6 * ry), (-0.07, 0.6 * ry)), swings):
        hip = rotate(np.array(hip), pitch)
        ankle = _polar(hip, leg_len, math.pi / 2 + swing)
        toe = _polar(ankle, 0.1, 0.3 * swing)
        legs += [("legs", _limb(hip, ankle, 0.034, 0.028)),
                 ("legs", _limb(ankle, toe, 0.026, 0.02))]
        feet.append(toe)
    keypoints = {
        "head": head_c, "eye": eye, "beak_tip": beak_tip,
        "body_center": np.array((-0.05, 0.05)),
        "tail_tip": rotate(np.array((-0.31, 0.0)) + tail_base, tail_angle, tail_base),
        "wing_tip": rotate(np.array((-0.46, 0.0)), wing_angle) + shoulder,
    }
    keypoints = {k: rotate(p, pitch) for k, p in keypoints.items()}
    keypoints["front_foot"], keypoints["hind_foot"] = feet
    return Creature(shapes=legs + frame, keypoints=keypoints)


def _dog(rng: np.random.Generator) -> Creature:
    """A long body on four legs with paws, a neck, a round head with a snout, ears, tail."""
    rx, ry = 0.34, rng.uniform(0.14, 0.18)
    head_c = np.array((rx + rng.uniform(0.0, 0.05), -ry - rng.uniform(0.02, 0.08)))
    head_r = rng.uniform(0.11, 0.13)
    tilt = rng.uniform(-0.3, 0.3)
    snout_ry = rng.uniform(0.055, 0.07)
    floppy = bool(rng.random() < 0.65)
    ear_swing = rng.uniform(-0.3, 0.3)
    tail_raise = rng.uniform(0.15, 1.3)
    tail_len = rng.uniform(0.26, 0.34)
    swings = rng.uniform(-0.35, 0.35, 4)
    leg_len = ry * 0.4 + rng.uniform(0.26, 0.32)
    eye_r = rng.uniform(0.026, 0.034)

    def on_head(x: float, y: float) -> np.ndarray:
        return rotate(np.array((x, y)), tilt) + head_c

    snout = _ellipse(on_head(0.12, 0.035), 0.1, snout_ry, tilt)
    if floppy:
        ear_angle = tilt + ear_swing
        ear_c = on_head(-0.04, 0.02)
        ear = _ellipse(ear_c, 0.065, 0.13, ear_angle)
        ear_tip = ear_c + rotate(np.array((0.0, 0.13)), ear_angle)
    else:
        ear_tip = on_head(-0.07 + 0.06 * ear_swing, -0.28)
        ear = np.array([on_head(-0.13, -0.03), ear_tip, on_head(0.03, -0.1)])
    tail_base = np.array((-rx + 0.05, -0.4 * ry))
    tail_end = _polar(tail_base, tail_len, math.pi + tail_raise)
    eye = on_head(0.035, -0.03)

    hips = [(0.25, 0.0), (-0.13, 0.0), (0.17, 0.04), (-0.22, 0.04)]  # far pair, near pair
    paws = [_polar(hip, leg_len, math.pi / 2 + swing) for hip, swing in zip(hips, swings)]
    legs = [[("legs", _limb(hip, paw, 0.06, 0.05)),
             ("legs", _ellipse(paw + (0.03, 0.01), 0.065, 0.04))]
            for hip, paw in zip(hips, paws)]
    return Creature(
        shapes=legs[0] + legs[1] + [("tail", _limb(tail_base, tail_end, 0.055, 0.035)),
                                    ("body", _ellipse((0, 0), rx, ry)),
                                    ("body", _limb((0.2, -0.04), head_c, 0.11, 0.09))]
        + legs[2] + legs[3] + [("head", _ellipse(head_c, head_r, head_r)), ("head", snout),
                               ("ears", ear), ("eye", _ellipse(eye, eye_r, eye_r))],
        keypoints={
            "head": on_head(0.0, 0.03), "nose": on_head(0.21, 0.035), "eye": eye,
            "ear_tip": ear_tip, "body_center": np.array((-0.05, -0.02)),
            "tail_tip": tail_end, "front_foot": paws[2], "hind_foot": paws[3],
        },
    )


BUILDERS: dict[str, Callable[[np.random.Generator], Creature]] = {
    "fish": _fish, "bird": _bird, "dog": _dog,
}
