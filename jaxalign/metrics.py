"""A run's numbers, on the host: each generation's ``metrics.jsonl`` line, the stop rules and the summary.

Line 0 is step 0, the unaligned baseline (the centre latent), with generation 0's population best and mean beside it;
each later line has ``step, best_fitness, mean_fitness, median_fitness, generation_best_fitness``, every reward
component of the best image so far and its population mean, the budget spent so far (images, NFE, backward NFE) and
the generation's wall time. Fitness is higher-is-better (:func:`jaxalign.rewards.oriented`); non-finite values are
``null``. The writers (:mod:`jaxalign.outputs`) store what these functions compute.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from jaxalign.errors import JaxalignError


def generation_line(generation: int, state, report, seconds: float, elapsed: float) -> tuple[dict, np.ndarray]:
    """A prompt's metrics line for ``generation`` and the image it shows (the baseline at 0, else the best so far);
    ``state`` is needed at generation 0 only (the baseline lives there)."""
    used = {k: int(v) for k, v in report.spent.items()}
    if generation == 0:
        line, image = _baseline_line(state, report, seconds, used), state.baseline_image
    else:
        line, image = _later_line(generation, report, seconds, used), report.best_image
    line["elapsed_s"] = round(elapsed, 4)
    return line, image


def check_scored(line: dict, prompt: str, popsize: int) -> None:
    """Refuse a generation 0 that scored no image finitely: later generations could only rank NaNs, and a run
    "succeeding" on them says nothing."""
    if line["step"] == 0 and line["best_fitness"] is None and line["initial_population_best_fitness"] is None:
        raise JaxalignError(
            f"generation 0 scored no image finitely (the baseline and all {popsize} candidates of {prompt[:40]!r}): "
            "the reward or a knob makes every candidate NaN or infinite; nothing to search from"
        )  # fmt: skip


def stop_reason(config, line: dict, generation: int) -> str | None:
    """Why a prompt stops after ``generation`` (``target_reward``, ``max_seconds``, ``steps``), or None."""
    if generation and config.target_reward is not None and line["best_fitness"] is not None and line["best_fitness"] >= config.target_reward:
        return "target_reward"
    if generation and config.max_seconds and line["elapsed_s"] >= config.max_seconds:
        return "max_seconds"
    if generation >= config.steps:
        return "steps"
    return None


def summary(job, prompt: str, lines: list[dict], stopped_because: str | None) -> dict:
    """``summary.json``'s content for a prompt searched to the end (without what the run adds: compile time, memory)."""
    config, search = job.config, job.search
    final = lines[-1]
    seconds = [line["wall_s"] for line in lines[1:]]
    mesh = search.mesh
    return {
        "prompt": prompt,
        "model": job.model.name,
        "method": config.method,
        "strategy": search.strategy,
        "method_params": config.method_params.to_dict(),
        "best_solution_is": search.best_solution_is,
        "rewards": dict(config.rewards),
        "maximize": config.maximize,
        "baseline_fitness": lines[0]["best_fitness"],
        "best_fitness": final["best_fitness"],
        "best_components": {k: final[k] for k in config.rewards},
        "baseline_components": {k: lines[0][k] for k in config.rewards},
        "generations": len(lines) - 1,
        "stopped_because": stopped_because or "steps",
        "images": final["images"],
        "nfe": final["nfe"],
        "vjp_nfe": final["vjp_nfe"],
        "seconds_per_generation": round(float(np.median(seconds)), 4) if seconds else None,
        "generation_0_s": lines[0]["wall_s"],
        "search_s": final["elapsed_s"],
        "best_image": f"images/step_{len(lines) - 1:04d}.png",
        "device": jax.devices()[0].device_kind,
        "num_devices": jax.device_count(),
        "population_sharded_over": mesh.shape["population"] if mesh else 1,
        "prompts_sharded_over": mesh.shape["prompts"] if mesh else 1,
        "params_split": _params_split((job.model_params, job.reward_params)),
        "config": config.to_dict(),
    }


def _params_split(params) -> float:
    """The model weights' bytes over those one device holds: 1 unsharded, up to the device count when split."""
    leaves = [x for x in jax.tree.leaves(params) if isinstance(x, jax.Array)]
    held = sum(x.addressable_shards[0].data.nbytes for x in leaves)
    return round(sum(x.nbytes for x in leaves) / held, 2) if held else 1.0


def _baseline_line(state, report, seconds: float, used: dict) -> dict:
    fitness = _num(state.baseline_fitness)
    line = {"step": 0, "baseline": True, "best_fitness": fitness, "mean_fitness": fitness, "median_fitness": fitness}
    line.update({name: _num(value) for name, value in state.baseline_components.items()})
    line.update(
        initial_population_best_fitness=_num(report.best_fitness),
        initial_population_mean_fitness=_nanstat(np.nanmean, report.fitness),
        num_nonfinite=int(report.num_nonfinite),
        wall_s=round(seconds, 4),
        **used,
    )
    return line


def _later_line(generation: int, report, seconds: float, used: dict) -> dict:
    line = {
        "step": generation,
        "best_fitness": _num(report.best_fitness),
        "mean_fitness": _nanstat(np.nanmean, report.fitness),
        "median_fitness": _nanstat(np.nanmedian, report.fitness),
        "generation_best_fitness": _nanstat(np.nanmax, report.fitness),
    }
    for name, value in report.best_components.items():
        line[name] = _num(value)
        line[f"mean_{name}"] = _nanstat(np.nanmean, report.components[name])
    line.update(num_nonfinite=int(report.num_nonfinite), wall_s=round(seconds, 4), **used)
    return line


def _num(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _nanstat(fn, values) -> float | None:
    values = np.asarray(values, np.float64)
    return _num(fn(values)) if np.isfinite(values).any() else None
