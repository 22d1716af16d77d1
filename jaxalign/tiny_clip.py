"""A tiny CLIP (Radford et al. 2021, arXiv 2103.00020) for the embedded shapes world: the prompt-fidelity
reward of the embedded default job (``reward_paths.clip="embedded"``), trained here because no real reward
model can be downloaded.

transformers' CLIP (Flax) at tiny size (32x32 images, patches of 4), trained contrastively with optax
on :mod:`jaxalign.shapes` captions of the *training* (shape, colour, background) combinations only, so its
scores on held-out prompts measure generalisation as the diffusion model's do. Half of each batch are
"siblings" of the other half, equal but for one attribute, so every attribute must be read to tell them
apart; images are blurred and noised at random so that the generator's softer pictures are in range.
Exported in transformers' layout (``config.json``, Flax weights, ``preprocessor_config.json``) and loaded
by :func:`jaxalign.models.load_clip` like any CLIP.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxalign import shapes
from jaxalign.models import ClipModel, Params, init_clip

# The text tower's positions and special tokens are SD's CLIP tokenizer's (shipped with the embedded model).
_TOKENS = {"bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407}
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)  # pixels in [0, 1] -> about [-2, 2]


def tiny_clip_config():
    from transformers import CLIPConfig

    return CLIPConfig(
        projection_dim=64,
        text_config=dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2, vocab_size=49408,
                         max_position_embeddings=77, **_TOKENS),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=3, image_size=32, patch_size=4),
    )  # fmt: skip


def init_tiny_clip(seed: int = 0) -> tuple[ClipModel, Params]:
    """The tiny CLIP with seeded random weights, as :func:`jaxalign.models.load_clip` would return it."""
    return init_clip(tiny_clip_config(), seed, MEAN, STD)


# The values each attribute takes, in caption order.
ATTRIBUTE_VALUES = {
    "shape": shapes.SHAPES, "colour": tuple(shapes.COLOURS), "background": tuple(shapes.COLOURS),
    "size": shapes.SIZES, "position": tuple(shapes.POSITIONS),
}  # fmt: skip


def _sibling(a: shapes.Attributes, rng: np.random.Generator) -> shapes.Attributes:
    """``a`` with one attribute changed, staying a training combination (colour != background)."""
    while True:
        field = shapes.Attributes._fields[rng.integers(5)]
        value = ATTRIBUTE_VALUES[field][rng.integers(len(ATTRIBUTE_VALUES[field]))]
        b = a._replace(**{field: value})
        if b != a and b.colour != b.background and (b.shape, b.colour, b.background) not in shapes.HELD_OUT:
            return b


def _augment(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random 3x3 box blur (half the images) and Gaussian pixel noise (std up to 0.05)."""
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    blurred = sum(padded[:, i : i + 32, j : j + 32] for i in range(3) for j in range(3)) / 9
    blur = rng.random(len(images)) < 0.5
    out = np.where(blur[:, None, None, None], blurred, images)
    out = out + rng.uniform(0, 0.05, (len(images), 1, 1, 1)) * rng.standard_normal(images.shape)
    return np.clip(out, 0, 1).astype(np.float32)


