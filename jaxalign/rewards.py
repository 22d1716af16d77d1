"""Rewards: pure batched functions from images [N, H, W, 3] in [0, 1] to scores [N].

Weight-free rewards need no model weights. Those named as in the paper's code
(pjjajal/diffusion-trajectory, fitness/fitness_fn.py; arXiv 2506.00299) compute what it computes
there, with R, G, B = 255 x in 0-255 as its PIL inputs hold them:

* ``brightness``: mean HSV value, mean of max(R, G, B) / 255.
* ``relative_luminance``: mean of (0.2126 R + 0.7152 G + 0.0722 B) / 255, sRGB not linearised.
* ``contrast``: standard deviation over pixels of (R + G + B) / 3, in 0-255 units.
* ``saturation``: mean PIL HSV saturation, floor(255 (max - min) / max) / 255.
* ``jpeg_size_kb``: the JPEG size in kB at quality 95 (PIL, on the host; not differentiable),
  positive, the value of the reference's ``jpeg_compressibility``, which it minimises.
  ``jpeg_compressibility`` here is minus it (DDPO's sign), maximised: the same search.

The reference scores uint8 images, round(255 x). That rounding moves the first three by less than
a level, so they use 255 x unrounded and stay smooth; ``saturation`` takes its value from the uint8
levels (there it matters) and its gradient, straight-through, from the unrounded formula.

jaxalign's earlier definitions remain under names that say what they compute: ``mean_intensity``
(mean over pixels and channels), ``wcag_luminance`` (linearised sRGB, WCAG), ``luma_rms_contrast``
(standard deviation of Rec. 709 luma in [0, 1] units), and ``continuous_saturation`` (HSV saturation of
the float image).
``color_fraction:<colour>`` is the soft share of pixels near a named colour.

Learned rewards (CLIP score, aesthetic, PickScore, HPSv2, novelty, ImageReward) are in
:mod:`jaxalign.learned_rewards`; they register here like the others.

:func:`host_reward` turns any batched numpy/PyTorch scorer into a reward through one
``jax.pure_callback`` per population (the JPEG rewards and ``imagereward`` use it).
:func:`weighted_sum` combines named rewards into one objective whose weights are traced
arguments and which also returns every component, so each one can be logged.
"""

from __future__ import annotations

import inspect
import io
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxalign.errors import JaxalignError, check_known
from jaxalign.registry import Registry

# Rec. 709 / sRGB luma weights; a NumPy constant, so importing this module does not start a device backend.
_LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)


class Reward(NamedTuple):
    """``fn(images, params, prepared) -> [N]``, one signature for every reward: ``params`` are its weights (None for
    weight-free rewards) and ``prepared = prepare(prompt)`` its host-side prompt encoding (None when it reads none)."""

    fn: Callable[..., jax.Array]
    differentiable: bool
    params: Any = None  # weights, passed to the compiled step as an argument (never baked in as constants)
    prepare: Callable[[str], Any] | None = None

    def score(self, images: jax.Array, params: Any = None, prepared: Any = None) -> jax.Array:
        return self.fn(images, params, prepared)


def images_only(fn: Callable[[jax.Array], jax.Array]) -> Callable[..., jax.Array]:
    """A function of the images alone in the reward signature (weight-free, prompt-free rewards)."""
    return lambda images, params=None, prepared=None: fn(images)


def learned(constructor: Callable[..., Reward]) -> Callable[..., Reward]:
    """Marks a reward constructor that reads weights (``reward_paths`` or its default repo id): such a reward is
    built, and its files checked, when the job is built, not while the config is checked."""
    constructor.learned = True
    return constructor


def is_learned(name: str) -> bool:
    """Whether the reward of a config name (``name`` or ``name:argument``) reads weights."""
    return getattr(REWARDS[name.partition(":")[0]], "learned", False)


REWARDS: Registry[Callable[[], Reward]] = Registry("reward")


def _per_image_mean(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1).mean(axis=1)


# --- The paper's weight-free rewards, as pjjajal/diffusion-trajectory fitness/fitness_fn.py scores them.
# There each function gets one PIL RGB image: diffusers' uint8 output, round(255 x) of the decoded image
# clamped to [0, 1]. Ours take float images in [0, 1] and apply the same formulas to 255 x. Rounding to
# uint8 moves brightness, relative_luminance (by at most 0.5 / 255) and contrast (by at most 0.5) by
# less than a level, so those three skip it and stay smooth (exact gradients, finite differences agree). For saturation it matters (dark pixels, and PIL truncates the result), so there the
# value is the reference's on the uint8 levels and the gradient that of the unrounded formula
# (straight-through).


