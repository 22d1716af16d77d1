"""Whole runs as one program: seeds vmapped over a lax.scan of generations, against the runner's host loop.

    python scripts/benchmark_scan.py [--seeds 3] [--repeats 3] [--config.<field>=<value> ...]

Both sides run the same search (default config: the embedded model, popsize 16, 10 generations after generation 0,
one prompt per seed). The host loop is what ``jaxalign run`` does per generation, less the files: one compiled step
call and a fetch of its report, seed after seed (the compiled steps are shared by the seeds). The scanned side is
:func:`jaxalign.search.scanned` vmapped over the seeds' problems and states: one compiled call for every seed and
generation. Compile times are measured apart; run times are the median of --repeats whole runs after a warm-up,
with block_until_ready. Both sides' final best fitness must agree (checked).
"""

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.config import apply_override, default_config
from jaxalign.run import build, make_problem
from jaxalign.search import scanned


def median_seconds(fn, repeats: int) -> tuple[float, object]:
    result = jax.block_until_ready(fn())  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args, overrides = parser.parse_known_args()
    config = default_config()
    for override in overrides:
        apply_override(config, override)
    job = build(config)
    search, params, generations = job.search, job.search_params, config.steps
    problems, keys = zip(*(make_problem(job, config.prompts[0], seed) for seed in range(args.seeds)))
    states = [search.init(key, problem, params) for key, problem in zip(keys, problems)]

    arguments = (job.model_params, job.reward_params, problems[0], params, states[0])
    began = time.perf_counter()
    first = search.start.lower(*arguments).compile()
    step = search.step.lower(*arguments).compile()  # the state's types do not change
    loop_compile = time.perf_counter() - began

    def host_loop():
        bests = []
        for problem, state in zip(problems, states):
            state, report = first(job.model_params, job.reward_params, problem, params, state)
            jax.device_get(report.replace(images=None))
            for _ in range(generations):
                state, report = step(job.model_params, job.reward_params, problem, params, state)
                jax.device_get(report.replace(images=None))  # the runner fetches every generation's report
            bests.append(state.best_fitness)
        return jnp.stack(bests)

    stack = lambda trees: jax.tree.map(lambda *x: jnp.stack(x), *trees)  # noqa: E731
    whole = jax.jit(jax.vmap(scanned(search, generations), in_axes=(None, None, 0, None, 0)))
    scan_arguments = (job.model_params, job.reward_params, stack(problems), params, stack(states))
    began = time.perf_counter()
    whole = whole.lower(*scan_arguments).compile()
    scan_compile = time.perf_counter() - began

    loop_s, loop_best = median_seconds(host_loop, args.repeats)
    scan_s, (final, _, _) = median_seconds(lambda: whole(*scan_arguments), args.repeats)
    np.testing.assert_allclose(np.asarray(final.best_fitness), np.asarray(loop_best), rtol=1e-4)

    print(f"hardware: {platform.machine()}, {os.cpu_count()} CPU cores, {jax.devices()[0].device_kind}; jax {jax.__version__}")
    print(f"job: {config.method} {config.method_params.to_dict()}, popsize {config.popsize}, {generations} generations + generation 0, {config.num_inference_steps} steps, {config.height}x{config.width}, {args.seeds} seeds")
    print(f"host loop: compile {loop_compile:.2f} s, run {loop_s:.3f} s ({loop_s / args.seeds:.3f} s per seed)")
    print(f"scanned, seeds vmapped: compile {scan_compile:.2f} s, run {scan_s:.3f} s ({scan_s / args.seeds:.3f} s per seed)")
    print(f"run-time ratio host loop / scanned: {loop_s / scan_s:.2f}; compile ratio: {loop_compile / scan_compile:.2f}")


if __name__ == "__main__":
    main()
