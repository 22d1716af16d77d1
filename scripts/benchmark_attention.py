"""Time and working memory of one UNet evaluation under each UNet attention in ``ATTENTION``.

    python scripts/benchmark_attention.py --size embedded --batch 32   # the tiny model, a CFG batch of popsize 16
    python scripts/benchmark_attention.py --size sd15 --batch 2        # SD1.5's architecture, 512x512

Answers whether a memory knob costs time at a given size: diffusers' chunked attention splits each
attention's queries into up to 64 chunks taken one after another, which is cheap against a
4096-token score matrix and expensive at a few dozen tokens. One jitted ``predict`` per
attention, compiled apart, timed after a warm-up with ``block_until_ready`` (median of
``--repeats``); XLA's buffer assignment gives the temporary (working) memory. Random weights for
``sd15`` (see ``benchmark_speed.py``), the trained embedded model otherwise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
from benchmark_speed import _significant, load_benchmark_model, model_dir_for

from jaxalign.models import ATTENTION


def time_attention(model, params, attention: str, batch: int, repeats: int) -> dict:
    model = model.with_attention(attention)
    latents = jnp.zeros((batch, *model.latent_shape(model.default_size, model.default_size)))
    context = jnp.zeros((batch, model.max_prompt_tokens, model.network.module.cross_attention_dim))
    step = jax.jit(lambda p, x, c: model.predict(p, x, jnp.float32(500), c))
    start = time.perf_counter()
    compiled = step.lower(params, latents, context).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(params, latents, context))
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(params, latents, context))
        seconds.append(time.perf_counter() - start)
    return {
        "attention": attention,
        "latent_tokens": latents.shape[2] * latents.shape[3],
        "batch": batch,
        "compile_s": round(compile_s, 2),
        "s_per_call": round(statistics.median(seconds), 4),
        "xla_temp_gib": _significant(compiled.memory_analysis().temp_size_in_bytes / 2**30),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("embedded", "sd15"), default="embedded")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--batch", type=int, default=32, help="UNet batch (two per image with classifier-free guidance)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model, params = load_benchmark_model(model_dir_for(args.size), args.dtype)
    print(f"size {args.size}, {args.dtype}, device {jax.devices()[0].device_kind}, jax {jax.__version__}")
    for attention in ATTENTION:
        print(json.dumps(time_attention(model, params, attention, args.batch, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
