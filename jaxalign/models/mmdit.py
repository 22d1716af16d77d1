"""The multimodal diffusion transformer (MMDiT) of Stable Diffusion 3 (Esser et al. 2024, arXiv 2403.03206) and
SD 3.5's MMDiT-X additions, as a Flax module of jaxalign's, matching diffusers' PyTorch ``SD3Transformer2DModel``:

* 2x2 (``patch_size``) patches of the latent, plus a learned position embedding cropped from the centre of a
  ``pos_embed_max_size`` grid;
* one conditioning vector: a sinusoidal embedding of the time input through an MLP, plus the pooled text
  embedding through an MLP;
* joint blocks: image and text tokens each get AdaLN-Zero modulation (shift, scale, gate) from that vector, then
  attend together (image tokens first), each stream with its own projections and feed-forward; the last block
  keeps only the image stream (``context_pre_only``);
* SD 3.5: RMS normalisation of queries and keys (``qk_norm="rms_norm"``), and in ``dual_attention_layers`` a
  second, image-only self-attention with its own modulation (MMDiT-X);
* a continuous AdaLN output norm, a linear projection and un-patching.

Attention is :func:`jaxalign.models.attention.dot_product_attention` (cuDNN's fused kernel on GPUs in half
precision). Module and parameter names follow diffusers' PyTorch names, so checkpoints load through the generic
renamer.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.errors import JaxalignError
from jaxalign.models.attention import check_fused_only, dot_product_attention
from jaxalign.models.diffusion import CLASSIFIER_FREE

QK_NORMS = (None, "rms_norm")


def timestep_embedding(t: jax.Array, dim: int = 256, max_period: float = 10000.0) -> jax.Array:
    """diffusers' ``Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0)``: [cos, sin] of t times
    frequencies exp(-log(max_period) k / (dim / 2))."""
    half = dim // 2
    frequencies = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = t.astype(jnp.float32)[:, None] * frequencies[None]
    return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


def sincos_position_embedding(dim: int, height: int, width: int, base_size: int, interpolation_scale: float = 1.0) -> np.ndarray:
    """diffusers' ``get_2d_sincos_pos_embed(dim, (height, width), base_size=base_size, interpolation_scale=...)``:
    [height * width, dim], row-major; the first half of the channels encodes the column, the second the row. SD3's
    learned position table starts from it; PixArt adds it as is."""

    def coords(n):
        return np.arange(n, dtype=np.float64) / (n / base_size) / interpolation_scale

    w, h = np.meshgrid(coords(width), coords(height))  # w varies along a row

    def one_axis(positions, channels):
        omega = 1.0 / 10000 ** (np.arange(channels // 2, dtype=np.float64) / (channels / 2.0))
        angles = positions.reshape(-1)[:, None] * omega[None]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    return np.concatenate([one_axis(w, dim // 2), one_axis(h, dim // 2)], axis=1).astype(np.float32)


def layer_norm(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """LayerNorm without affine parameters, statistics in float32."""
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    variance = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(variance + eps)).astype(x.dtype)


class _RMSNorm(nn.Module):
    eps: float = 1e-6

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
        variance = jnp.mean(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True)
        return (x * jax.lax.rsqrt(variance + self.eps)).astype(x.dtype) * scale.astype(x.dtype)


class _MLP(nn.Module):
    """linear_1, SiLU, linear_2 (diffusers' ``TimestepEmbedding`` and ``PixArtAlphaTextProjection(act_fn="silu")``)."""

    features: int
    dtype: Any

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(self.features, dtype=self.dtype, name="linear_1")(x)
        return nn.Dense(self.features, dtype=self.dtype, name="linear_2")(nn.silu(x))


class _TimeTextEmbed(nn.Module):
    features: int
    dtype: Any

    @nn.compact
    def __call__(self, t, pooled):
        time = _MLP(self.features, self.dtype, name="timestep_embedder")(timestep_embedding(t).astype(self.dtype))
        return time + _MLP(self.features, self.dtype, name="text_embedder")(pooled)


class _PatchEmbed(nn.Module):
    patch_size: int
    features: int
    max_size: int
    base_size: int
    dtype: Any

    @nn.compact
    def __call__(self, latents):
        """[B, C, H, W] -> tokens [B, (H / p) (W / p), features], row-major, plus the cropped position table."""
        p = self.patch_size
        x = nn.Conv(self.features, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype, name="proj")(jnp.transpose(latents, (0, 2, 3, 1)))
        _, h, w, _ = x.shape
        if max(h, w) > self.max_size:  # as diffusers' cropped_pos_embed refuses
            raise ValueError(f"a {h}x{w} patch grid exceeds the position table's {self.max_size}x{self.max_size}")
        table = self.param("pos_embed", lambda key, shape: jnp.asarray(sincos_position_embedding(self.features, self.max_size, self.max_size, self.base_size))[None], (1, self.max_size**2, self.features))
        top, left = (self.max_size - h) // 2, (self.max_size - w) // 2
        position = table.reshape(self.max_size, self.max_size, -1)[top : top + h, left : left + w].reshape(1, h * w, -1)
        return x.reshape(x.shape[0], h * w, -1) + position.astype(x.dtype)


class _Attention(nn.Module):
    """Multi-head attention over image tokens, joined with text tokens where ``context`` is given (image first)."""

    heads: int
    head_dim: int
    qk_norm: str | None
    joint: bool  # has the text stream's projections (add_q/k/v_proj)
    context_out: bool  # projects the text stream's output back (to_add_out)
    dtype: Any

    @nn.compact
    def __call__(self, x, context=None, context_bias=None):
        inner = self.heads * self.head_dim
        dense = lambda name: nn.Dense(inner, dtype=self.dtype, name=name)  # noqa: E731
        split = lambda t: t.reshape(*t.shape[:2], self.heads, self.head_dim)  # noqa: E731

        def normed(t, name):
            return _RMSNorm(name=name)(t) if self.qk_norm == "rms_norm" else t

        q, k, v = normed(split(dense("to_q")(x)), "norm_q"), normed(split(dense("to_k")(x)), "norm_k"), split(dense("to_v")(x))
        if self.joint:
            cq = normed(split(dense("add_q_proj")(context)), "norm_added_q")
            ck = normed(split(dense("add_k_proj")(context)), "norm_added_k")
            cv = split(dense("add_v_proj")(context))
            q, k, v = (jnp.concatenate(pair, axis=1) for pair in ((q, cq), (k, ck), (v, cv)))
        bias = None
        if self.joint and context_bias is not None:  # log multiplicities of the text keys (see MMDiTModule), kept float32: exact
            bias = jnp.concatenate([jnp.zeros((x.shape[0], x.shape[1]), jnp.float32), context_bias], axis=1)[:, None, None, :]
        out = dot_product_attention(q, k, v, bias=bias).reshape(*q.shape[:2], inner)
        image = nn.Dense(inner, dtype=self.dtype, name="to_out_0")(out[:, : x.shape[1]])
        if not self.joint:
            return image, None
        text = out[:, x.shape[1] :]
        return image, nn.Dense(inner, dtype=self.dtype, name="to_add_out")(text) if self.context_out else None


class _GeluProjection(nn.Module):
    features: int
    dtype: Any

    @nn.compact
    def __call__(self, x):
        return jax.nn.gelu(nn.Dense(self.features, dtype=self.dtype, name="proj")(x), approximate=True)


class _FeedForward(nn.Module):
    """diffusers' ``FeedForward(activation_fn="gelu-approximate")``: net.0 (linear to 4x, tanh GELU), net.2 (linear back)."""

    features: int
    dtype: Any

    @nn.compact
    def __call__(self, x):
        hidden = _GeluProjection(4 * self.features, self.dtype, name="net_0")(x)
        return nn.Dense(self.features, dtype=self.dtype, name="net_2")(hidden)


class _Modulation(nn.Module):
    """AdaLN: ``count`` chunks of linear(SiLU(conditioning)) (diffusers' AdaLayerNormZero/ZeroX/Continuous ``linear``)."""

    features: int
    count: int
    dtype: Any

    @nn.compact
    def __call__(self, conditioning):
        out = nn.Dense(self.count * self.features, dtype=self.dtype, name="linear")(nn.silu(conditioning))
        return [chunk[:, None] for chunk in jnp.split(out, self.count, axis=-1)]


class _JointBlock(nn.Module):
    features: int
    heads: int
    head_dim: int
    context_pre_only: bool
    dual_attention: bool
    qk_norm: str | None
    dtype: Any

    @nn.compact
    def __call__(self, x, context, conditioning, context_bias=None):
        d = self.features
        if self.dual_attention:
            shift, scale, gate, shift_mlp, scale_mlp, gate_mlp, shift2, scale2, gate2 = _Modulation(d, 9, self.dtype, name="norm1")(conditioning)
        else:
            shift, scale, gate, shift_mlp, scale_mlp, gate_mlp = _Modulation(d, 6, self.dtype, name="norm1")(conditioning)
        normed = layer_norm(x)
        if self.context_pre_only:  # AdaLayerNormContinuous: (scale, shift), in that order
            c_scale, c_shift = _Modulation(d, 2, self.dtype, name="norm1_context")(conditioning)
        else:
            c_shift, c_scale, c_gate, c_shift_mlp, c_scale_mlp, c_gate_mlp = _Modulation(d, 6, self.dtype, name="norm1_context")(conditioning)
        normed_context = layer_norm(context) * (1 + c_scale) + c_shift
        attention = _Attention(self.heads, self.head_dim, self.qk_norm, True, not self.context_pre_only, self.dtype, name="attn")
        image_out, context_out = attention(normed * (1 + scale) + shift, normed_context, context_bias)
        x = x + gate * image_out
        if self.dual_attention:
            second = _Attention(self.heads, self.head_dim, self.qk_norm, False, False, self.dtype, name="attn2")
            x = x + gate2 * second(normed * (1 + scale2) + shift2)[0]
        x = x + gate_mlp * _FeedForward(d, self.dtype, name="ff")(layer_norm(x) * (1 + scale_mlp) + shift_mlp)
        if self.context_pre_only:
            return x, None
        context = context + c_gate * context_out
        ff_context = _FeedForward(d, self.dtype, name="ff_context")(layer_norm(context) * (1 + c_scale_mlp) + c_shift_mlp)
        return x, context + c_gate_mlp * ff_context


class MMDiTModule(nn.Module):
    """``SD3Transformer2DModel``'s architecture; its config fields, as in diffusers.

    ``context_counts`` [B, text tokens] (optional) says how many identical text tokens each given one stands
    for: n identical tokens stay identical through every block (same input, modulation and feed-forward; as
    queries they get the same attention), and as keys they weigh as one key whose logit is raised by log n. So
    SD3 without T5, whose 256 T5 positions are all zeros, runs on 78 text tokens instead of 333 with the same
    result up to rounding."""

    sample_size: int
    patch_size: int
    in_channels: int
    num_layers: int
    attention_head_dim: int
    num_attention_heads: int
    joint_attention_dim: int
    caption_projection_dim: int
    pooled_projection_dim: int
    out_channels: int
    pos_embed_max_size: int
    dual_attention_layers: tuple[int, ...] = ()
    qk_norm: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, latents, timestep, encoder_hidden_states, pooled_projections, context_counts=None):
        inner, p = self.num_attention_heads * self.attention_head_dim, self.patch_size
        _, _, height, width = latents.shape
        x = _PatchEmbed(p, inner, self.pos_embed_max_size, self.sample_size // p, self.dtype, name="pos_embed")(latents.astype(self.dtype))
        conditioning = _TimeTextEmbed(inner, self.dtype, name="time_text_embed")(timestep, pooled_projections.astype(self.dtype))
        context = nn.Dense(self.caption_projection_dim, dtype=self.dtype, name="context_embedder")(encoder_hidden_states.astype(self.dtype))
        context_bias = None if context_counts is None else jnp.log(context_counts.astype(jnp.float32))
        for i in range(self.num_layers):
            block = _JointBlock(
                inner, self.num_attention_heads, self.attention_head_dim, i == self.num_layers - 1, i in self.dual_attention_layers,
                self.qk_norm, self.dtype, name=f"transformer_blocks_{i}",
            )  # fmt: skip
            x, context = block(x, context, conditioning, context_bias)
        scale, shift = _Modulation(inner, 2, self.dtype, name="norm_out")(conditioning)
        x = nn.Dense(p * p * self.out_channels, dtype=self.dtype, name="proj_out")(layer_norm(x) * (1 + scale) + shift)
        h, w = height // p, width // p
        x = x.reshape(x.shape[0], h, w, p, p, self.out_channels)
        return jnp.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], self.out_channels, h * p, w * p)


