"""Our scheduler tables against diffusers' PyTorch schedulers, stepping the same toy model; reading diffusers'
scheduler configs (what is honoured, what is refused); the stochastic transition of every process."""

import inspect

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, PNDMScheduler

from jaxalign.errors import JaxalignError
from jaxalign.schedulers import AUTO, SCHEDULERS, RectifiedFlow, VariancePreserving, checked_schedule, resolve_scheduler
from jaxalign.toy import GaussianMixture


def toy_model_output(x, t):
    """A smooth, timestep-dependent stand-in for a UNet."""
    return np.tanh(x) * 0.8 + 0.1 * np.cos(x * 3.0) + t / 2000.0


def run_ours(solver, num_steps, x, image_tokens=None):
    tables = solver.make_schedule(num_steps, image_tokens)
    carry = solver.init_carry(jnp.asarray(x))
    for i in range(tables.timesteps.shape[0]):  # one row per model call (num_steps + 1 for pndm)
        t = np.float32(tables.timesteps[i])
        carry = solver.step(carry, jnp.asarray(toy_model_output(np.asarray(carry[0]), t), jnp.float32), i, tables)
    return np.asarray(carry[0]), np.asarray(tables.timesteps)


def run_diffusers(scheduler, num_steps, x, **set_timesteps):
    scheduler.set_timesteps(num_steps, **set_timesteps)
    sample = torch.tensor(x)
    for t in scheduler.timesteps:
        out = torch.tensor(toy_model_output(sample.numpy(), np.float32(t)), dtype=torch.float32)
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


def own_config(reference) -> dict:
    """The config diffusers would save for ``reference``: what jaxalign reads from a model directory."""
    return {"_class_name": type(reference).__name__, **dict(reference.config)}


@pytest.mark.parametrize("variant", list(CONFIGS))
@pytest.mark.parametrize("name,num_steps", [(name, n) for name, counts in STEP_COUNTS.items() for n in counts])
def test_matches_diffusers(name, variant, num_steps):
    settings = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="epsilon")
    settings.update(CONFIGS[variant])
    reference = REFERENCES[name](settings)
    solver = resolve_scheduler(AUTO, own_config(reference), VariancePreserving)
    assert solver.name == name
    x = np.random.default_rng(0).standard_normal((2, 4, 8, 8)).astype(np.float32)
    ours, our_timesteps = run_ours(solver, num_steps, x)
    theirs, their_timesteps = run_diffusers(reference, num_steps, x)
    np.testing.assert_array_equal(our_timesteps, their_timesteps.astype(np.float32))
    np.testing.assert_allclose(ours, theirs, atol=2e-4, rtol=1e-4)
    if num_steps > 1:  # (one linspace DDIM step is t=0, a no-op in diffusers too)
        assert np.abs(ours - x).max() > 5 * 2e-4  # the toy model moved the sample by more than the tolerance


FLOW_CONFIGS = {
    "no shift": dict(shift=1.0),
    "sd3 shift 3": dict(shift=3.0),
    "shift 0.5": dict(shift=0.5),
    "dynamic (flux)": dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15),
    "dynamic, linear": dict(use_dynamic_shifting=True, base_shift=0.3, max_shift=1.5, time_shift_type="linear", base_image_seq_len=64, max_image_seq_len=1024),
}


@pytest.mark.parametrize("variant", list(FLOW_CONFIGS))
@pytest.mark.parametrize("num_steps", [1, 2, 7, 28])
def test_flow_euler_matches_diffusers(variant, num_steps):
    reference = FlowMatchEulerDiscreteScheduler(**FLOW_CONFIGS[variant])
    solver = resolve_scheduler(AUTO, own_config(reference), RectifiedFlow)
    assert solver.name == "flow_euler"
    tokens = 700  # image tokens: sets mu where the sigmas shift dynamically
    mu = None
    if reference.config.use_dynamic_shifting:
        c = reference.config
        slope = (c.max_shift - c.base_shift) / (c.max_image_seq_len - c.base_image_seq_len)
        mu = tokens * slope + c.base_shift - slope * c.base_image_seq_len  # diffusers' calculate_shift, written out
    x = np.random.default_rng(1).standard_normal((2, 16, 4, 4)).astype(np.float32)
    ours, our_timesteps = run_ours(solver, num_steps, x, image_tokens=tokens)
    theirs, their_timesteps = run_diffusers(reference, num_steps, x, **({"mu": mu} if mu is not None else {}))
    np.testing.assert_allclose(our_timesteps, their_timesteps, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(solver.make_schedule(num_steps, tokens).sigma), reference.sigmas.numpy()[:-1], rtol=1e-6)
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=1e-5)
    assert np.abs(ours - x).max() > 0.1


