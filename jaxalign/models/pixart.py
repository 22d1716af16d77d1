"""The PixArt diffusion transformer (PixArt-α, Chen et al. 2023, arXiv 2310.00426; PixArt-Σ, Chen et al. 2024,
arXiv 2403.04692) as a Flax module of jaxalign's, matching diffusers' PyTorch ``PixArtTransformer2DModel``:

* 2x2 (``patch_size``) patches of the latent plus a fixed 2-D sin-cos position table computed for the latent's
  own grid (``interpolation_scale``; base size ``sample_size / patch_size``);
* AdaLN-single: one timestep MLP (plus, where ``use_additional_conditions``, embeddings of the image's
  resolution and aspect ratio) whose output, through one shared linear layer, modulates every block, each block
  adding its own learned scale-shift table;
* blocks of self-attention (AdaLN-modulated, gated), cross-attention to the projected T5 tokens with the prompt's
  padding mask as a -10000 bias (as diffusers), and a gated tanh-GELU feed-forward;
* the output norm modulated by the timestep embedding and a final scale-shift table, a linear projection and
  un-patching; with learned sigma (``out_channels`` twice the input's) only the noise half is kept, as the
  pipelines do.

Attention is :func:`jaxalign.models.attention.dot_product_attention`; names follow diffusers' PyTorch modules so
checkpoints load through the generic renamer (the position table is not a weight: diffusers does not save it).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxalign.errors import JaxalignError
from jaxalign.models.attention import check_fused_only, dot_product_attention
from jaxalign.models.diffusion import CLASSIFIER_FREE
from jaxalign.models.mmdit import _MLP, _FeedForward, layer_norm, sincos_position_embedding, timestep_embedding

MASKED = -10000.0  # the bias diffusers' PixArt adds to the scores of padding tokens (not -inf)


def _table(rows: int, features: int):
    """A learned [rows, features] scale-shift table (diffusers initialises it N(0, 1 / features))."""
    return lambda key, shape: jax.random.normal(key, shape) / features**0.5


class _Attention(nn.Module):
    """Multi-head attention of ``x`` over itself, or over ``context`` where given (cross-attention)."""

    heads: int
    head_dim: int
    use_bias: bool
    dtype: Any

    @nn.compact
    def __call__(self, x, context=None, bias=None):
        inner = self.heads * self.head_dim
        source = x if context is None else context
        q, k, v = (
            nn.Dense(inner, use_bias=self.use_bias, dtype=self.dtype, name=name)(inputs).reshape(*inputs.shape[:2], self.heads, self.head_dim)
            for name, inputs in (("to_q", x), ("to_k", source), ("to_v", source))
        )
        out = dot_product_attention(q, k, v, bias=None if bias is None else bias.astype(q.dtype))
        return nn.Dense(x.shape[-1], dtype=self.dtype, name="to_out_0")(out.reshape(*x.shape[:2], inner))


class _Block(nn.Module):
    """diffusers' ``BasicTransformerBlock`` with ``norm_type="ada_norm_single"`` (PixArt's): no norm before the
    cross-attention, and neither attention's output gated but the self-attention's."""

    features: int
    heads: int
    head_dim: int
    use_bias: bool
    eps: float
    dtype: Any

    @nn.compact
    def __call__(self, x, context, context_bias, modulation):
        d = self.features
        table = self.param("scale_shift_table", _table(6, d), (6, d))
        chunks = table[None].astype(self.dtype) + modulation.reshape(x.shape[0], 6, d)
        shift, scale, gate, shift_mlp, scale_mlp, gate_mlp = (chunks[:, i : i + 1] for i in range(6))
        attention = _Attention(self.heads, self.head_dim, self.use_bias, self.dtype, name="attn1")
        x = x + gate * attention(layer_norm(x, self.eps) * (1 + scale) + shift)
        x = x + _Attention(self.heads, self.head_dim, self.use_bias, self.dtype, name="attn2")(x, context, context_bias)
        return x + gate_mlp * _FeedForward(d, self.dtype, name="ff")(layer_norm(x, self.eps) * (1 + scale_mlp) + shift_mlp)


class _CombinedEmbedding(nn.Module):
    """diffusers' ``PixArtAlphaCombinedTimestepSizeEmbeddings``: the timestep's sinusoidal embedding through an MLP,
    plus (``additional``) the resolution's two numbers and the aspect ratio, each embedded likewise to a third
    of the width and concatenated."""

    features: int
    additional: bool
    dtype: Any

    @nn.compact
    def __call__(self, t, resolution, aspect_ratio):
        embedding = _MLP(self.features, self.dtype, name="timestep_embedder")(timestep_embedding(t).astype(self.dtype))
        if not self.additional:
            return embedding
        size = self.features // 3
        b = t.shape[0]
        res = _MLP(size, self.dtype, name="resolution_embedder")(timestep_embedding(resolution.reshape(-1)).astype(self.dtype)).reshape(b, -1)
        ratio = _MLP(size, self.dtype, name="aspect_ratio_embedder")(timestep_embedding(aspect_ratio.reshape(-1)).astype(self.dtype)).reshape(b, -1)
        return embedding + jnp.concatenate([res, ratio], axis=-1)


class _AdaLNSingle(nn.Module):
    features: int
    additional: bool
    dtype: Any

    @nn.compact
    def __call__(self, t, resolution, aspect_ratio):
        embedded = _CombinedEmbedding(self.features, self.additional, self.dtype, name="emb")(t, resolution, aspect_ratio)
        return nn.Dense(6 * self.features, dtype=self.dtype, name="linear")(nn.silu(embedded)), embedded


class _CaptionProjection(nn.Module):
    """diffusers' ``PixArtAlphaTextProjection``: linear, tanh GELU, linear."""

    features: int
    dtype: Any

    @nn.compact
    def __call__(self, x):
        x = jax.nn.gelu(nn.Dense(self.features, dtype=self.dtype, name="linear_1")(x), approximate=True)
        return nn.Dense(self.features, dtype=self.dtype, name="linear_2")(x)


