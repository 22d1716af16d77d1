"""Stable Diffusion components (SD 1.x/2.x and SDXL) behind one small, pure interface.

This is the only module of jaxalign that touches diffusers' and transformers' Flax classes
(``FlaxUNet2DConditionModel``, ``FlaxAutoencoderKL``, ``FlaxCLIPTextModel``,
``FlaxCLIPTextModelWithProjection``, ``FlaxCLIPModel``), so the rest of the package sees a
:class:`DiffusionModel` (static: modules, tokenizers, shapes, noise schedule) and a params pytree
(``{"text_encoder", "unet", "vae"}``, plus ``"text_encoder_2"`` for SDXL) that is passed
explicitly to every jitted function.

Model families are a registry (:data:`FAMILIES`): ``sd`` (SD 1.x/2.x, LCM-distilled SD) and
``sdxl`` (two text encoders, pooled text embeddings and size micro-conditioning, Podell et al.
2023, arXiv 2307.01952). One class serves both; SDXL's conditioning is a dict pytree instead of
one hidden-state array.

Sources:

* ``"embedded"``: a tiny SD-architecture model (32x32 images) trained on procedural shapes by
  ``scripts/train_tiny.py`` (MODEL.md) and shipped in ``jaxalign/embedded`` in diffusers' layout
  with Flax weights and Stable Diffusion's CLIP tokenizer, so the whole pipeline runs with no
  downloads.
* a local diffusers-format directory (``model_index.json``, ``unet/``, ``vae/``,
  ``text_encoder/``, ``tokenizer/``, ``scheduler/``, and ``text_encoder_2/``, ``tokenizer_2/`` for
  SDXL) with Flax msgpack, safetensors or ``.bin`` weights (read with ``weights_only=True``).
* a Hub repo id (``"org/name"``) already in the local Hugging Face cache; nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import re
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.errors import JaxalignError
from jaxalign.schedulers import NoiseSchedule

from jaxalign.registry import Registry

EMBEDDED = "embedded"
EMBEDDED_DIR = Path(__file__).parent / "embedded"
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    """What a family's diffusers directory holds: its pipeline classes and weighted components."""

    name: str
    pipelines: tuple[str, ...]  # model_index.json "_class_name" values of this family
    components: tuple[str, ...]  # subdirectories with weights

    @property
    def directories(self) -> tuple[str, ...]:
        return (*self.components, "scheduler")


FAMILIES: Registry[ModelFamily] = Registry("model family")
FAMILIES.register(
    "sd",
    ModelFamily(
        "sd",
        ("StableDiffusionPipeline", "FlaxStableDiffusionPipeline", "LatentConsistencyModelPipeline"),
        ("unet", "vae", "text_encoder"),
    ),
)
FAMILIES.register(
    "sdxl",
    ModelFamily(
        "sdxl",
        ("StableDiffusionXLPipeline", "FlaxStableDiffusionXLPipeline"),
        ("unet", "vae", "text_encoder", "text_encoder_2"),
    ),
)

