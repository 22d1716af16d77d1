"""Every alignment method through the shared runner, and the pieces that can be checked exactly."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import small_config

from jaxalign.errors import JaxalignError
from jaxalign.methods import METHODS, RESAMPLERS, Context, beam_widths, noise_loss, search_schedule, sphere_neighbours, tempering
from jaxalign.run import build, make_problem, run

ALL_METHODS = sorted(METHODS)


def method_config(method, **changes):
    # Brightness is differentiable and weight-free; popsize 4 and 4 generations keep each method fast. Methods
    # that steer stochastic denoising steps need a few of them (with 2 they lose to deterministic DDIM).
    # DAS backpropagates at every step, which is slow on CPU; 4 steps suffice for it.
    steps = {"num_inference_steps": 4 if method == "das" else 6} if METHODS[method].needs_ddim else {}
    return small_config(method=method, rewards={"brightness": 1.0}, popsize=4, steps=4, **{**steps, **changes})


@pytest.mark.parametrize("method", ALL_METHODS)
def test_method_improves_on_baseline_and_counts_its_budget(method, embedded, tmp_path):
    job = build(method_config(method), embedded)
    (summary,) = run(job, tmp_path, progress=False)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 5
    # Every method beats the unaligned baseline, and its own generations beat its generation 0.
    assert summary["best_fitness"] > summary["baseline_fitness"]
    assert summary["best_fitness"] > lines[0]["initial_population_best_fitness"]
    # The budget is counted the same way everywhere: generation 0 plus equal increments.
    search = job.search
    for generation, line in enumerate(lines):
        assert line["nfe"] == search.initial_nfe + generation * search.nfe_per_generation
        assert line["images"] == search.initial_images + generation * search.images_per_generation
        assert line["vjp_nfe"] == search.initial_vjp_nfe + generation * search.vjp_nfe_per_generation
    assert summary["method"] == method
    assert (summary["vjp_nfe"] > 0) == METHODS[method].needs_gradient
    best = np.asarray([line["best_fitness"] for line in lines])
    assert np.all(np.diff(best) >= 0)


def test_dno_gradient_matches_finite_differences(embedded):
    job = build(method_config("dno", num_inference_steps=2), embedded)
    problem, _ = make_problem(job, job.prompts[0], 0)
    context = Context(job.sampler, _objective(job), (32, 32, 3), job.latent_shape, 4, True, None)
    loss = jax.jit(lambda z: noise_loss(context)(job.model_params, problem, job.search_params, z)[0])
    z = jax.random.normal(jax.random.key(1), (2, int(np.prod(job.latent_shape))))
    direction = jax.random.normal(jax.random.key(2), z.shape)
    analytic = float(jnp.vdot(jax.grad(loss)(z), direction))
    h = 1e-2
    numeric = float((loss(z + h * direction) - loss(z - h * direction)) / (2 * h))
    assert analytic == pytest.approx(numeric, rel=2e-2, abs=1e-5)
    assert abs(analytic) > 1e-4  # the check is not vacuous


def _objective(job):
    from jaxalign.rewards import weighted_sum

    return weighted_sum(dict(job.config.rewards))


@pytest.mark.parametrize("scheme", sorted(RESAMPLERS))
def test_resampling_is_unbiased(scheme):
    weights = jnp.asarray([0.4, 0.25, 0.15, 0.1, 0.05, 0.03, 0.015, 0.005])
    k, draws = weights.shape[0], 4000
    indices = jax.vmap(lambda key: RESAMPLERS[scheme](key, weights))(jax.random.split(jax.random.key(0), draws))
    assert indices.shape == (draws, k)
    counts = jax.vmap(lambda i: jnp.bincount(i, length=k))(indices)
    assert np.all(np.asarray(counts.sum(axis=1)) == k)
    mean = np.asarray(counts.mean(axis=0))
    # Multinomial counts have the largest variance, K w (1 - w); allow 4 standard errors of it.
    tolerance = 4 * np.sqrt(k * np.asarray(weights) * (1 - np.asarray(weights)) / draws)
    np.testing.assert_array_less(np.abs(mean - k * np.asarray(weights)), tolerance + 1e-9)
    if scheme in ("systematic", "residual"):
        # These keep at least floor(K w) copies of every particle.
        assert np.all(np.asarray(counts) >= np.floor(k * np.asarray(weights)))


@pytest.mark.parametrize("method", [m for m in ALL_METHODS if METHODS[m].needs_gradient])
def test_gradient_methods_refuse_black_box_rewards(method, embedded):
    config = small_config(method=method, rewards={"jpeg_compressibility": 1.0})
    with pytest.raises(JaxalignError, match=f"method '{method}' needs a differentiable reward"):
        build(config, embedded)


def test_zero_order_neighbours_lie_on_the_cosine_shell():
    pivot = jax.random.normal(jax.random.key(0), (256,))
    neighbours = np.asarray(sphere_neighbours(jax.random.key(1), pivot, 0.95, 6))
    pivot = np.asarray(pivot)
    cosines = neighbours @ pivot / (np.linalg.norm(neighbours, axis=1) * np.linalg.norm(pivot))
    np.testing.assert_allclose(cosines, 0.95, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(neighbours, axis=1), np.linalg.norm(pivot), rtol=1e-5)
    assert len({tuple(np.round(n, 4)) for n in neighbours}) == 6  # distinct directions


def test_zero_order_pivot_moves_only_on_improvement(embedded):
    job = build(method_config("zero_order"), embedded)
    problem, key = make_problem(job, job.prompts[0], 0)
    state = job.search.init(key, problem, job.search_params)
    state, report = job.search.step(job.model_params, problem, job.search_params, state)
    # Generation 0 puts the pivot at the best of the initial population.
    assert float(state.method_state.score) == float(np.nanmax(np.asarray(report.fitness)))
    for _ in range(4):
        previous = state.method_state
        state, report = job.search.step(job.model_params, problem, job.search_params, state)
        best = int(np.nanargmax(np.asarray(report.fitness)))
        moved = not np.array_equal(np.asarray(state.method_state.pivot), np.asarray(previous.pivot))
        assert moved == (float(report.fitness[best]) > float(previous.score))
        assert float(state.method_state.score) == max(float(previous.score), float(report.fitness[best]))


def test_dsearch_schedules():
    mask = search_schedule(20, 0.5, 3.0)
    assert mask.sum() == 10 and mask[-1]
    first_half, second_half = mask[:10].sum(), mask[10:].sum()
    assert second_half > first_half  # exponential: denser near the end
    widths = np.asarray(beam_widths(16, 20, 2.0))
    assert widths[0] == 16 and widths[-1] == round(16 * np.exp(-2.0)) and np.all(np.diff(widths) <= 0)
    lam = np.asarray(tempering(10, 0.1))
    assert lam[0] == 0 and lam[-1] == pytest.approx(1.0) and np.all(np.diff(lam) > 0)


def test_method_options_are_checked(embedded):
    with pytest.raises(JaxalignError, match="unknown method_params bogus for method 'dno'"):
        build(small_config(method="dno", rewards={"brightness": 1.0}, method_params={"bogus": 1.0}), embedded)
    with pytest.raises(JaxalignError, match="set space='noise'"):
        build(small_config(method="random", space="rotation"), embedded)
    with pytest.raises(JaxalignError, match="popsize must be even"):
        build(small_config(method="dno_zo", popsize=5), embedded)
    with pytest.raises(JaxalignError, match="scheduler='ddim'"):
        build(small_config(method="svdd", scheduler="dpmsolver++"), embedded)
    with pytest.raises(JaxalignError, match="unknown method 'nope'"):
        build(small_config(method="nope"), embedded)
