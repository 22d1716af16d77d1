"""DAS (Kim et al. 2025, arXiv 2501.05803) and the SMC resamplers: the official schedule, unbiased
resampling, a hand-written reference of the weights, and a tilted Gaussian mixture with a known answer."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.errors import JaxalignError
from jaxalign.methods import METHODS, Context, build_method
from jaxalign.methods.base import generation_keys
from jaxalign.methods.das import das_particles, run_cost, tempering, tempering_gamma_for
from jaxalign.resampling import RESAMPLERS, ssp
from jaxalign.sampler import make_sampler
from jaxalign.toy import TOY_VP_SCHEDULER, GaussianMixture, linear_reward, two_modes

# ---- tempering -----------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [4, 10, 28, 50, 100, 250])
def test_tempering_gamma_for_other_step_counts_saturates_at_the_official_fraction(steps):
    """The official gamma 0.008 over 100 steps first reaches lambda 1 at step 87 (log 2 / log 1.008 = 86.99); the
    rescaled gamma reaches it at the same fraction of any step count, and is the official one at 100 steps."""
    gamma = tempering_gamma_for(steps)
    lam = np.asarray(tempering(steps, gamma), np.float64)
    first = int(np.argmax(lam >= 1.0 - 1e-6))
    assert first == int(np.ceil(steps * np.log(2) / np.log(1.008) / 100 - 1e-9))
    assert lam[first - 1] < 1.0 - 1e-6
    if steps == 100:
        assert gamma == pytest.approx(0.008, rel=1e-12) and first == 87
    assert np.isclose(tempering_gamma_for(8, 0.1, 8), 0.1)


def test_tempering_matches_the_official_exponential_schedule():
    i = np.arange(101)
    expected = np.minimum(1.008**i - 1, 1.0)  # pipeline_using_SMC.py l.275, tempering_start 0
    lam = np.asarray(tempering(100, 0.008))
    np.testing.assert_allclose(lam, expected, rtol=2e-5, atol=1e-7)
    assert lam[0] == 0.0 and lam[86] < 1.0 and np.all(lam[87:] == 1.0)  # saturates at i = 87 (spec)
    np.testing.assert_allclose(lam[[1, 2, 86]], [0.008, 0.016064, 0.98427], rtol=1e-4)
    # config/lcm.py: gamma 0.1, T = 8.
    np.testing.assert_allclose(np.asarray(tempering(8, 0.1)), [0, 0.1, 0.21, 0.331, 0.4641, 0.61051, 0.771561, 0.9487171, 1.0], rtol=1e-5, atol=1e-7)


# ---- resampling ----------------------------------------------------------------------------------

WEIGHTS = np.asarray([0.4, 0.25, 0.15, 0.1, 0.05, 0.03, 0.015, 0.005])


@pytest.mark.parametrize("scheme", sorted(RESAMPLERS))
def test_resampling_is_unbiased(scheme):
    k, draws = WEIGHTS.shape[0], 4000
    indices = jax.jit(jax.vmap(lambda key: RESAMPLERS[scheme](key, jnp.asarray(WEIGHTS, jnp.float32))))(jax.random.split(jax.random.key(0), draws))
    assert indices.shape == (draws, k)
    counts = np.asarray(jax.vmap(lambda i: jnp.bincount(i, length=k))(indices))
    assert np.all(counts.sum(axis=1) == k)
    # Multinomial counts have the largest variance, K w (1 - w); allow 4 standard errors of it.
    tolerance = 4 * np.sqrt(k * WEIGHTS * (1 - WEIGHTS) / draws)
    np.testing.assert_array_less(np.abs(counts.mean(axis=0) - k * WEIGHTS), tolerance)
    floors = np.floor(k * WEIGHTS)
    if scheme in ("systematic", "residual", "ssp"):
        assert np.all(counts >= floors)  # at least floor(K w) copies of every particle
    if scheme in ("systematic", "ssp"):
        assert np.all(counts <= floors + 1)  # and at most one more
    if scheme == "ssp":
        assert np.all(np.diff(np.asarray(indices), axis=1) >= 0)  # sorted, as the official repeat(arange, counts)
    # The defining property beyond the mean: multinomial counts have variance K w (1 - w) (within 15% over 4000
    # draws), and stratified draws one uniform per stratum, so particle 1 (K w = 2 exactly) gets 1 or 3 copies in
    # about a third of the draws, where systematic (one shared uniform) always gives exactly 2.
    variance = counts.var(axis=0)
    if scheme == "multinomial":
        np.testing.assert_allclose(variance, k * WEIGHTS * (1 - WEIGHTS), rtol=0.15)
    if scheme == "stratified":
        assert 0.2 < np.mean(counts[:, 1] != 2) < 0.45
    if scheme == "systematic":
        assert np.all(counts[:, 1] == 2)


def _official_ssp(weights, uniforms):
    """The official sequential SSP (DAS smc_utils.py l.114-160, from nchopin/particles), written out in numpy."""
    n = weights.shape[0]
    scaled = n * weights
    counts = np.floor(scaled).astype(np.int64)
    xi = scaled - counts
    i, j = 0, 1
    for k in range(n - 1):
        delta_i, delta_j = min(xi[j], 1.0 - xi[i]), min(xi[i], 1.0 - xi[j])
        total = delta_i + delta_j
        if uniforms[k] < (delta_i / total if total > 0 else 0.0):
            i, j, delta_i = j, i, delta_j
        if xi[j] < 1.0 - xi[i]:
            xi[i] += delta_i
            j = k + 2
        else:
            xi[j] -= delta_i
            counts[i] += 1
            i = k + 2
    if counts.sum() == n - 1:
        last = i if j == n else j
        if xi[last] > 0.99:
            counts[last] += 1
    assert counts.sum() == n
    return np.repeat(np.arange(n), counts)


def test_ssp_matches_the_official_sequential_algorithm():
    f = jax.jit(ssp)
    for seed, n in enumerate([2, 3, 5, 8, 17, 64, 64, 200]):
        key = jax.random.key(seed)
        weights = np.asarray(jax.nn.softmax(3.0 * jax.random.normal(jax.random.fold_in(key, 1), (n,))))
        uniforms = np.asarray(jax.random.uniform(key, (n - 1,)))  # the draws ssp makes from its key
        np.testing.assert_array_equal(np.asarray(f(key, jnp.asarray(weights))), _official_ssp(weights, uniforms))


@pytest.mark.parametrize("scheme", sorted(RESAMPLERS))
def test_resampling_returns_k_valid_ancestors_under_round_off(scheme):
    resample = jax.jit(RESAMPLERS[scheme])
    k = 1000
    cases = [
        jax.nn.softmax(4.0 * jax.random.normal(jax.random.key(1), (k,))),  # float32 round-off in K w
        jnp.full((k,), 1.0 / k),  # K w = 1 up to round-off
        jax.nn.one_hot(17, k),  # degenerate: every child from one particle
    ]
    for case, weights in enumerate(cases):
        for seed in range(3):
            indices = np.asarray(resample(jax.random.key(seed), weights))
            assert indices.shape == (k,) and indices.min() >= 0 and indices.max() < k
            if case == 2:
                assert np.all(indices == 17)
    assert np.asarray(jax.jit(RESAMPLERS[scheme])(jax.random.key(0), jnp.ones((1,)))).tolist() == [0]


# ---- the log weights, step by step ----------------------------------------------------------------


@pytest.mark.parametrize("threshold", [0.0, 1.0])
def test_log_weights_match_a_hand_written_reference(threshold):
    """1-D Gaussian data N(m, v), reward c x: Tweedie's x̂0 and its gradient are linear in x_t, so every
    quantity of the official loop is written out by hand here (float64) and compared."""
    m, v, c, alpha, gamma, eta, popsize = 0.7, 0.5, 1.5, 0.3, 0.5, 1.0, 5
    # set_alpha_to_one=False leaves noise in the last step too, so both steps have a shifted proposal.
    model = GaussianMixture(means=((m,),), variances=(v,), weights=(1.0,), scheduler_config={**TOY_VP_SCHEDULER, "set_alpha_to_one": False})
    sampler = make_sampler(model, "ddim", 2)
    empty = jnp.zeros((1, 1))
    denoiser = sampler.bind({}, empty, empty, 1.0)
    knobs = {"alpha": jnp.float32(alpha), "tempering_gamma": jnp.float32(gamma), "ess_threshold": jnp.float32(threshold), "eta": jnp.float32(eta)}
    key = jax.random.key(7)
    run = jax.jit(lambda k: das_particles(k, denoiser, lambda z: c * z.reshape(z.shape[0]), popsize, model.latent_shape, knobs, ssp))(key)

    s = jax.tree.map(lambda a: np.asarray(a, np.float64), sampler.schedule)
    a, sigma, a_prev, sigma_prev = s.alpha, s.sigma, s.coefficients["alpha_prev"], s.coefficients["sigma_prev"]
    lam = np.minimum((1 + gamma) ** np.arange(3) - 1, 1.0)
    start_key, loop_key = jax.random.split(key)
    x = np.asarray(jax.random.normal(start_key, (popsize, 1, 1, 1)), np.float64).reshape(popsize)
    log_w, twist_prev, log_ratio = np.zeros(popsize), np.zeros(popsize), np.zeros(popsize)
    resampled = np.asarray(run.resampled)
    for i in range(2):
        gain = a[i] * v / (a[i] ** 2 * v + sigma[i] ** 2)  # d x̂0 / d x_t for Gaussian data
        clean = m + gain * (x - a[i] * m)
        eps = (x - a[i] * clean) / sigma[i]
        twist = lam[i] * c * clean / alpha
        gradient = np.full(popsize, lam[i + 1] * c * gain / alpha)
        log_w = log_w + log_ratio + twist - twist_prev
        weights = np.exp(log_w - log_w.max())
        ess = weights.sum() ** 2 / (weights**2).sum()
        np.testing.assert_allclose(float(run.ess[i]), ess, rtol=1e-5)
        if abs(ess - threshold * popsize) > 1e-3:
            assert resampled[i] == (ess < threshold * popsize)
        if resampled[i]:
            ancestors = np.asarray(run.ancestors[i])
            x, clean, eps, twist, gradient = x[ancestors], clean[ancestors], eps[ancestors], twist[ancestors], gradient[ancestors]
            log_w = np.full(popsize, -np.log(popsize))
        else:
            assert np.all(np.asarray(run.ancestors[i]) == np.arange(popsize))
            log_w = log_w - np.log(np.exp(log_w).sum())
        std = eta * np.sqrt(sigma_prev[i] ** 2 / sigma[i] ** 2 * (1 - a[i] ** 2 / a_prev[i] ** 2))
        mean = a_prev[i] * clean + np.sqrt(sigma_prev[i] ** 2 - std**2) * eps
        noise = np.asarray(jax.random.normal(jax.random.split(jax.random.fold_in(loop_key, i))[1], (popsize, 1, 1, 1)), np.float64).reshape(popsize)
        x = mean + std * noise + std**2 * gradient
        log_ratio = -std * gradient * noise - std**2 * gradient**2 / 2  # log N(x; mean) - log N(x; mean + shift), closed form
        twist_prev = twist
    log_w = log_w + log_ratio + c * x / alpha - twist_prev  # final: the untempered r(x_T) / alpha
    np.testing.assert_allclose(np.asarray(run.clean).reshape(popsize), x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(run.log_weights), log_w, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(np.asarray(run.rewards), c * x, rtol=1e-5, atol=1e-6)
    assert np.ptp(log_w) > 0.1  # the weights are not trivially uniform
    if threshold == 1.0:
        assert resampled[1] and np.any(np.asarray(run.ancestors[1]) != np.arange(popsize))  # a real resampling


# ---- known answer: a tilted Gaussian mixture ------------------------------------------------------

# two_modes() with r(x) = x_1 and alpha = 4: the tilted target puts 0.731 / 0.269 on the modes, mean x_1 0.987.
TOY_ALPHA, TOY_STEPS, TOY_PARTICLES, TOY_SEEDS = 4.0, 100, 1024, 4
# Tolerances: 4 standard errors of the 4-seed average. scripts/toy_das.py (16 seeds, 1024 particles, T=100)
# measured a per-seed spread of 0.068-0.071 (mean) and 0.016 (mode mass) at both thresholds, so SE = 0.036 /
# 0.008 and 4 SE = 0.14 / 0.032. The T=100 DDIM sampler's own discretisation bias (its modes come out with
# variance 0.22, not 0.25) moves the exact mean by -0.006: well inside.
TOY_MEAN_TOLERANCE, TOY_MASS_TOLERANCE = 0.14, 0.032


def _toy_estimates(alpha, threshold, process="vp"):
    model = two_modes().as_flow() if process == "flow" else two_modes()
    denoiser = make_sampler(model, "auto", TOY_STEPS).bind({}, jnp.zeros((1, 1)), jnp.zeros((1, 1)), 1.0)
    knobs = {"alpha": jnp.float32(alpha), "tempering_gamma": jnp.float32(0.008), "ess_threshold": jnp.float32(threshold), "eta": jnp.float32(1.0)}

    @jax.jit
    def one(key):
        run = das_particles(key, denoiser, lambda z: z.reshape(z.shape[0], -1)[:, 0], TOY_PARTICLES, model.latent_shape, knobs, ssp)
        weights = jax.nn.softmax(run.log_weights)
        x1 = run.clean.reshape(TOY_PARTICLES, -1)[:, 0]
        return jnp.sum(weights * x1), jnp.sum(weights * (x1 > 0)), jnp.sum(run.resampled)

    results = np.asarray([jax.device_get(one(jax.random.key(seed))) for seed in range(TOY_SEEDS)], np.float64)
    target = model.tilted([1.0, 0.0], TOY_ALPHA)
    return results[:, 0].mean() - target.mean()[0], results[:, 1].mean() - target.weights[1], results[:, 2]


@pytest.mark.parametrize("process", ["vp", "flow"])
@pytest.mark.parametrize("threshold", [0.5, 1.0])
def test_das_recovers_the_tilted_mixture(threshold, process):
    # flow: the same mixture as a rectified flow, DAS's stochastic steps the flow's DDIM(eta = 1) transition
    # (scripts-free check, 8 seeds: errors 0.000 / -0.014 (mean) and 0.000 / -0.002 (mass), spreads as VP's).
    mean_error, mass_error, resamplings = _toy_estimates(TOY_ALPHA, threshold, process)
    assert abs(mean_error) < TOY_MEAN_TOLERANCE and abs(mass_error) < TOY_MASS_TOLERANCE, (mean_error, mass_error)
    if threshold == 1.0:
        # Resampling at (nearly) every step: this case fails if the twist is not permuted with the
        # particles (the official code's permutation gives mode mass ~0.998 here).
        assert np.all(resamplings > 50)


def test_untilted_sampling_misses_the_tilted_mixture():
    mean_error, mass_error, _ = _toy_estimates(1e6, 0.5)  # alpha 1e6: plain eta = 1 DDIM sampling
    assert abs(mean_error) > 4 * TOY_MEAN_TOLERANCE and abs(mass_error) > 4 * TOY_MASS_TOLERANCE, (mean_error, mass_error)


def test_das_on_lcm_matches_the_tilted_chain():
    """LCM's 4-step chain (its last step has zero variance) does not sample the mixture itself, so the target
    is its own marginal tilted by exp(r / alpha): estimated from 400k plain chain samples, reweighted."""
    model = two_modes()
    sampler = make_sampler(model, "lcm", 4)
    denoiser = sampler.bind({}, jnp.zeros((1, 1)), jnp.zeros((1, 1)), 1.0)
    assert float(sampler.schedule.coefficients["sigma_prev"][-1]) == 0.0

    @jax.jit
    def plain(key):
        start_key, loop_key = jax.random.split(key)

        def body(x, i):
            return denoiser.step(jax.random.fold_in(loop_key, i), x, denoiser.output(x, i), i, 1.0), None

        return jax.lax.scan(body, jax.random.normal(start_key, (400_000, *model.latent_shape)), jnp.arange(4))[0][:, 0, 0, 0]

    x1 = np.asarray(plain(jax.random.key(99)), np.float64)
    tilt = np.exp(x1 / TOY_ALPHA - np.max(x1 / TOY_ALPHA))
    tilt /= tilt.sum()
    target_mean, target_mass = tilt @ x1, tilt @ (x1 > 0)
    knobs = {"alpha": jnp.float32(TOY_ALPHA), "tempering_gamma": jnp.float32(0.1), "ess_threshold": jnp.float32(0.5), "eta": jnp.float32(1.0)}

    @jax.jit
    def one(key):
        run = das_particles(key, denoiser, lambda z: z.reshape(z.shape[0], -1)[:, 0], TOY_PARTICLES, model.latent_shape, knobs, ssp)
        weights = jax.nn.softmax(run.log_weights)
        x = run.clean.reshape(TOY_PARTICLES, -1)[:, 0]
        return jnp.all(jnp.isfinite(run.log_weights)), jnp.sum(weights * x), jnp.sum(weights * (x > 0))

    results = np.asarray([jax.device_get(one(jax.random.key(seed))) for seed in range(TOY_SEEDS)], np.float64)
    assert np.all(results[:, 0] == 1)
    assert abs(results[:, 1].mean() - target_mean) < TOY_MEAN_TOLERANCE and abs(results[:, 2].mean() - target_mass) < TOY_MASS_TOLERANCE
    assert target_mass - 0.5 > 4 * TOY_MASS_TOLERANCE  # the tilt is visible on this chain too


# ---- the registered method ------------------------------------------------------------------------


def _toy_context(popsize, steps):
    model = two_modes()
    return model, Context(make_sampler(model, "ddim", steps), linear_reward([1.0, 0.0]), model.image_shape, model.latent_shape, popsize)


def test_das_defaults_are_the_official_sd_config():
    spec = METHODS["das"]
    assert spec.needs_gradient and spec.stochastic_steps and dict(spec.static) == {"resampling": "ssp"}
    assert dict(spec.numeric) == {"alpha": 0.005, "tempering_gamma": 0.008, "ess_threshold": 0.5, "eta": 1.0}


def test_das_returns_the_largest_weight_particle_and_counts_its_budget():
    popsize, steps = 8, 10
    model, context = _toy_context(popsize, steps)
    search = build_method("das", context, {"alpha": 4.0})
    params, problem = search.default_params(), model.problem()
    state = search.init(jax.random.key(0), problem, params)
    state, plain = search.start({}, None, problem, params, state)
    run_key = generation_keys(state.key).evaluate  # the key a later generation's run is given
    state, report = search.step({}, None, problem, params, state)
    assert np.asarray(report.fitness).shape == (1,)
    cost = run_cost(popsize, steps)
    assert cost == {"nfe": popsize * steps, "images": popsize * steps + popsize + 1, "vjp_nfe": popsize * steps}
    spent = {k: int(report.spent[k]) - int(plain.spent[k]) for k in cost}
    assert spent == cost and (search.nfe_per_generation, search.images_per_generation, search.vjp_nfe_per_generation) == tuple(cost.values())
    # The same run by hand: the returned sample is the particle of largest final log weight.
    denoiser = context.sampler.bind({}, problem.context, problem.uncond_context, params.guidance_scale)
    run = das_particles(run_key, denoiser, lambda z: z.reshape(z.shape[0], -1)[:, 0], popsize, model.latent_shape, params.method, ssp)
    best = int(np.argmax(np.asarray(run.log_weights)))
    np.testing.assert_allclose(float(report.fitness[0]), float(run.rewards[best]), rtol=1e-5, atol=1e-6)


def test_das_bad_options_are_one_line_errors():
    _, context = _toy_context(4, 3)
    with pytest.raises(JaxalignError, match="unknown method_params.resampling 'gaussian'; valid: multinomial, residual, ssp, stratified, systematic"):
        build_method("das", context, {"resampling": "gaussian"})
    for threshold in (-0.1, 1.5):
        with pytest.raises(JaxalignError, match="ess_threshold is a fraction of the particles in \\[0, 1\\]"):
            build_method("das", context, {"ess_threshold": threshold})
    with pytest.raises(JaxalignError, match="alpha .* must be positive"):
        build_method("das", context, {"alpha": 0.0})
