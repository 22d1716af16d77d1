"""CLIP models for the learned rewards (CLIP score, LAION aesthetic, PickScore, HPSv2): transformers-format
directories and open_clip checkpoints, mapped to transformers' ``FlaxCLIPModel``."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.errors import JaxalignError
from jaxalign.models.diffusion import DTYPES, Params
from jaxalign.models.hub import EMBEDDED, EMBEDDED_CLIP_DIR, EMBEDDED_DIR, resolve_component
from jaxalign.models.text import clip_tokenizer
from jaxalign.models.weights import checked_tree, flatten_shapes, quiet_flax_deprecation_notices, read_json, read_state_dict, read_weights, torch_to_flax


@dataclasses.dataclass(frozen=True, eq=False)
class ClipModel:
    """A CLIP model (static half); weights travel as a params tree like the diffusion model's."""

    module: Any  # transformers' FlaxCLIPModel
    tokenizer: Any
    image_size: int  # the vision tower's input size (224 for ViT-L/14 and ViT-H/14)
    crop_size: int  # reference preprocessing: resize the shortest side, centre-crop this size
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def image_features(self, params: Params, pixels: jax.Array) -> jax.Array:
        """Projected image embeddings [B, dim] of normalised pixels [B, size, size, 3] (not L2-normalised)."""
        return self.module.get_image_features(jnp.transpose(pixels, (0, 3, 1, 2)), params=params)

    def tokenize(self, prompts: Sequence[str]) -> np.ndarray:
        """Token ids [len(prompts), tokens] (host side, so one compiled encoder serves every prompt)."""
        return self.tokenizer(
            list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="np"
        ).input_ids.astype(np.int32)

    def text_features(self, params: Params, token_ids: jax.Array) -> jax.Array:
        """Projected text embeddings [B, dim] of token ids [B, tokens] (not L2-normalised)."""
        return self.module.get_text_features(token_ids, params=params)

    def logit_scale(self, params: Params) -> jax.Array:
        return jnp.exp(params["logit_scale"])

_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)

_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

def load_clip(source: str, dtype: str = "float32") -> tuple[ClipModel, Params]:
    """A CLIP model from a transformers-format directory (or a cached Hub repo id, or ``"embedded"``: the
    tiny CLIP of the embedded shapes world, :mod:`jaxalign.tiny_clip`): ``config.json``,
    safetensors / ``.bin`` / Flax weights, tokenizer and ``preprocessor_config.json`` when present.

    PickScore and the CLIP towers of the aesthetic predictor are in this layout. Without tokenizer
    files, CLIP's own BPE tokenizer (the one shipped with the embedded model) is used: every OpenAI
    and LAION CLIP shares it, and the causal text tower ignores what the padding token is.
    """
    quiet_flax_deprecation_notices()
    from transformers import CLIPConfig

    path = EMBEDDED_CLIP_DIR if source == EMBEDDED else resolve_component(source, "CLIP model")
    if not (path / "config.json").is_file():
        raise JaxalignError(f"CLIP model directory {path} has no config.json (expected a transformers CLIPModel directory)")
    config = CLIPConfig.from_pretrained(path)
    if not hasattr(config, "vision_config") or getattr(config, "model_type", "") != "clip":
        raise JaxalignError(f"{path}/config.json is a {getattr(config, 'model_type', '?')!r} model, expected a 'clip' CLIPModel")
    processor = read_json(path / "preprocessor_config.json") if (path / "preprocessor_config.json").is_file() else {}
    return _clip_from(config, lambda shapes: read_weights(path, shapes), clip_tokenizer(path), processor, DTYPES[dtype])

def init_clip(config, seed: int = 0, mean: Sequence[float] = _CLIP_MEAN, std: Sequence[float] = _CLIP_STD) -> tuple[ClipModel, Params]:
    """A CLIP model of ``config`` (a transformers ``CLIPConfig``) with seeded random weights, for training;
    CLIP's BPE tokenizer (the embedded model's), images at the vision tower's size normalised by ``mean``/``std``."""
    quiet_flax_deprecation_notices()
    from transformers import FlaxCLIPModel

    params = FlaxCLIPModel(config, seed=seed).params
    processor = {"image_mean": list(mean), "image_std": list(std)}
    return _clip_from(config, lambda shapes: params, clip_tokenizer(EMBEDDED_DIR / "tokenizer"), processor, jnp.float32)