# UNet attention, a static program choice (the numbers agree up to rounding), name -> diffusers'
# ``use_memory_efficient_attention``. "standard": one [tokens x tokens] score matrix per head and
# image, what diffusers' Flax UNet does by default. "chunked": diffusers' memory-efficient attention
# (Rabe & Staats 2021, arXiv 2112.05682) takes the queries in chunks, so memory grows linearly with
# the tokens; at 512x512 (4096 tokens) it is most of the difference between fitting a population
# beside the weights or not.
ATTENTION: Registry[bool] = Registry("attention")
ATTENTION.register("standard", False)
ATTENTION.register("chunked", True)


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
    family: str = "sd"
    text_encoder_2: Any = None  # SDXL's second (projecting) text encoder
    tokenizer_2: Any = None
    force_zeros_for_empty_prompt: bool = True  # SDXL: an empty negative prompt is all-zero conditioning
    unet_extra: dict = dataclasses.field(default_factory=dict)  # UNet config fields diffusers' Flax UNet lacks

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
    def guidance_embedding_dim(self) -> int | None:
        """Set for guidance-distilled UNets (LCM): the guidance scale enters through the timestep
        embedding instead of classifier-free guidance."""
        return self.unet_extra.get("time_cond_proj_dim")

    @property
    def max_prompt_tokens(self) -> int:
        return int(self.tokenizer.model_max_length)

    @property
    def attention(self) -> str:
        """The name in :data:`ATTENTION` of this model's UNet attention."""
        return next(name for name, chunked in ATTENTION.items() if chunked == self.unet.use_memory_efficient_attention)

    def with_attention(self, attention: str) -> DiffusionModel:
        """This model with the UNet attention ``attention`` (a name in :data:`ATTENTION`); same params.
        The same object each time, so jobs built from one loaded model share compiled functions."""
        return self if self.attention == attention else _with_attention(self, attention)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        # The VAE divides the image by f, and the UNet halves the latent once per down block but the last.
        f = self.vae_scale_factor * 2 ** (len(self.unet.down_block_types) - 1)
        if height % f or width % f:
            raise JaxalignError(f"height and width must be multiples of {f} for model {self.name!r} (VAE x UNet downsampling), got {height}x{width}")
        return (self.latent_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)

    def tokenize(self, prompts: Sequence[str]) -> np.ndarray:
        """Token ids [len(prompts), max_prompt_tokens] (SDXL: [len(prompts), 2, tokens], one row per
        tokenizer), padded and truncated like diffusers' pipelines."""

        def ids(tokenizer):
            return tokenizer(
                list(prompts), padding="max_length", max_length=self.max_prompt_tokens, truncation=True, return_tensors="np"
            ).input_ids.astype(np.int32)

        if self.tokenizer_2 is None:
            return ids(self.tokenizer)
        return np.stack([ids(self.tokenizer), ids(self.tokenizer_2)], axis=1)

    def truncates(self, prompt: str) -> bool:
        """Whether ``prompt`` has more tokens than the text encoder takes (they are cut, as diffusers does)."""
        def too_long(text):
            return len(self.tokenizer(text, truncation=False).input_ids) > self.max_prompt_tokens

        # A prefix settles it cheaply for huge prompts (tokenizing megabytes takes minutes); the whole otherwise.
        prefix = prompt[: 20 * self.max_prompt_tokens]
        return too_long(prefix) or (len(prefix) < len(prompt) and too_long(prompt))

    def encode_tokens(self, params: Params, token_ids: jax.Array) -> Any:
        """Conditioning for token ids: hidden states [B, tokens, dim] for SD; for SDXL a dict of
        ``hidden_states`` [B, tokens, dim_1 + dim_2] (both encoders' penultimate layers) and
        ``text_embeds`` [B, projection_dim] (the second encoder's pooled projection)."""
        if self.text_encoder_2 is None:
            return self.text_encoder(token_ids, params=params["text_encoder"])[0]
        first = self.text_encoder(token_ids[:, 0], params=params["text_encoder"], output_hidden_states=True)
        second = self.text_encoder_2(token_ids[:, 1], params=params["text_encoder_2"], output_hidden_states=True)
        hidden = jnp.concatenate([first.hidden_states[-2], second.hidden_states[-2]], axis=-1)
        return {"hidden_states": hidden, "text_embeds": second.text_embeds}

    def encode_prompts(self, params: Params, prompts: Sequence[str]) -> Any:
        return _jit_encode(self)(params, jnp.asarray(self.tokenize(prompts)))

    def conditioning(self, params: Params, prompt: str, negative_prompt: str = "") -> tuple[Any, Any]:
        """(context, uncond_context) for one prompt, each without a batch axis; SDXL pipelines
        replace an empty negative prompt by zeros (``force_zeros_for_empty_prompt``)."""
        both = self.encode_prompts(params, [prompt, negative_prompt])
        context, uncond = jax.tree.map(lambda x: x[0], both), jax.tree.map(lambda x: x[1], both)
        if self.text_encoder_2 is not None and self.force_zeros_for_empty_prompt and not negative_prompt:
            uncond = jax.tree.map(jnp.zeros_like, uncond)
        return context, uncond

    def predict_noise(self, params: Params, latents: jax.Array, timestep: jax.Array, context: Any, guidance_scale=None) -> jax.Array:
        """UNet output for latents [B, c, h, w] at one timestep, conditioned on context
        ([B, tokens, dim], or SDXL's dict, see :meth:`encode_tokens`); ``guidance_scale`` feeds the
        guidance embedding of guidance-distilled UNets (:attr:`guidance_embedding_dim`)."""
        if self.guidance_embedding_dim is not None:
            if guidance_scale is None:
                raise ValueError("this UNet embeds the guidance scale; pass guidance_scale")
            embedding = guidance_scale_embedding(jnp.broadcast_to(guidance_scale - 1.0, (latents.shape[0],)), self.guidance_embedding_dim)
            with _added_time_condition(embedding @ params["unet"]["time_embedding"]["cond_proj"]["kernel"]):
                return self._unet_output(params, latents, timestep, context)
        return self._unet_output(params, latents, timestep, context)

    def _unet_output(self, params: Params, latents: jax.Array, timestep: jax.Array, context: Any) -> jax.Array:
        added = None
        if isinstance(context, dict):
            # SDXL's micro-conditioning: original size, crop top-left (0, 0), target size, all the output size.
            height, width = (s * self.vae_scale_factor for s in latents.shape[2:])
            time_ids = jnp.broadcast_to(jnp.array([height, width, 0, 0, height, width], self.dtype), (latents.shape[0], 6))
            added = {"text_embeds": context["text_embeds"].astype(self.dtype), "time_ids": time_ids}
            context = context["hidden_states"]
        out = self.unet.apply(
            {"params": params["unet"]},
            latents.astype(self.dtype),
            jnp.broadcast_to(timestep, (latents.shape[0],)),
            context.astype(self.dtype),
            added_cond_kwargs=added,
        ).sample
        return out.astype(jnp.float32)

    def decode(self, params: Params, latents: jax.Array, clip: bool = True) -> jax.Array:
        """Images [B, H, W, 3] in [0, 1] from latents [B, c, h, w]; ``clip=False`` leaves them unclipped."""
        scaled = (latents / self.vae.scaling_factor).astype(self.dtype)
        images = self.vae.apply({"params": params["vae"]}, scaled, method=self.vae.decode).sample
        images = jnp.transpose(images.astype(jnp.float32), (0, 2, 3, 1)) / 2 + 0.5
        return jnp.clip(images, 0.0, 1.0) if clip else images

    def encode(self, params: Params, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The VAE posterior's mean and log-variance [B, c, h, w] (scaled like the sampler's latents)
        for images [B, H, W, 3] in [0, 1]."""
        pixels = jnp.transpose(images * 2 - 1, (0, 3, 1, 2)).astype(self.dtype)
        posterior = self.vae.apply({"params": params["vae"]}, pixels, method=self.vae.encode).latent_dist
        mean = jnp.transpose(posterior.mean.astype(jnp.float32), (0, 3, 1, 2)) * self.vae.scaling_factor
        logvar = jnp.transpose(posterior.logvar.astype(jnp.float32), (0, 3, 1, 2)) + 2 * jnp.log(self.vae.scaling_factor)
        return mean, logvar


def guidance_scale_embedding(w: jax.Array, dim: int) -> jax.Array:
    """Sinusoidal embedding [B, dim] of guidance weights w [B] (x1000), as LCM pipelines embed w - 1."""
    half = dim // 2
    frequencies = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -(jnp.log(10000.0) / (half - 1)))
    angles = (w.astype(jnp.float32) * 1000.0)[:, None] * frequencies[None]
    return jnp.pad(jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=1), ((0, 0), (0, dim % 2)))


def _added_time_condition(condition: jax.Array):
    """Within this context the UNet's time embedding MLP sees ``t_emb + condition`` as its input:
    the ``cond_proj`` term of diffusers' PyTorch ``TimestepEmbedding``, which the Flax UNet lacks."""
    import flax.linen as nn
    from diffusers.models.embeddings_flax import FlaxTimestepEmbedding

    def interceptor(next_fun, args, kwargs, context):
        if isinstance(context.module, FlaxTimestepEmbedding) and context.module.name == "time_embedding" and context.method_name == "__call__":
            args = (args[0] + condition.astype(args[0].dtype), *args[1:])
        return next_fun(*args, **kwargs)

    return nn.intercept_methods(interceptor)


