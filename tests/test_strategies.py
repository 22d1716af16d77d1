"""Every registered strategy in a Python loop and in lax.scan; CoSyNE's own behaviour."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.errors import JaxalignError
from jaxalign.strategies import STRATEGIES, CoSyNE, is_population_based, make_params, make_strategy

DIMS, POPSIZE, GENERATIONS = 6, 8, 4


def shifted_sphere(x):
    return jnp.sum((x - 0.5) ** 2, axis=-1)


def start(strategy, key):
    params = strategy.default_params
    if is_population_based(strategy):
        population = jax.random.normal(key, (POPSIZE, DIMS))
        return strategy.init(key, population, shifted_sphere(population), params), params
    return strategy.init(key, jnp.zeros(DIMS), params), params


def generation(strategy, params, state, key):
    ask_key, tell_key = jax.random.split(key)
    population, state = strategy.ask(ask_key, state, params)
    state, _ = strategy.tell(tell_key, population, shifted_sphere(population), state, params)
    return state


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_loop_and_scan_agree(name):
    strategy = make_strategy(name, POPSIZE, jnp.zeros(DIMS))
    state, params = start(strategy, jax.random.key(0))
    keys = jax.random.split(jax.random.key(1), GENERATIONS)

    looped = state
    for key in keys:
        looped = generation(strategy, params, looped, key)

    scanned, _ = jax.lax.scan(lambda s, k: (generation(strategy, params, s, k), None), state, keys)

    assert int(looped.generation_counter) == GENERATIONS
    assert np.isfinite(float(looped.best_fitness))
    np.testing.assert_allclose(float(scanned.best_fitness), float(looped.best_fitness), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(scanned.best_solution), np.asarray(looped.best_solution), rtol=1e-4, atol=1e-5)


def test_cosyne_improves_a_simple_function():
    dims = 10
    strategy = CoSyNE(population_size=32, solution=jnp.zeros(dims))
    params = strategy.default_params
    key = jax.random.key(0)
    population = jax.random.normal(key, (32, dims))
    state = strategy.init(key, population, shifted_sphere(population), params)
    initial_best = float(state.best_fitness)
    for key in jax.random.split(jax.random.key(1), 60):
        state = generation(strategy, params, state, key)
    # The initial best is ~dims/4 * 2 for N(0,1) draws; 60 generations get within a few percent of 0.
    assert float(state.best_fitness) < 0.1 * initial_best
    assert float(state.best_fitness) < 0.2


def test_cosyne_reference_defaults():
    strategy = CoSyNE(population_size=16, solution=jnp.zeros(4))
    assert strategy.tournament_size == 2
    assert strategy.permute_all is True
    assert strategy.elite_ratio == 0.01
    assert strategy.num_elites == 1  # int(0.16) rounds to 0; evosax keeps at least one
    assert float(strategy.default_params.mutation_std) == pytest.approx(0.1)
    assert float(strategy.default_params.mutation_probability) == 1.0


@pytest.mark.parametrize("permute_all", [True, False])
def test_cosyne_permutation_shuffles_within_coordinates(permute_all):
    strategy = CoSyNE(population_size=12, solution=jnp.zeros(5), permute_all=permute_all)
    population = jax.random.normal(jax.random.key(0), (12, 5))
    fitness = shifted_sphere(population)
    order = jnp.argsort(fitness)
    permuted = strategy._permute(jax.random.key(3), population[order], fitness[order])
    # Each coordinate keeps its multiset of values: CoSyNE recombines, it does not invent values.
    np.testing.assert_allclose(np.sort(np.asarray(permuted), axis=0), np.sort(np.asarray(population), axis=0))
    changed = np.asarray(permuted != population[order])
    assert changed.any()
    if not permute_all:
        # The best member has permutation probability 0 and keeps all its coordinates.
        assert not changed[0].any()


def test_cosyne_ask_returns_children_then_permutations():
    strategy = CoSyNE(population_size=8, solution=jnp.zeros(3), num_children=2)
    params = strategy.default_params.replace(mutation_std=jnp.float32(0.0))
    population = jnp.arange(24, dtype=jnp.float32).reshape(8, 3)
    fitness = jnp.arange(8, dtype=jnp.float32)  # member 0 best
    state = strategy.init(jax.random.key(0), population, fitness, params)
    asked, _ = strategy.ask(jax.random.key(1), state, params)
    assert asked.shape == (8, 3)
    parents = np.asarray(population[: strategy.num_parents])
    # Without mutation, each child coordinate comes from a parent (the best quarter) at that coordinate.
    for child in np.asarray(asked[:2]):
        assert all(child[j] in parents[:, j] for j in range(3))


def test_cosyne_tell_keeps_elite():
    strategy = CoSyNE(population_size=4, solution=jnp.zeros(2))
    params = strategy.default_params
    population = jnp.zeros((4, 2)).at[0].set(0.5)
    state = strategy.init(jax.random.key(0), population, shifted_sphere(population), params)
    worse = jnp.full((4, 2), 10.0)
    state, _ = strategy.tell(jax.random.key(1), worse, shifted_sphere(worse), state, params)
    np.testing.assert_allclose(np.asarray(state.population[0]), [0.5, 0.5])
    assert float(state.fitness[0]) == 0.0


def test_cosyne_nan_fitness_ranks_last():
    strategy = CoSyNE(population_size=4, solution=jnp.zeros(2))
    params = strategy.default_params
    population = jnp.arange(8.0).reshape(4, 2)
    fitness = jnp.array([jnp.nan, 3.0, 1.0, 2.0])
    state = strategy.init(jax.random.key(0), population, fitness, params)
    assert float(state.best_fitness) == 1.0
    state, _ = strategy.tell(jax.random.key(1), population, fitness, state, params)
    assert np.isfinite(np.asarray(state.fitness)[:3]).all()
    np.testing.assert_allclose(np.asarray(state.population[0]), [4.0, 5.0])


def test_unknown_strategy_lists_valid_names():
    with pytest.raises(JaxalignError, match="unknown strategy 'Nope'.*CoSyNE.*SNES"):
        make_strategy("Nope", 4, jnp.zeros(2))


def test_strategy_params_overrides_and_unknown_fields():
    strategy = make_strategy("SNES", 4, jnp.zeros(2))
    params = make_params(strategy, {"std_init": 0.25})
    assert float(params.std_init) == 0.25
    with pytest.raises(JaxalignError, match="unknown strategy_params bogus for SNES; valid: .*std_init"):
        make_params(strategy, {"bogus": 1.0})


def test_odd_popsize_for_pgpe_is_a_clear_error():
    with pytest.raises(JaxalignError, match="PGPE"):
        make_strategy("PGPE", 5, jnp.zeros(2))
