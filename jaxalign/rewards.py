"""Rewards: pure batched functions from images [N, H, W, 3] in [0, 1] to scores [N].

The weight-free rewards here need no model weights. ``jpeg_compressibility`` is the paper's
non-differentiable objective (arXiv 2506.00299, Sec. 4; after Black et al. 2023, DDPO): minus
the JPEG size in kB at quality 95, computed by PIL on the host through one ``jax.pure_callback``
for the whole population, so it still runs inside the compiled generation step.

:func:`weighted_sum` combines named rewards into one objective whose weights are traced
arguments and which also returns every component, so each one can be logged.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxalign.errors import JaxalignError
from jaxalign.registry import Registry

# Rec. 709 / sRGB luma weights.
_LUMA = jnp.array([0.2126, 0.7152, 0.0722], jnp.float32)


class Reward(NamedTuple):
    fn: Callable[[jax.Array], jax.Array]
    differentiable: bool


REWARDS: Registry[Callable[[], Reward]] = Registry("reward")


def _per_image_mean(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1).mean(axis=1)


@REWARDS.register("brightness")
def brightness() -> Reward:
    """Mean pixel value over all pixels and channels."""
    return Reward(_per_image_mean, differentiable=True)


def srgb_to_linear(images: jax.Array) -> jax.Array:
    return jnp.where(images <= 0.04045, images / 12.92, ((images + 0.055) / 1.055) ** 2.4)


@REWARDS.register("relative_luminance")
def relative_luminance() -> Reward:
    """Mean WCAG relative luminance: sRGB linearised, then weighted 0.2126 R + 0.7152 G + 0.0722 B."""
    return Reward(lambda images: _per_image_mean(srgb_to_linear(images) @ _LUMA), differentiable=True)


@REWARDS.register("contrast")
def contrast() -> Reward:
    """RMS contrast: the standard deviation of luma (gamma-encoded, Rec. 709 weights) over pixels."""

    def fn(images):
        luma = (images @ _LUMA).reshape(images.shape[0], -1)
        return jnp.sqrt(jnp.mean((luma - luma.mean(axis=1, keepdims=True)) ** 2, axis=1) + 1e-12)

    return Reward(fn, differentiable=True)


@REWARDS.register("saturation")
def saturation() -> Reward:
    """Mean HSV saturation, (max - min) / max per pixel, 0 for black pixels."""

    def fn(images):
        high, low = images.max(axis=-1), images.min(axis=-1)
        return _per_image_mean(jnp.where(high > 0, (high - low) / jnp.maximum(high, 1e-12), 0.0))

    return Reward(fn, differentiable=True)


def jpeg_size_kb(images: np.ndarray, quality: int = 95) -> np.ndarray:
    """JPEG sizes in kB (1000 bytes) of images [..., H, W, 3] in [0, 1], quantised to uint8."""
    flat = np.asarray(images, np.float32).reshape(-1, *images.shape[-3:])
    pixels = np.clip(np.round(flat * 255.0), 0, 255).astype(np.uint8)
    sizes = np.empty(len(pixels), np.float32)
    for i, image in enumerate(pixels):  # PIL encodes one image at a time; this is host code.
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        sizes[i] = buffer.tell() / 1000.0
    return sizes.reshape(images.shape[:-3])


@REWARDS.register("jpeg_compressibility")
def jpeg_compressibility(quality: int = 95) -> Reward:
    """Minus the JPEG size in kB; one host callback for the whole population."""

    def fn(images):
        def host(batch):
            return -jpeg_size_kb(batch, quality)

        out = jax.ShapeDtypeStruct(images.shape[:-3], jnp.float32)
        return jax.pure_callback(host, out, images, vmap_method="broadcast_all")

    return Reward(fn, differentiable=False)


@REWARDS.register("color_fraction")
def color_fraction(colour: str) -> Reward:
    """Share of pixels close to a named colour of :data:`jaxalign.shapes.COLOURS` (soft, differentiable).

    A pixel counts by ``sigmoid((0.25 - d) / 0.03)`` of its RGB distance d to the colour, so pixels
    within ~0.2 count fully and pixels of the other named colours (>= 0.3 away) hardly at all.
    """
    from jaxalign.shapes import COLOURS

    if colour not in COLOURS:
        raise JaxalignError(f"unknown colour {colour!r} for color_fraction; valid: {', '.join(COLOURS)}")
    target = jnp.asarray(COLOURS[colour], jnp.float32)

    def fn(images):
        distance = jnp.sqrt(jnp.sum((images - target) ** 2, axis=-1) + 1e-12)
        return _per_image_mean(jax.nn.sigmoid((0.25 - distance) / 0.03))

    return Reward(fn, differentiable=True)


class Objective(NamedTuple):
    """``fn(images, weights) -> (total [N], {name: component [N]})`` and its default weights."""

    fn: Callable[[jax.Array, Mapping[str, jax.Array]], tuple[jax.Array, dict[str, jax.Array]]]
    default_weights: dict[str, float]
    differentiable: bool


def parse_reward(spec: str) -> Reward:
    """A reward from its config name: ``"brightness"``, or ``"name:argument"`` such as ``"color_fraction:red"``."""
    name, _, argument = spec.partition(":")
    constructor = REWARDS[name]
    try:
        return constructor(argument) if argument else constructor()
    except TypeError:
        raise JaxalignError(f"reward {name!r} takes {'no argument' if argument else 'an argument, as ' + name + ':<value>'}; got {spec!r}") from None


def weighted_sum(weights: Mapping[str, float]) -> Objective:
    """The objective sum_k w_k r_k(images) over named rewards; weights are traced arguments."""
    if not weights:
        raise JaxalignError("rewards is empty; give at least one reward name with its weight")
    rewards = {name: parse_reward(name) for name in weights}

    def fn(images, w):
        components = {name: reward.fn(images).astype(jnp.float32) for name, reward in rewards.items()}
        total = sum(w[name] * value for name, value in components.items())
        return total, components

    return Objective(fn, {k: float(v) for k, v in weights.items()}, all(r.differentiable for r in rewards.values()))