class _PatchProjection(nn.Module):
    features: int
    patch_size: int
    dtype: Any

    @nn.compact
    def __call__(self, latents):
        p = self.patch_size
        return nn.Conv(self.features, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype, name="proj")(jnp.transpose(latents, (0, 2, 3, 1)))


class PixArtModule(nn.Module):
    """``PixArtTransformer2DModel``'s architecture (``norm_type="ada_norm_single"``); its config fields, as in diffusers."""

    sample_size: int
    patch_size: int
    in_channels: int
    out_channels: int
    num_layers: int
    num_attention_heads: int
    attention_head_dim: int
    caption_channels: int | None
    attention_bias: bool
    norm_eps: float
    interpolation_scale: float
    use_additional_conditions: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, latents, timestep, encoder_hidden_states, encoder_attention_mask, resolution, aspect_ratio):
        inner, p, b = self.num_attention_heads * self.attention_head_dim, self.patch_size, latents.shape[0]
        x = _PatchProjection(inner, p, self.dtype, name="pos_embed")(latents.astype(self.dtype))
        _, h, w, _ = x.shape
        position = sincos_position_embedding(inner, h, w, self.sample_size // p, self.interpolation_scale)
        x = x.reshape(b, h * w, inner) + jnp.asarray(position, self.dtype)[None]
        modulation, embedded = _AdaLNSingle(inner, self.use_additional_conditions, self.dtype, name="adaln_single")(timestep, resolution, aspect_ratio)
        context = encoder_hidden_states.astype(self.dtype)
        if self.caption_channels is not None:
            context = _CaptionProjection(inner, self.dtype, name="caption_projection")(context)
        context_bias = ((1.0 - encoder_attention_mask.astype(jnp.float32)) * MASKED)[:, None, None, :]
        for i in range(self.num_layers):
            block = _Block(inner, self.num_attention_heads, self.attention_head_dim, self.attention_bias, self.norm_eps, self.dtype, name=f"transformer_blocks_{i}")
            x = block(x, context, context_bias, modulation)
        table = self.param("scale_shift_table", _table(2, inner), (2, inner))
        chunks = table[None].astype(self.dtype) + embedded[:, None]
        shift, scale = chunks[:, :1], chunks[:, 1:]
        x = nn.Dense(p * p * self.out_channels, dtype=self.dtype, name="proj_out")(layer_norm(x) * (1 + scale) + shift)
        x = x.reshape(b, h, w, p, p, self.out_channels)
        return jnp.einsum("nhwpqc->nchpwq", x).reshape(b, self.out_channels, h * p, w * p)


# config.json values jaxalign implements for options that change the computation (every PixArt checkpoint's).
_FIXED = {"norm_type": "ada_norm_single", "norm_elementwise_affine": False, "activation_fn": "gelu-approximate", "attention_type": "default"}


@dataclasses.dataclass(frozen=True, eq=False)
class PixArt:
    """A PixArt transformer (static) called with its params, latents [B, c, h, w], the time input (a training
    timestep) and the family's inputs (``encoder_hidden_states``, ``encoder_attention_mask``, ``resolution``,
    ``aspect_ratio``); classifier-free guidance applies. Returns the noise prediction (the learned variance
    half, if any, dropped)."""

    module: PixArtModule
    config: dict
    guidance = CLASSIFIER_FREE
    attention = "fused"
    max_latent_size = None  # the sin-cos positions are computed for any grid

    @classmethod
    def from_config(cls, config: dict, dtype, where: str = "transformer/config.json") -> PixArt:
        for key, value in _FIXED.items():
            if config.get(key, value) != value:
                raise JaxalignError(f"{where}: {key}={config[key]!r} is not supported (jaxalign implements PixArt's {key}={value!r})")
        sample_size = config.get("sample_size", 128)
        heads, head_dim = config.get("num_attention_heads", 16), config.get("attention_head_dim", 72)
        caption_channels = config.get("caption_channels")
        cross = config.get("cross_attention_dim", 1152)
        if caption_channels is not None and cross != heads * head_dim:
            raise JaxalignError(f"{where}: cross_attention_dim={cross} must equal num_attention_heads x attention_head_dim = {heads * head_dim} (the projected captions' width)")
        additional = config.get("use_additional_conditions")
        additional = bool(sample_size == 128 if additional is None else additional)
        if additional and (heads * head_dim) % 3:
            raise JaxalignError(f"{where}: use_additional_conditions needs num_attention_heads x attention_head_dim divisible by 3 (three size embeddings of a third each), got {heads * head_dim}")
        interpolation = config.get("interpolation_scale")
        module = PixArtModule(
            sample_size=sample_size, patch_size=config.get("patch_size", 2), in_channels=config.get("in_channels", 4),
            out_channels=config.get("out_channels") or config.get("in_channels", 4), num_layers=config.get("num_layers", 28),
            num_attention_heads=heads, attention_head_dim=head_dim, caption_channels=caption_channels,
            attention_bias=bool(config.get("attention_bias", True)), norm_eps=float(config.get("norm_eps", 1e-6)),
            interpolation_scale=float(interpolation if interpolation is not None else max(sample_size // 64, 1)),
            use_additional_conditions=additional, dtype=dtype,
        )  # fmt: skip
        return cls(module, dict(config))

    @property
    def sample_size(self) -> int:
        return int(self.module.sample_size)

    @property
    def latent_multiple(self) -> int:
        return self.module.patch_size

    @property
    def context_width(self) -> int:
        """The width of the text tokens it takes (T5's, where it projects captions)."""
        return self.module.caption_channels or self.module.num_attention_heads * self.module.attention_head_dim

    def with_attention(self, attention: str) -> PixArt:
        check_fused_only(attention, "PixArt transformer")
        return self

    def image_tokens(self, latent_shape) -> int:
        return int((latent_shape[-2] // self.module.patch_size) * (latent_shape[-1] // self.module.patch_size))

    def param_shapes(self) -> Any:
        m, p = self.module, self.module.patch_size
        f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)  # noqa: E731
        inputs = (f32(1, m.in_channels, p, p), f32(1), f32(1, 1, self.context_width), f32(1, 1), f32(1, 2), f32(1, 1))
        return jax.eval_shape(lambda *x: m.init(jax.random.key(0), *x)["params"], *inputs)

    def __call__(self, params, latents: jax.Array, timestep: jax.Array, inputs: dict, guidance_scale=None) -> jax.Array:
        t = jnp.broadcast_to(timestep, (latents.shape[0],))
        out = self.module.apply(
            {"params": params}, latents, t, inputs["encoder_hidden_states"], inputs["encoder_attention_mask"], inputs["resolution"], inputs["aspect_ratio"],
        ).astype(jnp.float32)  # fmt: skip
        learned_sigma = self.module.out_channels // 2 == self.module.in_channels  # the pipelines' test
        return out[:, : self.module.in_channels] if learned_sigma else out
