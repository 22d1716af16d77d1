"""The method comparison of a sweep, with bootstrap confidence intervals, as the tables of arXiv 2506.00299
(Inference-Time Alignment of Diffusion Models with Evolutionary Algorithms) compare methods at equal budget.

:func:`method_table` reads a sweep's ``runs.csv`` (after ``jaxalign eval``, which adds the cross-rewards, the
judge's readings and the final populations' diversity) and ``eval.json`` (the diversity of best images across
seeds), and gives one row per method: budget spent, the optimised reward's median with a percentile-bootstrap
95% interval, the judge's accuracy with its interval, a cross-reward's change, diversity, wall time and the
compiled step's memory.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from jaxalign.errors import JaxalignError


def bootstrap_ci(values: Sequence[float], statistic: Callable = np.median, resamples: int = 10_000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(statistic, lower, upper): the percentile bootstrap interval of ``statistic`` over ``values``."""
    values = np.asarray(values, np.float64)
    if values.size == 0:
        raise JaxalignError("bootstrap_ci: no values")
    draws = np.random.default_rng(seed).integers(0, values.size, size=(resamples, values.size))
    stats = statistic(values[draws], axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    lower, upper = np.percentile(stats, [tail, 100.0 - tail])
    return float(statistic(values)), float(lower), float(upper)


def method_table(workdir: str | Path, cross_reward: str = "saturation") -> list[dict]:
    """One row per method entry (the sweep's methods axis) of a sweep that ``jaxalign eval`` has scored."""
    workdir = Path(workdir)
    if not (workdir / "eval.json").is_file():
        raise JaxalignError(f"method_table: {workdir} has no eval.json; run `jaxalign eval --workdir {workdir}` first")
    with (workdir / "runs.csv").open(newline="") as handle:
        runs = list(csv.DictReader(handle))
    groups = json.loads((workdir / "eval.json").read_text())["diversity"]
    table = []
    for method in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == method]
        number = lambda key: np.array([float(r[key]) for r in mine if r.get(key, "") != ""])  # noqa: E731
        jobs = {r["run"].split("/")[0]: r for r in mine}.values()  # a job's prompts share one batch and its timing
        ids = {r["run"] for r in mine}
        seed_diversity = [g["best_clip_diversity"] for g in groups if ids.issuperset(g["members"]) and "best_clip_diversity" in g]
        population_diversity = number("population_clip_diversity")  # none for methods that return one image
        table.append({
            "method": method,
            "runs": len(mine),
            "popsize": int(np.median(number("popsize"))),
            "generations": int(np.median(number("generations"))),
            "nfe": float(np.median(number("nfe"))),
            "vjp_nfe": float(np.median(number("vjp_nfe"))),
            "reward": bootstrap_ci(number("best_fitness")),
            "gain": bootstrap_ci(number("best_fitness") - number("baseline_fitness")),
            "judge_all": bootstrap_ci(number("judge_best:all_named"), np.mean),
            "judge_position": bootstrap_ci(number("judge_best:position"), np.mean),
            "cross_reward": cross_reward,
            "cross_change": float(np.median(number(f"best:{cross_reward}") - number(f"baseline:{cross_reward}"))),
            "seed_diversity": float(np.mean(seed_diversity)) if seed_diversity else float("nan"),
            "population_diversity": float(np.mean(population_diversity)) if population_diversity.size else float("nan"),
            "job_seconds": float(np.median([float(j["search_s"]) for j in jobs])),
            "compile_seconds": max(float(j["compile_s"]) for j in jobs),  # the first job's; later seeds hit the cache
            "step_memory_mib": float(np.median([float(j["step_memory_bytes"]) for j in jobs])) / 2**20,
        })  # fmt: skip
    return table


def baseline_row(workdir: str | Path) -> dict:
    """The unaligned images' reward and judge accuracy (every method of a seed starts from the same baseline)."""
    with (Path(workdir) / "runs.csv").open(newline="") as handle:
        runs = {(r["prompt"], r["seed"]): r for r in csv.DictReader(handle)}.values()
    return {
        "runs": len(runs),
        "reward": bootstrap_ci([float(r["baseline_fitness"]) for r in runs]),
        "judge_all": bootstrap_ci([float(r["judge_baseline:all_named"]) for r in runs], np.mean),
        "judge_position": bootstrap_ci([float(r["judge_baseline:position"]) for r in runs], np.mean),
    }


def markdown(table: list[dict], baseline: dict) -> str:
    """The table as Markdown, intervals in brackets."""
    ci = lambda t, f="{:.1f}": f"{f.format(t[0])} [{f.format(t[1])}, {f.format(t[2])}]"  # noqa: E731
    cross = table[0]["cross_reward"] if table else ""
    lines = [
        f"| method | popsize | generations | NFE | backward NFE | reward (median [95% CI]) | gain over baseline | judge: all five | judge: position | Δ {cross} | best-image diversity across seeds | final-population diversity | job wall (s) | compile, first job (s) | step memory (MiB) |",
        "| --- " * 15 + "|",
        f"| baseline (unaligned) | | | | | {ci(baseline['reward'])} | | {ci(baseline['judge_all'], '{:.2f}')} | {ci(baseline['judge_position'], '{:.2f}')} | | | | | | |",
    ]
    for r in table:
        lines.append(
            f"| {r['method']} | {r['popsize']} | {r['generations']} | {r['nfe']:.0f} | {r['vjp_nfe']:.0f} | {ci(r['reward'])} | {ci(r['gain'])} | "
            f"{ci(r['judge_all'], '{:.2f}')} | {ci(r['judge_position'], '{:.2f}')} | {r['cross_change']:+.3f} | {r['seed_diversity']:.3f} | "
            f"{r['population_diversity']:.3f} | {r['job_seconds']:.0f} | {r['compile_seconds']:.0f} | {r['step_memory_mib']:.0f} |"
        )
    return "\n".join(lines)
