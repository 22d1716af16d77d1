"""FK steering (Singhal et al. 2025, arXiv 2501.06848): the official defaults and resampling steps, each potential's
weights against a hand-written transcription of the official ``FKD.resample``, a whole run replayed step by step
(weights, ESS decisions, ancestors rebuilt from their keys, stored rewards), the tilted Gaussian mixture it should
sample as the particles grow, its budget and its one-line errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.errors import JaxalignError
from jaxalign.methods import METHODS, Context, build_method
from jaxalign.methods.base import generation_keys
from jaxalign.methods.fk_steering import POTENTIALS, fk_particles, potential_weights, resampling_steps, run_cost
from jaxalign.resampling import multinomial
from jaxalign.sampler import make_sampler
from jaxalign.toy import linear_reward, two_modes


def test_defaults_are_the_official_launch_script_and_fkd_class():
    # text_to_image/launch_eval_runs.py: lmbda 10.0, eta 1.0, resample_frequency 5, resample_t_start 5,
    # resample_t_end 30, potential_type "diff", adaptive_resampling off; fkd_class.py: reward_min_value 0.0, ESS < 0.5 N.
    spec = METHODS["fk_steering"]
    assert spec.stochastic_steps and not spec.needs_gradient
    assert dict(spec.static) == {"potential_type": "diff", "resample_frequency": 5, "resample_t_start": 5, "resample_t_end": 30, "adaptive_resampling": False}
    assert dict(spec.numeric) == {"lmbda": 10.0, "eta": 1.0, "reward_min_value": 0.0, "ess_threshold": 0.5}
    assert sorted(POTENTIALS) == ["add", "diff", "max", "rt"]


@pytest.mark.parametrize(
    "steps, start, frequency, end, expected",
    [
        (100, 5, 5, 30, [5, 10, 15, 20, 25, 30, 99]),  # the official defaults: t_end inclusive, the last step added
        (10, 5, 5, 30, [5, 9]),  # jaxalign's default 10 steps: the interval is cut at the last step
        (5, -1, 1, 100, [0, 1, 2, 3, 4]),  # the official demo's start -1
        (12, 3, 4, 20, [3, 7, 11]),
    ],
)
def test_resampling_steps_are_the_official_interval(steps, start, frequency, end, expected):
    assert np.flatnonzero(resampling_steps(steps, start, frequency, end)).tolist() == expected


def _official_weights(potential, candidates, previous, product, lam, last):
    """fkd_class.py FKD.resample's weight computation, written out in NumPy."""
    r = candidates.astype(np.float64)
    if potential == "max":
        r = np.maximum(r, previous)
        w = np.exp(lam * r)
    elif potential == "add":
        r = r + previous
        w = np.exp(lam * r)
    elif potential == "diff":
        w = np.exp(lam * (r - previous))
    else:
        w = np.exp(lam * r)
    if last and potential in ("max", "add", "rt"):
        w = np.exp(lam * r) / product
    w = np.clip(w, 0, 1e10)
    w[np.isnan(w)] = 0.0
    return r, w


@pytest.mark.parametrize("last", [False, True])
@pytest.mark.parametrize("potential", sorted(POTENTIALS))
def test_potential_weights_match_the_official_rules(potential, last):
    # Candidates above and below the stored values (max and add differ from rt), a product far from 1 (the final
    # correction matters), a NaN reward (weight 0) and one large enough to hit the 1e10 clamp.
    candidates = np.array([0.3, -0.4, 1.2, np.nan, 3.0], np.float32)
    previous = np.array([0.5, -0.1, 0.2, 0.1, 0.0], np.float32)
    product = np.array([2.0, 0.5, 4.0, 1.0, 3.0], np.float32)
    lam = 8.0
    stored, weights = potential_weights(POTENTIALS[potential], jnp.asarray(candidates), jnp.asarray(previous), jnp.asarray(product), jnp.float32(lam), last)
    expected_stored, expected_weights = _official_weights(potential, candidates, previous, product, lam, last)
    np.testing.assert_allclose(np.asarray(stored), expected_stored, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(weights), expected_weights, rtol=1e-5)
    assert np.asarray(weights)[3] == 0.0