def with_latent_scale(model: DiffusionModel, scaling_factor: float) -> DiffusionModel:
    """The same model with its VAE latent scaling factor replaced (set after training a VAE)."""
    from diffusers import FlaxAutoencoderKL

    vae = FlaxAutoencoderKL.from_config({**model.vae.config, "scaling_factor": scaling_factor}, dtype=model.dtype)
    return dataclasses.replace(model, vae=vae)


@functools.cache
def _jit_encode(model: DiffusionModel):
    return jax.jit(model.encode_tokens)


@functools.cache
def _with_attention(model: DiffusionModel, attention: str) -> DiffusionModel:
    return dataclasses.replace(model, unet=model.unet.clone(use_memory_efficient_attention=ATTENTION[attention]))


def load_model(source: str = EMBEDDED, dtype: str = "float32", family: str = "auto") -> tuple[DiffusionModel, Params]:
    """Load ``"embedded"``, a local diffusers-format directory, or a Hub repo id from the local cache.

    ``family`` ("auto", or a name in :data:`FAMILIES`) is checked against the directory's
    ``model_index.json``, so a config written for one family refuses another family's weights.
    """
    if dtype not in _DTYPES:
        raise JaxalignError(f"unknown dtype {dtype!r}; valid: {', '.join(_DTYPES)}")
    if family != "auto":
        FAMILIES[family]
    _quiet_flax_deprecation_warnings()
    if source == EMBEDDED:
        path, name = EMBEDDED_DIR, EMBEDDED
    else:
        path = resolve_model_dir(source)
        name = str(path) if Path(source).expanduser().is_dir() else source
    detected = detect_family(path)
    if family not in ("auto", detected.name):
        raise JaxalignError(
            f"model family mismatch: the config expects {family!r} ({' or '.join(FAMILIES[family].pipelines)}) "
            f"but {path} holds a {detected.name!r} model"
        )
    return _load(path, name, _DTYPES[dtype], detected)


