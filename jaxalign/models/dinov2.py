"""DINOv2 image features (Oquab et al. 2023, arXiv 2304.07193) for the novelty reward: transformers-format
directories (``facebook/dinov2-base`` and its siblings) loaded into transformers' ``FlaxDinov2Model``."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxalign.errors import JaxalignError
from jaxalign.models.diffusion import DTYPES, Params
from jaxalign.models.hub import resolve_component
from jaxalign.models.weights import quiet_flax_deprecation_notices, read_json, read_weights

# BitImageProcessor's defaults, which DINOv2's preprocessor configs use.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True, eq=False)
class Dinov2:
    """A DINOv2 backbone (static half) and its preprocessing: resize the shortest side, centre-crop, normalise."""

    module: Any  # transformers' FlaxDinov2Model
    resize: int  # shortest side after resizing (256 for the released models)
    crop_size: int  # 224
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def features(self, params: Params, pixels: jax.Array) -> jax.Array:
        """``pooler_output`` [B, hidden] (the final-layer-normed CLS token) of normalised pixels [B, size, size, 3]."""
        return self.module(jnp.transpose(pixels, (0, 3, 1, 2)), params=params).pooler_output


def load_dinov2(source: str, dtype: str = "float32") -> tuple[Dinov2, Params]:
    """DINOv2 from a transformers-format directory or a cached Hub repo id: ``config.json``, weights
    (safetensors / ``.bin`` / Flax) and ``preprocessor_config.json`` when present."""
    quiet_flax_deprecation_notices()
    from transformers import Dinov2Config, FlaxDinov2Model

    path = resolve_component(source, "DINOv2 model")
    if not (path / "config.json").is_file():
        raise JaxalignError(f"DINOv2 model directory {path} has no config.json (expected a transformers Dinov2Model directory)")
    config = Dinov2Config.from_pretrained(path)
    if getattr(config, "model_type", "") != "dinov2":
        raise JaxalignError(f"{path}/config.json is a {getattr(config, 'model_type', '?')!r} model, expected 'dinov2'")
    processor = read_json(path / "preprocessor_config.json") if (path / "preprocessor_config.json").is_file() else {}
    module = FlaxDinov2Model(config, dtype=DTYPES[dtype], _do_init=False)
    params = jax.tree.map(lambda x: jnp.asarray(x, DTYPES[dtype]), read_weights(path, module.params_shape_tree))
    size, crop = processor.get("size", {"shortest_edge": 256}), processor.get("crop_size", {"height": 224})
    model = Dinov2(
        module=module, resize=int(size.get("shortest_edge", size.get("height", 256)) if isinstance(size, dict) else size),
        crop_size=int(crop.get("height", 224) if isinstance(crop, dict) else crop),
        mean=tuple(processor.get("image_mean", _IMAGENET_MEAN)), std=tuple(processor.get("image_std", _IMAGENET_STD)),
    )  # fmt: skip
    return model, params