def contrastive_batch(clip: ClipModel, data_seed: int, step: int, batch_size: int) -> dict:
    """``batch_size`` (image, caption) pairs for one step, deterministic from (seed, step): half sampled,
    half their siblings; a quarter of the captions leave out the size and a quarter the position."""
    rng = np.random.default_rng([data_seed, 6151, step])
    first = [shapes.sample_attributes(rng) for _ in range(batch_size // 2)]
    attributes = first + [_sibling(a, rng) for a in first] + [shapes.sample_attributes(rng) for _ in range(batch_size % 2)]
    images = _augment(np.stack([shapes.render(a, rng) for a in attributes]), rng)
    captions = [shapes.caption(a, with_size=rng.random() > 0.25, with_position=rng.random() > 0.25) for a in attributes]
    # Pairs whose captions are equal are all positives (a caption that leaves out the differing attribute).
    _, caption_ids = np.unique(captions, return_inverse=True)
    return {"pixels": jnp.asarray(normalise(images)), "token_ids": jnp.asarray(clip.tokenize(captions)), "caption_ids": jnp.asarray(caption_ids)}


def normalise(images):
    return (images - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)


def contrastive_loss(clip: ClipModel):
    """CLIP's symmetric cross-entropy over the batch's image-text similarities (learned temperature), with
    targets spread uniformly over the texts (images) that share a caption."""

    def loss_fn(params, frozen, batch, key):
        image = clip.image_features(params, batch["pixels"])
        text = clip.text_features(params, batch["token_ids"])
        image, text = (x / jnp.linalg.norm(x, axis=-1, keepdims=True) for x in (image, text))
        logits = jnp.minimum(clip.logit_scale(params), 100.0) * image @ text.T
        same = (batch["caption_ids"][:, None] == batch["caption_ids"][None, :]).astype(jnp.float32)
        targets = same / same.sum(axis=1, keepdims=True)
        loss = 0.5 * (optax.softmax_cross_entropy(logits, targets).mean() + optax.softmax_cross_entropy(logits.T, targets).mean())
        accuracy = jnp.mean(same[jnp.arange(len(same)), jnp.argmax(logits, axis=1)])
        return loss, {"accuracy": accuracy, "logit_scale": clip.logit_scale(params)}

    return loss_fn


def save_tiny_clip(clip: ClipModel, params: Params, path: Path) -> None:
    """transformers' CLIP layout: config.json, flax_model.msgpack, preprocessor_config.json (the tokenizer is
    the shipped CLIP one, which :func:`jaxalign.models.load_clip` uses when none is beside the weights).
    Weights are stored in float16, which halves the package (the token embedding is most of it); loading
    casts them back to float32."""
    path.mkdir(parents=True, exist_ok=True)
    clip.module.save_pretrained(path, params=jax.device_get(jax.tree.map(lambda x: x.astype(jnp.float16), params)))
    processor = {"crop_size": {"height": 32, "width": 32}, "size": {"shortest_edge": 32}, "image_mean": list(MEAN), "image_std": list(STD)}
    (path / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n")




def zero_shot_read(clip: ClipModel, params: Params, images: np.ndarray, reference: list[shapes.Attributes]) -> list[shapes.Attributes]:
    """CLIP's reading of each image, one attribute at a time: the value whose full caption (the other
    attributes as in ``reference``) scores highest. Colours equal to the reference's background (and
    backgrounds equal to its colour) are not offered, as no caption names them together."""
    from jaxalign.learned_rewards import clip_preprocess

    pixels = clip_preprocess(jnp.asarray(images), clip.crop_size, clip.mean, clip.std)
    image = np.asarray(jax.jit(clip.image_features)(params, pixels))
    image = image / np.linalg.norm(image, axis=-1, keepdims=True)
    candidates = [
        {field: [v for v in options if v != {"colour": ref.background, "background": ref.colour}.get(field)] for field, options in ATTRIBUTE_VALUES.items()}
        for ref in reference
    ]
    # Every candidate caption, encoded once in one batch.
    captions = sorted({shapes.caption(ref._replace(**{f: v})) for ref, c in zip(reference, candidates) for f, vs in c.items() for v in vs})
    text = np.asarray(jax.jit(clip.text_features)(params, jnp.asarray(clip.tokenize(captions))))
    row = dict(zip(captions, text / np.linalg.norm(text, axis=-1, keepdims=True)))
    read = []
    for features, ref, options in zip(image, reference, candidates):
        scores = {f: [row[shapes.caption(ref._replace(**{f: v}))] @ features for v in vs] for f, vs in options.items()}
        read.append(shapes.Attributes(**{f: options[f][int(np.argmax(scores[f]))] for f in options}))
    return read


def attribute_accuracy(read: list[shapes.Attributes | None], truth: list[shapes.Attributes]) -> dict[str, float]:
    """Share of images whose reading matches ``truth``, per attribute and for all five."""
    out = {f: float(np.mean([r is not None and getattr(r, f) == getattr(t, f) for r, t in zip(read, truth)])) for f in shapes.Attributes._fields}
    out["all"] = float(np.mean([r == t for r, t in zip(read, truth)]))
    return out