def _scaled(images: jax.Array) -> jax.Array:
    """255 x, clipped to [0, 255] as diffusers clamps before quantising."""
    return 255.0 * jnp.clip(images.astype(jnp.float32), 0.0, 1.0)


def _rms(x: jax.Array) -> jax.Array:
    """Per-image RMS deviation from the mean (population standard deviation); 0, with 0 gradient, when flat."""
    x = x.reshape(x.shape[0], -1)
    var = jnp.mean((x - x.mean(axis=1, keepdims=True)) ** 2, axis=1)
    return jnp.where(var > 0, jnp.sqrt(jnp.where(var > 0, var, 1.0)), 0.0)


@REWARDS.register("brightness")
def brightness() -> Reward:
    """Mean HSV value: mean over pixels of max(R, G, B) / 255, with R, G, B = 255 x in 0-255.

    As pjjajal/diffusion-trajectory fitness/fitness_fn.py ``brightness`` (PIL's HSV V channel), in [0, 1].
    The reference's uint8 rounding of 255 x is skipped (it changes the value by at most 0.5 / 255).
    The old mean over channels is ``mean_intensity``.
    """
    return Reward(images_only(lambda images: _per_image_mean(_scaled(images).max(axis=-1)) / 255.0), differentiable=True)


@REWARDS.register("relative_luminance")
def relative_luminance() -> Reward:
    """Mean over pixels of (0.2126 R + 0.7152 G + 0.0722 B) / 255, on gamma-encoded R, G, B = 255 x.

    As pjjajal/diffusion-trajectory fitness/fitness_fn.py ``relative_luminance``: Rec. 709 weights on
    sRGB values that are not linearised, in [0, 1]. The reference's uint8 rounding of 255 x is skipped
    (at most 0.5 / 255). The linearised (WCAG) one is ``wcag_luminance``.
    """
    return Reward(images_only(lambda images: _per_image_mean((_scaled(images) * _LUMA).sum(axis=-1)) / 255.0), differentiable=True)


@REWARDS.register("contrast")
def contrast() -> Reward:
    """RMS contrast: population std over pixels of the grey image (R + G + B) / 3, with R, G, B = 255 x in 0-255.

    As pjjajal/diffusion-trajectory fitness/fitness_fn.py ``contrast`` (its active "RMS contrast" branch).
    Not divided by 255, so it ranges over [0, 127.5]. The reference's uint8 rounding of 255 x is
    skipped (at most 0.5). The old standard deviation of Rec. 709 luma in [0, 0.5] is ``luma_rms_contrast``.
    """
    return Reward(images_only(lambda images: _rms(_scaled(images).mean(axis=-1))), differentiable=True)