def test_dynamic_shifting_depends_on_the_image_tokens_and_needs_them():
    solver = resolve_scheduler(AUTO, {"_class_name": "FlowMatchEulerDiscreteScheduler", "use_dynamic_shifting": True}, RectifiedFlow)
    small, large = (np.asarray(solver.make_schedule(4, tokens).sigma) for tokens in (256, 4096))
    assert small[0] == large[0] == 1.0 and (large[1:] > small[1:]).all()  # more tokens: more time spent at high noise
    with pytest.raises(JaxalignError, match="number of image tokens"):
        solver.make_schedule(4)


@pytest.mark.parametrize("num_steps", [1, 2, 3, 50])
def test_pndm_calls_the_model_once_more_than_its_steps(num_steps):
    """diffusers' PLMS evaluates the second timestep twice: n steps are n + 1 model calls (n = 1: one)."""
    reference = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, skip_prk_steps=True)
    tables = resolve_scheduler(AUTO, own_config(reference), VariancePreserving).make_schedule(num_steps)
    reference.set_timesteps(num_steps)
    assert tables.timesteps.shape[0] == len(reference.timesteps) == (num_steps + 1 if num_steps > 1 else 1)
    assert all(v.shape[0] == tables.timesteps.shape[0] for v in [tables.alpha, tables.sigma, *tables.coefficients.values()])


def test_sampler_counts_model_calls_and_pndm_matches_a_diffusers_loop(embedded):
    """The sampler scans over the schedule's rows and reports them as its step count (what NFE budgets
    count); with pndm its images equal a Python loop over diffusers' PNDMScheduler on the embedded model."""
    from jaxalign.sampler import make_sampler

    model, params = embedded
    steps, guidance = 3, 5.0
    assert make_sampler(model, "ddim", steps).num_steps == steps
    sampler = make_sampler(model, "pndm", steps)
    assert sampler.num_steps == steps + 1
    context, uncond = model.encode_prompts(params, ["a yellow star", ""])
    latents = jax.random.normal(jax.random.key(0), (2, *model.latent_shape(32, 32)))
    images = np.asarray(jax.jit(sampler.sample)(params, latents, context, uncond, guidance))

    own = model.scheduler_config
    scheduler = REFERENCES["pndm"]({k: own[k] for k in ("beta_start", "beta_end", "beta_schedule", "steps_offset", "timestep_spacing", "prediction_type")})
    scheduler.set_timesteps(steps)
    x = torch.tensor(np.asarray(latents))
    pair = jnp.stack([uncond, context]).repeat(2, axis=0)  # [uncond, uncond, cond, cond]
    calls = 0
    for t in scheduler.timesteps:
        eps = np.asarray(model.predict(params, jnp.concatenate([jnp.asarray(x.numpy())] * 2), jnp.float32(t), pair))
        guided = torch.tensor(eps[:2] + guidance * (eps[2:] - eps[:2]))
        x = scheduler.step(guided, t, x).prev_sample
        calls += 1
    assert calls == sampler.num_steps
    expected = np.asarray(model.decode(params, jnp.asarray(x.numpy())))
    np.testing.assert_allclose(images, expected, atol=1e-4)