@dataclasses.dataclass(frozen=True, eq=False)
class MMDiT:
    """An SD3 transformer (static) called with its params, latents [B, c, h, w], the time input (sigma x 1000) and
    the family's inputs (``encoder_hidden_states``, ``pooled_projections``); classifier-free guidance applies."""

    module: MMDiTModule
    config: dict  # config.json as read (PyTorch class name), written back by save_model
    guidance = CLASSIFIER_FREE
    attention = "fused"  # jaxalign.models.attention: the fused kernel where the backend has one

    @classmethod
    def from_config(cls, config: dict, dtype, where: str = "transformer/config.json") -> MMDiT:
        fields = {f.name for f in dataclasses.fields(MMDiTModule)} - {"dtype", "parent", "name"}
        defaults = {"sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 18, "attention_head_dim": 64, "num_attention_heads": 18,
                    "joint_attention_dim": 4096, "caption_projection_dim": 1152, "pooled_projection_dim": 2048, "out_channels": 16,
                    "pos_embed_max_size": 96, "dual_attention_layers": (), "qk_norm": None}  # fmt: skip
        settings = {k: config.get(k, defaults[k]) for k in fields}
        settings["dual_attention_layers"] = tuple(settings["dual_attention_layers"] or ())
        settings["out_channels"] = settings["out_channels"] or settings["in_channels"]
        if settings["qk_norm"] not in QK_NORMS:
            raise JaxalignError(f"{where}: qk_norm={settings['qk_norm']!r} is not supported (jaxalign implements qk_norm=None or 'rms_norm')")
        inner = settings["num_attention_heads"] * settings["attention_head_dim"]
        if settings["caption_projection_dim"] != inner:
            raise JaxalignError(f"{where}: caption_projection_dim={settings['caption_projection_dim']} must equal num_attention_heads x attention_head_dim = {inner} (joint attention)")
        if not settings["pos_embed_max_size"]:
            raise JaxalignError(f"{where}: pos_embed_max_size must be set (SD3's learned position table)")
        return cls(MMDiTModule(**settings, dtype=dtype), dict(config))

    @property
    def sample_size(self) -> int:
        return int(self.module.sample_size)

    @property
    def latent_multiple(self) -> int:
        return self.module.patch_size

    @property
    def max_latent_size(self) -> int:
        """The largest latent side the position table covers."""
        return self.module.pos_embed_max_size * self.module.patch_size

    def with_attention(self, attention: str) -> MMDiT:
        """Its attention is always ``jax.nn.dot_product_attention`` ("standard" and "fused" both name it here);
        "chunked" (diffusers' Flax UNet option) does not apply."""
        check_fused_only(attention, "SD3 transformer")
        return self

    def image_tokens(self, latent_shape) -> int:
        return int((latent_shape[-2] // self.module.patch_size) * (latent_shape[-1] // self.module.patch_size))

    def param_shapes(self) -> Any:
        m, p = self.module, self.module.patch_size
        inputs = (
            jax.ShapeDtypeStruct((1, m.in_channels, p, p), jnp.float32), jax.ShapeDtypeStruct((1,), jnp.float32),
            jax.ShapeDtypeStruct((1, 1, m.joint_attention_dim), jnp.float32), jax.ShapeDtypeStruct((1, m.pooled_projection_dim), jnp.float32),
        )  # fmt: skip
        return jax.eval_shape(lambda *x: m.init(jax.random.key(0), *x)["params"], *inputs)

    def __call__(self, params, latents: jax.Array, timestep: jax.Array, inputs: dict, guidance_scale=None) -> jax.Array:
        t = jnp.broadcast_to(timestep, (latents.shape[0],))
        out = self.module.apply({"params": params}, latents, t, inputs["encoder_hidden_states"], inputs["pooled_projections"], inputs.get("context_counts"))
        return out.astype(jnp.float32)
