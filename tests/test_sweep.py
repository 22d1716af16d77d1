"""Sweeps: the product of the axes, the aggregate, skipping finished runs, bad sweep configs."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from jaxalign.errors import JaxalignError
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
    combos = {(r["strategy"], r["seed"], r["prompt"]) for r in rows}
    assert combos == {(s, seed, p) for s in ("CoSyNE", "SNES") for seed in ("0", "1") for p in config.base.prompts}
    for row in rows:
        assert float(row["best_fitness"]) >= float(row["baseline_fitness"])
        # Generation 0 evaluates popsize images for CoSyNE, only the baseline for SNES; then 2 x popsize.
        first = 4 if row["strategy"] == "CoSyNE" else 1
        assert int(row["nfe"]) == (first + 2 * 4) * 2  # x denoising steps
    steps = list(csv.DictReader((tmp_path / "sweep" / "steps.csv").open()))
    assert len(steps) == 8 * 3
    assert (tmp_path / "sweep" / "sweep_jpeg_compressibility.png").stat().st_size > 1000
    # Different seeds give different searches.
    by_seed = {r["seed"]: r["baseline_fitness"] for r in rows if r["strategy"] == "CoSyNE" and r["prompt"] == config.base.prompts[0]}
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
    config = load_sweep_config(SWEEP, [*TINY, "--config.strategies=[{'name': 'Nope'}]"])
    with pytest.raises(JaxalignError, match="unknown strategy 'Nope'"):
        run_sweep(config, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_sweep_script_reports_bad_input_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "sweep.py"), "--config", str(SWEEP), "--workdir", str(tmp_path / "s"), "--config.spaces=[]"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["sweep: error: sweep axis spaces is empty"]


def test_method_names_on_the_strategy_axis_set_the_method():
    from jaxalign.sweep import expand

    config = load_sweep_config(SWEEP, TINY)
    config.strategies = [{"name": "CoSyNE", "params": {}}, {"name": "zero_order", "params": {"cosine": 0.9}}]
    runs = {name.split("__")[0]: run for name, run in expand(config)}
    assert runs["CoSyNE"].method == "evolution" and runs["CoSyNE"].strategy == "CoSyNE"
    zero_order = runs["zero_order-cosine0.9"]
    assert zero_order.method == "zero_order" and dict(zero_order.method_params) == {"cosine": 0.9}
    assert not zero_order.strategy_params