def load_open_clip(checkpoint: str, architecture: dict, dtype: str = "float32") -> tuple[ClipModel, Params]:
    """A CLIP model from an open_clip checkpoint (HPSv2's ``HPS_v2*_compressed.pt``), mapped to the
    transformers layout. ``architecture`` is open_clip's model config (``embed_dim``, ``vision_cfg``,
    ``text_cfg``), ViT-H-14's for HPSv2. Read with ``torch.load(weights_only=True)`` or safetensors."""
    quiet_flax_deprecation_notices()
    from transformers import CLIPConfig

    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise JaxalignError(f"open_clip checkpoint not found: {path}")
    state = {k.removeprefix("module."): v for k, v in read_state_dict(path).items()}
    vision, text = architecture["vision_cfg"], architecture["text_cfg"]
    vision_width = vision["width"]
    config = CLIPConfig(
        projection_dim=architecture["embed_dim"],
        text_config=dict(
            hidden_size=text["width"], intermediate_size=int(text["width"] * text.get("mlp_ratio", 4.0)),
            num_attention_heads=text["heads"], num_hidden_layers=text["layers"], vocab_size=text.get("vocab_size", 49408),
            max_position_embeddings=text.get("context_length", 77), hidden_act="gelu", layer_norm_eps=1e-5,
        ),
        vision_config=dict(
            hidden_size=vision_width, intermediate_size=int(vision_width * vision.get("mlp_ratio", 4.0)),
            num_attention_heads=vision_width // vision.get("head_width", 64), num_hidden_layers=vision["layers"],
            image_size=vision["image_size"], patch_size=vision["patch_size"], hidden_act="gelu", layer_norm_eps=1e-5,
        ),
    )  # fmt: skip
    hf_state = open_clip_to_transformers(state, text["layers"], vision["layers"])
    tokenizer = clip_tokenizer(path.parent)
    return _clip_from(config, lambda shapes: checked_tree(torch_to_flax(hf_state, flatten_shapes(shapes)), shapes, path), tokenizer, {}, DTYPES[dtype])

# open_clip CLIP leaves outside the transformer blocks -> transformers CLIPModel names; projections that
# open_clip stores as [in, out] matrices are transposed to PyTorch Linear weights.
_OPEN_CLIP_LEAVES = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "text_projection": "text_projection.weight",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "visual.proj": "visual_projection.weight",
    "logit_scale": "logit_scale",
}

_OPEN_CLIP_TRANSPOSED = ("text_projection", "visual.proj")

_OPEN_CLIP_BLOCK = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2", "attn.out_proj": "self_attn.out_proj"}

def open_clip_to_transformers(state: dict[str, np.ndarray], text_layers: int, vision_layers: int) -> dict[str, np.ndarray]:
    """Rename an open_clip CLIP state dict to transformers' ``CLIPModel`` keys (PyTorch layout):
    fused ``in_proj`` attention weights are split into q/k/v and projections transposed."""
    out: dict[str, np.ndarray] = {}
    try:
        for prefix, target, layers in (("", "text_model", text_layers), ("visual.", "vision_model", vision_layers)):
            for i in range(layers):
                source, dest = f"{prefix}transformer.resblocks.{i}.", f"{target}.encoder.layers.{i}."
                for leaf in ("weight", "bias"):
                    for old, new in _OPEN_CLIP_BLOCK.items():
                        out[f"{dest}{new}.{leaf}"] = state[f"{source}{old}.{leaf}"]
                    q, k, v = np.split(np.asarray(state[f"{source}attn.in_proj_{leaf}"]), 3, axis=0)
                    out.update({f"{dest}self_attn.{name}_proj.{leaf}": part for name, part in zip("qkv", (q, k, v))})
        for old, new in _OPEN_CLIP_LEAVES.items():
            out[new] = np.asarray(state[old]).T if old in _OPEN_CLIP_TRANSPOSED else state[old]
    except KeyError as missing:
        raise JaxalignError(f"open_clip checkpoint lacks {missing} (expected an open_clip CLIP state dict with {text_layers} text and {vision_layers} vision blocks)") from None
    return out

def _clip_from(config, read, tokenizer, processor: dict, dtype) -> tuple[ClipModel, Params]:
    from transformers import FlaxCLIPModel

    module = FlaxCLIPModel(config, dtype=dtype, _do_init=False)
    params = jax.tree.map(lambda x: jnp.asarray(x, dtype), read(module.params_shape_tree))
    size = processor.get("crop_size", config.vision_config.image_size)
    crop = size.get("height", size.get("shortest_edge")) if isinstance(size, dict) else size
    model = ClipModel(
        module=module, tokenizer=tokenizer, image_size=int(config.vision_config.image_size), crop_size=int(crop),
        mean=tuple(processor.get("image_mean", _CLIP_MEAN)), std=tuple(processor.get("image_std", _CLIP_STD)),
    )  # fmt: skip
    return model, params
