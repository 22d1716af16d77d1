"""The compiled generation step: compile once, baseline, best-so-far tracking, direction, failures."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.rewards import Objective, oriented, weighted_sum
from jaxalign.run import make_problem
from jaxalign.methods import Context, build_method


def run_generations(job, generations, problem=None, key=None, params=None):
    if problem is None:
        problem, key = make_problem(job, "a red circle", 0)
    params = job.search_params if params is None else params
    state = job.search.init(key, problem, params)
    reports = []
    for _ in range(generations):
        state, report = job.search.advance(job.model_params, job.reward_params, problem, params, state)
        reports.append(jax.device_get(report))
    return problem, state, reports


def test_nothing_recompiles_after_the_first_generation(small_job):
    problem, key = make_problem(small_job, "a red circle", 0)
    state = small_job.search.init(key, problem, small_job.search_params)
    state, _ = small_job.search.start(small_job.model_params, small_job.reward_params, problem, small_job.search_params, state)
    state, _ = small_job.search.step(small_job.model_params, small_job.reward_params, problem, small_job.search_params, state)
    compiled = small_job.search.step._cache_size()
    other_params = small_job.search_params.replace(guidance_scale=jnp.float32(2.0))
    for params in (small_job.search_params, other_params, small_job.search_params):
        state, report = small_job.search.step(small_job.model_params, small_job.reward_params, problem, params, state)
    other_problem, _ = make_problem(small_job, "another prompt", 1)
    small_job.search.step(small_job.model_params, small_job.reward_params, other_problem, small_job.search_params, state)
    assert small_job.search.step._cache_size() == compiled
    assert int(state.generation) == 5


def test_baseline_is_the_image_of_the_centre_latent(small_job):
    problem, state, _ = run_generations(small_job, 1)
    expected = small_job.context.sampler.sample(small_job.model_params, problem.centre[None], problem.context, problem.uncond_context, 7.5)[0]
    np.testing.assert_allclose(np.asarray(state.baseline_image), np.asarray(expected), atol=1e-4)
    total, components = weighted_sum(dict(small_job.config.rewards)).fn(expected[None], small_job.search_params.reward_weights)
    np.testing.assert_allclose(float(state.baseline_fitness), float(total[0]), rtol=1e-5)


def test_best_so_far_is_the_running_maximum_and_its_image_scores_it(small_job):
    problem, state, reports = run_generations(small_job, 4)
    seen = np.concatenate([r.fitness for r in reports])
    bests = [float(r.best_fitness) for r in reports]
    assert bests == sorted(bests)
    assert bests[-1] == pytest.approx(float(np.nanmax(seen)))
    assert bests[-1] >= float(state.baseline_fitness)
    # The reported best image was kept from the generation's own outputs: scoring it gives the best fitness.
    total, components = weighted_sum(dict(small_job.config.rewards)).fn(state.best_image[None], small_job.search_params.reward_weights)
    assert float(total[0]) == pytest.approx(bests[-1], rel=1e-5)
    for name, value in reports[-1].best_components.items():
        assert float(components[name][0]) == pytest.approx(float(value), rel=1e-5)
    # And the best solution maps to the latent that produced it.
    latent = small_job.search.best_latent(small_job.search_params, state.best_solution, problem)
    image = small_job.context.sampler.sample(
        small_job.model_params, latent[None], problem.context, problem.uncond_context, 7.5
    )
    np.testing.assert_allclose(np.asarray(image[0]), np.asarray(state.best_image), atol=1e-4)


def _search(job, objective, strategy="CoSyNE"):
    context = Context(job.context.sampler, objective, (job.config.height, job.config.width, 3), job.context.latent_shape, job.config.popsize)
    return build_method("evolution", context, {"strategy": strategy})  # reference defaults (e.g. SNES std 0.2)


def test_minimising_keeps_the_smallest(small_job):
    search = _search(small_job, oriented(weighted_sum({"brightness": 1.0}), maximize=False))
    problem, key = make_problem(small_job, "a red circle", 0)
    params = search.default_params()
    state = search.init(key, problem, params)
    seen, fitness = [], []
    for _ in range(3):
        state, report = search.advance(small_job.model_params, small_job.reward_params, problem, params, state)
        seen.append(np.asarray(report.components["brightness"]))
        fitness.append(np.asarray(report.fitness))
    np.testing.assert_allclose(np.concatenate(fitness), -np.concatenate(seen), rtol=1e-6)  # negated once, and only once
    assert float(state.best_components["brightness"]) == pytest.approx(float(np.min(np.concatenate(seen))))
    assert float(state.best_fitness) == pytest.approx(-float(state.best_components["brightness"]))
    assert float(state.best_components["brightness"]) <= float(state.baseline_components["brightness"])


def test_nonfinite_scores_rank_last_and_are_counted(small_job):
    brightness = weighted_sum({"brightness": 1.0})

    def flaky(images, weights, *unused):
        total, components = brightness.fn(images, weights)
        broken = (jnp.arange(images.shape[0]) % 2 == 1) | (total > jnp.median(total))
        total = jnp.where(broken, jnp.nan, total)
        return total, {"brightness": total}

    search = _search(small_job, Objective(flaky, {"brightness": 1.0}, True), strategy="SNES")
    problem, key = make_problem(small_job, "a red circle", 0)
    params = search.default_params()
    state, _ = search.start(small_job.model_params, small_job.reward_params, problem, params, search.init(key, problem, params))
    for _ in range(3):
        state, report = search.step(small_job.model_params, small_job.reward_params, problem, params, state)
        assert int(report.num_nonfinite) >= small_job.config.popsize // 2
        assert np.isnan(report.fitness).sum() == int(report.num_nonfinite)
        assert np.isfinite(float(report.best_fitness))
    assert np.isfinite(np.asarray(state.method_state.mean)).all()


def test_generations_compose_under_lax_scan(small_job):
    problem, key = make_problem(small_job, "a red circle", 0)
    params = small_job.search_params
    _, looped, _ = run_generations(small_job, 3, problem, key)

    def body(state, _):
        state, report = small_job.search.step(small_job.model_params, small_job.reward_params, problem, params, state)
        return state, report.best_fitness

    first, _ = small_job.search.start(small_job.model_params, small_job.reward_params, problem, params, small_job.search.init(key, problem, params))
    scanned, bests = jax.jit(lambda s: jax.lax.scan(body, s, length=2))(first)
    np.testing.assert_allclose(float(scanned.best_fitness), float(looped.best_fitness), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(scanned.best_image), np.asarray(looped.best_image), atol=1e-4)
    assert list(np.asarray(bests)) == sorted(np.asarray(bests))


@pytest.mark.parametrize("strategy", ["CoSyNE", "SNES"])  # a first archive, and a generation 0 of the baseline alone
def test_scanned_generations_equal_the_host_loop_and_vmap_over_seeds(small_job, strategy):
    from jaxalign.search import scanned

    search = _search(small_job, small_job.context.objective, strategy=strategy)
    params = search.default_params()
    problems, keys = zip(*(make_problem(small_job, "a red circle", seed) for seed in (0, 1)))
    looped = []
    for problem, key in zip(problems, keys):
        state = search.init(key, problem, params)
        fitness = []
        for _ in range(3):
            state, report = search.advance(small_job.model_params, small_job.reward_params, problem, params, state)
            fitness.append(np.asarray(report.fitness))
        looped.append((state, fitness))
    stack = lambda trees: jax.tree.map(lambda *x: jnp.stack(x), *trees)  # noqa: E731
    problem, states = stack(problems), jax.vmap(search.init, in_axes=(0, 0, None))(jnp.stack(keys), stack(problems), params)
    state, first, later = jax.jit(jax.vmap(scanned(search, 2), in_axes=(None, None, 0, None, 0)))(small_job.model_params, small_job.reward_params, problem, params, states)
    for i, (loop_state, fitness) in enumerate(looped):
        np.testing.assert_allclose(np.asarray(first.fitness[i]), fitness[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(later.fitness[i]), np.stack(fitness[1:]), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(float(state.best_fitness[i]), float(loop_state.best_fitness), rtol=1e-5)
        np.testing.assert_allclose(np.asarray(state.best_image[i]), np.asarray(loop_state.best_image), atol=1e-5)
    assert later.images is None and int(state.generation[0]) == 3