def resolve_model_dir(source: str) -> Path:
    """A local diffusers directory for ``source``: a path, or a Hub repo id already in the HF cache.

    The cache is read offline (``local_files_only``), so ``HF_HUB_OFFLINE`` is always respected;
    its location follows ``HF_HUB_CACHE`` / ``HF_HOME`` as the Hub library does.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if source.count("/") != 1 or path.is_absolute() or source.startswith("."):
        raise JaxalignError(f"model directory not found: {path} (expected a diffusers-format directory, a cached Hub repo id, or 'embedded')")
    cache = hf_cache_dir()
    snapshot = _cached_snapshot(cache, source)
    if snapshot is None:
        looked = cache / ("models--" + source.replace("/", "--"))
        raise JaxalignError(
            f"model {source!r} is not in the local Hugging Face cache (looked in {looked}); "
            "download it where there is network access, or give a local diffusers directory"
        )
    return snapshot


def hf_cache_dir() -> Path:
    """The Hugging Face Hub cache directory, read from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def _cached_snapshot(cache: Path, repo_id: str) -> Path | None:
    """The snapshot folder ``refs/main`` points to in the cache layout, or the newest one."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    ref = repo / "refs" / "main"
    if ref.is_file():
        snapshot = repo / "snapshots" / ref.read_text().strip()
        if snapshot.is_dir():
            return snapshot
    snapshots = sorted((repo / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime) if (repo / "snapshots").is_dir() else []
    return snapshots[-1] if snapshots else None


def detect_family(path: Path) -> ModelFamily:
    """The family a diffusers directory belongs to, from ``model_index.json`` (or its folders), with
    every component folder it needs checked."""
    index = path / "model_index.json"
    if index.is_file():
        pipeline = _read_json(index).get("_class_name", "")
        matches = [f for f in FAMILIES.values() if pipeline in f.pipelines]
        if not matches:
            known = ", ".join(p for f in FAMILIES.values() for p in f.pipelines)
            raise JaxalignError(f"{index} names pipeline {pipeline!r}; jaxalign loads {known}")
        family = matches[0]
    else:
        family = FAMILIES["sdxl" if (path / "text_encoder_2").is_dir() else "sd"]
    missing = [c for c in family.directories if not (path / c).is_dir()]
    if missing:
        raise JaxalignError(f"model directory {path} lacks {', '.join(m + '/' for m in missing)} (expected diffusers layout of a {family.name!r} model)")
    return family


def init_model(config_dir: str | os.PathLike, seed: int = 0, dtype: str = "float32") -> tuple[DiffusionModel, Params]:
    """A model from a diffusers-format directory's configs with fresh seeded weights (for training)."""
    _quiet_flax_deprecation_warnings()
    path = Path(config_dir)
    return _load(path, str(path), _DTYPES[dtype], detect_family(path), seed=seed)


