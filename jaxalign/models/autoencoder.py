"""The KL autoencoder of latent diffusion (Rombach et al. 2022, arXiv 2112.10752) as every family here uses it:
diffusers' Flax encoder and decoder, the 1x1 ``quant_conv``/``post_quant_conv`` only where the config has them
(SD3's and Flux's 16-channel autoencoders have neither), and the latent normalisation
z = (mean - shift_factor) * scaling_factor (SD3 and Flux shift; SD's shift is 0).

Hand-composed rather than diffusers' ``FlaxAutoencoderKL``, which always builds both quant convs and reads no
shift factor; its parameter names are kept, so its checkpoints load unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxalign.errors import JaxalignError

# AutoencoderKL config fields whose other values diffusers' Flax encoder/decoder do not implement.
_SUPPORTS = {"act_fn": ("silu",), "mid_block_add_attention": (True,), "latents_mean": (None,), "latents_std": (None,)}


class _AutoencoderKLModule(nn.Module):
    in_channels: int
    out_channels: int
    down_block_types: tuple[str, ...]
    up_block_types: tuple[str, ...]
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    latent_channels: int
    norm_num_groups: int
    use_quant_conv: bool
    use_post_quant_conv: bool
    dtype: Any = jnp.float32

    def setup(self):
        from diffusers.models.vae_flax import FlaxDecoder, FlaxEncoder

        shared = dict(block_out_channels=self.block_out_channels, layers_per_block=self.layers_per_block, norm_num_groups=self.norm_num_groups, dtype=self.dtype)
        self.encoder = FlaxEncoder(in_channels=self.in_channels, out_channels=self.latent_channels, down_block_types=self.down_block_types, double_z=True, **shared)
        self.decoder = FlaxDecoder(in_channels=self.latent_channels, out_channels=self.out_channels, up_block_types=self.up_block_types, **shared)
        if self.use_quant_conv:
            self.quant_conv = nn.Conv(2 * self.latent_channels, kernel_size=(1, 1), padding="VALID", dtype=self.dtype)
        if self.use_post_quant_conv:
            self.post_quant_conv = nn.Conv(self.latent_channels, kernel_size=(1, 1), padding="VALID", dtype=self.dtype)

    def __call__(self, pixels):  # for init: both halves [B, H, W, C]
        return self.decode(self.encode(pixels)[..., : self.latent_channels])

    def encode(self, pixels):
        moments = self.encoder(pixels)
        return self.quant_conv(moments) if self.use_quant_conv else moments

    def decode(self, latents):
        return self.decoder(self.post_quant_conv(latents) if self.use_post_quant_conv else latents)


@dataclasses.dataclass(frozen=True, eq=False)
class AutoencoderKL:
    """A KL autoencoder (static) whose ``decode``/``encode`` take its params explicitly; latents are [B, c, h, w]."""

    module: _AutoencoderKLModule
    config: dict  # config.json as read (PyTorch class name), written back by save_model
    scaling_factor: float
    shift_factor: float

    @classmethod
    def from_config(cls, config: dict, dtype, where: str = "vae/config.json") -> AutoencoderKL:
        for name, supported in _SUPPORTS.items():
            if config.get(name, supported[0]) not in supported:
                raise JaxalignError(f"{where}: {name}={config[name]!r} is not supported (jaxalign implements {name}={supported[0]!r})")
        module = _AutoencoderKLModule(
            in_channels=config.get("in_channels", 3), out_channels=config.get("out_channels", 3),
            down_block_types=tuple(config["down_block_types"]), up_block_types=tuple(config["up_block_types"]),
            block_out_channels=tuple(config["block_out_channels"]), layers_per_block=config.get("layers_per_block", 1),
            latent_channels=config.get("latent_channels", 4), norm_num_groups=config.get("norm_num_groups", 32),
            use_quant_conv=bool(config.get("use_quant_conv", True)), use_post_quant_conv=bool(config.get("use_post_quant_conv", True)), dtype=dtype,
        )  # fmt: skip
        shift = config.get("shift_factor")
        return cls(module, dict(config), float(config.get("scaling_factor", 0.18215)), float(shift or 0.0))

    @property
    def latent_channels(self) -> int:
        return self.module.latent_channels

    @property
    def spatial_factor(self) -> int:
        """Image pixels per latent pixel along each side."""
        return 2 ** (len(self.module.block_out_channels) - 1)

    def with_normalisation(self, scaling_factor: float, shift_factor: float | None = None) -> AutoencoderKL:
        """The same autoencoder with another latent scaling factor, and shift factor where given."""
        shift = {} if shift_factor is None else {"shift_factor": shift_factor}
        return dataclasses.replace(
            self, config={**self.config, "scaling_factor": scaling_factor, **shift}, scaling_factor=float(scaling_factor),
            shift_factor=self.shift_factor if shift_factor is None else float(shift_factor),
        )  # fmt: skip

    def param_shapes(self) -> Any:
        size = self.config.get("sample_size", 32)
        size = size[0] if isinstance(size, (list, tuple)) else size
        pixels = jax.ShapeDtypeStruct((1, size, size, self.module.in_channels), jnp.float32)
        return jax.eval_shape(lambda p: self.module.init(jax.random.key(0), p)["params"], pixels)

    def decode(self, params, latents: jax.Array, clip: bool = True) -> jax.Array:
        """Images [B, H, W, 3] in [0, 1] from latents [B, c, h, w]; ``clip=False`` leaves them unclipped."""
        raw = latents / self.scaling_factor
        if self.shift_factor:
            raw = raw + self.shift_factor
        raw = jnp.transpose(raw.astype(self.module.dtype), (0, 2, 3, 1))
        images = self.module.apply({"params": params}, raw, method=_AutoencoderKLModule.decode)
        images = images.astype(jnp.float32) / 2 + 0.5
        return jnp.clip(images, 0.0, 1.0) if clip else images

    def encode(self, params, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The posterior's mean and log-variance [B, c, h, w], normalised like the sampler's latents, for
        images [B, H, W, 3] in [0, 1]."""
        from diffusers.models.vae_flax import FlaxDiagonalGaussianDistribution

        pixels = (images * 2 - 1).astype(self.module.dtype)
        moments = self.module.apply({"params": params}, pixels, method=_AutoencoderKLModule.encode)
        posterior = FlaxDiagonalGaussianDistribution(moments)  # logvar clipped to [-30, 20], as diffusers
        mean = jnp.transpose(posterior.mean.astype(jnp.float32), (0, 3, 1, 2))
        if self.shift_factor:
            mean = mean - self.shift_factor
        logvar = jnp.transpose(posterior.logvar.astype(jnp.float32), (0, 3, 1, 2)) + 2 * jnp.log(self.scaling_factor)
        return mean * self.scaling_factor, logvar
