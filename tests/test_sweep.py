"""Sweeps: the product of the axes, the aggregate, skipping finished runs, bad sweep configs."""

import copy
import csv
import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxalign.errors import JaxalignError
from jaxalign.evaluate import evaluate
from jaxalign.models import load_model
from jaxalign.rewards import parse_reward
from jaxalign.sweep import load_sweep_config, run_sweep

ROOT = Path(__file__).resolve().parent.parent
SWEEP = ROOT / "configs" / "sweep.py"
TINY = ["--config.base.height=32", "--config.base.width=32", "--config.base.num_inference_steps=2", "--config.base.popsize=4",
        "--config.base.steps=2", "--config.base.compilation_cache_dir="]  # fmt: skip


def test_two_by_two_by_two_sweep_and_rerun(tmp_path):
    config = load_sweep_config(SWEEP, TINY)
    result = run_sweep(config, tmp_path / "sweep")
    assert result == {**result, "jobs": 4, "ran": 4, "skipped": 0, "runs": 8}
    rows = list(csv.DictReader((tmp_path / "sweep" / "runs.csv").open()))
    combos = {(r["method"], r["seed"], r["prompt"]) for r in rows}
    assert combos == {(s, seed, p) for s in ("CoSyNE", "SNES") for seed in ("0", "1") for p in config.base.prompts}
    for row in rows:
        assert float(row["best_fitness"]) >= float(row["baseline_fitness"])
        # Generation 0 evaluates popsize images for CoSyNE, only the baseline for SNES; then 2 x popsize.
        first = 4 if row["method"] == "CoSyNE" else 1
        assert int(row["nfe"]) == (first + 2 * 4) * 2  # x denoising steps
    steps = list(csv.DictReader((tmp_path / "sweep" / "steps.csv").open()))
    assert len(steps) == 8 * 3
    assert (tmp_path / "sweep" / "sweep_jpeg_compressibility.png").stat().st_size > 1000
    # Different seeds give different searches.
    by_seed = {r["seed"]: r["baseline_fitness"] for r in rows if r["method"] == "CoSyNE" and r["prompt"] == config.base.prompts[0]}
    assert by_seed["0"] != by_seed["1"]

    before = (tmp_path / "sweep" / "runs.csv").read_text()
    again = run_sweep(config, tmp_path / "sweep")
    assert again["ran"] == 0 and again["skipped"] == 4
    assert (tmp_path / "sweep" / "runs.csv").read_text() == before


def test_bad_sweep_configs(tmp_path):
    with pytest.raises(JaxalignError, match="sweep axis seeds is empty"):
        load_sweep_config(SWEEP, ["--config.seeds=[]"])
    with pytest.raises(JaxalignError, match="config field 'repeats' does not exist"):
        load_sweep_config(SWEEP, ["--config.repeats=3"])
    config = load_sweep_config(SWEEP, [*TINY, "--config.methods=[{'name': 'evolution', 'params': {'strategy': 'Nope'}}]"])
    with pytest.raises(JaxalignError, match="unknown strategy 'Nope'"):
        run_sweep(config, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize(
    "override, jobs",
    [
        ("--config.methods=[{'name': 'evolution', 'label': 'a'}, {'name': 'random'}, {'name': 'zero_order', 'label': 'a'}]", (0, 4)),  # seeds [0, 1]: 2 jobs each
        ("--config.seeds=[3, 3]", (0, 1)),
        ("--config.reward_sets=[{'brightness': 0.5000001}, {'brightness': 0.5000002}]", (0, 1)),  # both print as 0.5
    ],
)  # fmt: skip
def test_sweep_refuses_two_jobs_in_one_folder(override, jobs):
    with pytest.raises(JaxalignError, match=rf"sweep jobs {jobs[0]} and {jobs[1]} both run in folder"):
        load_sweep_config(SWEEP, [*TINY, override])


def test_sweep_script_reports_bad_input_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "sweep.py"), "--config", str(SWEEP), "--workdir", str(tmp_path / "s"), "--config.methods=[]"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["sweep: error: sweep axis methods is empty"]


def test_method_entries_set_the_method_its_options_and_the_job_folder():
    from jaxalign.sweep import expand

    config = load_sweep_config(SWEEP, TINY)
    config.methods = [
        {"name": "evolution", "params": {"strategy": "SNES", "space": "rotation"}, "label": "SNES_rotation"},
        {"name": "zero_order", "params": {"cosine": 0.9}},
        {"name": "random", "label": "best__of/N"},  # "__" parts a job's name, "/" a path: neither stays in a label
    ]
    runs = {name.split("__")[0]: run for name, run in expand(config)}
    assert set(runs) == {"SNES_rotation", "zero_order-cosine0.9", "best_ofN"}
    assert runs["SNES_rotation"].method == "evolution" and runs["SNES_rotation"].method_params.to_dict() == {"strategy": "SNES", "space": "rotation"}
    assert runs["zero_order-cosine0.9"].method == "zero_order" and runs["zero_order-cosine0.9"].method_params.to_dict() == {"cosine": 0.9}
    assert runs["best_ofN"].method == "random" and not runs["best_ofN"].method_params
    config.methods = [{"name": "random", "options": {}}]
    with pytest.raises(JaxalignError, match="unknown sweep methods entry 'random' field"):
        expand(config)


