"""Running a configured search and writing its outputs.

:func:`build` turns a config into a :class:`Job` (model, compiled-step inputs, prompts) and does
every check that can fail on bad input *before* anything is written. :func:`run` then searches
each prompt with the same compiled generation step and writes, per prompt:

* ``metrics.jsonl``: line 0 is step 0, the unaligned baseline (the centre latent); then one line
  per generation with ``step, best_fitness, mean_fitness, median_fitness, wall_s``, every reward
  component of the best image so far and its population mean, images and NFE used so far;
* ``images/baseline.png`` and ``images/step_NNNN.png`` (the best image so far, taken from the
  generation's own outputs);
* ``summary.json``, ``fitness.png``, and ``best_solution.npy`` / ``best_latent.npy``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxalign.checkpoint import Checkpointer
from jaxalign.config import read_prompts, validate
from jaxalign.errors import JaxalignError
from jaxalign.model import DiffusionModel, load_model
from jaxalign.rewards import weighted_sum
from jaxalign.sampler import make_sampler
from jaxalign.search import Problem, Search, SearchParams, make_search
from jaxalign.spaces import SPACES
from jaxalign.strategies import make_params, make_strategy


@dataclasses.dataclass
class Job:
    config: Any
    model: DiffusionModel
    model_params: Any
    search: Search
    search_params: SearchParams
    prompts: list[str]
    space: Any
    sampler: Any
    latent_shape: tuple[int, int, int]


def build(config) -> Job:
    """Everything a run needs, built and checked; raises JaxalignError on bad input."""
    validate(config)
    prompts = read_prompts(config)
    model, model_params = load_model(config.model, dtype=config.dtype, seed=config.seed)
    latent_shape = model.latent_shape(config.height, config.width)
    space = SPACES[config.space]()
    unknown = sorted(set(config.space_params) - set(space.default_params))
    if unknown:
        valid = ", ".join(sorted(space.default_params)) or "(none)"
        raise JaxalignError(f"unknown space_params {', '.join(unknown)} for space {config.space!r}; valid: {valid}")
    centre_solution = space.init(jnp.zeros(latent_shape, jnp.float32))
    strategy = make_strategy(config.strategy, config.popsize, centre_solution)
    strategy_params = make_params(strategy, dict(config.strategy_params))
    objective = weighted_sum(dict(config.rewards))
    sampler = make_sampler(model, config.scheduler, config.num_inference_steps)
    search = make_search(
        sampler=sampler,
        space=space,
        strategy=strategy,
        objective=objective,
        latent_shape=latent_shape,
        image_shape=(config.height, config.width, 3),
        maximize=config.maximize,
    )
    search_params = search.default_params(
        strategy_overrides=strategy_params,
        space_overrides=dict(config.space_params),
        guidance_scale=config.guidance_scale,
    )
    return Job(config, model, model_params, search, search_params, prompts, space, sampler, latent_shape)


def check_workdir(workdir: str | Path) -> Path:
    """Fail early, before any output, when the workdir cannot be written."""
    path = Path(workdir).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise JaxalignError(f"workdir {path} exists and is not a directory")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise JaxalignError(f"workdir {path} is not writable ({existing} is not a writable directory)")
    return path


def make_problem(job: Job, prompt: str, index: int) -> tuple[Problem, jax.Array]:
    """The prompt's conditioning and centre latent, and the key its search starts from."""
    key = jax.random.fold_in(jax.random.key(job.config.seed), index)
    centre_key, search_key = jax.random.split(key)
    contexts = job.model.encode_prompts(job.model_params, [prompt, job.config.negative_prompt])
    centre = jax.random.normal(centre_key, job.latent_shape, jnp.float32)
    return Problem(context=contexts[0], uncond_context=contexts[1], centre=centre), search_key