@pytest.mark.parametrize("clip_sample", [False, True])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_stochastic_ddim_transition_matches_diffusers_step_with_eta(eta, prediction_type, clip_sample):
    """The methods' stochastic step (SVDD, DSearch, DAS, DNO's sde mode): mean + std * noise is diffusers'
    ``DDIMScheduler.step(eta=..., variance_noise=noise)``, and the clean estimate its ``pred_original_sample``
    (clipped to [-0.8, 0.8] where ``clip_sample`` says so, the noise estimate not)."""
    settings = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type=prediction_type, **CONFIGS["sd"])
    reference = DDIMScheduler(**settings, clip_sample=clip_sample, clip_sample_range=0.8, set_alpha_to_one=False)
    solver = resolve_scheduler(AUTO, own_config(reference), VariancePreserving)
    tables = solver.make_schedule(10)
    reference.set_timesteps(10)
    rng = np.random.default_rng(0)
    for i in (0, 4, 9):
        x = (2 * rng.standard_normal((2, 4, 3, 3))).astype(np.float32)
        noise = rng.standard_normal(x.shape).astype(np.float32)
        t = int(tables.timesteps[i])
        out = toy_model_output(x, t).astype(np.float32)
        expected = reference.step(torch.tensor(out), t, torch.tensor(x), eta=eta, variance_noise=torch.tensor(noise))
        mean, std = solver.transition(jnp.asarray(x), jnp.asarray(out), i, tables, eta)
        np.testing.assert_allclose(np.asarray(mean + std * noise), expected.prev_sample.numpy(), rtol=1e-4, atol=1e-5)
        clean = np.asarray(solver.predicted_clean(jnp.asarray(x), jnp.asarray(out), i, tables))
        np.testing.assert_allclose(clean, expected.pred_original_sample.numpy(), rtol=1e-4, atol=1e-5)
        assert (float(std) > 0) == (eta > 0)
        assert (np.abs(clean).max() <= 0.8 + 1e-6) == clip_sample  # the clip acted (and only where asked)


def test_flow_transition_at_eta_0_is_the_euler_step_exactly():
    solver = resolve_scheduler(AUTO, {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0}, RectifiedFlow)
    tables = solver.make_schedule(6)
    rng = np.random.default_rng(2)
    for i in range(6):
        x = jnp.asarray(rng.standard_normal((3, 4, 5, 5)), jnp.float32)
        v = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
        mean, std = jax.jit(solver.transition, static_argnums=2)(x, v, i, tables, 0.0)
        np.testing.assert_array_equal(np.asarray(mean), np.asarray(jax.jit(solver.step, static_argnums=2)((x,), v, i, tables)[0]))
        assert float(std) == 0.0
        _, noisy_std = solver.transition(x, v, i, tables, 1.0)
        assert float(noisy_std) > 0 or i == 5  # the last step ends at sigma = 0 with no noise left


@pytest.mark.parametrize("eta", [0.5, 1.0])
@pytest.mark.parametrize("process", ["vp", "flow"])
def test_the_stochastic_transition_keeps_the_forward_marginals(process, eta):
    """DDIM(eta)'s defining property, for any x_t = a x0 + b eps: given the true x0 and eps (what an exact network
    predicts from x_t alone only in expectation), x_{i+1} is N(a' x0, b'^2), the forward process's marginal at the
    next step, at every step of the schedule; its noise std scales with eta."""
    n = 200_000
    model = GaussianMixture(means=((0.0,),), variances=(1.0,), weights=(1.0,))
    model = model.as_flow() if process == "flow" else model
    solver = resolve_scheduler(AUTO, model.scheduler_config, model.noise_process)
    tables = solver.make_schedule(6)
    key = jax.random.key(0)
    for i in range(6):
        x0_key, eps_key, step_key = jax.random.split(jax.random.fold_in(key, i), 3)
        x0 = jax.random.uniform(x0_key, (n, 1, 1, 1), minval=-2.0, maxval=2.0)  # any data, not the model's
        eps = jax.random.normal(eps_key, x0.shape)
        a, b = tables.alpha[i], tables.sigma[i]
        a_next, b_next = float(tables.coefficients["alpha_prev"][i]), float(tables.coefficients["sigma_prev"][i])
        output = eps - x0 if process == "flow" else eps  # the network's target: velocity, or noise
        mean, std = solver.transition(a * x0 + b * eps, output, i, tables, eta)
        residual = np.asarray(mean + std * jax.random.normal(step_key, x0.shape) - a_next * x0).ravel()
        assert abs(residual.mean()) < 5 * max(b_next, 1e-3) / np.sqrt(n), i
        if b_next > 0:
            assert abs(residual.std() / b_next - 1) < 0.01, i
        np.testing.assert_allclose(float(std), eta * float(solver.transition(x0, output, i, tables, 1.0)[1]), rtol=1e-6)