# Two jobs (CoSyNE and SNES), one prompt, one generation after generation 0: the smallest sweep two shards can split.
SPLIT = [*TINY, "--config.base.steps=1", "--config.base.prompts=['a red circle']", "--config.seeds=[0]",
         "--config.reward_sets=[{'brightness': 1.0}]"]  # fmt: skip


def read_csv(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open()))


def test_two_shards_run_each_job_once_and_aggregate_every_finished_run(tmp_path):
    from jaxalign.sweep import expand

    config = load_sweep_config(SWEEP, SPLIT)
    names = [name for name, _ in expand(config)]
    assert [name.split("__")[0] for name in names] == ["CoSyNE", "SNES"]
    workdir = tmp_path / "sweep"

    first = run_sweep(config, workdir, shard=(0, 2))
    assert first == {**first, "shard": "0/2", "jobs": 1, "sweep_jobs": 2, "ran": 1, "skipped": 0, "runs": 1}
    assert not (workdir / names[1]).exists()  # shard 1's job is left to shard 1
    # The aggregate after shard 0 alone holds exactly shard 0's run, in every file.
    assert [r["run"] for r in read_csv(workdir / "runs.csv")] == [names[0]]
    assert {r["run"] for r in read_csv(workdir / "steps.csv")} == {names[0]}
    assert [r["method"] for r in read_csv(workdir / "runs.csv")] == ["CoSyNE"]
    shard_0_summary = (workdir / names[0] / "summary.json").read_bytes()

    second = run_sweep(config, workdir, shard=(1, 2))
    assert second == {**second, "shard": "1/2", "jobs": 1, "sweep_jobs": 2, "ran": 1, "skipped": 0, "runs": 2}
    assert (workdir / names[0] / "summary.json").read_bytes() == shard_0_summary  # shard 1 did not touch shard 0's run
    rows = read_csv(workdir / "runs.csv")
    # After both shards: shard 1's aggregate holds both shards' runs, the whole sweep's set.
    assert sorted(r["run"] for r in rows) == sorted(names)
    assert {(r["method"], r["seed"], r["prompt"]) for r in rows} == {(s, "0", "a red circle") for s in ("CoSyNE", "SNES")}
    assert len(read_csv(workdir / "steps.csv")) == 2 * 2  # generation 0 and 1 of each run
    assert (workdir / "sweep_brightness.png").stat().st_size > 1000
    assert not list(workdir.glob(".*.partial"))

    # Each job ran exactly once: the whole sweep and either shard again find everything finished.
    before = (workdir / "runs.csv").read_text()
    whole = run_sweep(config, workdir)
    assert whole == {**whole, "shard": "0/1", "jobs": 2, "ran": 0, "skipped": 2, "runs": 2}
    assert (workdir / "runs.csv").read_text() == before
    again = run_sweep(config, workdir, shard=(0, 2))
    assert again == {**again, "ran": 0, "skipped": 1, "runs": 2}

    # Each run kept its last generation's images (popsize 4, 32 x 32): re-scored, they give that generation's mean
    # fitness, to the 8-bit quantisation of the saved pixels.
    population = np.load(workdir / names[0] / "images" / "final_population.npy")
    assert population.shape == (4, 32, 32, 3) and population.dtype == np.uint8
    brightness = parse_reward("brightness", {})
    last = json.loads((workdir / names[0] / "metrics.jsonl").read_text().splitlines()[-1])
    assert float(np.mean(brightness.score(population / 255.0, brightness.params, None))) == pytest.approx(last["mean_fitness"], abs=1 / 255)
    # XLA's plan of each step's memory holds at least its arguments' model weights.
    _, params = load_model(config.base.model, dtype=config.base.dtype)
    assert all(int(r["step_memory_bytes"]) >= sum(x.nbytes for x in jax.tree.leaves(params)) for r in rows)
    # `jaxalign eval` on the sweep: runs.csv gains eval.csv's columns, run by run.
    evaluate(workdir)
    evaluated = {r["run"]: r for r in read_csv(workdir / "eval.csv")}
    merged = read_csv(workdir / "runs.csv")
    assert len(merged) == 2
    for row in merged:
        added = {k: v for k, v in row.items() if k.startswith(("best:", "baseline:", "population_"))}
        assert {"best:brightness", "best:clip", "population_pixel_diversity", "population_clip_diversity"} <= set(added)
        assert added == {k: evaluated[row["run"]][k] for k in added}


