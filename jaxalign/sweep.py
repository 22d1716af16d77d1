"""Sweeps: the Cartesian product of prompts x methods x seeds x reward sets.

A sweep config (``configs/sweep.py``) holds a ``base`` run config and the axes; an entry of the methods axis is a
method with its ``method_params`` and a label (an evolution strategy with its space, a baseline, a sibling), so every
method sits in the same plots. Runs that share a method entry, reward set and seed form one job: the model is loaded once for the whole sweep,
and the prompts of a job reuse one compiled generation step (with ``base.compilation_cache_dir``
set, jobs whose programs are identical also skip compilation across processes). Each job writes a
normal run workdir (one subfolder per prompt); re-running the sweep resumes unfinished jobs from
their checkpoints and skips finished ones. The aggregate is ``runs.csv`` (one row per run: final
fitness, popsize, NFE and backward NFE, wall and compile time, the compiled step's memory; after ``jaxalign eval``,
its re-scores, judge readings and population diversity), ``steps.csv`` (best fitness per step of every run) and one plot per
reward set of the median and interquartile range of best fitness against NFE for each method entry.

With ``nfe_budget`` set, every run gets the same budget of counted UNet evaluations (generation 0 included;
backward passes are counted apart, as ``vjp_nfe``): each job runs the most generations whose planned NFE fit,
at the largest popsize up to ``base.popsize`` that fits ``min_generations`` of them (:func:`fit_to_budget`).

Several hosts split one sweep with ``shard=(i, n)``: shard i runs the jobs whose index in :func:`expand`'s
order is i modulo n, all sharing one workdir and nothing else. Each shard aggregates every run that has
finished in the workdir, whichever shard ran it, so the last shard to finish leaves the whole sweep's aggregate.
"""

from __future__ import annotations

import copy
import io
import itertools
import json
import re
import time
from collections.abc import Sequence
from pathlib import Path

import ml_collections
import numpy as np

from jaxalign.config import apply_override, check_fields, default_config, load_config, plain, read_prompts
from jaxalign.errors import JaxalignError, check_known
from jaxalign.files import replace_atomically, write_csv, write_json, write_marker

AXES = ("methods", "seeds", "reward_sets")


def default_sweep_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.base = default_config()  # every run starts from this; its prompts / prompt_file are the prompt axis
    # each: {"name": a method, "params": its method_params, "label": the job folders' and plots' name (default: name and params)}
    c.methods = [{"name": "evolution", "params": {"strategy": "CoSyNE"}, "label": "CoSyNE"}]
    c.seeds = [0]
    c.reward_sets = [{"jpeg_compressibility": 1.0}]  # each: reward name -> weight
    c.nfe_budget = 0  # > 0: every job's steps (and popsize if need be) fitted to this many NFE; 0: base.steps
    c.min_generations = 1  # with nfe_budget: the generations a job's popsize must leave room for
    return c


