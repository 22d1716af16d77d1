"""Our scheduler tables against diffusers' PyTorch schedulers, stepping the same toy model."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from jaxalign.schedulers import NoiseSchedule, get_scheduler


def toy_model_output(x, t):
    """A smooth, timestep-dependent stand-in for a UNet."""
    return np.tanh(x) * 0.8 + 0.1 * np.cos(x * 3.0) + t / 2000.0


def run_ours(name, schedule, num_steps, x):
    solver = get_scheduler(name, schedule.prediction_type)
    tables = solver.make_schedule(schedule, num_steps)
    carry = solver.init_carry(jnp.asarray(x))
    for i in range(num_steps):
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


@pytest.mark.parametrize("num_steps", [1, 4, 10, 20])
@pytest.mark.parametrize("variant", list(CONFIGS))
@pytest.mark.parametrize("name", ["ddim", "dpmsolver++"])
def test_matches_diffusers(name, variant, num_steps):
    settings = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="epsilon")
    settings.update(CONFIGS[variant])
    schedule = NoiseSchedule.from_config(settings)
    if name == "ddim":
        reference = DDIMScheduler(**settings, clip_sample=False, set_alpha_to_one=False)
    else:
        reference = DPMSolverMultistepScheduler(**settings, algorithm_type="dpmsolver++", solver_order=2)
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
