"""Learned rewards: networks with weights, run in Flax inside the compiled step (differentiable), registered in
:data:`jaxalign.rewards.REWARDS`.

Each reads its weights from a local path (``config.reward_paths``) or the local Hugging Face cache:

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

``imagereward`` runs in PyTorch through :func:`jaxalign.rewards.host_reward`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxalign.errors import JaxalignError
from jaxalign.rewards import REWARDS, Reward, host_reward, learned


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