# ---- reading diffusers' scheduler configs -----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_parameter_tables_are_the_diffusers_class_signatures(name):
    kind = SCHEDULERS[name]
    signature = inspect.signature(getattr(diffusers, kind.diffusers_class).__init__).parameters
    theirs = {k: p.default for k, p in signature.items() if k != "self"}
    assert {k: p.default for k, p in kind.parameters.items()} == theirs


@pytest.mark.parametrize(
    "config,process,message",
    [
        ({"_class_name": "EulerDiscreteScheduler"}, VariancePreserving, r"names 'EulerDiscreteScheduler', which jaxalign does not implement .* set scheduler to one of ddim, pndm, dpmsolver\+\+, lcm"),
        ({"_class_name": "DPMSolverMultistepScheduler", "use_karras_sigmas": True}, VariancePreserving, r"use_karras_sigmas=True is not supported by jaxalign's 'dpmsolver\+\+'"),
        ({"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmsolver++"}, VariancePreserving, r"algorithm_type='sde-dpmsolver\+\+' is not supported"),
        ({"_class_name": "DDIMScheduler", "shift": 3.0}, VariancePreserving, r"shift=3.0 would change the sampler"),
        ({"_class_name": "DDIMScheduler", "thresholding": True}, VariancePreserving, r"thresholding=True is not supported"),
        ({"_class_name": "DDIMScheduler", "beta_schedule": "squaredcos_cap_v2"}, VariancePreserving, r"beta_schedule='squaredcos_cap_v2' is not supported"),
        ({"_class_name": "PNDMScheduler"}, VariancePreserving, r"skip_prk_steps=False is not supported .* skip_prk_steps=True"),
        ({"_class_name": "FlowMatchEulerDiscreteScheduler"}, VariancePreserving, r"'flow_euler' samples rectified-flow models, but model 'x' is a variance-preserving model; use 'auto' or one of ddim"),
        ({"_class_name": "DDIMScheduler"}, RectifiedFlow, r"'ddim' samples variance-preserving models, but model 'x' is a rectified-flow model; use 'auto' or one of flow_euler"),
        ({"_class_name": "FlowMatchEulerDiscreteScheduler", "stochastic_sampling": True}, RectifiedFlow, r"stochastic_sampling=True is not supported"),
        ({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift_terminal": 0.1}, RectifiedFlow, r"shift_terminal=0.1 is not supported"),
    ],
)
def test_configs_jaxalign_cannot_honour_are_refused(config, process, message):
    with pytest.raises(JaxalignError, match=message):
        resolve_scheduler(AUTO, config, process, source="model 'x'")


def test_an_explicit_scheduler_reads_another_class_config_as_diffusers_from_config_does():
    """SD 1.5's PNDM config read as DDIM: the betas, offset and set_alpha_to_one carry over, DDIM's own defaults
    fill the rest (clip_sample=True unless the config says otherwise), and PNDM's skip_prk_steps is ignored."""
    sd15 = {"_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None}  # fmt: skip
    ours = resolve_scheduler("ddim", sd15, VariancePreserving)
    reference = DDIMScheduler.from_config(sd15)
    assert reference.config.clip_sample  # DDIM's default, absent from the PNDM config
    x = (3 * np.random.default_rng(3).standard_normal((1, 4, 4, 4))).astype(np.float32)
    np.testing.assert_allclose(run_ours(ours, 5, x)[0], run_diffusers(reference, 5, x)[0], atol=2e-4, rtol=1e-4)
    # A choice the other class's config does not make takes jaxalign's variant: PLMS from a DDIM config.
    assert resolve_scheduler("pndm", own_config(DDIMScheduler()), VariancePreserving).name == "pndm"


def test_step_counts_the_process_cannot_take_are_refused():
    vp = resolve_scheduler(AUTO, {"_class_name": "DDIMScheduler"}, VariancePreserving)
    with pytest.raises(JaxalignError, match="at most 999"):
        checked_schedule(vp, 1000)
    dpm = resolve_scheduler(AUTO, {"_class_name": "DPMSolverMultistepScheduler", "timestep_spacing": "leading", "steps_offset": 1}, VariancePreserving)
    with pytest.raises(JaxalignError, match=r"more than scheduler 'dpmsolver\+\+' can take"):
        checked_schedule(dpm, 999)
    flow = resolve_scheduler(AUTO, {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0}, RectifiedFlow)
    assert checked_schedule(flow, 1000).timesteps.shape == (1000,)  # a flow's time inputs are continuous