def run(job: Job, workdir: str | Path, progress: bool = True, resume: bool = False) -> list[dict]:
    """Search every prompt of the job, writing outputs under ``workdir``.

    With ``resume``, prompts whose ``summary.json`` exists are skipped and an unfinished prompt
    continues from its newest checkpoint; the config must be the one the workdir was started with.
    """
    workdir = check_workdir(workdir)
    config_file = workdir / "config.json"
    if resume and config_file.is_file():
        check_same_config(json.loads(config_file.read_text()), job.config.to_dict())
    workdir.mkdir(parents=True, exist_ok=True)
    _write_json(config_file, job.config.to_dict())
    if job.config.compilation_cache_dir:
        enable_compilation_cache(job.config.compilation_cache_dir)
    compiled = None
    summaries = []
    for index, prompt in enumerate(job.prompts):
        out = workdir if len(job.prompts) == 1 else workdir / f"{index:03d}_{_slug(prompt)}"
        if resume and (out / "summary.json").is_file():
            summaries.append(json.loads((out / "summary.json").read_text()))
            continue
        problem, key = make_problem(job, prompt, index)
        state = job.search.init(key, problem, job.search_params)
        compile_s = 0.0
        if compiled is None:  # every prompt has the same shapes: compile once, ahead of time
            start = time.perf_counter()
            compiled = job.search.step.lower(job.model_params, problem, job.search_params, state).compile()
            compile_s = time.perf_counter() - start
        summary = search_prompt(job, compiled, problem, state, prompt, out, progress, resume)
        summary["compile_s"] = round(compile_s, 3)
        _write_json(out / "summary.json", summary)
        summaries.append(summary)
    if len(job.prompts) > 1:
        _write_json(workdir / "summary.json", {"prompts": summaries})
    return summaries


def check_same_config(saved: dict, current: dict) -> None:
    """Refuse to resume a workdir with a different config, naming the fields that differ."""
    flat_saved, flat_current = _flatten(saved), _flatten(current)
    differ = sorted(k for k in flat_saved.keys() | flat_current.keys() if flat_saved.get(k) != flat_current.get(k))
    if differ:
        raise JaxalignError(f"cannot resume: the config differs from the one this workdir was started with in {', '.join(differ)}")


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key not in ("rewards", "strategy_params", "space_params"):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def enable_compilation_cache(directory: str | Path) -> None:
    """Persist compiled executables across processes, so repeated runs skip compilation."""
    jax.config.update("jax_compilation_cache_dir", str(Path(directory).expanduser().absolute()))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def search_prompt(job: Job, step, problem: Problem, state, prompt: str, out: Path, progress: bool, resume: bool = False) -> dict:
    config, search = job.config, job.search
    (out / "images").mkdir(parents=True, exist_ok=True)
    checkpointer = Checkpointer(out / "checkpoints", config.checkpoint_every) if config.checkpoint_every > 0 else None
    lines: list[dict] = []
    if resume and checkpointer is not None:
        restored = checkpointer.restore_latest(state)
        if restored is not None:
            done, restored_state = restored
            kept = _read_lines(out / "metrics.jsonl")[: done + 1]
            if len(kept) == done + 1:
                lines, state = kept, restored_state
            else:  # lines are written before each checkpoint, so only a hand-edited file gets here
                print(f"jaxalign: warning: {out / 'metrics.jsonl'} is shorter than its checkpoint; starting over", file=sys.stderr)
    _rewrite_lines(out / "metrics.jsonl", lines)
    generation_seconds = [line["wall_s"] for line in lines[1:]]
    stopped_because = "steps"
    bar = _progress_bar(config.steps, prompt, progress)
    bar.update(max(0, len(lines) - 1))
    search_start = time.perf_counter() - (lines[-1]["elapsed_s"] if lines else 0.0)
    with (out / "metrics.jsonl").open("a") as metrics:
        for generation in range(len(lines), config.steps + 1):
            start = time.perf_counter()
            state, report = step(job.model_params, problem, job.search_params, state)
            report = jax.device_get(report)
            seconds = time.perf_counter() - start
            used = {"images": (generation + 1) * search.images_per_generation, "nfe": (generation + 1) * search.nfe_per_generation}
            if generation == 0:
                baseline = jax.device_get((state.baseline_fitness, state.baseline_components, state.baseline_image))
                line = _baseline_line(baseline, report, seconds, used)
                _save_image(baseline[2], out / "images" / "baseline.png")
            else:
                generation_seconds.append(seconds)
                line = _generation_line(generation, report, seconds, used, config.maximize)
                _save_image(report.best_image, out / "images" / f"step_{generation:04d}.png")
                bar.update(1)
                bar.set_postfix(best=f"{line['best_fitness']:.4g}", mean=f"{line['mean_fitness']:.4g}")
            line["elapsed_s"] = round(time.perf_counter() - search_start, 4)
            metrics.write(json.dumps(line) + "\n")
            metrics.flush()
            os.fsync(metrics.fileno())
            lines.append(line)
            stop = None
            if generation and _reached(config, line["best_fitness"]):
                stop = "target_reward"
            elif generation and config.max_seconds and line["elapsed_s"] >= config.max_seconds:
                stop = "max_seconds"
            if checkpointer is not None and checkpointer.due(generation, last=stop is not None or generation == config.steps):
                checkpointer.save(generation, state)
            if stop:
                stopped_because = stop
                break
    bar.close()
    if checkpointer is not None:
        checkpointer.close()
    if len(lines) > 1 and _reached(config, lines[-1]["best_fitness"]):
        stopped_because = "target_reward"
    best_solution = np.asarray(state.best_solution)
    np.save(out / "best_solution.npy", best_solution)
    np.save(out / "best_latent.npy", np.asarray(job.space.apply(job.search_params.space, best_solution, problem.centre)))
    plot_fitness(lines, out / "fitness.png", title=prompt)
    final = lines[-1]
    return {
        "prompt": prompt,
        "model": job.model.name,
        "strategy": config.strategy,
        "space": config.space,
        "rewards": dict(config.rewards),
        "maximize": config.maximize,
        "baseline_fitness": lines[0]["best_fitness"],
        "best_fitness": final["best_fitness"],
        "best_components": {k: final[k] for k in config.rewards},
        "baseline_components": {k: lines[0][k] for k in config.rewards},
        "generations": len(lines) - 1,
        "stopped_because": stopped_because,
        "images": final["images"],
        "nfe": final["nfe"],
        "seconds_per_generation": round(float(np.median(generation_seconds)), 4) if generation_seconds else None,
        "generation_0_s": lines[0]["wall_s"],
        "search_s": final["elapsed_s"],
        "best_image": f"images/step_{len(lines) - 1:04d}.png",
        "device": jax.devices()[0].device_kind,
        "config": config.to_dict(),
    }


