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

Learned rewards run in Flax inside the compiled step and are differentiable; each reads its
weights from a local path (``config.reward_paths``) or the local Hugging Face cache:

* ``clip``: CLIP score, 100 x cosine(image, prompt) (Hessel et al. 2021, arXiv 2104.08718).
* ``aesthetic``: the LAION aesthetic predictor, an MLP on L2-normalised CLIP ViT-L/14 image
  embeddings (christophschuhmann/improved-aesthetic-predictor).
* ``pickscore``: PickScore (Kirstain et al. 2023, arXiv 2305.01569), a fine-tuned CLIP-H:
  logit_scale x cosine(image, prompt).
* ``hpsv2``: HPSv2 (Wu et al. 2023, arXiv 2306.09341), an open_clip ViT-H-14 checkpoint mapped
  to the transformers layout: cosine(image, prompt).
* ``novelty``: the reference's DINOv2 (Oquab et al. 2023, arXiv 2304.07193) k-nearest-neighbour
  novelty within the population, the one reward whose value depends on the other images scored with it.

Their image preprocessing (shortest-side bicubic resize, centre crop, CLIP normalisation) is done
in JAX on the whole batch. Prompt-conditioned rewards encode each prompt once, host side, with
``prepare``; the encoding travels with the search's problem.

:func:`host_reward` turns any batched numpy/PyTorch scorer into a reward through one
``jax.pure_callback`` per population (the JPEG rewards and ``imagereward`` use it).
:func:`weighted_sum` combines named rewards into one objective whose weights are traced
arguments and which also returns every component, so each one can be logged.
"""

from __future__ import annotations

import inspect
import io
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
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


def clip_preprocess(images: jax.Array, crop_size: int, mean: Sequence[float], std: Sequence[float], resize: int | None = None) -> jax.Array:
    """CLIP's (and DINOv2's) reference preprocessing in JAX: resize the shortest side to ``resize``
    (default ``crop_size``; bicubic, antialiased as PIL does when shrinking), centre-crop ``crop_size``
    square, normalise. images [N, H, W, 3] in [0, 1] -> pixels [N, crop_size, crop_size, 3]."""
    n, height, width, _ = images.shape
    short, target = min(height, width), resize or crop_size
    new_h, new_w = (target, int(target * width / short)) if height <= width else (int(target * height / short), target)
    resized = jax.image.resize(images, (n, new_h, new_w, 3), method="bicubic", antialias=True)
    top, left = (new_h - crop_size) // 2, (new_w - crop_size) // 2
    cropped = resized[:, top : top + crop_size, left : left + crop_size]
    return (cropped - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def _unit(x: jax.Array) -> jax.Array:
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def _clip_reward(clip, clip_params, scale: Callable[[Any], jax.Array]) -> Reward:
    """scale(params) x cosine(image, prompt) for a CLIP model; text features are prepared per prompt."""
    encode = jax.jit(clip.text_features)

    def prepare(prompt: str):
        return _unit(encode(clip_params, jnp.asarray(clip.tokenize([prompt])))[0])

    def fn(images, params, text):
        pixels = clip_preprocess(images, clip.crop_size, clip.mean, clip.std)
        image = _unit(clip.image_features(params, pixels.astype(clip.module.dtype)).astype(jnp.float32))
        return scale(params) * (image @ text.astype(jnp.float32))

    return Reward(fn, differentiable=True, params=clip_params, prepare=prepare)


@REWARDS.register("clip")
@learned
def clip_score(path: str = "openai/clip-vit-large-patch14") -> Reward:
    """CLIP score: 100 x cosine similarity of image and prompt embeddings."""
    from jaxalign.models import load_clip

    return _clip_reward(*load_clip(path), lambda params: jnp.float32(100.0))


@REWARDS.register("novelty")
@learned
def novelty(path: str = "facebook/dinov2-base", top_k: int = 15) -> Reward:
    """Novelty, the reference's DINOv2 k-nearest-neighbour score (pjjajal/diffusion-trajectory
    ``fitness_fn.Novelty``): the mean Euclidean distance of an image's DINOv2 ``pooler_output`` to its
    ``top_k`` nearest neighbours. The reference's neighbours are an archive of every image scored so far for
    the prompt; here they are the other images of the same population (one scoring call), so the baseline
    alone scores 0 as the reference's first image does."""
    from jaxalign.models.dinov2 import load_dinov2

    model, params = load_dinov2(path)

    def fn(images, params, prepared):
        pixels = clip_preprocess(images, model.crop_size, model.mean, model.std, resize=model.resize)
        return knn_novelty(model.features(params, pixels.astype(model.module.dtype)).astype(jnp.float32), top_k)

    return Reward(fn, differentiable=True, params=params)


