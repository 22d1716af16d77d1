"""The Flux transformer (Black Forest Labs' FLUX.1, dev and schnell) as a Flax module of jaxalign's, matching
diffusers' PyTorch ``FluxTransformer2DModel`` (and read beside maxdiffusion's JAX Flux):

* latents [c, h, w] packed into 2x2 patches, tokens of 4c channels, with image ids (0, row, column) and zero text
  ids; a 3-axis rotary position embedding (``axes_dims_rope``, theta 10000) over the text-then-image ids;
* one conditioning vector: sinusoidal embeddings of the time (sigma x 1000) and, for dev (``guidance_embeds``), of
  the guidance scale (x 1000) through MLPs, plus the pooled CLIP embedding through an MLP;
* double-stream blocks (as SD3's joint blocks, text tokens first, RMS-normed queries and keys, rotary embedding)
  and single-stream blocks (text and image tokens together: attention and an MLP side by side, one projection);
* the continuous AdaLN output norm and a linear projection back to packed latents, unpacked to [c, h, w].

So latents stay [c, h, w] for every search space and method; the packing happens inside :class:`Flux`.
Attention is :func:`jaxalign.models.attention.dot_product_attention`; names follow diffusers' PyTorch modules for
the generic renamer.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.errors import JaxalignError
from jaxalign.models.attention import check_fused_only, dot_product_attention
from jaxalign.models.diffusion import EMBEDDED_GUIDANCE, NO_GUIDANCE
from jaxalign.models.mmdit import _MLP, _FeedForward, _Modulation, _RMSNorm, layer_norm, timestep_embedding


def rotary_tables(ids: np.ndarray, axes_dims: tuple[int, ...], theta: float = 10000.0) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin [S, sum(axes_dims)] of diffusers' ``FluxPosEmbed``: per axis, frequencies theta^(-2k / d) (float64)
    times the ids, each repeated twice (interleaved pairs)."""
    cos, sin = [], []
    for axis, dim in enumerate(axes_dims):
        frequencies = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
        angles = np.outer(ids[:, axis].astype(np.float64), frequencies)
        cos.append(np.repeat(np.cos(angles), 2, axis=1))
        sin.append(np.repeat(np.sin(angles), 2, axis=1))
    return np.concatenate(cos, axis=1).astype(np.float32), np.concatenate(sin, axis=1).astype(np.float32)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x [B, S, heads, d] rotated pairwise: (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin), in float32."""
    pairs = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
    rotated = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(x.shape)
    return (x.astype(jnp.float32) * cos[None, :, None] + rotated * sin[None, :, None]).astype(x.dtype)


def pack(latents: jax.Array) -> jax.Array:
    """[B, c, h, w] -> [B, (h/2)(w/2), 4c], as ``FluxPipeline._pack_latents``."""
    b, c, h, w = latents.shape
    return latents.reshape(b, c, h // 2, 2, w // 2, 2).transpose(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: jax.Array, h: int, w: int) -> jax.Array:
    """The inverse of :func:`pack`."""
    b, _, channels = tokens.shape
    return tokens.reshape(b, h // 2, w // 2, channels // 4, 2, 2).transpose(0, 3, 1, 4, 2, 5).reshape(b, channels // 4, h, w)


def image_ids(h: int, w: int) -> np.ndarray:
    """(0, row, column) of each packed token of an [h, w] latent, row-major (``_prepare_latent_image_ids``)."""
    ids = np.zeros((h // 2, w // 2, 3), np.float32)
    ids[..., 1] = np.arange(h // 2)[:, None]
    ids[..., 2] = np.arange(w // 2)[None, :]
    return ids.reshape(-1, 3)


class _Attention(nn.Module):
    """Flux attention: q/k/v with biases and RMS-normed q/k, the text stream's own projections where given (text
    tokens first), the rotary embedding over all tokens; ``pre_only`` (single blocks) has no output projection."""

    heads: int
    head_dim: int
    joint: bool
    pre_only: bool
    dtype: Any

    @nn.compact
    def __call__(self, x, cos, sin, context=None):
        inner = self.heads * self.head_dim
        dense = lambda name: nn.Dense(inner, dtype=self.dtype, name=name)  # noqa: E731
        split = lambda t: t.reshape(*t.shape[:2], self.heads, self.head_dim)  # noqa: E731
        q = _RMSNorm(name="norm_q")(split(dense("to_q")(x)))
        k = _RMSNorm(name="norm_k")(split(dense("to_k")(x)))
        v = split(dense("to_v")(x))
        if self.joint:
            cq = _RMSNorm(name="norm_added_q")(split(dense("add_q_proj")(context)))
            ck = _RMSNorm(name="norm_added_k")(split(dense("add_k_proj")(context)))
            cv = split(dense("add_v_proj")(context))
            q, k, v = (jnp.concatenate(pair, axis=1) for pair in ((cq, q), (ck, k), (cv, v)))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = dot_product_attention(q, k, v).reshape(*q.shape[:2], inner)
        if self.pre_only:
            return out
        text, image = out[:, : context.shape[1]], out[:, context.shape[1] :]
        return nn.Dense(inner, dtype=self.dtype, name="to_out_0")(image), nn.Dense(inner, dtype=self.dtype, name="to_add_out")(text)


class _DoubleBlock(nn.Module):
    features: int
    heads: int
    head_dim: int
    dtype: Any

    @nn.compact
    def __call__(self, x, context, conditioning, cos, sin):
        d = self.features
        shift, scale, gate, shift_mlp, scale_mlp, gate_mlp = _Modulation(d, 6, self.dtype, name="norm1")(conditioning)
        c_shift, c_scale, c_gate, c_shift_mlp, c_scale_mlp, c_gate_mlp = _Modulation(d, 6, self.dtype, name="norm1_context")(conditioning)
        attention = _Attention(self.heads, self.head_dim, True, False, self.dtype, name="attn")
        image_out, text_out = attention(layer_norm(x) * (1 + scale) + shift, cos, sin, layer_norm(context) * (1 + c_scale) + c_shift)
        x = x + gate * image_out
        x = x + gate_mlp * _FeedForward(d, self.dtype, name="ff")(layer_norm(x) * (1 + scale_mlp) + shift_mlp)
        context = context + c_gate * text_out
        context = context + c_gate_mlp * _FeedForward(d, self.dtype, name="ff_context")(layer_norm(context) * (1 + c_scale_mlp) + c_shift_mlp)
        return x, context


class _SingleBlock(nn.Module):
    features: int
    heads: int
    head_dim: int
    dtype: Any

    @nn.compact
    def __call__(self, tokens, conditioning, cos, sin):
        shift, scale, gate = _Modulation(self.features, 3, self.dtype, name="norm")(conditioning)
        normed = layer_norm(tokens) * (1 + scale) + shift
        mlp = jax.nn.gelu(nn.Dense(4 * self.features, dtype=self.dtype, name="proj_mlp")(normed), approximate=True)
        attention = _Attention(self.heads, self.head_dim, False, True, self.dtype, name="attn")(normed, cos, sin)
        out = nn.Dense(self.features, dtype=self.dtype, name="proj_out")(jnp.concatenate([attention, mlp], axis=-1))
        return tokens + gate * out


class FluxModule(nn.Module):
    """``FluxTransformer2DModel``'s architecture; its config fields, as in diffusers."""

    in_channels: int
    out_channels: int
    num_layers: int
    num_single_layers: int
    attention_head_dim: int
    num_attention_heads: int
    joint_attention_dim: int
    pooled_projection_dim: int
    guidance_embeds: bool
    axes_dims_rope: tuple[int, ...]
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens, timestep, encoder_hidden_states, pooled_projections, cos, sin, guidance=None):
        """Packed tokens [B, S, in_channels], the time input as the pipeline passes it (sigma), the guidance scale
        (dev), and the rotary tables of the text-then-image ids."""
        inner = self.num_attention_heads * self.attention_head_dim
        x = nn.Dense(inner, dtype=self.dtype, name="x_embedder")(tokens.astype(self.dtype))
        conditioning = _TimeGuidanceTextEmbed(inner, self.guidance_embeds, self.dtype, name="time_text_embed")(
            timestep.astype(self.dtype) * 1000, None if guidance is None else guidance.astype(self.dtype) * 1000, pooled_projections.astype(self.dtype)
        )
        context = nn.Dense(inner, dtype=self.dtype, name="context_embedder")(encoder_hidden_states.astype(self.dtype))
        for i in range(self.num_layers):
            x, context = _DoubleBlock(inner, self.num_attention_heads, self.attention_head_dim, self.dtype, name=f"transformer_blocks_{i}")(x, context, conditioning, cos, sin)
        joined = jnp.concatenate([context, x], axis=1)
        for i in range(self.num_single_layers):
            joined = _SingleBlock(inner, self.num_attention_heads, self.attention_head_dim, self.dtype, name=f"single_transformer_blocks_{i}")(joined, conditioning, cos, sin)
        x = joined[:, context.shape[1] :]
        scale, shift = _Modulation(inner, 2, self.dtype, name="norm_out")(conditioning)
        return nn.Dense(self.out_channels, dtype=self.dtype, name="proj_out")(layer_norm(x) * (1 + scale) + shift)


