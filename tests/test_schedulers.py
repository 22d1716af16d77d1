"""Our scheduler tables against diffusers' PyTorch schedulers, stepping the same toy model."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, PNDMScheduler

from jaxalign.schedulers import NoiseSchedule, get_scheduler


def toy_model_output(x, t):
    """A smooth, timestep-dependent stand-in for a UNet."""
    return np.tanh(x) * 0.8 + 0.1 * np.cos(x * 3.0) + t / 2000.0


def run_ours(name, schedule, num_steps, x):
    solver = get_scheduler(name, schedule.prediction_type)
    tables = solver.make_schedule(schedule, num_steps)
    carry = solver.init_carry(jnp.asarray(x))
    for i in range(tables.timesteps.shape[0]):  # one row per model call (num_steps + 1 for pndm)
        t = int(tables.timesteps[i])
        carry = solver.step(carry, jnp.asarray(toy_model_output(np.asarray(carry[0]), t)), i, tables)
    return np.asarray(carry[0]), np.asarray(tables.timesteps)


def run_diffusers(scheduler, num_steps, x):
    scheduler.set_timesteps(num_steps)
    sample = torch.tensor(x)
    for t in scheduler.timesteps:
        out = torch.tensor(toy_model_output(sample.numpy(), int(t)), dtype=torch.float32)
        sample = scheduler.step(out, t, sample).prev_sample
    return sample.numpy(), scheduler.timesteps.numpy()


CONFIGS = {
    "sd": dict(timestep_spacing="leading", steps_offset=1),
    "linspace": dict(timestep_spacing="linspace", steps_offset=0),
    "trailing": dict(timestep_spacing="trailing", steps_offset=0),
    "v_prediction": dict(timestep_spacing="leading", steps_offset=1, prediction_type="v_prediction"),
    "linear_betas": dict(timestep_spacing="leading", steps_offset=1, beta_schedule="linear", beta_start=0.0001, beta_end=0.02),
}


REFERENCES = {
    "ddim": lambda settings: DDIMScheduler(**settings, clip_sample=False, set_alpha_to_one=False),
    "dpmsolver++": lambda settings: DPMSolverMultistepScheduler(**settings, algorithm_type="dpmsolver++", solver_order=2),
    # Stable Diffusion 1.x's default scheduler: PLMS without the Runge-Kutta warm-up.
    "pndm": lambda settings: PNDMScheduler(**settings, skip_prk_steps=True, set_alpha_to_one=False),
}
STEP_COUNTS = {"ddim": [1, 4, 10, 20], "dpmsolver++": [1, 4, 10, 20], "pndm": [1, 2, 3, 4, 10, 20]}


@pytest.mark.parametrize("variant", list(CONFIGS))
@pytest.mark.parametrize("name,num_steps", [(name, n) for name, counts in STEP_COUNTS.items() for n in counts])
def test_matches_diffusers(name, variant, num_steps):
    settings = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="epsilon")
    settings.update(CONFIGS[variant])
    schedule = NoiseSchedule.from_config(settings)
    reference = REFERENCES[name](settings)
    x = np.random.default_rng(0).standard_normal((2, 4, 8, 8)).astype(np.float32)
    ours, our_timesteps = run_ours(name, schedule, num_steps, x)
    theirs, their_timesteps = run_diffusers(reference, num_steps, x)
    np.testing.assert_array_equal(our_timesteps, their_timesteps)
    np.testing.assert_allclose(ours, theirs, atol=2e-4, rtol=1e-4)
    if num_steps > 1:  # (one linspace DDIM step is t=0, a no-op in diffusers too)
        assert np.abs(ours - x).max() > 5 * 2e-4  # the toy model moved the sample by more than the tolerance


def test_unknown_spacing_is_an_error():
    from jaxalign.errors import JaxalignError

    with pytest.raises(JaxalignError, match="timestep_spacing"):
        NoiseSchedule.from_config({"timestep_spacing": "sideways"})


@pytest.mark.parametrize("num_steps", [1, 2, 3, 50])
def test_pndm_calls_the_model_once_more_than_its_steps(num_steps):
    """diffusers' PLMS evaluates the second timestep twice: n steps are n + 1 model calls (n = 1: one)."""
    schedule = NoiseSchedule.from_config(dict(timestep_spacing="leading", steps_offset=1))
    tables = get_scheduler("pndm", "epsilon").make_schedule(schedule, num_steps)
    reference = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, skip_prk_steps=True)
    reference.set_timesteps(num_steps)
    assert tables.timesteps.shape[0] == len(reference.timesteps) == (num_steps + 1 if num_steps > 1 else 1)
    assert all(v.shape[0] == tables.timesteps.shape[0] for v in [tables.alpha, tables.sigma, *tables.coefficients.values()])


