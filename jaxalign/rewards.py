"""Rewards: pure batched functions from images [N, H, W, 3] in [0, 1] to scores [N].

Weight-free rewards need no model weights. ``jpeg_compressibility`` is the paper's
non-differentiable objective (arXiv 2506.00299, Sec. 4; after Black et al. 2023, DDPO): minus
the JPEG size in kB at quality 95, computed by PIL on the host.

Learned rewards run in Flax inside the compiled step and are differentiable; each reads its
weights from a local path (``config.reward_paths``) or the local Hugging Face cache:

* ``clip``: CLIP score, 100 x cosine(image, prompt) (Hessel et al. 2021, arXiv 2104.08718).
* ``aesthetic``: the LAION aesthetic predictor, an MLP on L2-normalised CLIP ViT-L/14 image
  embeddings (christophschuhmann/improved-aesthetic-predictor).
* ``pickscore``: PickScore (Kirstain et al. 2023, arXiv 2305.01569), a fine-tuned CLIP-H:
  logit_scale x cosine(image, prompt).
* ``hpsv2``: HPSv2 (Wu et al. 2023, arXiv 2306.09341), an open_clip ViT-H-14 checkpoint mapped
  to the transformers layout: cosine(image, prompt).

Their image preprocessing (shortest-side bicubic resize, centre crop, CLIP normalisation) is done
in JAX on the whole batch. Prompt-conditioned rewards encode each prompt once, host side, with
``prepare``; the encoding travels with the search's problem.

:func:`host_reward` turns any batched numpy/PyTorch scorer into a reward through one
``jax.pure_callback`` per population (``jpeg_compressibility`` and ``imagereward`` use it).
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

from jaxalign.errors import JaxalignError
from jaxalign.registry import Registry

# Rec. 709 / sRGB luma weights.
_LUMA = jnp.array([0.2126, 0.7152, 0.0722], jnp.float32)


class Reward(NamedTuple):
    """``fn(images) -> [N]``; a reward with ``params`` or ``prepare`` is called
    ``fn(images, params, prepared)``, where ``prepared = prepare(prompt)`` was computed on the host."""

    fn: Callable[..., jax.Array]
    differentiable: bool
    params: Any = None  # weights, passed to the compiled step as an argument (never baked in as constants)
    prepare: Callable[[str], Any] | None = None

    def score(self, images: jax.Array, params: Any = None, prepared: Any = None) -> jax.Array:
        if self.params is None and self.prepare is None:
            return self.fn(images)
        return self.fn(images, params, prepared)


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
    return Reward(lambda images: fn(images), differentiable=False)


@REWARDS.register("jpeg_compressibility")
def jpeg_compressibility(quality: int = 95) -> Reward:
    """Minus the JPEG size in kB; one host callback for the whole population."""
    return host_reward(lambda images: -jpeg_size_kb(images, quality))


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


def clip_preprocess(images: jax.Array, crop_size: int, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """CLIP's reference preprocessing in JAX: resize the shortest side to ``crop_size`` (bicubic,
    antialiased as PIL does when shrinking), centre-crop ``crop_size`` square, normalise.
    images [N, H, W, 3] in [0, 1] -> pixels [N, crop_size, crop_size, 3]."""
    n, height, width, _ = images.shape
    short = min(height, width)
    new_h, new_w = (crop_size, int(crop_size * width / short)) if height <= width else (int(crop_size * height / short), crop_size)
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
def clip_score(path: str = "openai/clip-vit-large-patch14") -> Reward:
    """CLIP score: 100 x cosine similarity of image and prompt embeddings."""
    from jaxalign.model import load_clip

    return _clip_reward(*load_clip(path), lambda params: jnp.float32(100.0))


@REWARDS.register("pickscore")
def pickscore(path: str = "yuvalkirstain/PickScore_v1") -> Reward:
    """PickScore: the model's logit scale x cosine similarity of image and prompt embeddings."""
    from jaxalign.model import load_clip

    clip, params = load_clip(path)
    return _clip_reward(clip, params, clip.logit_scale)