def _load(path: Path, name: str, dtype, family: ModelFamily, seed: int | None = None) -> tuple[DiffusionModel, Params]:
    """Modules from ``path``'s configs; weights from its files, or seeded random ones when ``seed`` is given.

    Each leaf goes to the device on its own and is cast there, so the host never holds a second
    full copy (safetensors are memory-mapped).
    """
    from diffusers import FlaxAutoencoderKL, FlaxUNet2DConditionModel
    from transformers import CLIPTextConfig, FlaxCLIPTextModel, FlaxCLIPTextModelWithProjection

    unet_config = _read_json(path / "unet" / "config.json")
    _check_unet_config(unet_config, path / "unet" / "config.json")
    unet = FlaxUNet2DConditionModel.from_config(unet_config, dtype=dtype)
    vae = FlaxAutoencoderKL.from_config(_read_json(path / "vae" / "config.json"), dtype=dtype)
    text_encoder = FlaxCLIPTextModel(CLIPTextConfig.from_pretrained(path / "text_encoder"), dtype=dtype, _do_init=False)
    schedule = NoiseSchedule.from_config(_read_json(path / "scheduler" / "scheduler_config.json"))
    shapes = {
        "unet": jax.eval_shape(unet.init_weights, jax.random.key(0)),
        "vae": jax.eval_shape(vae.init_weights, jax.random.key(0)),
        "text_encoder": text_encoder.params_shape_tree,
    }
    unet_extra = {"time_cond_proj_dim": unet_config["time_cond_proj_dim"]} if unet_config.get("time_cond_proj_dim") else {}
    if unet_extra:  # the guidance embedding's projection (no bias), applied by _added_time_condition
        cond_proj = jax.ShapeDtypeStruct((unet_extra["time_cond_proj_dim"], unet.block_out_channels[0]), jnp.float32)
        shapes["unet"] = {**shapes["unet"], "time_embedding": {**shapes["unet"]["time_embedding"], "cond_proj": {"kernel": cond_proj}}}
    text_encoder_2 = None
    if "text_encoder_2" in family.components:
        config_2 = CLIPTextConfig.from_pretrained(path / "text_encoder_2")
        text_encoder_2 = FlaxCLIPTextModelWithProjection(config_2, dtype=dtype, _do_init=False)
        shapes["text_encoder_2"] = text_encoder_2.params_shape_tree
    if seed is not None:
        params = {c: seeded_init(tree, seed=seed + i) for i, (c, tree) in enumerate(shapes.items())}
    else:
        params = {c: read_weights(path / c, tree) for c, tree in shapes.items()}
    max_length = text_encoder.config.max_position_embeddings
    tokenizer = _tokenizer(path / "tokenizer", max_length)
    tokenizer_2 = _tokenizer(path / "tokenizer_2", max_length) if text_encoder_2 is not None else None
    index = path / "model_index.json"
    force_zeros = _read_json(index).get("force_zeros_for_empty_prompt", True) if index.is_file() else True

    def to_device(x):
        x = jax.device_put(np.asarray(x))
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    params = jax.tree.map(to_device, params)
    model = DiffusionModel(
        name=name, unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, noise_schedule=schedule, dtype=dtype,
        family=family.name, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, force_zeros_for_empty_prompt=bool(force_zeros),
        unet_extra=unet_extra,
    )  # fmt: skip
    return model, params


# UNet config fields that change the architecture in ways diffusers' Flax UNet does not implement,
# with the values it does implement (its group norms always have 32 groups, for instance).
_FLAX_UNET_SUPPORTS = {
    "norm_num_groups": (32,), "norm_eps": (1e-5,), "act_fn": ("silu",), "class_embed_type": (None,),
    "num_class_embeds": (None,), "encoder_hid_dim": (None,), "encoder_hid_dim_type": (None,),
    "time_embedding_type": ("positional",), "time_embedding_dim": (None,), "time_embedding_act_fn": (None,),
    "timestep_post_act": (None,), "resnet_time_scale_shift": ("default",), "resnet_skip_time_act": (False,),
    "resnet_out_scale_factor": (1.0,), "conv_in_kernel": (3,), "conv_out_kernel": (3,), "dual_cross_attention": (False,),
    "attention_type": ("default",), "cross_attention_norm": (None,), "class_embeddings_concat": (False,),
    "mid_block_only_cross_attention": (None, False), "addition_embed_type": (None, "text_time"),
    "center_input_sample": (False,), "downsample_padding": (1,), "mid_block_scale_factor": (1,),
}  # fmt: skip


def _check_unet_config(config: dict, path: Path) -> None:
    for name, supported in _FLAX_UNET_SUPPORTS.items():
        value = config.get(name, supported[0])
        if value not in supported:
            valid = " or ".join(repr(v) for v in supported)
            raise JaxalignError(f"{path}: {name}={value!r} is not supported (the Flax UNet implements {name}={valid})")