def knn_novelty(features: jax.Array, top_k: int) -> jax.Array:
    """For features [N, D]: each row's mean Euclidean distance to its min(top_k, N - 1) nearest other rows (0 when N = 1)."""
    n = features.shape[0]
    k = min(top_k, n - 1)
    if k < 1:
        return jnp.zeros((n,), jnp.float32)
    squared = jnp.sum((features[:, None] - features[None]) ** 2, axis=-1)
    distances = jnp.sqrt(jnp.maximum(squared, 1e-12))  # floored: the gradient of sqrt at 0 is infinite
    distances = jnp.where(jnp.eye(n, dtype=bool), jnp.inf, distances)
    return -jax.lax.top_k(-distances, k)[0].mean(axis=1)


@REWARDS.register("pickscore")
@learned
def pickscore(path: str = "yuvalkirstain/PickScore_v1") -> Reward:
    """PickScore: the model's logit scale x cosine similarity of image and prompt embeddings."""
    from jaxalign.models import load_clip

    clip, params = load_clip(path)
    return _clip_reward(clip, params, clip.logit_scale)


# open_clip's ViT-H-14 (the architecture of HPSv2's checkpoints), in open_clip's config format.
VIT_H_14 = {
    "embed_dim": 1024,
    "vision_cfg": {"image_size": 224, "layers": 32, "width": 1280, "head_width": 80, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16, "layers": 24},
}


@REWARDS.register("hpsv2")
@learned
def hpsv2(path: str | None = None, architecture: Mapping | None = None) -> Reward:
    """HPSv2 / HPSv2.1: cosine similarity of image and prompt under the HPS-tuned open_clip ViT-H-14.

    ``path`` is ``HPS_v2_compressed.pt`` or ``HPS_v2.1_compressed.pt``; ``architecture`` defaults to
    ViT-H-14 (or an ``open_clip_config.json`` beside the checkpoint)."""
    import json

    from jaxalign.models import load_open_clip

    if path is None:
        raise JaxalignError("reward 'hpsv2' needs its checkpoint: set --config.reward_paths.hpsv2=<HPS_v2.1_compressed.pt>")
    beside = Path(path).expanduser().parent / "open_clip_config.json"
    if architecture is None:
        architecture = json.loads(beside.read_text()) if beside.is_file() else VIT_H_14
    clip, params = load_open_clip(path, dict(architecture))
    return _clip_reward(clip, params, lambda params: jnp.float32(1.0))


@REWARDS.register("aesthetic")
@learned
def aesthetic(path: str | None = None, clip: str = "openai/clip-vit-large-patch14") -> Reward:
    """The LAION aesthetic predictor (about 1-10): its MLP on the L2-normalised CLIP ViT-L/14 image
    embedding. ``path`` is the predictor's ``.pth`` (e.g. ``sac+logos+ava1-l14-linearMSE.pth``) or a
    safetensors copy; ``clip`` the CLIP model directory or cached repo id."""
    return _aesthetic("aesthetic", path, clip, clip_preprocess, normalise_embedding=True, differentiable=True)


@REWARDS.register("reference_aesthetic")
@learned
def reference_aesthetic(path: str | None = None, clip: str = "openai/clip-vit-large-patch14") -> Reward:
    """``aesthetic`` as pjjajal/diffusion-trajectory's evolution runs compute it (``fitness_fn.py``
    ``aesthetic_fitness_fn`` on the pipeline's PIL images): CLIP's processor with ``do_rescale=False`` normalises
    the uint8 values 0-255 as if they were 0-1, and the MLP reads the embedding without L2 normalisation. Another
    function than the predictor's; it reproduces the paper's aesthetic numbers. Not differentiable (uint8 levels)."""
    return _aesthetic("reference_aesthetic", path, clip, uint8_clip_preprocess, normalise_embedding=False, differentiable=False)