def test_sampler_counts_model_calls_and_pndm_matches_a_diffusers_loop(embedded):
    """The sampler scans over the schedule's rows and reports them as its step count (what NFE budgets
    count); with pndm its images equal a Python loop over diffusers' PNDMScheduler on the embedded model."""
    import jax

    from jaxalign.sampler import make_sampler

    model, params = embedded
    steps, guidance = 3, 5.0
    assert make_sampler(model, "ddim", steps).num_steps == steps
    sampler = make_sampler(model, "pndm", steps)
    assert sampler.num_steps == steps + 1
    context, uncond = model.encode_prompts(params, ["a yellow star", ""])
    latents = jax.random.normal(jax.random.key(0), (2, *model.latent_shape(32, 32)))
    images = np.asarray(jax.jit(sampler.sample)(params, latents, context, uncond, guidance))

    ns = model.noise_schedule
    scheduler = REFERENCES["pndm"](
        dict(beta_start=ns.beta_start, beta_end=ns.beta_end, beta_schedule=ns.beta_schedule, steps_offset=ns.steps_offset,
             timestep_spacing=ns.timestep_spacing, prediction_type=ns.prediction_type)  # fmt: skip
    )
    scheduler.set_timesteps(steps)
    x = torch.tensor(np.asarray(latents))
    pair = jnp.stack([uncond, context]).repeat(2, axis=0)  # [uncond, uncond, cond, cond]
    calls = 0
    for t in scheduler.timesteps:
        eps = np.asarray(model.predict_noise(params, jnp.concatenate([jnp.asarray(x.numpy())] * 2), jnp.int32(int(t)), pair))
        guided = torch.tensor(eps[:2] + guidance * (eps[2:] - eps[:2]))
        x = scheduler.step(guided, t, x).prev_sample
        calls += 1
    assert calls == sampler.num_steps
    expected = np.asarray(model.decode(params, jnp.asarray(x.numpy())))
    np.testing.assert_allclose(images, expected, atol=1e-4)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_stochastic_ddim_transition_matches_diffusers_step_with_eta(eta, prediction_type):
    """The methods' stochastic step (SVDD, DSearch, DAS, DNO's sde mode): mean + std * noise is diffusers'
    ``DDIMScheduler.step(eta=..., variance_noise=noise)``, and the clean estimate its ``pred_original_sample``."""
    settings = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type=prediction_type, **CONFIGS["sd"])
    schedule = NoiseSchedule.from_config(settings)
    solver = get_scheduler("ddim", prediction_type)
    tables = solver.make_schedule(schedule, 10)
    reference = DDIMScheduler(**settings, clip_sample=False, set_alpha_to_one=False)
    reference.set_timesteps(10)
    rng = np.random.default_rng(0)
    for i in (0, 4, 9):
        x = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
        noise = rng.standard_normal(x.shape).astype(np.float32)
        t = int(tables.timesteps[i])
        out = toy_model_output(x, t).astype(np.float32)
        expected = reference.step(torch.tensor(out), t, torch.tensor(x), eta=eta, variance_noise=torch.tensor(noise))
        mean, std = solver.transition(jnp.asarray(x), jnp.asarray(out), i, tables, eta)
        np.testing.assert_allclose(np.asarray(mean + std * noise), expected.prev_sample.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.asarray(solver.predicted_clean(jnp.asarray(x), jnp.asarray(out), i, tables)), expected.pred_original_sample.numpy(), rtol=1e-4, atol=1e-5)
        assert (float(std) > 0) == (eta > 0)