def _tokenizer(directory: Path, max_length: int):
    from transformers import CLIPTokenizer

    if not directory.is_dir():
        raise JaxalignError(f"tokenizer folder not found: {directory} (a diffusers model directory holds its CLIP tokenizer there)")
    try:
        tokenizer = CLIPTokenizer.from_pretrained(directory)
    except (OSError, ValueError, TypeError, json.JSONDecodeError) as error:
        raise JaxalignError(f"cannot read the tokenizer in {directory}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}") from None
    if not 0 < tokenizer.model_max_length <= max_length:  # unset (transformers' huge sentinel) or beyond the text encoder
        tokenizer.model_max_length = max_length
    return tokenizer


_FLAX_WEIGHTS = ("diffusion_flax_model.msgpack", "flax_model.msgpack")
_TORCH_WEIGHTS = (
    "diffusion_pytorch_model.safetensors", "model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors", "model.fp16.safetensors",  # Hub "fp16" variants
    "diffusion_pytorch_model.bin", "pytorch_model.bin",
)  # fmt: skip


def _weight_files(component_dir: Path) -> list[Path]:
    """The weight file(s) of one component, preferring Flax, then safetensors, then .bin; shards included."""
    if not component_dir.is_dir():
        return []
    for name in (*_FLAX_WEIGHTS, *_TORCH_WEIGHTS):
        if (component_dir / name).is_file():
            return [component_dir / name]
        index = component_dir / f"{name}.index.json"
        if index.is_file():
            weight_map = _read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise JaxalignError(f"{index} has no \"weight_map\" object naming its shards")
            shards = sorted(set(weight_map.values()))
            return [component_dir / shard for shard in shards]
    return []


def read_weights(component_dir: Path, shapes: Any) -> Any:
    """One component's weights as a Flax params tree, checked key by key against ``shapes``.

    Flax ``.msgpack`` files are restored directly; PyTorch state dicts (safetensors, or ``.bin``
    through ``torch.load(weights_only=True)``) are renamed and transposed to Flax's layout.
    """
    files = _weight_files(component_dir)
    if not files:
        expected = " or ".join((*_FLAX_WEIGHTS, *_TORCH_WEIGHTS))
        raise JaxalignError(f"no weights in {component_dir} (expected {expected})")
    try:
        if files[0].name in _FLAX_WEIGHTS:
            from flax.serialization import msgpack_restore

            flat = flatten_shapes(msgpack_restore(files[0].read_bytes()))
            flat = {k[1:] if k[0] == "params" else k: v for k, v in flat.items()}
        else:
            state: dict[str, np.ndarray] = {}
            for file in files:
                state.update(_read_safetensors(file) if file.suffix == ".safetensors" else _read_torch_bin(file))
            flat = _torch_to_flax(state, flatten_shapes(shapes))
    except JaxalignError:
        raise
    except Exception as error:  # noqa: BLE001 - a truncated or foreign file fails in its reader's own way; name the file
        detail = str(error).splitlines()[0][:200] if str(error) else ""
        raise JaxalignError(f"cannot read weights {', '.join(str(f) for f in files)}: damaged or not a weights file ({type(error).__name__}: {detail})") from None
    return _checked(flat, shapes, component_dir)


_ATTENTION_NAMES = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out_0": "proj_attn"}


def _torch_to_flax(state: dict[str, np.ndarray], expected: dict) -> dict:
    """Rename a PyTorch state dict to Flax keys, transposing linear and conv kernels."""
    # diffusers' Flax modules name repeated blocks "down_blocks_0" where PyTorch has "down_blocks.0";
    # transformers' Flax models keep "layers/0".
    numbered = any(part.isdigit() for key in expected for part in key)
    flat = {}
    for pt_key, tensor in state.items():
        if pt_key.endswith("position_ids"):  # a buffer some CLIP checkpoints carry, not a weight
            continue
        key = tuple(pt_key.split("."))
        if not numbered:
            key = tuple(re.sub(r"(\w+)\.(\d+)", r"\1_\2", pt_key).split("."))
        flax_key, value = _flax_leaf(key, tensor, expected)
        flat[flax_key] = value
    return flat


