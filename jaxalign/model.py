"""Stable Diffusion (1.x/2.x architecture) components behind one small, pure interface.

This is the only module of jaxalign that touches diffusers' and transformers' Flax classes
(``FlaxUNet2DConditionModel``, ``FlaxAutoencoderKL``, ``FlaxCLIPTextModel``), so the rest of
the package sees a :class:`DiffusionModel` (static: modules, tokenizer, shapes, noise schedule)
and a params pytree (``{"text_encoder", "unet", "vae"}``) that is passed explicitly to every
jitted function.

Two sources:

* ``"embedded"``: a tiny SD-architecture model whose configs ship in ``jaxalign/embedded``
  (diffusers layout), with a seeded random initialisation and a byte-level CLIP tokenizer built
  locally, so the whole pipeline runs with no downloads.
* a local diffusers-format directory (``model_index.json``, ``unet/``, ``vae/``,
  ``text_encoder/``, ``tokenizer/``, ``scheduler/``) with Flax weights, or PyTorch weights that
  are converted with ``from_pt``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.errors import JaxalignError
from jaxalign.schedulers import NoiseSchedule

EMBEDDED = "embedded"
EMBEDDED_DIR = Path(__file__).parent / "embedded"
_COMPONENTS = ("unet", "vae", "text_encoder")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True, eq=False)
class DiffusionModel:
    """Static half of a Stable Diffusion model; the weights travel separately as ``Params``."""

    name: str
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    noise_schedule: NoiseSchedule
    dtype: Any

    @property
    def latent_channels(self) -> int:
        return int(self.unet.in_channels)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.block_out_channels) - 1)

    @property
    def default_size(self) -> int:
        return int(self.unet.sample_size) * self.vae_scale_factor

    @property
    def max_prompt_tokens(self) -> int:
        return int(self.tokenizer.model_max_length)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        f = self.vae_scale_factor
        if height % f or width % f:
            raise JaxalignError(f"height and width must be multiples of {f} for model {self.name!r}, got {height}x{width}")
        return (self.latent_channels, height // f, width // f)

    def tokenize(self, prompts: Sequence[str]) -> np.ndarray:
        """Token ids [len(prompts), max_prompt_tokens], padded and truncated like SD pipelines."""
        ids = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.max_prompt_tokens,
            truncation=True,
            return_tensors="np",
        ).input_ids
        return ids.astype(np.int32)

    def encode_tokens(self, params: Params, token_ids: jax.Array) -> jax.Array:
        """Text-encoder hidden states [B, tokens, dim] for token ids [B, tokens]."""
        return self.text_encoder(token_ids, params=params["text_encoder"])[0]

    def encode_prompts(self, params: Params, prompts: Sequence[str]) -> jax.Array:
        return _jit_encode(self)(params, jnp.asarray(self.tokenize(prompts)))

    def predict_noise(self, params: Params, latents: jax.Array, timestep: jax.Array, context: jax.Array) -> jax.Array:
        """UNet output for latents [B, c, h, w] at one timestep, conditioned on context [B, tokens, dim]."""
        out = self.unet.apply(
            {"params": params["unet"]},
            latents.astype(self.dtype),
            jnp.broadcast_to(timestep, (latents.shape[0],)),
            context.astype(self.dtype),
        ).sample
        return out.astype(jnp.float32)

    def decode(self, params: Params, latents: jax.Array) -> jax.Array:
        """Images [B, H, W, 3] in [0, 1] from latents [B, c, h, w]."""
        scaled = (latents / self.vae.scaling_factor).astype(self.dtype)
        images = self.vae.apply({"params": params["vae"]}, scaled, method=self.vae.decode).sample
        images = jnp.transpose(images.astype(jnp.float32), (0, 2, 3, 1))
        return jnp.clip(images / 2 + 0.5, 0.0, 1.0)


@functools.cache
def _jit_encode(model: DiffusionModel):
    return jax.jit(model.encode_tokens)


def load_model(source: str = EMBEDDED, dtype: str = "float32", seed: int = 0) -> tuple[DiffusionModel, Params]:
    """Load ``"embedded"`` (seeded random weights) or a local diffusers-format directory."""
    if dtype not in _DTYPES:
        raise JaxalignError(f"unknown dtype {dtype!r}; valid: {', '.join(_DTYPES)}")
    _quiet_flax_deprecation_warnings()
    if source == EMBEDDED:
        return _load(EMBEDDED_DIR, EMBEDDED, _DTYPES[dtype], seed=seed)
    path = Path(source).expanduser()
    if not path.is_dir():
        raise JaxalignError(f"model directory not found: {path} (expected a diffusers-format directory or 'embedded')")
    missing = [c for c in (*_COMPONENTS, "tokenizer", "scheduler") if not (path / c).is_dir()]
    if missing:
        raise JaxalignError(f"model directory {path} lacks {', '.join(missing)}/ (expected diffusers layout)")
    return _load(path, str(path), _DTYPES[dtype], seed=None)


def _load(path: Path, name: str, dtype, seed: int | None) -> tuple[DiffusionModel, Params]:
    from diffusers import FlaxAutoencoderKL, FlaxUNet2DConditionModel
    from transformers import CLIPTextConfig, FlaxCLIPTextModel

    unet = FlaxUNet2DConditionModel.from_config(_read_json(path / "unet" / "config.json"), dtype=dtype)
    vae = FlaxAutoencoderKL.from_config(_read_json(path / "vae" / "config.json"), dtype=dtype)
    text_config = CLIPTextConfig.from_pretrained(path / "text_encoder")
    schedule = NoiseSchedule.from_config(_read_json(path / "scheduler" / "scheduler_config.json"))

    if seed is not None:
        text_encoder = FlaxCLIPTextModel(text_config, dtype=dtype, _do_init=False)
        tokenizer = _byte_level_clip_tokenizer(text_config.max_position_embeddings)
        shapes = {
            "unet": jax.eval_shape(unet.init_weights, jax.random.key(0)),
            "vae": jax.eval_shape(vae.init_weights, jax.random.key(0)),
            "text_encoder": text_encoder.params_shape_tree,
        }
        params = {k: seeded_init(v, seed=seed + i) for i, (k, v) in enumerate(shapes.items())}
    else:
        from transformers import CLIPTokenizer

        tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer")
        text_encoder, params = _load_weights(path, dtype)

    params = jax.tree.map(lambda x: jnp.asarray(x, dtype=dtype if jnp.issubdtype(x.dtype, jnp.floating) else x.dtype), params)
    model = DiffusionModel(
        name=name, unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, noise_schedule=schedule, dtype=dtype
    )
    return model, params


def _load_weights(path: Path, dtype):
    from diffusers import FlaxAutoencoderKL, FlaxUNet2DConditionModel
    from transformers import FlaxCLIPTextModel

    params = {}
    for component, cls in (("unet", FlaxUNet2DConditionModel), ("vae", FlaxAutoencoderKL)):
        from_pt = _weights_are_pytorch(path / component)
        _, params[component] = cls.from_pretrained(path, subfolder=component, from_pt=from_pt, dtype=dtype)
    from_pt = _weights_are_pytorch(path / "text_encoder")
    text_encoder = FlaxCLIPTextModel.from_pretrained(path / "text_encoder", from_pt=from_pt, dtype=dtype, _do_init=False)
    text_encoder, params["text_encoder"] = text_encoder if isinstance(text_encoder, tuple) else (text_encoder, text_encoder.params)
    return text_encoder, params


def _weights_are_pytorch(component_dir: Path) -> bool:
    names = {p.name for p in component_dir.iterdir()}
    if "diffusion_flax_model.msgpack" in names or "flax_model.msgpack" in names:
        return False
    if names & {"diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin", "model.safetensors", "pytorch_model.bin"}:
        return True
    raise JaxalignError(f"no weights in {component_dir} (expected a Flax .msgpack or PyTorch .safetensors/.bin file)")


def save_model(model: DiffusionModel, params: Params, path: str | os.PathLike) -> None:
    """Write model and params as a diffusers-format directory with Flax weights."""
    from diffusers import FlaxAutoencoderKL, FlaxUNet2DConditionModel

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    host = jax.device_get(params)
    for component, cls in (("unet", FlaxUNet2DConditionModel), ("vae", FlaxAutoencoderKL)):
        module = getattr(model, component)
        cls.from_config(module.config).save_pretrained(path / component, params=host[component])
    model.text_encoder.save_pretrained(path / "text_encoder", params=host["text_encoder"])
    model.tokenizer.save_pretrained(path / "tokenizer")
    (path / "scheduler").mkdir(exist_ok=True)
    (path / "scheduler" / "scheduler_config.json").write_text(json.dumps(model.noise_schedule.to_config(), indent=2))
    (path / "model_index.json").write_text((EMBEDDED_DIR / "model_index.json").read_text())


def seeded_init(shapes: Any, seed: int) -> Any:
    """Deterministic random weights for a tree of shapes, independent of traversal order.

    Much faster than running a model's ``init`` on CPU. Kernels are drawn with variance
    1/fan_in (LeCun normal, as flax's dense/conv defaults), embeddings with std 0.02 (as CLIP),
    norm scales are one and biases zero.
    """

    def init_leaf(path, leaf):
        name = jax.tree_util.keystr(path)
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        shape = tuple(leaf.shape)
        last = str(path[-1].key) if hasattr(path[-1], "key") else name
        if last == "kernel":
            fan_in = int(np.prod(shape[:-1])) or 1
            return rng.standard_normal(shape, dtype=np.float32) / np.sqrt(fan_in)
        if last == "embedding":
            return 0.02 * rng.standard_normal(shape, dtype=np.float32)
        if last == "scale":
            return np.ones(shape, np.float32)
        return np.zeros(shape, np.float32)

    return jax.tree_util.tree_map_with_path(init_leaf, shapes)


def _byte_level_clip_tokenizer(max_length: int):
    """A CLIP tokenizer over CLIP's 512 byte-level symbols (no merges), built locally.

    Its ids match the first 512 entries of the real CLIP vocabulary and the start/end tokens
    follow them, so any text tokenizes (one token per character) without a download.
    """
    from transformers import CLIPTokenizer
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"])}
    directory = Path(tempfile.mkdtemp(prefix="jaxalign-tokenizer-"))
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(
        vocab_file=str(directory / "vocab.json"),
        merges_file=str(directory / "merges.txt"),
        model_max_length=max_length,
        pad_token="<|endoftext|>",
    )


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise JaxalignError(f"missing {path}")
    return json.loads(path.read_text())


@functools.cache
def _quiet_flax_deprecation_warnings() -> None:
    # diffusers logs a deprecation warning each time a Flax module is traced.
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
