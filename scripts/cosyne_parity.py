"""jaxalign's CoSyNE against evotorch 0.6's Cosyne (the paper's reference) at equal evaluations.

Both start from the same population law, N(0, 1) in every coordinate (the reference's
``randn_intialization``), and minimise the same shifted test functions (optimum at 0.5 in every
coordinate, so the initial mean is not the answer). Evaluations are counted as evotorch counts
them: the first population, then children + permuted population per generation (24 at popsize
16). jaxalign runs in ``reference`` mode (the same generation) and ``equal_budget`` mode (16
images per generation, 1.5x as many generations for the same evaluations).

    python scripts/cosyne_parity.py                       # the table in BENCHMARKS.md
    python scripts/cosyne_parity.py --dims 10 100 --seeds 3 --evaluations 1000
"""

from __future__ import annotations

import argparse
import logging
import math
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.strategies import CoSyNE

OPTIMUM = 0.5


# Each function takes the array namespace (jax.numpy or torch), so both sides score the same formula.
def sphere(x, xp):
    return ((x - OPTIMUM) ** 2).sum(-1)


def rastrigin(x, xp):
    z = x - OPTIMUM
    return 10.0 * z.shape[-1] + (z**2 - 10.0 * xp.cos(2 * math.pi * z)).sum(-1)


def ackley(x, xp):
    z = x - OPTIMUM
    n = z.shape[-1]
    return -20.0 * xp.exp(-0.2 * xp.sqrt((z**2).sum(-1) / n)) - xp.exp(xp.cos(2 * math.pi * z).sum(-1) / n) + 20.0 + math.e


FUNCTIONS = {"sphere": sphere, "rastrigin": rastrigin, "ackley": ackley}
COSYNE_SETTINGS = dict(tournament_size=2, mutation_stdev=0.1, mutation_probability=1.0, permute_all=True, elitism_ratio=0.01)


def generations_for(evaluations: int, first: int, per_generation: int) -> int:
    return max(1, (evaluations - first) // per_generation)


def run_ours(function: str, dims: int, popsize: int, evaluations: int, seeds: int, mode: str = "reference") -> np.ndarray:
    """Best values evaluated by jaxalign's CoSyNE within ``evaluations`` evaluations, for seeds 0..seeds-1
    (vmapped over seeds: one compilation)."""
    fn = lambda x: FUNCTIONS[function](x, jnp)  # noqa: E731
    strategy = CoSyNE(population_size=popsize, solution=jnp.zeros(dims), mode=mode, **COSYNE_SETTINGS)
    params = strategy.default_params
    first_size = strategy.first_population_size
    generations = generations_for(evaluations, first_size, strategy.population_size)

    def generation(state, key):
        ask_key, tell_key = jax.random.split(key)
        population, state = strategy.ask(ask_key, state, params)
        state, _ = strategy.tell(tell_key, population, fn(population), state, params)
        return state, None

    def one_seed(seed):
        first_key, init_key, run_key = jax.random.split(jax.random.key(seed), 3)
        first = jax.random.normal(first_key, (first_size, dims))
        state = strategy.init(init_key, first, fn(first), params)
        state, _ = jax.lax.scan(generation, state, jax.random.split(run_key, generations))
        return state.best_fitness

    return np.asarray(jax.jit(jax.vmap(one_seed))(jnp.arange(seeds)))


def run_evotorch(function: str, dims: int, popsize: int, evaluations: int, seed: int) -> float:
    """Best value evaluated by evotorch's Cosyne, configured as the reference configures it."""
    import torch
    from evotorch import Problem
    from evotorch.algorithms import Cosyne

    class Gaussian(Problem):  # the reference's initialisation: every coordinate N(0, 1)
        def _fill(self, values):
            return values.normal_(0.0, 1.0)

    torch.manual_seed(seed)
    problem = Gaussian("min", lambda x: FUNCTIONS[function](x, torch), solution_length=dims, vectorized=True, initial_bounds=(-1, 1), seed=seed)
    search = Cosyne(problem, popsize=popsize, eta=None, **COSYNE_SETTINGS)
    children = 2 * (popsize // 4)
    for _ in range(generations_for(evaluations, popsize, popsize + children)):
        search.step()
    return float(search.status["best_eval"])  # best ever evaluated, as jaxalign's best_fitness


def compare(functions, dims_list, seeds: int, popsize: int, evaluations: int):
    """One row per (function, dims), yielded as soon as it is measured."""
    for function in functions:
        for dims in dims_list:
            start = time.perf_counter()
            results = {
                "evotorch": [run_evotorch(function, dims, popsize, evaluations, s) for s in range(seeds)],
                "ours_reference": run_ours(function, dims, popsize, evaluations, seeds, "reference"),
                "ours_equal_budget": run_ours(function, dims, popsize, evaluations, seeds, "equal_budget"),
            }
            row = {"function": function, "dims": dims, "seeds": seeds, "evaluations": evaluations}
            for name, values in results.items():
                q1, median, q3 = np.percentile(values, [25, 50, 75])
                row[name] = {"median": float(median), "iqr": float(q3 - q1), "values": [float(v) for v in values]}
            row["seconds"] = round(time.perf_counter() - start, 1)
            yield row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--functions", nargs="+", default=list(FUNCTIONS), choices=list(FUNCTIONS))
    parser.add_argument("--dims", nargs="+", type=int, default=[10, 100, 1000, 16384])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--popsize", type=int, default=16)
    parser.add_argument("--evaluations", type=int, default=2416, help="16 + 24 x 100 generations of evotorch at popsize 16")
    args = parser.parse_args()
    logging.getLogger("evotorch").setLevel(logging.WARNING)  # one INFO line per problem otherwise
    import evotorch
    import torch

    print(f"hardware: {platform.processor() or platform.machine()}, jax {jax.__version__} on {jax.devices()[0].device_kind}, evotorch {evotorch.__version__}, torch {torch.__version__}")
    print(f"popsize {args.popsize}, {args.evaluations} evaluations, {args.seeds} seeds; median best [IQR]; lower is better")
    print("| function | dims | evotorch Cosyne | jaxalign reference mode | jaxalign equal_budget mode | ours/evotorch (reference mode) |")
    print("|---|---|---|---|---|---|")
    for row in compare(args.functions, args.dims, args.seeds, args.popsize, args.evaluations):
        cells = [f"{row[k]['median']:.4g} [{row[k]['iqr']:.3g}]" for k in ("evotorch", "ours_reference", "ours_equal_budget")]
        ratio = row["ours_reference"]["median"] / row["evotorch"]["median"]
        print(f"| {row['function']} | {row['dims']} | {' | '.join(cells)} | {ratio:.3f} |", flush=True)


if __name__ == "__main__":
    main()