def _flax_leaf(key: tuple[str, ...], tensor: np.ndarray, expected: dict) -> tuple[tuple[str, ...], np.ndarray]:
    prefix, last = key[:-1], key[-1]
    if prefix and prefix[-1] in _ATTENTION_NAMES:  # the VAE's Flax attention uses the older names
        renamed = (*prefix[:-1], _ATTENTION_NAMES[prefix[-1]])
        if (*renamed, "kernel") in expected:
            prefix = renamed
    if last in ("weight", "gamma") and (*prefix, "scale") in expected:
        return (*prefix, "scale"), tensor
    if last == "beta":
        return (*prefix, "bias"), tensor
    if last == "weight" and (*prefix, "embedding") in expected:
        return (*prefix, "embedding"), tensor
    if last == "weight":
        kernel = (*prefix, "kernel")
        if tensor.ndim == 4 and len(getattr(expected.get(kernel), "shape", ())) == 2:
            tensor = tensor[:, :, 0, 0]  # a 1x1 conv stored where Flax has a dense layer
        return kernel, tensor.transpose(2, 3, 1, 0) if tensor.ndim == 4 else tensor.T
    return (*prefix, last), tensor


_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": "bfloat16",
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}  # fmt: skip


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Memory-map a safetensors file: no pickle, no torch, no copy until the arrays are used."""
    import ml_dtypes

    size = path.stat().st_size
    with path.open("rb") as handle:
        header_size = int.from_bytes(handle.read(8), "little")
        if size < 8 or header_size > size - 8:  # checked before reading: a random prefix would ask for terabytes
            raise JaxalignError(f"{path} is not a safetensors file (its header claims {header_size} bytes of {size})")
        header = json.loads(handle.read(header_size))
    if not isinstance(header, dict):
        raise JaxalignError(f"{path} is not a safetensors file (its header is not a JSON object)")
    header.pop("__metadata__", None)
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_size) if size > 8 + header_size else np.zeros(0, np.uint8)
    tensors = {}
    for name, info in header.items():
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise JaxalignError(f"unsupported dtype {info['dtype']} for {name} in {path}")
        dtype = np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
        begin, end = info["data_offsets"]
        if end > data.size or end - begin != int(np.prod(info["shape"])) * dtype.itemsize:
            raise JaxalignError(f"{path} is truncated or damaged: {name} needs bytes {begin}..{end} of {data.size}")
        tensors[name] = data[begin:end].view(dtype).reshape(info["shape"])
    return tensors


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A PyTorch state dict from safetensors or a ``.pth``/``.pt``/``.bin`` (``weights_only`` unpickling)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise JaxalignError(f"weights file not found: {path}")
    return _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch_bin(path)


def _read_torch_bin(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise JaxalignError(f"{path} is a PyTorch pickle; install torch to read it, or convert it to safetensors") from None
    state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle arbitrary objects
    if isinstance(state.get("state_dict"), dict):  # training checkpoints (HPSv2) nest the weights
        state = state["state_dict"]
    return {k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy() for k, v in state.items() if isinstance(v, torch.Tensor)}


def save_model(model: DiffusionModel, params: Params, path: str | os.PathLike) -> None:
    """Write model and params as a diffusers-format directory with Flax weights."""
    from diffusers import FlaxAutoencoderKL, FlaxUNet2DConditionModel

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    host = jax.device_get(params)
    for component, cls in (("unet", FlaxUNet2DConditionModel), ("vae", FlaxAutoencoderKL)):
        module = getattr(model, component)
        cls.from_config(module.config).save_pretrained(path / component, params=host[component])
        # Name the PyTorch class, as diffusers directories on the Hub do, so either framework reads it.
        config_file = path / component / "config.json"
        config = json.loads(config_file.read_text())
        config["_class_name"] = config["_class_name"].removeprefix("Flax")
        if component == "unet":
            config.update(model.unet_extra)
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    model.text_encoder.save_pretrained(path / "text_encoder", params=host["text_encoder"])
    model.tokenizer.save_pretrained(path / "tokenizer")
    if model.text_encoder_2 is not None:
        model.text_encoder_2.save_pretrained(path / "text_encoder_2", params=host["text_encoder_2"])
        model.tokenizer_2.save_pretrained(path / "tokenizer_2")
    (path / "scheduler").mkdir(exist_ok=True)
    (path / "scheduler" / "scheduler_config.json").write_text(json.dumps(model.noise_schedule.to_config(), indent=2))
    index = json.loads((EMBEDDED_DIR / "model_index.json").read_text())
    if model.text_encoder_2 is not None:
        index.update(
            _class_name="StableDiffusionXLPipeline",
            text_encoder_2=["transformers", "CLIPTextModelWithProjection"],
            tokenizer_2=["transformers", "CLIPTokenizer"],
            force_zeros_for_empty_prompt=model.force_zeros_for_empty_prompt,
        )
    (path / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


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


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise JaxalignError(f"missing {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise JaxalignError(f"{path} is not valid JSON ({type(error).__name__}: {str(error).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise JaxalignError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


class _DropFlaxDeprecationNotice(logging.Filter):
    """Drops diffusers'/transformers' "Flax (JAX) classes are deprecated" notice, which they log each time a
    Flax module is built or traced (the pins in pyproject.toml keep those classes); every other message passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "classes are deprecated and will be removed" not in record.getMessage()