def _toy_denoiser(steps):
    model = two_modes()
    return model, make_sampler(model, "auto", steps).bind({}, jnp.zeros((1, 1)), jnp.zeros((1, 1)), 1.0)


def _first_coordinate(z):
    return z.reshape(z.shape[0], -1)[:, 0]


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("potential", sorted(POTENTIALS))
def test_a_run_replays_the_official_resampling_step_by_step(potential, adaptive):
    popsize, steps = 8, 10
    model, denoiser = _toy_denoiser(steps)
    knobs = {"lmbda": jnp.float32(3.0), "eta": jnp.float32(1.0), "reward_min_value": jnp.float32(-0.5), "ess_threshold": jnp.float32(0.5)}
    schedule = resampling_steps(steps, 1, 3, 7)  # steps 1, 4, 7 and the last, 9
    key = jax.random.key(3)
    run = jax.jit(lambda k: fk_particles(k, denoiser, _first_coordinate, popsize, model.latent_shape, knobs, potential, schedule, adaptive))(key)
    _, loop_key = jax.random.split(key)
    stored, product = np.full(popsize, -0.5), np.ones(popsize)
    moved = 0
    for i in range(steps):
        ancestors = np.asarray(run.ancestors[i])
        if not schedule[i]:
            assert np.isnan(np.asarray(run.candidates[i])).all() and (ancestors == np.arange(popsize)).all() and not run.resampled[i]
            continue
        candidates = np.asarray(run.candidates[i], np.float64)
        new_stored, weights = _official_weights(potential, candidates, stored, product, 3.0, i == steps - 1)
        np.testing.assert_allclose(np.asarray(run.weights[i]), weights, rtol=1e-4)
        normalised = weights / weights.sum()
        ess = 1.0 / np.sum(normalised**2)
        np.testing.assert_allclose(float(run.ess[i]), ess, rtol=1e-4)
        expected_move = ess < 0.5 * popsize if (adaptive or i == steps - 1) else True
        assert bool(run.resampled[i]) == expected_move, i
        if expected_move:
            resample_key, _ = jax.random.split(jax.random.fold_in(loop_key, i))
            np.testing.assert_array_equal(ancestors, np.asarray(multinomial(resample_key, jnp.asarray(run.weights[i] / run.weights[i].sum()))))
            stored, product = new_stored[ancestors], product[ancestors] * weights[ancestors]
            moved += 1
        else:
            assert (ancestors == np.arange(popsize)).all()
            stored = new_stored
    np.testing.assert_allclose(np.asarray(run.stored), stored, rtol=1e-4, atol=1e-6)
    assert moved >= 1 and (adaptive or moved >= 3)  # without adaptive resampling steps 1, 4 and 7 always move


# ---- known answer: the tilted Gaussian mixture -----------------------------------------------------------------
# two_modes() with r(x) = x_1 and lambda = 1/4: the tilted target p(x) exp(r(x) / 4) puts 0.731 on the positive
# mode, mean x_1 0.987. With the "diff" potential the weights telescope to exp(lambda r(x_T)), so the particles
# follow the target as their number grows (up to the last increment, applied only when the final ESS is low).
# Measured (32 seeds, resampling every 5 steps from step 0, T = 50): 1024 particles, errors 0.013 (mean) and
# 0.009 (mass), per-seed spread 0.114 / 0.030; 256 particles, spread 0.259 / 0.066; lambda 1e-6 (plain sampling),
# errors -0.944 / -0.222. Tolerances: 4 standard errors of the 8-seed average at 1024 particles.
TOY_STEPS, TOY_SEEDS = 50, 8
TOY_MEAN_TOLERANCE, TOY_MASS_TOLERANCE = 0.16, 0.042


def _toy_runs(lam, particles):
    """Per seed: (mean of x_1, mass of the positive mode) of the final particles, and the target's."""
    model, denoiser = _toy_denoiser(TOY_STEPS)
    knobs = {"lmbda": jnp.float32(lam), "eta": jnp.float32(1.0), "reward_min_value": jnp.float32(0.0), "ess_threshold": jnp.float32(0.5)}
    schedule = resampling_steps(TOY_STEPS, 0, 5, TOY_STEPS - 1)

    @jax.jit
    def one(key):
        run = fk_particles(key, denoiser, _first_coordinate, particles, model.latent_shape, knobs, "diff", schedule, False)
        x1 = _first_coordinate(run.clean)
        return jnp.mean(x1), jnp.mean(x1 > 0)

    results = np.asarray([jax.device_get(one(jax.random.key(seed))) for seed in range(TOY_SEEDS)], np.float64)
    target = model.tilted([1.0, 0.0], 4.0)
    return results, np.array([target.mean()[0], target.weights[1]])


