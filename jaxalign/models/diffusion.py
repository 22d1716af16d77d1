"""The diffusion-model interface: :class:`DiffusionModel` (static: its family, denoising network, autoencoder,
text encoders, tokenizers and scheduler config) and a params pytree keyed by component folder (e.g.
``{"unet", "vae", "text_encoder"}``) passed explicitly to every jitted function.

Every family shares this class; whatever differs between families (how prompts become conditioning, how
conditioning reaches the network, which network and autoencoder, which noise process) is the family's
(:mod:`jaxalign.models.families`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxalign.errors import JaxalignError
from jaxalign.models.families import ModelFamily

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# How a network takes the guidance scale (its ``guidance``): see DiffusionModel.guidance.
CLASSIFIER_FREE, EMBEDDED_GUIDANCE, NO_GUIDANCE = "classifier_free", "embedded", "none"

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True, eq=False)
class DiffusionModel:
    """Static half of a text-to-image latent diffusion model; the weights travel separately as ``Params``."""

    name: str
    family: ModelFamily
    network: Any  # the denoiser (models.unet.UNet, or a family's own), called with params[family.denoiser_folder]
    autoencoder: Any  # models.autoencoder.AutoencoderKL
    text_encoders: dict[str, Any]  # folder (and params key) -> Flax text encoder, in the family's order
    tokenizers: dict[str, Any]  # text encoder folder -> its tokenizer
    scheduler_config: dict  # the model's scheduler_config.json; schedulers read their settings from it
    dtype: Any
    family_options: dict = dataclasses.field(default_factory=dict)  # see ModelFamily.options

    @property
    def text_encoder(self) -> Any:
        """The first text encoder (the one whose positions bound the prompt length)."""
        return next(iter(self.text_encoders.values()))

    @property
    def tokenizer(self) -> Any:
        return next(iter(self.tokenizers.values()))

    @property
    def noise_process(self) -> type:
        """The noise process the model was trained with (a class in :mod:`jaxalign.schedulers.processes`)."""
        return self.family.noise_process

    @property
    def guidance(self) -> str:
        """How the guidance scale enters (CLASSIFIER_FREE, EMBEDDED_GUIDANCE or NO_GUIDANCE): classifier-free guidance over a conditional
        and an unconditional pass, an embedding in one pass (LCM, Flux-dev), or none (Flux-schnell)."""
        return self.network.guidance

    @property
    def latent_channels(self) -> int:
        return self.autoencoder.latent_channels

    @property
    def vae_scale_factor(self) -> int:
        return self.autoencoder.spatial_factor

    @property
    def default_size(self) -> int:
        return self.network.sample_size * self.vae_scale_factor

    @property
    def max_prompt_tokens(self) -> int:
        return int(self.tokenizer.model_max_length)

    @property
    def attention(self) -> str:
        return self.network.attention

    def with_attention(self, attention: str) -> DiffusionModel:
        """This model with the network attention ``attention``; same params. The same object each time, so
        jobs built from one loaded model share compiled functions."""
        return self if self.network.with_attention(attention) is self.network else _with_attention(self, attention)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        f = self.vae_scale_factor * self.network.latent_multiple
        if height % f or width % f:
            raise JaxalignError(f"height and width must be multiples of {f} for model {self.name!r} (autoencoder x network downsampling), got {height}x{width}")
        largest = self.network.max_latent_size
        if largest is not None and max(height, width) > largest * self.vae_scale_factor:
            raise JaxalignError(f"height and width must be at most {largest * self.vae_scale_factor} for model {self.name!r} (its position table), got {height}x{width}")
        return (self.latent_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)

    def initial_sigmas(self, num_steps: int):
        """The family pipeline's own sigma grid for a flow scheduler, or ``None`` (see ModelFamily.initial_sigmas)."""
        return self.family.initial_sigmas(num_steps)

    def image_tokens(self, latent_shape) -> int:
        """Tokens the network sees for one latent (what dynamic timestep shifting scales with)."""
        return self.network.image_tokens(latent_shape)

    def tokenize(self, prompts: Sequence[str]) -> Any:
        """Token ids, padded and truncated like diffusers' pipelines: the family's pytree (SD: [len(prompts),
        max_prompt_tokens]; SDXL: [len(prompts), 2, tokens]; SD3: one array per tokenizer)."""
        return self.family.tokenize(self.tokenizers, prompts)

    def truncated_at(self, prompt: str) -> list[int]:
        """The token limits of the text encoders that cut ``prompt`` short (as diffusers does), none if it fits."""

        def too_long(tokenizer, text):
            return len(tokenizer(text, truncation=False).input_ids) > tokenizer.model_max_length

        limits = []
        for tokenizer in self.tokenizers.values():
            # A prefix settles it cheaply for huge prompts (tokenizing megabytes takes minutes); the whole otherwise.
            prefix = prompt[: 20 * tokenizer.model_max_length]
            if too_long(tokenizer, prefix) or (len(prefix) < len(prompt) and too_long(tokenizer, prompt)):
                limits.append(int(tokenizer.model_max_length))
        return sorted(set(limits))

    def encode_tokens(self, params: Params, token_ids: jax.Array) -> Any:
        """Conditioning for token ids: the family's pytree, batched (SD: hidden states [B, tokens, dim]; SDXL:
        ``{"hidden_states": [B, tokens, dim_1 + dim_2], "text_embeds": [B, projection_dim]}``)."""
        return self.family.encode(self.text_encoders, params, token_ids)

    def encode_prompts(self, params: Params, prompts: Sequence[str]) -> Any:
        return _jit_encode(self)(params, jax.tree.map(jnp.asarray, self.tokenize(prompts)))

    def conditioning(self, params: Params, prompt: str, negative_prompt: str = "") -> tuple[Any, Any]:
        """(context, uncond_context) for one prompt, each without a batch axis; the family may replace the
        unconditional branch (SDXL: an empty negative prompt is zeros, ``force_zeros_for_empty_prompt``)."""
        both = self.encode_prompts(params, [prompt, negative_prompt])
        context, uncond = jax.tree.map(lambda x: x[0], both), jax.tree.map(lambda x: x[1], both)
        return context, self.family.unconditional(uncond, negative_prompt, self.family_options)

    def predict(self, params: Params, latents: jax.Array, timestep: jax.Array, context: Any, guidance_scale=None) -> jax.Array:
        """The network's output (noise, v or velocity: the noise process's parameterisation) for latents
        [B, c, h, w] at one time input, conditioned on context (the family's batched pytree, see
        :meth:`encode_tokens`); ``guidance_scale`` feeds networks that embed it (:attr:`guidance`)."""
        image_size = tuple(s * self.vae_scale_factor for s in latents.shape[2:])
        inputs = self.family.denoiser_inputs(context, image_size, self.dtype)
        return self.network(params[self.family.denoiser_folder], latents, timestep, inputs, guidance_scale)

    def decode(self, params: Params, latents: jax.Array, clip: bool = True) -> jax.Array:
        """Images [B, H, W, 3] in [0, 1] from latents [B, c, h, w]; ``clip=False`` leaves them unclipped."""
        return self.autoencoder.decode(params["vae"], latents, clip)

    @staticmethod
    def clip_images(images: jax.Array) -> jax.Array:
        """What ``decode`` does to its unclipped output (``decode(p, z) == clip_images(decode(p, z, False))``)."""
        return jnp.clip(images, 0.0, 1.0)

    def encode(self, params: Params, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The autoencoder posterior's mean and log-variance [B, c, h, w] (normalised like the sampler's
        latents) for images [B, H, W, 3] in [0, 1]."""
        return self.autoencoder.encode(params["vae"], images)


def with_latent_scale(model: DiffusionModel, scaling_factor: float, shift_factor: float | None = None) -> DiffusionModel:
    """The same model with its autoencoder's latent scaling factor (and shift factor, where given) replaced (set
    after training an autoencoder)."""
    return dataclasses.replace(model, autoencoder=model.autoencoder.with_normalisation(scaling_factor, shift_factor))


@functools.cache
def _jit_encode(model: DiffusionModel):
    return jax.jit(model.encode_tokens)


@functools.cache
def _with_attention(model: DiffusionModel, attention: str) -> DiffusionModel:
    return dataclasses.replace(model, network=model.network.with_attention(attention))