@REWARDS.register("saturation")
def saturation() -> Reward:
    """Mean over pixels of floor(255 (max - min) / max) / 255 (0 if max = 0), on the uint8 levels round(255 x).

    max and min are over R, G, B. As pjjajal/diffusion-trajectory fitness/fitness_fn.py ``saturation``
    (PIL's HSV S channel divided by 255), in [0, 1]. Both uint8 steps matter here, so both are
    reproduced: the pixels are the levels round(255 x), as diffusers rounds them, and PIL truncates
    255 (max - min) / max to an integer (its float computation equals the integer floor for every pair
    of levels; the tests check all of them). Truncation lowers the mean by about 0.5 / 255 per coloured
    pixel; rounding changes dark pixels most: (0.003, 0.002, 0.002) rounds to (1, 1, 1), saturation 0,
    where the float formula gives 1/3. The value is piecewise constant; its gradient is taken
    straight-through from (max - min) / max(max, 1) on 255 x. The unquantised version is
    ``continuous_saturation``.
    """

    @images_only
    def fn(images):
        scaled = _scaled(images)
        high, low = scaled.max(axis=-1), scaled.min(axis=-1)
        smooth = _per_image_mean((high - low) / jnp.maximum(high, 1.0))
        levels = jax.lax.stop_gradient(jnp.round(scaled)).astype(jnp.int32)
        top, bottom = levels.max(axis=-1), levels.min(axis=-1)
        exact = _per_image_mean(((255 * (top - bottom)) // jnp.maximum(top, 1)).astype(jnp.float32)) / 255.0
        return smooth + jax.lax.stop_gradient(exact - smooth)  # the value of exact, the gradient of smooth

    return Reward(fn, differentiable=True)


# --- jaxalign's earlier definitions, under names that say what they compute (all on the float image,
# no quantisation).


@REWARDS.register("mean_intensity")
def mean_intensity() -> Reward:
    """Mean pixel value over all pixels and channels: mean(R, G, B) in [0, 1]. (Not the paper's ``brightness``.)"""
    return Reward(images_only(_per_image_mean), differentiable=True)


def srgb_to_linear(images: jax.Array) -> jax.Array:
    return jnp.where(images <= 0.04045, images / 12.92, ((images + 0.055) / 1.055) ** 2.4)


@REWARDS.register("wcag_luminance")
def wcag_luminance() -> Reward:
    """Mean WCAG relative luminance: sRGB linearised, then mean of 0.2126 R + 0.7152 G + 0.0722 B.
    (Not the paper's ``relative_luminance``, which skips the linearisation.)"""
    return Reward(images_only(lambda images: _per_image_mean((srgb_to_linear(images) * _LUMA).sum(axis=-1))), differentiable=True)


@REWARDS.register("luma_rms_contrast")
def luma_rms_contrast() -> Reward:
    """Standard deviation over pixels of Rec. 709 luma 0.2126 R + 0.7152 G + 0.0722 B (gamma-encoded), in
    [0, 0.5]. (Not the paper's ``contrast``, which uses the channel mean in 0-255 units.)"""

    @images_only
    def fn(images):
        luma = (images * _LUMA).sum(axis=-1).reshape(images.shape[0], -1)
        return jnp.sqrt(jnp.mean((luma - luma.mean(axis=1, keepdims=True)) ** 2, axis=1) + 1e-12)

    return Reward(fn, differentiable=True)


@REWARDS.register("continuous_saturation")
def continuous_saturation() -> Reward:
    """Mean HSV saturation (max - min) / max on the float image, 0 for black pixels; the paper's
    ``saturation`` without its two uint8 steps (rounded pixels, truncated result)."""

    @images_only
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


def host_reward(scorer: Callable, *, with_prompt: bool = False) -> Reward:
    """A reward from a batched host scorer: ``scorer(images)`` or, with ``with_prompt``,
    ``scorer(images, prompts)``, where images is a float32 numpy array [N, H, W, 3] in [0, 1],
    prompts a list of N strings, and the result N scores (numpy, a list, or a PyTorch tensor).

    Runs as one ``jax.pure_callback`` per generation for the whole population (and, in batched
    searches, for every prompt at once); not differentiable.
    """
    prompts: list[str] = []

    def prepare(prompt: str):
        if prompt not in prompts:
            prompts.append(prompt)
        return jnp.int32(prompts.index(prompt))

    def host(batch, prompt_index):
        batch = np.asarray(batch, np.float32)
        lead = batch.shape[:-3]
        flat = batch.reshape(-1, *batch.shape[-3:])
        if with_prompt:
            index = np.asarray(prompt_index)
            index = np.broadcast_to(index.reshape(index.shape + (1,) * (len(lead) - index.ndim)), lead).reshape(-1)
            scores = scorer(flat, [prompts[int(i)] for i in index])
        else:
            scores = scorer(flat)
        if hasattr(scores, "detach"):  # a PyTorch tensor
            scores = scores.detach().float().cpu().numpy()
        return np.asarray(scores, np.float32).reshape(lead)

    def fn(images, params=None, prompt_index=None):
        out = jax.ShapeDtypeStruct(images.shape[:-3], jnp.float32)
        index = jnp.int32(0) if prompt_index is None else prompt_index
        return jax.pure_callback(host, out, images, index, vmap_method="broadcast_all")

    if with_prompt:
        return Reward(fn, differentiable=False, prepare=prepare)
    return Reward(fn, differentiable=False)


@REWARDS.register("jpeg_compressibility")
def jpeg_compressibility(quality: int = 95) -> Reward:
    """Minus the JPEG size in kB (1000 bytes) at quality 95 of the uint8 image round(255 x): higher = more compressible.

    DDPO's sign (Black et al. 2023). pjjajal/diffusion-trajectory fitness/fitness_fn.py's function of
    this name returns the positive size and runs with objective "min": the same search, opposite
    sign; its values are ``jpeg_size_kb``. One host callback for the population.
    """
    return host_reward(lambda images: -jpeg_size_kb(images, int(quality)))


@REWARDS.register("jpeg_size_kb")
def jpeg_size_kb_reward(quality: int = 95) -> Reward:
    """The JPEG size in kB, positive: the reference's ``jpeg_compressibility`` value (minimise it)."""
    return host_reward(lambda images: jpeg_size_kb(images, int(quality)))


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

    @images_only
    def fn(images):
        distance = jnp.sqrt(jnp.sum((images - target) ** 2, axis=-1) + 1e-12)
        return _per_image_mean(jax.nn.sigmoid((0.25 - distance) / 0.03))

    return Reward(fn, differentiable=True)


def _no_prompt_inputs(prompt: str) -> dict[str, Any]:
    return {}


class Objective(NamedTuple):
    """``fn(images, weights, reward_params, prepared) -> (total [N], {name: component [N]})``, its
    default weights, the learned rewards' weights (``params``) and ``prepare(prompt)``, which
    returns every prompt-conditioned reward's host-side encoding of a prompt."""

    fn: Callable[..., tuple[jax.Array, dict[str, jax.Array]]]
    default_weights: dict[str, float]
    differentiable: bool
    params: dict[str, Any] | None = None
    prepare: Callable[[str], dict[str, Any]] = _no_prompt_inputs


def oriented(objective: Objective, maximize: bool) -> Objective:
    """The objective with "higher is better": its total negated when it is minimised. The one place the direction is
    applied; searches, methods and outputs maximise the result, and only the evosax boundary (strategies minimise)
    negates again. Components stay the rewards as they are."""
    if maximize:
        return objective

    def fn(*args):
        total, components = objective.fn(*args)
        return -total, components

    return objective._replace(fn=fn)


def parse_reward(spec: str, paths: Mapping[str, Any] | None = None) -> Reward:
    """A reward from its config name: ``"brightness"``, ``"name:argument"`` such as
    ``"color_fraction:red"``, or a learned reward whose weights are at ``paths[name]`` (a path or
    repo id, or a mapping of its constructor's options such as ``{"path": ..., "clip": ...}``)."""
    name, _, argument = spec.partition(":")
    constructor = REWARDS[name]
    options = (paths or {}).get(name)
    kwargs = dict(options) if isinstance(options, Mapping) else ({"path": str(options)} if options else {})
    signature = inspect.signature(constructor)
    check_known(f"reward_paths.{name} option(s)", kwargs, signature.parameters)
    args = (argument,) if argument else ()
    try:  # the arguments are checked against the signature, so a TypeError raised inside the constructor stays its own
        signature.bind(*args, **kwargs)
    except TypeError:
        raise JaxalignError(f"reward {name!r} takes {'no argument' if argument else 'an argument, as ' + name + ':<value>'}; got {spec!r}") from None
    return constructor(*args, **kwargs)


def weighted_sum(weights: Mapping[str, float], paths: Mapping[str, Any] | None = None) -> Objective:
    """The objective sum_k w_k r_k(images) over named rewards; weights are traced arguments."""
    if not weights:
        raise JaxalignError("rewards is empty; give at least one reward name with its weight")
    rewards = {name: parse_reward(name, paths) for name in weights}
    params = {name: r.params for name, r in rewards.items() if r.params is not None} or None

    def prepare(prompt: str) -> dict[str, Any]:
        return {name: r.prepare(prompt) for name, r in rewards.items() if r.prepare is not None}

    def fn(images, w, reward_params=None, prepared=None):
        reward_params, prepared = reward_params or {}, prepared or {}
        components = {
            name: reward.score(images, reward_params.get(name), prepared.get(name)).astype(jnp.float32)
            for name, reward in rewards.items()
        }
        total = sum(w[name] * value for name, value in components.items())
        return total, components

    return Objective(fn, {k: float(v) for k, v in weights.items()}, all(r.differentiable for r in rewards.values()), params, prepare)


from jaxalign import learned_rewards  # noqa: E402, F401  (registers the learned rewards; it imports this module)
