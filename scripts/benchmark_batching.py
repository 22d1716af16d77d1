"""Multi-prompt batching: seconds per generation for P prompts in one vmapped step vs one prompt at a time.

    python scripts/benchmark_batching.py [--prompts 4] [--repeats 5] [--config.<field>=<value> ...]

Both sides run the same compiled search (default config: embedded model, 64x64, 10 DDIM steps, popsize 16);
compile time is measured separately and excluded; each timing is the median of --repeats generations after a
warm-up, with block_until_ready.
"""

import argparse
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxalign.config import apply_override, default_config
from jaxalign.run import build, make_problem
from jaxalign.search import batched


def time_steps(first, step, args, repeats):
    state = args[-1]
    state, report = first(*args[:-1], state)  # generation 0
    jax.block_until_ready(report)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        state, report = step(*args[:-1], state)
        jax.block_until_ready(report)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args, overrides = parser.parse_known_args()
    config = default_config()
    for override in overrides:
        apply_override(config, override)
    job = build(config)
    prompts = [f"prompt number {i}" for i in range(args.prompts)]
    problems, keys = zip(*(make_problem(job, p, i) for i, p in enumerate(prompts)))
    init, first, step = batched(job.search)

    stacked = jax.tree.map(lambda *x: jnp.stack(x), *problems)
    states = init(jnp.stack(keys), stacked, job.search_params)
    start = time.perf_counter()
    batch_step = step.lower(job.model_params, job.reward_params, stacked, job.search_params, states).compile()
    compile_batched = time.perf_counter() - start
    batched_s = time_steps(first, batch_step, (job.model_params, job.reward_params, stacked, job.search_params, states), args.repeats)

    one = jax.tree.map(lambda x: x[:1], stacked)
    one_state = jax.tree.map(lambda x: x[:1], states)
    start = time.perf_counter()
    single_step = step.lower(job.model_params, job.reward_params, one, job.search_params, one_state).compile()
    compile_single = time.perf_counter() - start
    single_s = time_steps(first, single_step, (job.model_params, job.reward_params, one, job.search_params, one_state), args.repeats)

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    print(f"hardware: {jax.devices()[0].device_kind} x{jax.device_count()} ({cpu}, {jax.local_device_count()} devices), jax {jax.__version__}")
    print(f"config: {config.height}x{config.width}, {config.num_inference_steps} {config.scheduler} steps, popsize {config.popsize}, {config.method} {config.method_params.to_dict()}, {args.prompts} prompts")
    print(f"one prompt at a time: {single_s:.3f} s/generation per prompt -> {args.prompts * single_s:.3f} s for {args.prompts} prompts (compile {compile_single:.2f} s)")
    print(f"batched ({args.prompts} prompts per step): {batched_s:.3f} s/generation (compile {compile_batched:.2f} s)")
    print(f"speed-up: {args.prompts * single_s / batched_s:.2f}x")


if __name__ == "__main__":
    main()
