"""The method table's statistics: the bootstrap interval against the normal theory it should approach, and the
table's columns against the runs they summarise."""

import json

import numpy as np
import pytest

from jaxalign.comparison import baseline_row, bootstrap_ci, markdown, method_table
from jaxalign.errors import JaxalignError
from jaxalign.files import write_csv


def test_bootstrap_interval_matches_normal_theory():
    sample = np.random.default_rng(1).normal(3.0, 2.0, size=900)
    mean, low, high = bootstrap_ci(sample, np.mean)
    assert mean == pytest.approx(sample.mean()) and low < mean < high
    # The mean's 95% interval: +-1.96 standard errors; the median's is sqrt(pi / 2) times wider for a normal.
    assert high - low == pytest.approx(2 * 1.96 * sample.std() / np.sqrt(sample.size), rel=0.1)
    median, low, high = bootstrap_ci(sample)
    assert median == pytest.approx(np.median(sample)) and low < median < high
    assert high - low == pytest.approx(2 * 1.96 * np.sqrt(np.pi / 2) * 2.0 / np.sqrt(sample.size), rel=0.2)
    assert bootstrap_ci([4.0] * 7) == (4.0, 4.0, 4.0)
    with pytest.raises(JaxalignError, match="no values"):
        bootstrap_ci([])


def _run(method, seed, prompt, baseline, best, judge, saturation, seconds):
    return {
        "run": f"{method}__seed{seed}/{prompt}", "method": method, "seed": seed, "prompt": prompt, "popsize": 8,
        "generations": 10, "nfe": 880, "vjp_nfe": 0, "baseline_fitness": baseline, "best_fitness": best, "search_s": seconds,
        "compile_s": 5.0, "step_memory_bytes": 2**21, "judge_best:all_named": judge, "judge_best:position": 1.0,
        "judge_baseline:all_named": 0.0, "judge_baseline:position": 0.0, "baseline:saturation": 0.5,
        "best:saturation": saturation, "population_clip_diversity": 0.1 * seed,
    }  # fmt: skip


def test_the_table_summarises_its_runs(tmp_path):
    runs = [
        _run("CoSyNE", 0, "p", 10.0, 50.0, 1.0, 0.7, 30.0), _run("CoSyNE", 1, "p", 20.0, 40.0, 0.0, 0.6, 34.0),
        _run("CoSyNE", 0, "q", 30.0, 90.0, 1.0, 0.9, 30.0), _run("random", 0, "p", 10.0, 20.0, 0.0, 0.5, 10.0),
    ]  # fmt: skip
    runs[3]["population_clip_diversity"] = ""  # a method that returns one image has no population diversity
    with pytest.raises(JaxalignError, match="jaxalign eval --workdir"):
        method_table(tmp_path)
    write_csv(tmp_path / "runs.csv", runs)
    diversity = [{"prompt": "p", "method": "evolution", "strategy": "CoSyNE", "best_clip_diversity": 0.3, "members": ["CoSyNE__seed0/p", "CoSyNE__seed1/p"]}]
    (tmp_path / "eval.json").write_text(json.dumps({"runs": [], "diversity": diversity}))
    cosyne, random = method_table(tmp_path)
    assert cosyne["method"] == "CoSyNE" and cosyne["runs"] == 3 and random["runs"] == 1
    assert cosyne["reward"][0] == 50.0 and cosyne["gain"][0] == 40.0 and cosyne["judge_all"][0] == pytest.approx(2 / 3)
    assert cosyne["cross_change"] == pytest.approx(0.2) and cosyne["seed_diversity"] == 0.3
    assert cosyne["population_diversity"] == pytest.approx(0.1 / 3)
    assert cosyne["job_seconds"] == 32.0 and cosyne["step_memory_mib"] == 2.0  # two jobs (seeds) of 30 and 34 s
    assert np.isnan(random["seed_diversity"]) and np.isnan(random["population_diversity"]) and random["reward"] == (20.0, 20.0, 20.0)
    baseline = baseline_row(tmp_path)
    assert baseline["runs"] == 3 and baseline["reward"][0] == 20.0  # (prompt, seed) pairs p/0, p/1, q/0
    text = markdown([cosyne, random], baseline)
    assert text.count("\n") == 4 and "| CoSyNE | 8 | 10 | 880 | 0 | 50.0 [" in text