def _baseline_line(baseline, report, seconds: float, used: dict) -> dict:
    fitness, components, _ = baseline
    line = {"step": 0, "baseline": True, "best_fitness": _num(fitness), "mean_fitness": _num(fitness), "median_fitness": _num(fitness)}
    line.update({name: _num(value) for name, value in components.items()})
    line.update(
        initial_population_best_fitness=_num(report.best_fitness),
        initial_population_mean_fitness=_nanstat(np.nanmean, report.fitness),
        num_nonfinite=int(report.num_nonfinite),
        wall_s=round(seconds, 4),
        **used,
    )
    return line


def _generation_line(generation: int, report, seconds: float, used: dict, maximize: bool) -> dict:
    line = {
        "step": generation,
        "best_fitness": _num(report.best_fitness),
        "mean_fitness": _nanstat(np.nanmean, report.fitness),
        "median_fitness": _nanstat(np.nanmedian, report.fitness),
        "generation_best_fitness": _nanstat(np.nanmax if maximize else np.nanmin, report.fitness),
    }
    for name, value in report.best_components.items():
        line[name] = _num(value)
        line[f"mean_{name}"] = _nanstat(np.nanmean, report.components[name])
    line.update(num_nonfinite=int(report.num_nonfinite), wall_s=round(seconds, 4), **used)
    return line


def _read_lines(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    lines = []
    for text in path.read_text().splitlines():
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:  # a line cut short by a kill
            break
    return lines


def _rewrite_lines(path: Path, lines: list[dict]) -> None:
    """Atomically replace the metrics file by ``lines``."""
    partial = path.with_suffix(".jsonl.partial")
    partial.write_text("".join(json.dumps(line) + "\n" for line in lines))
    os.replace(partial, path)


def _reached(config, best: float | None) -> bool:
    target = config.target_reward
    if best is None or target is None:
        return False
    return best >= target if config.maximize else best <= target


def _num(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _nanstat(fn, values) -> float | None:
    values = np.asarray(values, np.float64)
    return _num(fn(values)) if np.isfinite(values).any() else None


def _save_image(image, path: Path) -> None:
    Image.fromarray(np.clip(np.round(np.asarray(image) * 255.0), 0, 255).astype(np.uint8)).save(path)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _slug(text: str, length: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:length] or "prompt"


def _progress_bar(total: int, prompt: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=prompt[:30], unit="gen", disable=not enabled, leave=False)


def plot_fitness(lines: list[dict], path: Path, title: str = "") -> None:
    """Best-so-far, population mean and median per generation, with the baseline as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [line["step"] for line in lines[1:]]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, style in (("best_fitness", "-o"), ("mean_fitness", "--"), ("median_fitness", ":")):
        values = [line[key] if line[key] is not None else np.nan for line in lines[1:]]
        ax.plot(steps, values, style, label=key.replace("_", " "), markersize=3)
    if lines[0]["best_fitness"] is not None:
        ax.axhline(lines[0]["best_fitness"], color="gray", linewidth=1, label="baseline")
    ax.set_xlabel("generation")
    ax.set_ylabel("fitness")
    ax.set_title(title[:60])
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
