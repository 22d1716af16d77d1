"""The text-to-image sampler: a pure function from initial latents to images.

``sample(params, latents [N, c, h, w], context, uncond_context, guidance_scale) -> images
[N, H, W, 3] in [0, 1]``, where a context is one prompt's conditioning (hidden states
[tokens, dim], or SDXL's dict of hidden states and pooled embedding). The timestep loop is a ``lax.scan`` over the
scheduler's coefficient rows, classifier-free guidance evaluates the conditional and
unconditional branches as one batch of 2N (Ho & Salimans 2022, arXiv 2207.12598), and the
population is decoded in one VAE call, or ``decode_batch`` images at a time (the VAE's activations
at full resolution dominate memory at 512x512). Everything static (model, scheduler, number of
steps) is closed over; everything numeric is an argument, so the guidance scale can be traced.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxalign.model import DiffusionModel, Params
from jaxalign.schedulers import Schedule, get_scheduler


class Sampler(NamedTuple):
    sample: Callable[..., jax.Array]
    schedule: Schedule
    num_steps: int  # model calls per image (the schedule's rows), what NFE budgets count
    # Pieces for methods that act inside the denoising loop (SVDD, DSearch, DAS):
    guided_output: Callable[..., jax.Array]  # (params, x [N,c,h,w], i, context, uncond_context, guidance_scale) -> model output
    decode: Callable[..., jax.Array]  # (params, latents) -> images
    prediction_type: str
    scheduler: str


def make_sampler(
    model: DiffusionModel,
    scheduler: str = "ddim",
    num_inference_steps: int = 50,
    remat: bool = False,
    decode_batch: int = 0,
) -> Sampler:
    """Build ``sample`` for a model; ``remat`` recomputes each step's activations in backward passes;
    ``decode_batch`` > 0 decodes that many latents at a time (0: all in one call)."""
    solver = get_scheduler(scheduler, model.noise_schedule.prediction_type)
    schedule = solver.make_schedule(model.noise_schedule, num_inference_steps)
    num_calls = schedule.timesteps.shape[0]  # model calls: num_inference_steps, or one more for pndm

    def pair(context, uncond_context, n):
        # Contexts are arrays (SD) or dicts of arrays (SDXL); each leaf gets the batch of 2n.
        return jax.tree.map(
            lambda c, u: jnp.concatenate([jnp.broadcast_to(u, (n, *u.shape)), jnp.broadcast_to(c, (n, *c.shape))]),
            context,
            uncond_context,
        )

    def guided_output(params, x, i, context, uncond_context, guidance_scale):
        n, t = x.shape[0], schedule.timesteps[i]
        if model.guidance_embedding_dim is not None:  # guidance-distilled (LCM): one conditional pass
            batch_context = jax.tree.map(lambda c: jnp.broadcast_to(c, (n, *c.shape)), context)
            return model.predict_noise(params, x, t, batch_context, guidance_scale=guidance_scale)
        out_uncond, out_cond = jnp.split(model.predict_noise(params, jnp.concatenate([x, x]), t, pair(context, uncond_context, n)), 2)
        return out_uncond + guidance_scale * (out_cond - out_uncond)

    def denoise_step(params, context, uncond_context, guidance_scale, carry, i):
        return solver.step(carry, guided_output(params, carry[0], i, context, uncond_context, guidance_scale), i, schedule)

    def decode_one(params, z):
        return model.decode(params, z[None])[0]

    if remat:  # backward passes keep one step's (and one decoded chunk's) activations at a time
        denoise_step = jax.checkpoint(denoise_step)
        decode_one = jax.checkpoint(decode_one)

    def decode(params: Params, latents: jax.Array) -> jax.Array:
        if not decode_batch or decode_batch >= latents.shape[0]:
            return model.decode(params, latents)
        return jax.lax.map(functools.partial(decode_one, params), latents, batch_size=decode_batch)

    def sample(params: Params, latents: jax.Array, context, uncond_context, guidance_scale) -> jax.Array:
        def body(carry, i):
            return denoise_step(params, context, uncond_context, guidance_scale, carry, i), None

        carry, _ = jax.lax.scan(body, solver.init_carry(latents.astype(jnp.float32)), jnp.arange(num_calls))
        return decode(params, carry[0])

    return Sampler(
        sample=sample,
        schedule=schedule,
        num_steps=num_calls,
        guided_output=guided_output,
        decode=decode,
        prediction_type=model.noise_schedule.prediction_type,
        scheduler=scheduler,
    )
