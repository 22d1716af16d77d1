"""The text-to-image sampler: a pure function from initial latents to images.

``sample(params, latents [N, c, h, w], context, uncond_context, guidance_scale) -> images
[N, H, W, 3] in [0, 1]``, where a context is one prompt's conditioning (hidden states
[tokens, dim], or SDXL's dict of hidden states and pooled embedding). The timestep loop is a ``lax.scan`` over the
scheduler's coefficient rows, whatever the noise process; classifier-free guidance evaluates the conditional and
unconditional branches as one batch of 2N (Ho & Salimans 2022, arXiv 2207.12598), or, for networks that embed
the guidance scale (LCM, Flux-dev) or take none (Flux-schnell), one conditional pass; and the
population is decoded in one VAE call, or ``decode_batch`` images at a time (the VAE's activations
at full resolution dominate memory at 512x512). Everything static (model, scheduler, number of
steps) is closed over; everything numeric is an argument, so the guidance scale can be traced.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxalign.errors import JaxalignError
from jaxalign.models import CLASSIFIER_FREE, DiffusionModel, Params
from jaxalign.schedulers import AUTO, NoiseProcess, Schedule, checked_schedule, resolve_scheduler, stochastic_schedulers


class Denoiser(NamedTuple):
    """One prompt's denoising pieces with the model parameters and conditioning bound: what methods
    that act inside the denoising loop (SVDD, DSearch, DAS, FK steering) step with. Step ``i`` goes from x_i (at
    the schedule's i-th timestep; x_0 is pure noise) to x_{i+1}; x_{num_steps} is the clean latent."""

    output: Callable[[jax.Array, jax.Array], jax.Array]  # (x_i [N, ...], i) -> guided model output
    transition: Callable[..., tuple[jax.Array, jax.Array]]  # (x_i, output, i, eta) -> (mean, std) of x_{i+1}
    predicted_clean: Callable[[jax.Array, jax.Array, jax.Array], jax.Array]  # (x_i, output, i) -> clean estimate (Tweedie)
    decode: Callable[[jax.Array], jax.Array]  # clean latents -> images
    num_steps: int

    def step(self, key, x, out, i, eta):
        """A stochastic step x_i -> x_{i+1} (deterministic where ``eta`` = 0 and the scheduler is DDIM)."""
        mean, std = self.transition(x, out, i, eta)
        return mean + std * jax.random.normal(key, x.shape, x.dtype)


class Sampler(NamedTuple):
    sample: Callable[..., jax.Array]  # (params, latents, context, uncond_context, guidance_scale) -> images
    denoise: Callable[..., jax.Array]  # the same -> clean latents (``sample`` without the decoding)
    schedule: Schedule
    num_steps: int  # model calls per image (the schedule's rows), what NFE budgets count
    guided_output: Callable[..., jax.Array]  # (params, x [N,c,h,w], i, context, uncond_context, guidance_scale) -> model output
    decode: Callable[..., jax.Array]  # (params, latents) -> images
    process: NoiseProcess  # the noise process the schedule samples
    scheduler: str  # the scheduler's name ("auto" resolved)
    stochastic: bool = False  # whether the scheduler has a stochastic transition (see ``bind``)
    remat: bool = False  # backward passes recompute each step's forward pass (budgets count it)
    bind: Callable[..., Denoiser] | None = None  # (params, context, uncond_context, guidance_scale) -> Denoiser
    clip_images: Callable[[jax.Array], jax.Array] | None = None  # decode(p, z) == clip_images(decode(p, z, clip=False))


def make_sampler(
    model: DiffusionModel,
    scheduler: str = AUTO,
    num_inference_steps: int = 50,
    remat: bool = False,
    decode_batch: int = 0,
    image_tokens: int | None = None,
    denoise_batch: int = 0,
    true_cfg_scale: float = 1.0,
) -> Sampler:
    """Build ``sample`` for a model; ``scheduler`` is a name in :data:`~jaxalign.schedulers.SCHEDULERS` or
    ``"auto"``, the model's own (read from its scheduler config either way); ``remat`` recomputes each step's
    activations in backward passes; ``decode_batch`` > 0 decodes that many latents at a time (0: all in one
    call); ``denoise_batch`` > 0 evaluates the network on that many latents at a time (0: all in one call; both
    give the same images up to rounding, the chunks taken one after another so that a large population fits
    beside large weights); ``image_tokens`` (tokens per latent) sets dynamic timestep shifting where the
    scheduler uses it. ``true_cfg_scale`` > 1 adds FluxPipeline's "true" classifier-free guidance to a network
    that embeds the guidance scale or takes none: a negative-prompt pass per step, neg + s (pos - neg) (static:
    it decides the passes)."""
    if num_inference_steps < 1:
        raise JaxalignError(f"num_inference_steps must be at least 1, got {num_inference_steps}")
    solver = resolve_scheduler(scheduler, model.scheduler_config, model.noise_process, source=f"model {model.name!r}")
    schedule = checked_schedule(solver, num_inference_steps, image_tokens, model.initial_sigmas(num_inference_steps))
    num_calls = schedule.timesteps.shape[0]  # model calls: num_inference_steps, or one more for pndm

    def pair(context, uncond_context, n):
        # Contexts are arrays (SD) or dicts of arrays (SDXL); each leaf gets the batch of 2n.
        return jax.tree.map(
            lambda c, u: jnp.concatenate([jnp.broadcast_to(u, (n, *u.shape)), jnp.broadcast_to(c, (n, *c.shape))]),
            context,
            uncond_context,
        )

    if true_cfg_scale != 1.0 and model.guidance == CLASSIFIER_FREE:
        raise JaxalignError(f"true_cfg_scale applies to models that embed the guidance scale or take none (Flux); model {model.name!r} uses classifier-free guidance: set guidance_scale instead")

    def guided_chunk(params, x, t, context, uncond_context, guidance_scale):
        n = x.shape[0]
        if model.guidance != CLASSIFIER_FREE and true_cfg_scale <= 1.0:  # embedded (LCM, Flux-dev) or none (Flux-schnell): one pass
            batch_context = jax.tree.map(lambda c: jnp.broadcast_to(c, (n, *c.shape)), context)
            return model.predict(params, x, t, batch_context, guidance_scale=guidance_scale)
        out_uncond, out_cond = jnp.split(model.predict(params, jnp.concatenate([x, x]), t, pair(context, uncond_context, n), guidance_scale=guidance_scale), 2)
        if model.guidance != CLASSIFIER_FREE:
            return out_uncond + true_cfg_scale * (out_cond - out_uncond)
        # diffusers' pipelines guide only above 1 (do_classifier_free_guidance) and otherwise take the conditional
        # prediction alone; the scale is traced, so both passes run either way.
        return jnp.where(guidance_scale > 1, out_uncond + guidance_scale * (out_cond - out_uncond), out_cond)

    def guided_output(params, x, i, context, uncond_context, guidance_scale):
        t = schedule.timesteps[i]
        if not denoise_batch or denoise_batch >= x.shape[0]:
            return guided_chunk(params, x, t, context, uncond_context, guidance_scale)
        # lax.map runs ceil(N / denoise_batch) network calls in sequence (a remainder, if any, as one more).
        one = lambda z: guided_chunk(params, z[None], t, context, uncond_context, guidance_scale)[0]  # noqa: E731
        return jax.lax.map(one, x, batch_size=denoise_batch)

    def denoise_step(params, context, uncond_context, guidance_scale, carry, i):
        return solver.step(carry, guided_output(params, carry[0], i, context, uncond_context, guidance_scale), i, schedule)

    def decode_one(params, z, clip):
        return model.decode(params, z[None], clip)[0]

    if remat:  # backward passes keep one step's (and one decoded chunk's) activations at a time
        denoise_step = jax.checkpoint(denoise_step)
        decode_one = jax.checkpoint(decode_one, static_argnums=(2,))

    def decode(params: Params, latents: jax.Array, clip: bool = True) -> jax.Array:
        """Images in [0, 1]; ``clip=False``: the decoder's output unclipped (on the same scale)."""
        if not decode_batch or decode_batch >= latents.shape[0]:
            return model.decode(params, latents, clip)
        return jax.lax.map(lambda z: decode_one(params, z, clip), latents, batch_size=decode_batch)

    def denoise(params: Params, latents: jax.Array, context, uncond_context, guidance_scale) -> jax.Array:
        def body(carry, i):
            return denoise_step(params, context, uncond_context, guidance_scale, carry, i), None

        carry, _ = jax.lax.scan(body, solver.init_carry(latents.astype(jnp.float32)), jnp.arange(num_calls))
        return carry[0]

    def sample(params: Params, latents: jax.Array, context, uncond_context, guidance_scale) -> jax.Array:
        return decode(params, denoise(params, latents, context, uncond_context, guidance_scale))

    def bind(params: Params, context, uncond_context, guidance_scale) -> Denoiser:
        if solver.transition is None:
            raise JaxalignError(f"scheduler {solver.name!r} has no stochastic step; use {', '.join(stochastic_schedulers(model.noise_process))}")
        return Denoiser(
            output=lambda x, i: guided_output(params, x, i, context, uncond_context, guidance_scale),
            transition=lambda x, out, i, eta: solver.transition(x, out, i, schedule, eta),
            predicted_clean=lambda x, out, i: solver.predicted_clean(x, out, i, schedule),
            decode=lambda z: decode(params, z),
            num_steps=num_calls,
        )

    return Sampler(
        sample=sample,
        denoise=denoise,
        schedule=schedule,
        num_steps=num_calls,
        guided_output=guided_output,
        decode=decode,
        process=solver.process,
        scheduler=solver.name,
        stochastic=solver.stochastic,
        remat=remat,
        bind=bind,
        clip_images=model.clip_images,
    )

