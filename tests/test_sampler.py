"""The sampler: a manual diffusers loop gives the same images; CFG and tracing behave."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from jaxalign.sampler import make_sampler

STEPS = 3


@pytest.fixture(scope="module")
def inputs(embedded):
    model, params = embedded
    contexts = model.encode_prompts(params, ["a yellow star", ""])
    latents = jax.random.normal(jax.random.key(0), (2, *model.latent_shape(32, 32)))
    return model, params, latents, contexts[0], contexts[1]


@pytest.mark.parametrize(
    "name,reference",
    [
        ("ddim", lambda s: DDIMScheduler(**s, clip_sample=False, set_alpha_to_one=False)),
        ("dpmsolver++", lambda s: DPMSolverMultistepScheduler(**s, algorithm_type="dpmsolver++")),
    ],
)
def test_sampler_matches_a_python_loop_over_diffusers_scheduler(inputs, name, reference):
    model, params, latents, context, uncond = inputs
    sampler = make_sampler(model, name, STEPS)
    images = np.asarray(jax.jit(sampler.sample)(params, latents, context, uncond, 5.0))

    own = model.scheduler_config
    scheduler = reference({k: own[k] for k in ("beta_start", "beta_end", "beta_schedule", "steps_offset", "timestep_spacing")})
    scheduler.set_timesteps(STEPS)
    x = torch.tensor(np.asarray(latents))
    pair = jnp.stack([uncond, context]).repeat(2, axis=0)  # [uncond, uncond, cond, cond]
    for t in scheduler.timesteps:
        eps = np.asarray(model.predict(params, jnp.concatenate([jnp.asarray(x.numpy())] * 2), jnp.float32(t), pair))
        eps_uncond, eps_cond = eps[:2], eps[2:]
        guided = torch.tensor(eps_uncond + 5.0 * (eps_cond - eps_uncond))
        x = scheduler.step(guided, t, x).prev_sample
    expected = np.asarray(model.decode(params, jnp.asarray(x.numpy())))
    assert images.shape == (2, 32, 32, 3)
    np.testing.assert_allclose(images, expected, atol=1e-4)


def test_guidance_scale_one_ignores_the_unconditional_branch(inputs):
    model, params, latents, context, uncond = inputs
    sample = jax.jit(make_sampler(model, "ddim", 2).sample)
    a = sample(params, latents, context, uncond, 1.0)
    b = sample(params, latents, context, jnp.zeros_like(uncond), 1.0)
    c = sample(params, latents, context, jnp.zeros_like(uncond), 4.0)
    # u + 1 * (c - u) equals c up to float rounding, which the denoising steps carry to ~1e-6.
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    assert np.abs(np.asarray(c) - np.asarray(b)).max() > 1e-3


def test_guidance_scale_is_traced_and_images_are_in_range(inputs):
    model, params, latents, context, uncond = inputs
    sample = jax.jit(make_sampler(model, "ddim", 2).sample)
    a = sample(params, latents, context, uncond, jnp.float32(3.0))
    b = sample(params, latents, context, uncond, jnp.float32(9.0))
    assert sample._cache_size() == 1
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3


def test_population_members_are_independent(inputs):
    model, params, latents, context, uncond = inputs
    sample = jax.jit(make_sampler(model, "ddim", 2).sample)
    both = np.asarray(sample(params, latents, context, uncond, 7.5))
    first = np.asarray(sample(params, latents[:1], context, uncond, 7.5))
    np.testing.assert_allclose(both[:1], first, atol=1e-5)


def _temp_bytes(compiled) -> int:
    """The working memory XLA's buffer assignment gives a compiled function (a property of the
    program, not a timing)."""
    return compiled.memory_analysis().temp_size_in_bytes


def test_chunked_attention_gives_the_same_images_in_less_working_memory(inputs):
    model, params, latents, context, uncond = inputs
    chunked_model = model.with_attention("chunked")
    assert model.with_attention("standard") is model and model.with_attention("chunked") is chunked_model
    assert (model.attention, chunked_model.attention) == ("standard", "chunked")
    args = (params, latents, context, uncond, 5.0)
    standard = jax.jit(make_sampler(model, "ddim", 2).sample).lower(*args).compile()
    chunked = jax.jit(make_sampler(chunked_model, "ddim", 2).sample).lower(*args).compile()
    np.testing.assert_allclose(np.asarray(chunked(*args)), np.asarray(standard(*args)), atol=1e-4)
    assert _temp_bytes(chunked) < 0.8 * _temp_bytes(standard)


def test_decode_batch_decodes_the_same_images_in_less_working_memory(inputs):
    model, params, _, _, _ = inputs
    latents = jax.random.normal(jax.random.key(1), (5, *model.latent_shape(32, 32)))  # 5 = 2 + 2 + a remainder of 1
    whole = jax.jit(make_sampler(model, "ddim", 2).decode).lower(params, latents).compile()
    in_pairs = jax.jit(make_sampler(model, "ddim", 2, decode_batch=2).decode).lower(params, latents).compile()
    np.testing.assert_allclose(np.asarray(in_pairs(params, latents)), np.asarray(whole(params, latents)), atol=1e-5)
    assert _temp_bytes(in_pairs) < 0.8 * _temp_bytes(whole)


def test_denoise_batch_gives_the_same_images_in_less_working_memory(inputs):
    """The network evaluated 2 latents at a time (a remainder of 1 as one more call), in the deterministic sampler
    and in the methods' stochastic steps alike: the same outputs as one call, less working memory."""
    model, params, _, context, uncond = inputs
    latents = jax.random.normal(jax.random.key(2), (5, *model.latent_shape(32, 32)))
    whole, in_pairs = make_sampler(model, "ddim", 2), make_sampler(model, "ddim", 2, denoise_batch=2)
    np.testing.assert_allclose(
        np.asarray(jax.jit(in_pairs.denoise)(params, latents, context, uncond, 5.0)), np.asarray(jax.jit(whole.denoise)(params, latents, context, uncond, 5.0)), atol=1e-4
    )  # fmt: skip
    output = lambda sampler: jax.jit(lambda x: sampler.bind(params, context, uncond, 5.0).output(x, 1))  # noqa: E731
    np.testing.assert_allclose(np.asarray(output(in_pairs)(latents)), np.asarray(output(whole)(latents)), atol=1e-4)
    compiled = [jax.jit(s.denoise).lower(params, latents, context, uncond, 5.0).compile() for s in (whole, in_pairs)]
    assert _temp_bytes(compiled[1]) < 0.8 * _temp_bytes(compiled[0])
