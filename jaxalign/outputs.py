"""What a run writes for one prompt: its metrics lines, images, summary and fitness plot.

A :class:`Recorder` turns each generation's report into a ``metrics.jsonl`` line (line 0: the baseline), saves the
best image so far, passes both to the experiment trackers, decides when the prompt stops (``steps``,
``target_reward``, ``max_seconds``), and writes ``summary.json``'s content, ``fitness.png``, ``best_solution.npy``
and ``best_latent.npy`` at the end. Resuming reads the lines back, keeping those a kill left whole.
"""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import jax
import numpy as np
from PIL import Image

from jaxalign.errors import JaxalignError
from jaxalign.files import replace_atomically
from jaxalign.search import Problem
from jaxalign.trackers import Tracker


class Recorder:
    """One prompt's outputs: its metrics lines, images and summary."""

    def __init__(self, job, prompt: str, out: Path, tracker: Tracker | None = None, run_key: str = ""):
        self.job, self.prompt, self.out, self.tracker, self.run_key = job, prompt, out, tracker, run_key
        self.lines: list[dict] = []
        self.stopped_because: str | None = None
        (out / "images").mkdir(parents=True, exist_ok=True)

    def surviving_generation(self) -> int:
        """The last generation whose metrics line is whole (-1: none)."""
        return len(_read_lines(self.out / "metrics.jsonl")) - 1

    def resume_from(self, generation: int) -> None:
        self.lines = _read_lines(self.out / "metrics.jsonl")[: generation + 1]
        self.stopped_because = _stop_reason(self.job.config, self.lines[-1], generation)

    def open(self):
        _rewrite_lines(self.out / "metrics.jsonl", self.lines)
        self._file = (self.out / "metrics.jsonl").open("a")

    def record(self, generation: int, state, report, seconds: float, elapsed: float) -> None:
        config = self.job.config
        used = {k: int(v) for k, v in jax.device_get(report.spent).items()}
        if generation == 0:
            baseline = (state.baseline_fitness, state.baseline_components, state.baseline_image)
            line, image = _baseline_line(baseline, report, seconds, used), state.baseline_image
            if line["best_fitness"] is None and line["initial_population_best_fitness"] is None:
                # Every image non-finite: later generations could only rank NaNs, and a run "succeeding" on them says nothing.
                raise JaxalignError(
                    f"generation 0 scored no image finitely (the baseline and all {self.job.config.popsize} candidates of {self.prompt[:40]!r}): "
                    "the reward or a knob makes every candidate NaN or infinite; nothing to search from"
                )  # fmt: skip
            _save_image(image, self.out / "images" / "baseline.png")
        else:
            line, image = _generation_line(generation, report, seconds, used), report.best_image
            _save_image(image, self.out / "images" / f"step_{generation:04d}.png")
        line["elapsed_s"] = round(elapsed, 4)
        try:
            self._file.write(json.dumps(line) + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as error:  # a write to an open file names none
            error.filename = str(self.out / "metrics.jsonl")
            raise
        if self.tracker is not None:
            self.tracker.log(self.run_key, generation, line, _to_uint8(image))
        self.lines.append(line)
        self.stopped_because = _stop_reason(config, line, generation)

    def save_population(self, images) -> None:
        buffer = io.BytesIO()
        np.save(buffer, _to_uint8(images))
        replace_atomically(self.out / "images" / "final_population.npy", buffer.getvalue())

    def close(self) -> None:
        if getattr(self, "_file", None) is not None:
            try:
                self._file.close()
            except OSError:  # every line was flushed when written: only a line whose write already failed is left
                pass

    def summary(self, state, problem: Problem) -> dict:
        config, lines = self.job.config, self.lines
        best_solution = np.asarray(state.best_solution)
        np.save(self.out / "best_solution.npy", best_solution)
        best_latent = self.job.search.best_latent(self.job.search_params, state.best_solution, problem)
        np.save(self.out / "best_latent.npy", np.asarray(best_latent))
        plot_fitness(lines, self.out / "fitness.png", title=self.prompt)
        final = lines[-1]
        seconds = [line["wall_s"] for line in lines[1:]]
        mesh = self.job.search.mesh
        return {
            "prompt": self.prompt,
            "model": self.job.model.name,
            "method": config.method,
            "strategy": self.job.search.strategy,
            "method_params": config.method_params.to_dict(),
            "best_solution_is": self.job.search.best_solution_is,
            "rewards": dict(config.rewards),
            "maximize": config.maximize,
            "baseline_fitness": lines[0]["best_fitness"],
            "best_fitness": final["best_fitness"],
            "best_components": {k: final[k] for k in config.rewards},
            "baseline_components": {k: lines[0][k] for k in config.rewards},
            "generations": len(lines) - 1,
            "stopped_because": self.stopped_because or "steps",
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
            "params_split": _params_split(self.job.model_params),
            "config": config.to_dict(),
        }


def _params_split(params) -> float:
    """The model weights' bytes over those one device holds: 1 unsharded, up to the device count when split."""
    leaves = [x for x in jax.tree.leaves(params) if isinstance(x, jax.Array)]
    held = sum(x.addressable_shards[0].data.nbytes for x in leaves)
    return round(sum(x.nbytes for x in leaves) / held, 2) if held else 1.0


def _stop_reason(config, line: dict, generation: int) -> str | None:
    if generation and _reached(config, line["best_fitness"]):
        return "target_reward"
    if generation and config.max_seconds and line["elapsed_s"] >= config.max_seconds:
        return "max_seconds"
    if generation >= config.steps:
        return "steps"
    return None


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


def _generation_line(generation: int, report, seconds: float, used: dict) -> dict:
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


def _read_lines(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    lines = []
    for text in path.read_text(errors="replace").splitlines():
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
    return best >= target  # fitness is higher-is-better (``oriented``)


def _num(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _nanstat(fn, values) -> float | None:
    values = np.asarray(values, np.float64)
    return _num(fn(values)) if np.isfinite(values).any() else None


def _to_uint8(images) -> np.ndarray:
    return np.clip(np.round(np.asarray(images) * 255.0), 0, 255).astype(np.uint8)


def _save_image(image, path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(_to_uint8(image)).save(buffer, format="PNG")
    replace_atomically(path, buffer.getvalue())


def plot_fitness(lines: list[dict], path: Path, title: str = "") -> None:
    """Best-so-far, population mean and median per generation, with the baseline as a line."""
    from matplotlib.figure import Figure  # not pyplot: a library call must not switch the user's backend

    steps = [line["step"] for line in lines[1:]]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
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
