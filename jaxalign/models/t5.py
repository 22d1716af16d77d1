"""The T5 text encoder (Raffel et al. 2020, arXiv 1910.10683; v1.1's gated-GELU feed-forward) that SD3, Flux and
PixArt condition on, as transformers' PyTorch ``T5EncoderModel`` computes it: RMS layer norms, unscaled attention
with a bucketed relative position bias computed once and shared by every layer, an optional padding mask.

Hand-written: transformers 4.x's ``FlaxT5EncoderModel`` calls ``jnp.clip(..., a_max=...)``, which the jax versions
jaxalign supports no longer accept. Parameter names follow the PyTorch state dict, so checkpoints load through the
generic renamer (the tied ``encoder.embed_tokens.weight`` some checkpoints repeat is skipped there); attention goes
through :func:`jaxalign.models.attention.dot_product_attention`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.errors import JaxalignError
from jaxalign.models.attention import dot_product_attention

_ACTIVATIONS = {"gelu_new": lambda x: jax.nn.gelu(x, approximate=True), "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True), "relu": jax.nn.relu}


def relative_position_buckets(query_length: int, key_length: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """T5's bidirectional bucket of every (query, key) offset: exact for small offsets, logarithmic up to ``max_distance``."""
    relative = np.arange(key_length)[None, :] - np.arange(query_length)[:, None]
    half = num_buckets // 2
    buckets = (relative > 0).astype(np.int64) * half
    distance = np.abs(relative)
    max_exact = half // 2
    with np.errstate(divide="ignore"):
        large = max_exact + (np.log(np.maximum(distance, 1).astype(np.float32) / max_exact) / math.log(max_distance / max_exact) * (half - max_exact)).astype(np.int64)
    return buckets + np.where(distance < max_exact, distance, np.minimum(large, half - 1))


def rms_norm(x, scale, eps):
    """T5's layer norm (no mean, no bias), its variance in float32."""
    variance = jnp.mean(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True)
    return scale * (x * jax.lax.rsqrt(variance + eps)).astype(scale.dtype)


class _LayerNorm(nn.Module):
    eps: float

    @nn.compact
    def __call__(self, x):
        return rms_norm(x, self.param("scale", nn.initializers.ones, (x.shape[-1],)), self.eps)


class _SelfAttention(nn.Module):
    config: Any
    has_relative_bias: bool
    dtype: Any

    @nn.compact
    def __call__(self, x, bias):
        c = self.config
        dense = lambda features, name: nn.Dense(features, use_bias=False, dtype=self.dtype, name=name)  # noqa: E731
        inner = c.num_heads * c.d_kv
        if self.has_relative_bias:  # the first layer computes the position bias every layer adds
            length = x.shape[1]
            buckets = relative_position_buckets(length, length, c.relative_attention_num_buckets, c.relative_attention_max_distance)
            table = nn.Embed(c.relative_attention_num_buckets, c.num_heads, name="relative_attention_bias")
            bias = bias + jnp.transpose(table(jnp.asarray(buckets)), (2, 0, 1))[None].astype(jnp.float32)  # [1, heads, q, k]
        q, k, v = (dense(inner, n)(x).reshape(*x.shape[:2], c.num_heads, c.d_kv) for n in ("q", "k", "v"))
        out = dot_product_attention(q, k, v, bias=bias.astype(q.dtype), scale=1.0)  # T5 does not scale its scores
        return dense(c.d_model, "o")(out.reshape(*x.shape[:2], inner)), bias


class _FeedForward(nn.Module):
    config: Any
    dtype: Any

    @nn.compact
    def __call__(self, x):
        c = self.config
        dense = lambda features, name: nn.Dense(features, use_bias=False, dtype=self.dtype, name=name)  # noqa: E731
        act = _ACTIVATIONS[c.dense_act_fn]
        hidden = act(dense(c.d_ff, "wi_0")(x)) * dense(c.d_ff, "wi_1")(x) if c.is_gated_act else act(dense(c.d_ff, "wi")(x))
        return dense(c.d_model, "wo")(hidden)


class _AttentionLayer(nn.Module):
    config: Any
    has_relative_bias: bool
    dtype: Any

    @nn.compact
    def __call__(self, x, bias):
        attention = _SelfAttention(self.config, self.has_relative_bias, self.dtype, name="SelfAttention")
        out, bias = attention(_LayerNorm(self.config.layer_norm_epsilon, name="layer_norm")(x), bias)
        return x + out, bias


class _FeedForwardLayer(nn.Module):
    config: Any
    dtype: Any

    @nn.compact
    def __call__(self, x):
        return x + _FeedForward(self.config, self.dtype, name="DenseReluDense")(_LayerNorm(self.config.layer_norm_epsilon, name="layer_norm")(x))


class _Block(nn.Module):
    config: Any
    first: bool
    dtype: Any

    @nn.compact
    def __call__(self, x, bias):
        x, bias = _AttentionLayer(self.config, self.first, self.dtype, name="layer_0")(x, bias)
        return _FeedForwardLayer(self.config, self.dtype, name="layer_1")(x), bias


class _Stack(nn.Module):
    config: Any
    dtype: Any

    @nn.compact
    def __call__(self, x, bias):
        # Module names mirror transformers' (encoder.block.i.layer.j), so PyTorch checkpoints load by the generic renamer.
        for i in range(self.config.num_layers):
            x, bias = _Block(self.config, i == 0, self.dtype, name=f"block_{i}")(x, bias)
        return _LayerNorm(self.config.layer_norm_epsilon, name="final_layer_norm")(x)


class _Encoder(nn.Module):
    config: Any
    dtype: Any

    @nn.compact
    def __call__(self, input_ids, attention_mask=None):
        x = nn.Embed(self.config.vocab_size, self.config.d_model, dtype=self.dtype, name="shared")(input_ids)
        bias = jnp.zeros((1, 1, 1, 1), jnp.float32)
        if attention_mask is not None:  # padding keys get the most negative number, as transformers' extended mask
            bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min)
        return _Stack(self.config, self.dtype, name="encoder")(x, bias)


@dataclasses.dataclass(frozen=True, eq=False)
class T5Encoder:
    """A T5 encoder (static) with the calling convention of transformers' Flax text models:
    ``encoder(input_ids, params=...)`` returns ``(last_hidden_state,)``; ``params_shape_tree``; ``save_pretrained``."""

    module: _Encoder
    config: Any  # transformers.T5Config
    pytorch_class = "T5EncoderModel"

    @classmethod
    def from_pretrained_config(cls, folder: Path, dtype) -> T5Encoder:
        from transformers import T5Config

        config = T5Config.from_pretrained(folder)
        if config.dense_act_fn not in _ACTIVATIONS:
            raise JaxalignError(f"{folder / 'config.json'}: dense_act_fn={config.dense_act_fn!r} is not supported (jaxalign implements {', '.join(_ACTIVATIONS)})")
        return cls(_Encoder(config, dtype), config)

    @property
    def params_shape_tree(self) -> Any:
        ids = jax.ShapeDtypeStruct((1, 2), jnp.int32)
        return jax.eval_shape(lambda i: self.module.init(jax.random.key(0), i)["params"], ids)

    def __call__(self, input_ids, params, attention_mask=None):
        return (self.module.apply({"params": params}, input_ids, attention_mask),)

    def save_pretrained(self, folder: Path, params) -> None:
        from flax.serialization import to_bytes

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = self.config.to_dict()
        config["architectures"] = ["T5EncoderModel"]
        (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (folder / "flax_model.msgpack").write_bytes(to_bytes(params))