def test_fk_steering_particles_follow_the_tilted_mixture():
    results, target = _toy_runs(0.25, 1024)
    mean_error, mass_error = results.mean(axis=0) - target
    assert abs(mean_error) < TOY_MEAN_TOLERANCE and abs(mass_error) < TOY_MASS_TOLERANCE, (mean_error, mass_error)
    few, _ = _toy_runs(0.25, 256)  # fewer particles scatter more around the target (0.259 against 0.114 measured)
    assert few[:, 0].std() > 1.3 * results[:, 0].std(), (few[:, 0].std(), results[:, 0].std())
    untilted, _ = _toy_runs(1e-6, 1024)  # lambda ~ 0: plain eta = 1 DDIM sampling misses the target
    untilted_mean, untilted_mass = untilted.mean(axis=0) - target
    assert abs(untilted_mean) > 4 * TOY_MEAN_TOLERANCE and abs(untilted_mass) > 4 * TOY_MASS_TOLERANCE, (untilted_mean, untilted_mass)


# ---- the registered method ---------------------------------------------------------------------------------------


def _context(popsize=4, steps=10):
    model = two_modes()
    return model, Context(make_sampler(model, "ddim", steps), linear_reward([1.0, 0.0]), model.image_shape, model.latent_shape, popsize)


def test_the_method_returns_every_particle_and_counts_its_budget():
    model, context = _context(popsize=4, steps=10)
    search = build_method("fk_steering", context, {"lmbda": 2.0})
    cost = run_cost(4, 10, 2)  # resampling steps 5 and 9 of 10
    assert cost == {"nfe": 40, "images": 12}
    assert (search.nfe_per_generation, search.images_per_generation, search.vjp_nfe_per_generation) == (40, 12, 0)
    params, problem = search.default_params(), model.problem()
    state = search.init(jax.random.key(0), problem, params)
    state, plain = search.start({}, None, problem, params, state)
    run_key = generation_keys(state.key).evaluate  # the key a later generation's run is given
    state, report = search.step({}, None, problem, params, state)
    assert {k: int(report.spent[k]) - int(plain.spent[k]) for k in cost} == cost
    denoiser = context.sampler.bind({}, problem.context, problem.uncond_context, params.guidance_scale)
    run = fk_particles(run_key, denoiser, _first_coordinate, 4, model.latent_shape, params.method, "diff", resampling_steps(10, 5, 5, 30), False)
    np.testing.assert_allclose(np.asarray(report.fitness), np.asarray(_first_coordinate(run.clean)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"potential_type": "best"}, r"unknown method_params.potential_type 'best'; valid: add, diff, max, rt"),
        ({"resample_frequency": 0}, r"resample_frequency must be at least 1, got 0"),
        ({"resample_frequency": 2.5}, r"method_params.resample_frequency for method .fk_steering. must be a whole number, got 2.5"),
        ({"resample_t_start": -1}, r"\[-1, 30\] must be ordered steps from 0"),
        ({"resample_t_start": 6, "resample_t_end": 4}, r"\[6, 4\] must be ordered steps from 0"),
        ({"lmbda": 0.0}, r"lmbda must be positive, got 0.0"),
        ({"eta": -1.0}, r"eta must be non-negative"),
        ({"ess_threshold": 1.5}, r"ess_threshold is a fraction of the particles in \[0, 1\]"),
        ({"adaptive_resampling": "yes"}, r"adaptive_resampling must be true or false, got 'yes'"),
    ],
)
def test_bad_options_are_one_line_errors(options, message):
    _, context = _context()
    with pytest.raises(JaxalignError, match=message) as error:
        build_method("fk_steering", context, options)
    assert len(str(error.value).splitlines()) == 1 and "'fk_steering'" in str(error.value)  # one line naming the method