def uint8_clip_preprocess(images: jax.Array, crop_size: int, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """CLIP's processor on uint8 images with ``do_rescale=False``: the image's 8-bit levels round(255 x), resized
    and cropped as :func:`clip_preprocess` (PIL rounds the resized uint8 image), normalised as if they were in [0, 1]."""
    levels = jnp.round(jnp.clip(images, 0.0, 1.0) * 255.0) / 255.0
    resized = clip_preprocess(levels, crop_size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    values = jnp.clip(jnp.round(resized * 255.0), 0.0, 255.0)
    return (values - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def _aesthetic(name: str, path: str | None, clip: str, preprocess: Callable, normalise_embedding: bool, differentiable: bool) -> Reward:
    from jaxalign.models import load_clip, read_state_dict

    if path is None:
        raise JaxalignError(f"reward {name!r} needs its MLP weights: set --config.reward_paths.{name}=<sac+logos+ava1-l14-linearMSE.pth>")
    clip_model, clip_params = load_clip(clip)
    layers = aesthetic_mlp(read_state_dict(path), clip_model.module.config.projection_dim, path)

    def fn(images, params, prepared=None):
        pixels = preprocess(images, clip_model.crop_size, clip_model.mean, clip_model.std)
        x = clip_model.image_features(params["clip"], pixels.astype(clip_model.module.dtype)).astype(jnp.float32)
        x = _unit(x) if normalise_embedding else x
        for layer in params["mlp"]:  # the predictor's MLP is purely linear (dropout only in training)
            x = x @ layer["kernel"] + layer["bias"]
        return x[:, 0]

    return Reward(fn, differentiable=differentiable, params={"clip": clip_params, "mlp": layers})


def aesthetic_mlp(state: Mapping[str, np.ndarray], input_dim: int, source) -> list[dict[str, jax.Array]]:
    """The predictor's linear layers (``layers.<i>.weight/bias`` in order) as Flax-layout kernels, checked."""
    indices = sorted({int(k.split(".")[1]) for k in state if k.startswith("layers.") and k.endswith(".weight")})
    if not indices:
        raise JaxalignError(f"{source} holds no 'layers.<i>.weight' tensors (expected the aesthetic predictor's MLP state dict); found {sorted(state)[:4]}")
    layers, width = [], input_dim
    for i in indices:
        weight, bias = np.asarray(state[f"layers.{i}.weight"], np.float32), np.asarray(state[f"layers.{i}.bias"], np.float32)
        if weight.shape[1] != width:
            raise JaxalignError(f"{source}: layers.{i}.weight has shape {weight.shape}, expected (*, {width}) after the previous layer / CLIP embedding")
        layers.append({"kernel": jnp.asarray(weight.T), "bias": jnp.asarray(bias)})
        width = weight.shape[0]
    if width != 1:
        raise JaxalignError(f"{source}: the last layer has {width} outputs, expected 1 (one aesthetic score)")
    return layers


@REWARDS.register("imagereward")
@learned
def imagereward(path: str | None = None, med_config: str | None = None, device: str = "cpu") -> Reward:
    """ImageReward (Xu et al. 2023, arXiv 2304.05977) in PyTorch through :func:`host_reward`.

    Needs the ``image-reward`` package, its checkpoint ``ImageReward.pt`` (``path``) and BLIP's
    ``med_config.json`` (``med_config``, default: beside the checkpoint). The checkpoint is read
    with ``torch.load(weights_only=True)``; nothing is downloaded."""
    try:
        import torch
        from ImageReward.ImageReward import ImageReward as ImageRewardModel
    except ImportError as error:
        raise JaxalignError(f"reward 'imagereward' needs the image-reward package and torch (pip install image-reward): {error}") from None
    if path is None or not Path(path).expanduser().is_file():
        raise JaxalignError(f"reward 'imagereward' checkpoint not found: {path} (set --config.reward_paths.imagereward to ImageReward.pt)")
    checkpoint = Path(path).expanduser()
    med = Path(med_config).expanduser() if med_config else checkpoint.parent / "med_config.json"
    if not med.is_file():
        raise JaxalignError(f"reward 'imagereward' needs BLIP's med_config.json; not found at {med}")
    model = ImageRewardModel(med_config=str(med), device=device)
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True), strict=False)
    model.to(device).eval()

    def scorer(images: np.ndarray, prompts: list[str]) -> np.ndarray:
        pixels = np.clip(np.round(images * 255.0), 0, 255).astype(np.uint8)
        scores = np.empty(len(images), np.float32)
        for prompt in dict.fromkeys(prompts):  # one batched call per distinct prompt
            members = [i for i, p in enumerate(prompts) if p == prompt]
            with torch.no_grad():
                _, rewards = model.inference_rank(prompt, [Image.fromarray(pixels[i]) for i in members])
            scores[members] = np.asarray(rewards, np.float32).reshape(-1)
        return scores

    return host_reward(scorer, with_prompt=True)


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