# open_clip's ViT-H-14 (the architecture of HPSv2's checkpoints), in open_clip's config format.
VIT_H_14 = {
    "embed_dim": 1024,
    "vision_cfg": {"image_size": 224, "layers": 32, "width": 1280, "head_width": 80, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16, "layers": 24},
}


@REWARDS.register("hpsv2")
def hpsv2(path: str | None = None, architecture: Mapping | None = None) -> Reward:
    """HPSv2 / HPSv2.1: cosine similarity of image and prompt under the HPS-tuned open_clip ViT-H-14.

    ``path`` is ``HPS_v2_compressed.pt`` or ``HPS_v2.1_compressed.pt``; ``architecture`` defaults to
    ViT-H-14 (or an ``open_clip_config.json`` beside the checkpoint)."""
    import json

    from jaxalign.model import load_open_clip

    if path is None:
        raise JaxalignError("reward 'hpsv2' needs its checkpoint: set --config.reward_paths.hpsv2=<HPS_v2.1_compressed.pt>")
    beside = Path(path).expanduser().parent / "open_clip_config.json"
    if architecture is None:
        architecture = json.loads(beside.read_text()) if beside.is_file() else VIT_H_14
    clip, params = load_open_clip(path, dict(architecture))
    return _clip_reward(clip, params, lambda params: jnp.float32(1.0))


@REWARDS.register("aesthetic")
def aesthetic(path: str | None = None, clip: str = "openai/clip-vit-large-patch14") -> Reward:
    """The LAION aesthetic predictor (about 1-10): its MLP on the L2-normalised CLIP ViT-L/14 image
    embedding. ``path`` is the predictor's ``.pth`` (e.g. ``sac+logos+ava1-l14-linearMSE.pth``) or a
    safetensors copy; ``clip`` the CLIP model directory or cached repo id."""
    from jaxalign.model import load_clip, read_state_dict

    if path is None:
        raise JaxalignError("reward 'aesthetic' needs its MLP weights: set --config.reward_paths.aesthetic=<sac+logos+ava1-l14-linearMSE.pth>")
    clip_model, clip_params = load_clip(clip)
    layers = aesthetic_mlp(read_state_dict(path), clip_model.module.config.projection_dim, path)

    def fn(images, params, prepared=None):
        pixels = clip_preprocess(images, clip_model.crop_size, clip_model.mean, clip_model.std)
        x = _unit(clip_model.image_features(params["clip"], pixels.astype(clip_model.module.dtype)).astype(jnp.float32))
        for layer in params["mlp"]:  # the predictor's MLP is purely linear (dropout only in training)
            x = x @ layer["kernel"] + layer["bias"]
        return x[:, 0]

    return Reward(fn, differentiable=True, params={"clip": clip_params, "mlp": layers})


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


def needs_path(name: str) -> bool:
    """Whether a reward reads weights (its constructor takes a ``path``)."""
    return "path" in inspect.signature(REWARDS[name.partition(":")[0]]).parameters


def parse_reward(spec: str, paths: Mapping[str, Any] | None = None) -> Reward:
    """A reward from its config name: ``"brightness"``, ``"name:argument"`` such as
    ``"color_fraction:red"``, or a learned reward whose weights are at ``paths[name]`` (a path or
    repo id, or a mapping of its constructor's options such as ``{"path": ..., "clip": ...}``)."""
    name, _, argument = spec.partition(":")
    constructor = REWARDS[name]
    options = (paths or {}).get(name)
    kwargs = dict(options) if isinstance(options, Mapping) else ({"path": str(options)} if options else {})
    unknown = sorted(set(kwargs) - set(inspect.signature(constructor).parameters))
    if unknown:
        raise JaxalignError(f"reward_paths.{name} has unknown option(s) {', '.join(unknown)}; valid: {', '.join(inspect.signature(constructor).parameters)}")
    try:
        return constructor(argument, **kwargs) if argument else constructor(**kwargs)
    except TypeError:
        raise JaxalignError(f"reward {name!r} takes {'no argument' if argument else 'an argument, as ' + name + ':<value>'}; got {spec!r}") from None


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