def load_sweep_config(path: str | Path, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    config = load_config(path, (), schema=default_sweep_config())
    for override in overrides:
        apply_override(config, override)
    check_sweep(config)
    return config


def check_sweep(config: ml_collections.ConfigDict) -> None:
    unknown = sorted(set(config.keys()) - set(default_sweep_config().keys()))
    if unknown:
        raise JaxalignError(f"sweep config field(s) {', '.join(unknown)} do not exist; valid: {', '.join(default_sweep_config().keys())}")
    check_fields(config.base)
    for axis in AXES:
        if len(config[axis]) == 0:
            raise JaxalignError(f"sweep axis {axis} is empty")
    bad_seeds = [s for s in config.seeds if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**63]
    if bad_seeds:
        raise JaxalignError(f"sweep seeds must be integers in [0, 2**63), got {bad_seeds}")
    for field, least in (("nfe_budget", 0), ("min_generations", 1)):
        value = config[field]
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise JaxalignError(f"sweep {field} must be an integer >= {least}, got {value!r}")
    read_prompts(config.base)
    seen: dict[str, int] = {}
    for index, (name, _) in enumerate(expand(config)):
        if name in seen:  # one folder for two runs: the aggregate would count one twice, or the sweep never finish
            raise JaxalignError(f"sweep jobs {seen[name]} and {index} both run in folder {name!r}: an axis repeats an entry, or two entries print alike (e.g. reward weights equal to 6 digits); make them distinct")
        seen[name] = index


def expand(config: ml_collections.ConfigDict) -> list[tuple[str, ml_collections.ConfigDict]]:
    """(job name, run config) for every method x seed x reward set; prompts stay inside each job."""
    jobs = []
    for method, seed, rewards in itertools.product(_named(config.methods), list(config.seeds), list(config.reward_sets)):
        run = copy.deepcopy(config.base)
        run.method, run.method_params = method["name"], plain(method.get("params", {}))
        run.seed, run.rewards = int(seed), dict(rewards)
        jobs.append(("__".join([_label(method), _reward_label(rewards), f"seed{seed}"]), run))
    return jobs


def job_label(name: str) -> str:
    """The method entry's label of a job (its folder name up to the reward set and seed)."""
    return name.rsplit("__", 2)[0]


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` (shard i of n) as ``(i, n)``."""
    match = re.fullmatch(r"\s*(-?\d+)\s*/\s*(-?\d+)\s*", text)
    if not match:
        raise JaxalignError(f"shard must be i/n (run shard i of n, e.g. 0/4), got {text!r}")
    shard = (int(match[1]), int(match[2]))
    check_shard(shard)
    return shard


def check_shard(shard: tuple[int, int]) -> None:
    i, n = shard
    if n < 1:
        raise JaxalignError(f"shard {i}/{n}: the number of shards n must be at least 1")
    if not 0 <= i < n:
        raise JaxalignError(f"shard {i}/{n}: the shard index i must be in [0, {n})")


def shard_of(items: Sequence, shard: tuple[int, int]) -> list:
    """The items shard ``(i, n)`` takes: those at indices i, i + n, i + 2n, ..."""
    i, n = shard
    return list(items[i::n])


def run_sweep(config: ml_collections.ConfigDict, workdir: str | Path, progress: bool = False, shard: tuple[int, int] = (0, 1)) -> dict:
    """Run (or resume) this shard's jobs (all of them by default), then write the aggregate CSVs and plots of
    every finished run in ``workdir``. Returns counts and wall time."""
    from jaxalign.models import load_model
    from jaxalign.run import build, run
    from jaxalign.workdir import check_workdir

    check_shard(shard)
    check_sweep(config)
    workdir = check_workdir(workdir, resume=True, kind="sweep")
    cache = config.base.compilation_cache_dir
    if cache and not Path(cache).expanduser().is_absolute():  # a sweep's relative cache lives inside its workdir
        config = copy.deepcopy(config)
        config.base.compilation_cache_dir = str(workdir / cache)
    jobs = expand(config)
    loaded = load_model(config.base.model, dtype=config.base.dtype, family=config.base.model_family)
    # Every shard builds every job, so all bad input fails here, before output, on every host alike.
    if config.nfe_budget:
        jobs = [(name, fit_to_budget(run_config, loaded, config.nfe_budget, config.min_generations)) for name, run_config in jobs]
    built = [(name, build(run_config, loaded)) for name, run_config in jobs]
    workdir.mkdir(parents=True, exist_ok=True)
    # What makes it a sweep workdir; every shard writes the same files, so one finishing write wins whole.
    write_marker(workdir, "sweep")
    write_json(workdir / "sweep_config.json", config.to_dict())
    start = time.perf_counter()
    ran = skipped = 0
    mine = shard_of(built, shard)
    for name, job in mine:
        job_dir = workdir / name
        finished = (job_dir / "summary.json").is_file()
        run(job, job_dir, progress=progress, resume=True)
        skipped, ran = skipped + finished, ran + (not finished)
    wall_s = time.perf_counter() - start
    rows, steps = aggregate(workdir, [name for name, _ in built])
    return {"jobs": len(mine), "sweep_jobs": len(built), "shard": f"{shard[0]}/{shard[1]}", "ran": ran, "skipped": skipped,
            "runs": len(rows), "wall_s": round(wall_s, 2), "steps_rows": len(steps)}  # fmt: skip


def fit_to_budget(config: ml_collections.ConfigDict, loaded, budget: int, min_generations: int = 1) -> ml_collections.ConfigDict:
    """A copy of run ``config`` whose planned NFE (generation 0 included) fit ``budget``: the largest popsize up
    to ``config.popsize`` that fits ``min_generations`` (methods whose generation costs more than popsize images,
    SVDD's candidates and DSearch's beams, may need fewer members), then as many generations as fit."""
    from jaxalign.run import build

    config, largest = copy.deepcopy(config), config.popsize
    refusals, search = [], None
    for popsize in range(largest, 1, -1):
        config.popsize = popsize
        try:
            search = build(config, loaded).search
        except JaxalignError as error:  # e.g. DSearch's popsize must be a multiple of its oversampling
            refusals.append(error)
            continue
        if search.budget(min_generations)["nfe"] <= budget:
            generations = min_generations
            while search.budget(generations + 1)["nfe"] <= budget:
                generations += 1
            config.steps = generations
            return config
    if len(refusals) == largest - 1:  # no popsize builds: the config itself is wrong, whatever the budget
        raise refusals[0]
    options = plain(config.method_params)
    raise JaxalignError(f"{config.method}{f' {options}' if options else ''}: no popsize up to {largest} fits {min_generations} generation(s) in {budget} NFE")


def aggregate(workdir: Path, names: list[str]) -> tuple[list[dict], list[dict]]:
    """Rows of every run of jobs ``names`` that has finished (has its summary.json) in ``workdir``, and their steps."""
    rows, steps = [], []
    evaluated = eval_columns(workdir)
    for name in names:
        job_dir = workdir / name
        for summary_path in sorted(job_dir.glob("**/summary.json")):
            summary = json.loads(summary_path.read_text())
            if "prompts" in summary:
                continue
            run_id = f"{name}/{summary_path.parent.relative_to(job_dir)}".rstrip("/.")
            rows.append(
                {
                    "run": run_id,
                    "method": job_label(name),
                    "rewards": _reward_label(summary["rewards"]),
                    "seed": summary["config"]["seed"],
                    "prompt": summary["prompt"],
                    "baseline_fitness": summary["baseline_fitness"],
                    "best_fitness": summary["best_fitness"],
                    "popsize": summary["config"]["popsize"],
                    "generations": summary["generations"],
                    "nfe": summary["nfe"],
                    "vjp_nfe": summary["vjp_nfe"],
                    "images": summary["images"],
                    "search_s": summary["search_s"],
                    "seconds_per_generation": summary["seconds_per_generation"],
                    "compile_s": summary.get("compile_s"),
                    "step_memory_bytes": summary.get("step_memory_bytes"),
                    **evaluated.get(run_id, {}),
                }
            )
            for line in (summary_path.parent / "metrics.jsonl").read_text().splitlines():
                line = json.loads(line)
                steps.append({"run": run_id, "method": job_label(name), "rewards": rows[-1]["rewards"], "step": line["step"],
                              "best_fitness": line["best_fitness"], "nfe": line["nfe"], "elapsed_s": line["elapsed_s"]})  # fmt: skip
    write_csv(workdir / "runs.csv", rows)
    write_csv(workdir / "steps.csv", steps)
    plot_sweep(steps, workdir)
    return rows, steps


def finished_jobs(workdir: Path) -> list[str]:
    """Names of the jobs of the sweep in ``workdir`` that have finished, in the sweep's order."""
    config = ml_collections.ConfigDict(json.loads((workdir / "sweep_config.json").read_text()))
    return [name for name, _ in expand(config) if (workdir / name / "summary.json").is_file()]


def eval_columns(workdir: Path) -> dict[str, dict]:
    """Per run id, the re-scores and judge readings of ``jaxalign eval`` on this sweep (none before it has run)."""
    path = workdir / "eval.json"
    if not path.is_file():
        return {}
    keep = ("baseline:", "best:", "judge_", "population_")
    return {row["run"]: {k: v for k, v in row.items() if k.startswith(keep)} for row in json.loads(path.read_text())["runs"]}


def plot_sweep(steps: list[dict], workdir: Path) -> None:
    """Per reward set: median and interquartile range of best fitness against NFE, one curve per method entry."""
    from matplotlib.figure import Figure  # not pyplot: a library call must not switch the user's backend

    for rewards in sorted({s["rewards"] for s in steps}):
        fig = Figure(figsize=(6, 4))
        ax = fig.subplots()
        methods = sorted({s["method"] for s in steps if s["rewards"] == rewards})
        for i, method in enumerate(methods):
            runs: dict[str, dict[int, tuple[int, float]]] = {}  # run -> step -> (NFE, best fitness)
            for s in steps:
                if s["rewards"] == rewards and s["method"] == method and s["best_fitness"] is not None:
                    runs.setdefault(s["run"], {})[s["step"]] = (s["nfe"], s["best_fitness"])
            # By step, at the runs' median NFE: methods with random costs (DSearch) spend different NFE per run.
            common = sorted(set.intersection(*(set(r) for r in runs.values())))
            nfes = np.median([[r[k][0] for k in common] for r in runs.values()], axis=0)
            values = np.array([[r[k][1] for k in common] for r in runs.values()])
            q25, median, q75 = np.percentile(values, [25, 50, 75], axis=0)
            style = "-o" if i < 10 else "--s"  # the default colour cycle repeats after 10
            ax.plot(nfes, median, style, markersize=3, label=f"{method} (n={len(runs)})")
            ax.fill_between(nfes, q25, q75, alpha=0.15)
        ax.set_xlabel("NFE (denoising steps)")
        ax.set_ylabel(f"best fitness ({rewards})")
        ax.legend(fontsize=8)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        replace_atomically(workdir / f"sweep_{rewards}.png", buffer.getvalue())


def _named(entries) -> list[dict]:
    named = []
    for entry in entries:
        entry = {"name": entry} if isinstance(entry, str) else plain(entry)
        if not isinstance(entry, dict) or "name" not in entry:
            raise JaxalignError(f"sweep methods entry {entry!r} has no name")
        check_known(f"sweep methods entry {entry['name']!r} field(s)", entry, ("name", "params", "label"))
        named.append(entry)
    return named


def _label(entry: dict) -> str:
    """A method entry's label: its own, or its name and params; a folder name of one part (no "__", which parts jobs)."""
    label = entry.get("label") or entry["name"] + "".join(f"-{k}{v}" for k, v in sorted(dict(entry.get("params", {})).items()))
    return re.sub(r"_{2,}", "_", re.sub(r"[^A-Za-z0-9_.+-]", "", str(label)))


def _reward_label(rewards) -> str:
    return "+".join(f"{w:g}{name}" if w != 1 else name for name, w in sorted(dict(rewards).items()))
