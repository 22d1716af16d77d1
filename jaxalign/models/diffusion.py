"""The diffusion-model interface: :class:`DiffusionModel` (static: modules, tokenizers, shapes, noise
schedule, model family) and a params pytree (``{"unet", "vae"}`` and the family's text encoders) passed
explicitly to every jitted function; the UNet attention choices (:data:`ATTENTION`) and the LCM guidance
embedding (Luo et al. 2023, arXiv 2310.04378), which diffusers' Flax UNet lacks.

Every family shares this class: how prompts become conditioning, and conditioning becomes UNet inputs, is
the family's (:mod:`jaxalign.models.families`); SDXL's conditioning is a dict pytree instead of one array.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.errors import JaxalignError
from jaxalign.models.families import ModelFamily
from jaxalign.registry import Registry
from jaxalign.schedulers import NoiseSchedule

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

Params = dict[str, Any]


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
    family: ModelFamily
    unet: Any
    vae: Any
    text_encoders: dict[str, Any]  # folder (and params key) -> Flax text encoder, in the family's order
    tokenizers: tuple[Any, ...]  # one per text encoder
    noise_schedule: NoiseSchedule
    dtype: Any
    family_options: dict = dataclasses.field(default_factory=dict)  # see ModelFamily.options
    unet_extra: dict = dataclasses.field(default_factory=dict)  # UNet config fields diffusers' Flax UNet lacks

    @property
    def text_encoder(self) -> Any:
        """The first text encoder (the one whose positions bound the prompt length)."""
        return next(iter(self.text_encoders.values()))

    @property
    def tokenizer(self) -> Any:
        return self.tokenizers[0]

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
        """Token ids [len(prompts), max_prompt_tokens] ([len(prompts), n, tokens] for n tokenizers), padded
        and truncated like diffusers' pipelines."""
        return self.family.tokenize(self.tokenizers, prompts, self.max_prompt_tokens)

    def truncates(self, prompt: str) -> bool:
        """Whether ``prompt`` has more tokens than the text encoder takes (they are cut, as diffusers does)."""
        def too_long(text):
            return len(self.tokenizer(text, truncation=False).input_ids) > self.max_prompt_tokens

        # A prefix settles it cheaply for huge prompts (tokenizing megabytes takes minutes); the whole otherwise.
        prefix = prompt[: 20 * self.max_prompt_tokens]
        return too_long(prefix) or (len(prefix) < len(prompt) and too_long(prompt))

    def encode_tokens(self, params: Params, token_ids: jax.Array) -> Any:
        """Conditioning for token ids: the family's pytree, batched (SD: hidden states [B, tokens, dim]; SDXL:
        ``{"hidden_states": [B, tokens, dim_1 + dim_2], "text_embeds": [B, projection_dim]}``)."""
        return self.family.encode(self.text_encoders, params, token_ids)

    def encode_prompts(self, params: Params, prompts: Sequence[str]) -> Any:
        return _jit_encode(self)(params, jnp.asarray(self.tokenize(prompts)))

    def conditioning(self, params: Params, prompt: str, negative_prompt: str = "") -> tuple[Any, Any]:
        """(context, uncond_context) for one prompt, each without a batch axis; the family may replace the
        unconditional branch (SDXL: an empty negative prompt is zeros, ``force_zeros_for_empty_prompt``)."""
        both = self.encode_prompts(params, [prompt, negative_prompt])
        context, uncond = jax.tree.map(lambda x: x[0], both), jax.tree.map(lambda x: x[1], both)
        return context, self.family.unconditional(uncond, negative_prompt, self.family_options)

    def predict_noise(self, params: Params, latents: jax.Array, timestep: jax.Array, context: Any, guidance_scale=None) -> jax.Array:
        """UNet output for latents [B, c, h, w] at one timestep, conditioned on context
        (the family's batched pytree, see :meth:`encode_tokens`); ``guidance_scale`` feeds the
        guidance embedding of guidance-distilled UNets (:attr:`guidance_embedding_dim`)."""
        if self.guidance_embedding_dim is not None:
            if guidance_scale is None:
                raise ValueError("this UNet embeds the guidance scale; pass guidance_scale")
            embedding = guidance_scale_embedding(jnp.broadcast_to(guidance_scale - 1.0, (latents.shape[0],)), self.guidance_embedding_dim)
            with _added_time_condition(embedding @ params["unet"]["time_embedding"]["cond_proj"]["kernel"]):
                return self._unet_output(params, latents, timestep, context)
        return self._unet_output(params, latents, timestep, context)

    def _unet_output(self, params: Params, latents: jax.Array, timestep: jax.Array, context: Any) -> jax.Array:
        image_size = tuple(s * self.vae_scale_factor for s in latents.shape[2:])
        hidden, added = self.family.unet_inputs(context, image_size, self.dtype)
        out = self.unet.apply(
            {"params": params["unet"]},
            latents.astype(self.dtype),
            jnp.broadcast_to(timestep, (latents.shape[0],)),
            hidden,
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