def test_shards_take_every_nth_job_in_expand_order():
    from jaxalign.sweep import expand, parse_shard, shard_of

    jobs = list(range(7))
    assert shard_of(jobs, (1, 3)) == [1, 4]
    assert shard_of(jobs, (0, 3)) == [0, 3, 6]
    assert shard_of(jobs, (0, 1)) == jobs
    assert shard_of(jobs, (8, 9)) == []  # more shards than jobs: the extra shards run nothing
    for n in (1, 2, 3, 7):
        assert sorted(j for i in range(n) for j in shard_of(jobs, (i, n))) == jobs  # each job in exactly one shard
    names = [name for name, _ in expand(load_sweep_config(SWEEP, TINY))]  # CoSyNE, SNES x seeds 0, 1
    assert [n.split("__")[0] + "/" + n.split("__")[-1] for n in shard_of(names, (1, 2))] == ["CoSyNE/seed1", "SNES/seed1"]
    assert parse_shard("1/3") == (1, 3) and parse_shard(" 0 / 1 ") == (0, 1)


@pytest.mark.parametrize(
    "argument, message",
    [
        ("--shard=1", "shard must be i/n (run shard i of n, e.g. 0/4), got '1'"),
        ("--shard=a/b", "shard must be i/n (run shard i of n, e.g. 0/4), got 'a/b'"),
        ("--shard=0/1/2", "shard must be i/n (run shard i of n, e.g. 0/4), got '0/1/2'"),
        ("--shard=0/0", "shard 0/0: the number of shards n must be at least 1"),
        ("--shard=1/-2", "shard 1/-2: the number of shards n must be at least 1"),
        ("--shard=2/2", "shard 2/2: the shard index i must be in [0, 2)"),
        ("--shard=-1/2", "shard -1/2: the shard index i must be in [0, 2)"),
        ("--shard", "argument --shard: expected one argument"),
    ],
)
def test_bad_shards_are_one_line_and_write_nothing(argument, message, tmp_path):
    workdir = tmp_path / "s"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "sweep.py"), "--config", str(SWEEP), "--workdir", str(workdir), argument],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"sweep: error: {message}"]
    assert not workdir.exists()


def test_run_sweep_refuses_a_shard_out_of_range_before_writing(tmp_path):
    config = load_sweep_config(SWEEP, TINY)
    with pytest.raises(JaxalignError, match=r"shard 2/2: the shard index i must be in \[0, 2\)"):
        run_sweep(config, tmp_path / "bad", shard=(2, 2))
    with pytest.raises(JaxalignError, match="shard 0/0: the number of shards n must be at least 1"):
        run_sweep(config, tmp_path / "bad", shard=(0, 0))
    assert not (tmp_path / "bad").exists()


def test_an_nfe_budget_gives_every_method_the_most_generations_that_fit():
    from jaxalign.methods import METHODS
    from jaxalign.run import build
    from jaxalign.sweep import expand, fit_to_budget

    config = load_sweep_config(SWEEP, [*TINY, "--config.base.popsize=8", "--config.seeds=[0]", "--config.reward_sets=[{'brightness': 1.0}]"])
    config.methods = [{"name": "evolution", "params": {"strategy": name}, "label": name} for name in ("CoSyNE", "SNES")] + sorted(METHODS)
    loaded = load_model(config.base.model, dtype=config.base.dtype)
    budget = 400
    for name, run_config in expand(config):
        fitted = fit_to_budget(run_config, loaded, budget)
        search = build(fitted, loaded).search
        # The most generations whose planned NFE fit, at the largest popsize that fits one generation.
        assert search.budget(fitted.steps)["nfe"] <= budget < search.budget(fitted.steps + 1)["nfe"], name
        for popsize in range(fitted.popsize + 1, 9):  # every larger popsize fails to build or to fit
            larger = copy.deepcopy(fitted)
            larger.popsize = popsize
            try:
                assert build(larger, loaded).search.budget(1)["nfe"] > budget, name
            except JaxalignError:
                pass
        if name.startswith("CoSyNE"):  # popsize x 2 denoising steps per generation, generation 0 included
            assert (fitted.popsize, fitted.steps) == (8, (budget - 16) // 16)
    svdd = next(run for name, run in expand(config) if name.startswith("svdd"))
    with pytest.raises(JaxalignError, match="svdd: no popsize up to 8 fits 1 generation"):
        fit_to_budget(svdd, loaded, 20)
    # A config that no popsize can fix is refused as itself.
    dno = next(run for name, run in expand(config) if name.startswith("dno__"))
    dno.rewards = {"jpeg_compressibility": 1.0}
    with pytest.raises(JaxalignError, match="'dno' needs a differentiable reward"):
        fit_to_budget(dno, loaded, budget)