class _TimeGuidanceTextEmbed(nn.Module):
    """diffusers' ``CombinedTimestepGuidanceTextProjEmbeddings`` (dev) or ``CombinedTimestepTextProjEmbeddings``."""

    features: int
    guidance_embeds: bool
    dtype: Any

    @nn.compact
    def __call__(self, t, guidance, pooled):
        embedding = _MLP(self.features, self.dtype, name="timestep_embedder")(timestep_embedding(t).astype(self.dtype))
        if self.guidance_embeds:
            embedding = embedding + _MLP(self.features, self.dtype, name="guidance_embedder")(timestep_embedding(guidance).astype(self.dtype))
        return embedding + _MLP(self.features, self.dtype, name="text_embedder")(pooled)


@dataclasses.dataclass(frozen=True, eq=False)
class Flux:
    """A Flux transformer (static) called with its params, latents [B, c, h, w] (packed inside), the time input
    (sigma x 1000, as the flow schedulers give it; the pipeline's own input is sigma) and the family's inputs
    (``encoder_hidden_states``, ``pooled_projections``). Dev embeds the guidance scale (one pass per step)."""

    module: FluxModule
    config: dict
    attention = "fused"
    latent_multiple = 2  # 2x2 packing
    max_latent_size = None  # rotary positions: any size

    @classmethod
    def from_config(cls, config: dict, dtype, where: str = "transformer/config.json") -> Flux:
        if config.get("patch_size", 1) != 1:
            raise JaxalignError(f"{where}: patch_size={config['patch_size']} is not supported (jaxalign implements Flux's packed patch_size=1)")
        in_channels = config.get("in_channels", 64)
        heads, head_dim = config.get("num_attention_heads", 24), config.get("attention_head_dim", 128)
        axes = tuple(config.get("axes_dims_rope", (16, 56, 56)))
        if sum(axes) != head_dim:
            raise JaxalignError(f"{where}: axes_dims_rope {list(axes)} must add up to attention_head_dim={head_dim}")
        module = FluxModule(
            in_channels=in_channels, out_channels=config.get("out_channels") or in_channels, num_layers=config.get("num_layers", 19),
            num_single_layers=config.get("num_single_layers", 38), attention_head_dim=head_dim, num_attention_heads=heads,
            joint_attention_dim=config.get("joint_attention_dim", 4096), pooled_projection_dim=config.get("pooled_projection_dim", 768),
            guidance_embeds=bool(config.get("guidance_embeds", False)), axes_dims_rope=axes, dtype=dtype,
        )  # fmt: skip
        return cls(module, dict(config))

    @property
    def embeds_guidance(self) -> bool:
        return self.module.guidance_embeds

    @property
    def guidance(self) -> str:
        """Dev embeds the guidance scale; schnell is distilled to sample without guidance."""
        return EMBEDDED_GUIDANCE if self.embeds_guidance else NO_GUIDANCE

    @property
    def sample_size(self) -> int:
        return 128  # FluxPipeline's default 1024x1024 over the autoencoder's 8

    def with_attention(self, attention: str) -> Flux:
        check_fused_only(attention, "Flux transformer")
        return self

    def image_tokens(self, latent_shape) -> int:
        return int((latent_shape[-2] // 2) * (latent_shape[-1] // 2))

    def param_shapes(self) -> Any:
        m = self.module
        head = sum(m.axes_dims_rope)
        inputs = (
            jax.ShapeDtypeStruct((1, 1, m.in_channels), jnp.float32), jax.ShapeDtypeStruct((1,), jnp.float32),
            jax.ShapeDtypeStruct((1, 1, m.joint_attention_dim), jnp.float32), jax.ShapeDtypeStruct((1, m.pooled_projection_dim), jnp.float32),
            jax.ShapeDtypeStruct((2, head), jnp.float32), jax.ShapeDtypeStruct((2, head), jnp.float32), jax.ShapeDtypeStruct((1,), jnp.float32),
        )  # fmt: skip
        return jax.eval_shape(lambda *x: m.init(jax.random.key(0), *x)["params"], *inputs)

    def __call__(self, params, latents: jax.Array, timestep: jax.Array, inputs: dict, guidance_scale=None) -> jax.Array:
        b, _, h, w = latents.shape
        text_length = inputs["encoder_hidden_states"].shape[1]
        ids = np.concatenate([np.zeros((text_length, 3), np.float32), image_ids(h, w)])
        cos, sin = (jnp.asarray(t) for t in rotary_tables(ids, self.module.axes_dims_rope))
        # The pipeline hands the transformer sigma = t / 1000, which it multiplies by 1000 again: the same float32 ops
        # here (the pipeline's cast of t to half-precision latents first is not reproduced).
        sigma = jnp.broadcast_to(timestep / 1000.0, (b,)).astype(jnp.float32)
        guidance = None
        if self.embeds_guidance:
            if guidance_scale is None:
                raise ValueError("this Flux transformer embeds the guidance scale; pass guidance_scale")
            guidance = jnp.broadcast_to(jnp.asarray(guidance_scale, jnp.float32), (b,))
        out = self.module.apply({"params": params}, pack(latents), sigma, inputs["encoder_hidden_states"], inputs["pooled_projections"], cos, sin, guidance)
        return unpack(out.astype(jnp.float32), h, w)
