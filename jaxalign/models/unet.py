"""The UNet denoiser of Stable Diffusion 1.x/2.x, SDXL and LCM: diffusers' ``FlaxUNet2DConditionModel``, its
attention choices (:data:`ATTENTION`, including ``jax.nn.dot_product_attention`` in place of the Flax UNet's own),
and the LCM guidance embedding (Luo et al. 2023, arXiv 2310.04378) that the Flax UNet lacks. UNet configs that
need architecture features the Flax UNet does not implement are refused by name."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxalign.errors import JaxalignError
from jaxalign.models.attention import dot_product_attention
from jaxalign.models.diffusion import CLASSIFIER_FREE, EMBEDDED_GUIDANCE
from jaxalign.registry import Registry


class Attention(NamedTuple):
    memory_efficient: bool  # diffusers' use_memory_efficient_attention
    fused: bool  # jax.nn.dot_product_attention in place of the Flax UNet's einsum-softmax-einsum


# UNet attention, a static program choice (the numbers agree up to rounding). "standard": one [tokens x tokens]
# score matrix per head and image, what diffusers' Flax UNet does by default. "chunked": diffusers'
# memory-efficient attention (Rabe & Staats 2021, arXiv 2112.05682) takes the queries in chunks, so memory grows
# linearly with the tokens. "fused": jaxalign.models.attention, cuDNN's fused kernel on GPUs in half precision (the
# score matrix never materialised, as PyTorch's SDPA) and XLA's composition elsewhere.
ATTENTION: Registry[Attention] = Registry("attention")
ATTENTION.register("standard", Attention(False, False))
ATTENTION.register("chunked", Attention(True, False))
ATTENTION.register("fused", Attention(False, True))

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


@dataclasses.dataclass(frozen=True, eq=False)
class UNet:
    """A conditional UNet (static) called with its params, latents [B, c, h, w], a float timestep and the
    family's inputs (``encoder_hidden_states``, and SDXL's ``added_cond_kwargs``)."""

    module: Any  # FlaxUNet2DConditionModel
    config: dict  # config.json as read (PyTorch class name), written back by save_model
    attention: str = "standard"  # a name in ATTENTION

    @classmethod
    def from_config(cls, config: dict, dtype, where: str = "unet/config.json") -> UNet:
        from diffusers import FlaxUNet2DConditionModel

        for name, supported in _FLAX_UNET_SUPPORTS.items():
            value = config.get(name, supported[0])
            if value not in supported:
                valid = " or ".join(repr(v) for v in supported)
                raise JaxalignError(f"{where}: {name}={value!r} is not supported (the Flax UNet implements {name}={valid})")
        module = FlaxUNet2DConditionModel.from_config(config, dtype=dtype)
        return cls(module, dict(config), "chunked" if module.use_memory_efficient_attention else "standard")

    @property
    def guidance_embedding_dim(self) -> int | None:
        """Set for guidance-distilled UNets (LCM): the guidance scale enters through the timestep embedding."""
        return self.config.get("time_cond_proj_dim") or None

    @property
    def embeds_guidance(self) -> bool:
        return self.guidance_embedding_dim is not None

    @property
    def guidance(self) -> str:
        return EMBEDDED_GUIDANCE if self.embeds_guidance else CLASSIFIER_FREE

    @property
    def sample_size(self) -> int:
        return int(self.module.sample_size)

    @property
    def latent_multiple(self) -> int:
        """The UNet halves the latent once per down block but the last."""
        return 2 ** (len(self.module.down_block_types) - 1)

    max_latent_size = None  # convolutional: any latent size

    def with_attention(self, attention: str) -> UNet:
        """This UNet with attention ``attention`` (a name in :data:`ATTENTION`); the same object each time, so
        jobs built from one loaded model share compiled functions."""
        return self if self.attention == attention else _with_attention(self, attention)

    def image_tokens(self, latent_shape) -> int:
        return int(latent_shape[-2] * latent_shape[-1])

    def param_shapes(self) -> Any:
        shapes = jax.eval_shape(self.module.init_weights, jax.random.key(0))
        if self.embeds_guidance:  # the guidance embedding's projection (no bias), applied by _added_time_condition
            cond_proj = jax.ShapeDtypeStruct((self.guidance_embedding_dim, self.module.block_out_channels[0]), jnp.float32)
            shapes = {**shapes, "time_embedding": {**shapes["time_embedding"], "cond_proj": {"kernel": cond_proj}}}
        return shapes

    def __call__(self, params, latents: jax.Array, timestep: jax.Array, inputs: dict, guidance_scale=None) -> jax.Array:
        dtype = self.module.dtype

        def output():
            with _fused_attention() if ATTENTION[self.attention].fused else contextlib.nullcontext():
                return self.module.apply(
                    {"params": params}, latents.astype(dtype), jnp.broadcast_to(timestep, (latents.shape[0],)),
                    inputs["encoder_hidden_states"], added_cond_kwargs=inputs.get("added_cond_kwargs"),
                ).sample.astype(jnp.float32)  # fmt: skip

        if not self.embeds_guidance:
            return output()
        if guidance_scale is None:
            raise ValueError("this UNet embeds the guidance scale; pass guidance_scale")
        embedding = guidance_scale_embedding(jnp.broadcast_to(guidance_scale - 1.0, (latents.shape[0],)), self.guidance_embedding_dim)
        with _added_time_condition(embedding @ params["time_embedding"]["cond_proj"]["kernel"]):
            return output()


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


def _fused_attention():
    """Within this context every attention of diffusers' Flax UNet runs through :func:`~jaxalign.models.attention.dot_product_attention`
    on its own projections (to_q, to_k, to_v, to_out_0: the same weights, the same scale dim_head^-1/2). An
    interceptor rather than a copy of diffusers' module: its parameters and everything around it stay diffusers'."""
    import flax.linen as nn
    from diffusers.models.attention_flax import FlaxAttention

    def interceptor(next_fun, args, kwargs, context):
        attention = context.module
        if not (isinstance(attention, FlaxAttention) and context.method_name == "__call__"):
            return next_fun(*args, **kwargs)
        hidden = args[0]
        source = args[1] if len(args) > 1 else kwargs.get("context")
        source = hidden if source is None else source
        heads = lambda x: x.reshape(x.shape[0], x.shape[1], attention.heads, attention.dim_head)  # noqa: E731
        q, k, v = heads(attention.query(hidden)), heads(attention.key(source)), heads(attention.value(source))
        out = dot_product_attention(q, k, v, scale=attention.dim_head**-0.5)
        return attention.proj_attn(out.reshape(*out.shape[:2], attention.heads * attention.dim_head))  # dropout 0: none

    return nn.intercept_methods(interceptor)


@functools.cache
def _with_attention(unet: UNet, attention: str) -> UNet:
    module = unet.module.clone(use_memory_efficient_attention=ATTENTION[attention].memory_efficient)
    return dataclasses.replace(unet, module=module, attention=attention)
