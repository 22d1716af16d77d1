"""Scaled dot-product attention for every network here: ``jax.nn.dot_product_attention`` with cuDNN's fused kernel
where it applies (the score matrix never materialised, as PyTorch's SDPA on GPUs), XLA's composition elsewhere.

jax picks XLA whenever it is not told otherwise, so the choice is made here: cuDNN on a GPU backend for float16 or
bfloat16 inputs with a head size cuDNN takes (a multiple of 8, at most 128) and a bias, if any, of the inputs' type;
XLA for everything else (CPU, TPU, float32, or a float32 bias kept exact on purpose).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None = None, scale: float | None = None) -> jax.Array:
    """Attention over [B, T, heads, d] queries and [B, S, heads, d] keys and values (``bias`` broadcast to [B, heads, T, S])."""
    return jax.nn.dot_product_attention(q, k, v, bias=bias, scale=scale, implementation="cudnn" if _cudnn_applies(q, bias) else "xla")


def _cudnn_applies(q: jax.Array, bias: jax.Array | None) -> bool:
    head = q.shape[-1]
    half = q.dtype in (jnp.float16, jnp.bfloat16)
    return jax.default_backend() == "gpu" and half and head % 8 == 0 and head <= 128 and (bias is None or bias.dtype == q.dtype)


def check_fused_only(attention: str, network: str) -> None:
    """Refuse an attention choice other than "standard" or "fused" (both name :func:`dot_product_attention`) for a
    network that has only this one (every transformer here; "chunked" is diffusers' Flax UNet option)."""
    from jaxalign.errors import JaxalignError

    if attention not in ("standard", "fused"):
        raise JaxalignError(f"attention={attention!r} does not apply to the {network}, whose attention is jax.nn.dot_product_attention ('fused' or 'standard')")