@functools.cache
def _quiet_flax_deprecation_warnings() -> None:
    # A filter on the libraries' own handlers rather than their verbosity: a caller's log levels stay as set.
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        for handler in library.get_logger().handlers:
            handler.addFilter(_DropFlaxDeprecationNotice())


# --- CLIP models for learned rewards (CLIP score, LAION aesthetic, PickScore, HPSv2) ---------------


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
    """A CLIP model from a transformers-format directory (or a cached Hub repo id): ``config.json``,
    safetensors / ``.bin`` / Flax weights, tokenizer and ``preprocessor_config.json`` when present.

    PickScore and the CLIP towers of the aesthetic predictor are in this layout. Without tokenizer
    files, CLIP's own BPE tokenizer (the one shipped with the embedded model) is used: every OpenAI
    and LAION CLIP shares it, and the causal text tower ignores what the padding token is.
    """
    from transformers import CLIPConfig

    path = _resolve_component(source, "CLIP model")
    if not (path / "config.json").is_file():
        raise JaxalignError(f"CLIP model directory {path} has no config.json (expected a transformers CLIPModel directory)")
    config = CLIPConfig.from_pretrained(path)
    if not hasattr(config, "vision_config") or getattr(config, "model_type", "") != "clip":
        raise JaxalignError(f"{path}/config.json is a {getattr(config, 'model_type', '?')!r} model, expected a 'clip' CLIPModel")
    processor = _read_json(path / "preprocessor_config.json") if (path / "preprocessor_config.json").is_file() else {}
    return _clip_from(config, lambda shapes: read_weights(path, shapes), _clip_tokenizer(path), processor, _DTYPES[dtype])


def load_open_clip(checkpoint: str, architecture: dict, dtype: str = "float32") -> tuple[ClipModel, Params]:
    """A CLIP model from an open_clip checkpoint (HPSv2's ``HPS_v2*_compressed.pt``), mapped to the
    transformers layout. ``architecture`` is open_clip's model config (``embed_dim``, ``vision_cfg``,
    ``text_cfg``), ViT-H-14's for HPSv2. Read with ``torch.load(weights_only=True)`` or safetensors."""
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
    tokenizer = _clip_tokenizer(path.parent)
    return _clip_from(config, lambda shapes: _checked(_torch_to_flax(hf_state, flatten_shapes(shapes)), shapes, path), tokenizer, {}, _DTYPES[dtype])


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


def _clip_tokenizer(directory: Path):
    from transformers import CLIPTokenizer

    if (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
        return CLIPTokenizer.from_pretrained(directory)
    return CLIPTokenizer.from_pretrained(EMBEDDED_DIR / "tokenizer")


def _resolve_component(source: str, what: str) -> Path:
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    try:
        return resolve_model_dir(source)
    except JaxalignError:
        raise JaxalignError(f"{what} not found: {path} (expected a local directory or a Hub repo id in the local cache)") from None


def flatten_shapes(shapes: Any) -> dict:
    from flax.traverse_util import flatten_dict

    return flatten_dict(shapes)


def _checked(flat: dict, shapes: Any, source: Path) -> Any:
    """Unflatten ``flat`` after checking its keys and shapes against ``shapes`` (one clear error)."""
    from flax.traverse_util import unflatten_dict

    expected = flatten_shapes(shapes)
    missing = sorted("/".join(k) for k in set(expected) - set(flat))
    unexpected = sorted("/".join(k) for k in set(flat) - set(expected))
    if missing or unexpected:
        raise JaxalignError(
            f"weights in {source} do not match its config: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    for key, leaf in flat.items():
        if tuple(np.shape(leaf)) != tuple(expected[key].shape):
            raise JaxalignError(
                f"weight {'/'.join(key)} in {source} has shape {tuple(np.shape(leaf))}, its config expects {tuple(expected[key].shape)}"
            )
    return unflatten_dict(flat)
