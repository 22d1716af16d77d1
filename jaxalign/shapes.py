"""A procedural captioned dataset of coloured shapes, and a pixel-statistics reader of its images.

The embedded default model (``jaxalign/embedded``) is trained on this data (``scripts/train_tiny.py``,
MODEL.md): 32x32 images of one shape (circle, square or triangle) of a named colour, small or
large, in one of five positions, on a plain background of another named colour, captioned e.g.
"a small red circle on a blue background, top left". Everything is numpy and deterministic from a
seed; nothing is downloaded.

Some (shape, colour, background) combinations are held out of training (:data:`HELD_OUT`), so the
model's caption following can be measured on combinations it never saw. :func:`describe` reads
shape, colour, background, size and position back from pixels; it checks that captions match the
rendered pixels and scores the trained model's samples (MODEL.md's held-out accuracy).
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import numpy as np

IMAGE_SIZE = 32
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
# Named colours, sRGB in [0, 1]; chosen far apart so a colour name is unambiguous in pixels.
COLOURS = {
    "red": (0.86, 0.16, 0.16),
    "orange": (0.96, 0.55, 0.12),
    "yellow": (0.95, 0.88, 0.16),
    "green": (0.16, 0.67, 0.24),
    "blue": (0.16, 0.31, 0.86),
    "purple": (0.55, 0.24, 0.71),
    "white": (0.96, 0.96, 0.96),
    "black": (0.08, 0.08, 0.08),
}
# Centre of each named position, in pixels of a 32x32 image (x right, y down).
POSITIONS = {
    "top left": (9.0, 9.0),
    "top right": (23.0, 9.0),
    "bottom left": (9.0, 23.0),
    "bottom right": (23.0, 23.0),
    "in the center": (16.0, 16.0),
}
_RADIUS = {"small": (3.5, 4.5), "large": (6.5, 7.5)}
_SUPERSAMPLE = 4  # anti-aliased edges: render at 4x and average


def _held_out(seed: int = 1234, fraction: float = 0.15) -> frozenset[tuple[str, str, str]]:
    triples = [(s, c, b) for s, c, b in itertools.product(SHAPES, COLOURS, COLOURS) if c != b]
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(triples), size=round(fraction * len(triples)), replace=False)
    return frozenset(triples[i] for i in sorted(chosen))


# (shape, colour, background) combinations that never appear in training images.
HELD_OUT = _held_out()


class Attributes(NamedTuple):
    shape: str
    colour: str
    background: str
    size: str
    position: str


def caption(a: Attributes, with_size: bool = True, with_position: bool = True) -> str:
    size = f"{a.size} " if with_size else ""
    position = f", {a.position}" if with_position else ""
    return f"a {size}{a.colour} {a.shape} on a {a.background} background{position}"


def parse_caption(text: str) -> dict[str, str] | None:
    """The attributes a caption in :func:`caption`'s grammar names (size and position may be left out), or
    ``None`` for any other text: e.g. ``{"shape": "circle", "colour": "red", "background": "blue"}``."""
    import re

    words = "|".join
    pattern = (
        rf"a (?:(?P<size>{words(SIZES)}) )?(?P<colour>{words(COLOURS)}) (?P<shape>{words(SHAPES)}) "
        rf"on a (?P<background>{words(COLOURS)}) background(?:, (?P<position>{words(POSITIONS)}))?"
    )
    match = re.fullmatch(pattern, text.strip().lower())
    return None if match is None else {k: v for k, v in match.groupdict().items() if v is not None}


def sample_attributes(rng: np.random.Generator, held_out: bool = False) -> Attributes:
    """Uniform attributes whose (shape, colour, background) is in or out of :data:`HELD_OUT`."""
    colours = list(COLOURS)
    while True:
        shape = SHAPES[rng.integers(len(SHAPES))]
        colour, background = (colours[i] for i in rng.choice(len(colours), size=2, replace=False))
        if ((shape, colour, background) in HELD_OUT) == held_out:
            break
    return Attributes(shape, colour, background, SIZES[rng.integers(2)], list(POSITIONS)[rng.integers(len(POSITIONS))])


def render(a: Attributes, rng: np.random.Generator) -> np.ndarray:
    """One anti-aliased image [32, 32, 3] in [0, 1]; position, size and colours are jittered slightly."""
    n = IMAGE_SIZE * _SUPERSAMPLE
    coords = (np.arange(n) + 0.5) / _SUPERSAMPLE
    x, y = np.meshgrid(coords, coords)
    cx, cy = np.asarray(POSITIONS[a.position]) + rng.uniform(-1.5, 1.5, size=2)
    r = rng.uniform(*_RADIUS[a.size])
    dx, dy = x - cx, y - cy
    if a.shape == "circle":
        mask = dx**2 + dy**2 <= r**2
    elif a.shape == "square":
        mask = np.maximum(np.abs(dx), np.abs(dy)) <= 0.9 * r
    else:  # an upward triangle: apex at (0, -r), base at y = 0.8 r
        mask = (dy <= 0.8 * r) & (np.abs(dx) <= (dy + r) / 1.8)
    coverage = mask.reshape(IMAGE_SIZE, _SUPERSAMPLE, IMAGE_SIZE, _SUPERSAMPLE).mean(axis=(1, 3))[..., None]
    fg = np.clip(np.asarray(COLOURS[a.colour]) + rng.uniform(-0.04, 0.04, 3), 0, 1)
    bg = np.clip(np.asarray(COLOURS[a.background]) + rng.uniform(-0.04, 0.04, 3), 0, 1)
    return (coverage * fg + (1 - coverage) * bg).astype(np.float32)


class Batch(NamedTuple):
    images: np.ndarray  # [N, 32, 32, 3] in [0, 1]
    captions: list[str]
    attributes: list[Attributes]


def make_batch(seed: int, size: int, held_out: bool = False) -> Batch:
    """``size`` captioned images, deterministic from ``seed``.

    A quarter of the captions leave out the size, and a quarter leave out the position, so short
    prompts ("a red circle on a blue background") are in distribution too.
    """
    rng = np.random.default_rng(seed)
    attributes = [sample_attributes(rng, held_out) for _ in range(size)]
    images = np.stack([render(a, rng) for a in attributes])
    captions = [caption(a, with_size=rng.random() > 0.25, with_position=rng.random() > 0.25) for a in attributes]
    return Batch(images, captions, attributes)


def _nearest_colour(rgb: np.ndarray) -> str:
    names = list(COLOURS)
    return names[int(np.argmin(np.linalg.norm(np.asarray([COLOURS[n] for n in names]) - rgb, axis=1)))]


def describe(image: np.ndarray) -> Attributes | None:
    """Read the attributes back from one image [32, 32, 3] in [0, 1] by pixel statistics.

    Background: nearest named colour to the median of a ring of pixels two in from the border. Shape pixels: those at
    least half-way from the background to the most distinct colour. Colour: nearest named colour
    to their median. Shape: a square fills over 93% of its bounding box; otherwise a triangle
    has under 38% of its pixels in the upper half of that box and a circle about half. Size: the radius that their area implies for that shape. Position: nearest named centre
    to their centroid. ``None`` when no shape stands out from the background.
    """
    image = np.asarray(image, np.float32)
    # The ring two pixels in from the edge: generated images can have off-colour outermost pixels.
    ring = image[2:-2, 2:-2]
    border = np.concatenate([ring[0], ring[-1], ring[1:-1, 0], ring[1:-1, -1]])
    bg = np.median(border, axis=0)
    distance = np.linalg.norm(image - bg, axis=-1)
    if distance.max() < 0.25:
        return None
    mask = distance >= 0.5 * distance.max()
    ys, xs = np.nonzero(mask)
    top, bottom, left, right = ys.min(), ys.max(), xs.min(), xs.max()
    middle = (top + bottom) / 2
    upper_share = ((ys < middle).sum() + 0.5 * (ys == middle).sum()) / len(ys)
    fill = len(ys) / ((bottom - top + 1) * (right - left + 1))
    shape = "square" if fill > 0.93 else "triangle" if upper_share < 0.38 else "circle"
    radius = np.sqrt(mask.sum() / _AREA_PER_SQUARED_RADIUS[shape])
    size = "large" if radius > 5.5 else "small"
    centroid = np.array([xs.mean() + 0.5, ys.mean() + 0.5])
    position = min(POSITIONS, key=lambda p: np.linalg.norm(centroid - np.asarray(POSITIONS[p])))
    return Attributes(shape, _nearest_colour(np.median(image[mask], axis=0)), _nearest_colour(bg), size, position)


# Area of each shape as rendered by :func:`render`, in units of its radius squared.
_AREA_PER_SQUARED_RADIUS = {"circle": np.pi, "square": 1.8**2, "triangle": 1.8}
