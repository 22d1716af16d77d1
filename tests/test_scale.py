"""Multi-prompt batching, population sharding over 8 CPU devices, and the persistent compilation cache."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.cli import main
from jaxalign.run import make_problem
from jaxalign.search import batched

ROOT = Path(__file__).resolve().parent.parent
RED_PIXELS = str(ROOT / "configs" / "red_pixels.py")
SMALL = ["--config.height=32", "--config.width=32", "--config.num_inference_steps=2"]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_DISABLE_MOST_OPTIMIZATIONS": "true"}
PROMPTS = ["a red circle", "a blue square", "a green star"]


def test_batched_prompts_equal_one_at_a_time(small_job):
    job = small_job
    problems, keys = zip(*(make_problem(job, p, i) for i, p in enumerate(PROMPTS)))
    init, start, step = batched(job.search)
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *problems)
    states = init(jnp.stack(keys), stacked, job.search_params)
    singles = [job.search.init(k, p, job.search_params) for k, p in zip(keys, problems)]
    for generation in range(3):
        states, reports = (step if generation else start)(job.model_params, job.reward_params, stacked, job.search_params, states)
        for j, problem in enumerate(problems):
            singles[j], report = job.search.advance(job.model_params, job.reward_params, problem, job.search_params, singles[j])
            np.testing.assert_allclose(np.asarray(reports.fitness[j]), np.asarray(report.fitness), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(float(reports.best_fitness[j]), float(report.best_fitness), rtol=1e-5)
    assert step._cache_size() == 1
    # The prompts are really different searches.
    assert len({float(b) for b in reports.best_fitness}) == 3


def metrics(workdir):
    return [
        {k: v for k, v in json.loads(line).items() if k not in ("wall_s", "elapsed_s")}
        for line in Path(workdir, "metrics.jsonl").read_text().splitlines()
    ]


def assert_same_metrics(a, b, rel=1e-5):
    assert len(a) == len(b)
    for line_a, line_b in zip(a, b):
        assert line_a.keys() == line_b.keys()
        for key, value in line_a.items():
            assert line_b[key] == (pytest.approx(value, rel=rel, abs=1e-6) if isinstance(value, float) else value), key


def test_cli_batch_prompts_matches_sequential(tmp_path, capsys):
    """Batched prompts give each prompt's sequential run, also when one stops at target_reward while the other goes
    on: its lines, last population and best solution are those of the generation it stopped at, though the group's
    compiled step kept evolving it."""
    common = ["run", "--config", RED_PIXELS, "--no-progress", *SMALL, "--config.popsize=6", "--config.steps=3",
              f"--config.prompts={PROMPTS[:2]!r}", "--config.rewards={'brightness': 1.0}"]  # fmt: skip
    folders = ("000_a_red_circle", "001_a_blue_square")
    assert main([*common, "--workdir", str(tmp_path / "free")]) == 0
    # The larger generation-1 best as the target: that prompt stops at generation 1, the other (unless tied) goes on.
    target = max(metrics(tmp_path / "free" / folder)[1]["best_fitness"] for folder in folders)
    stopping = [*common, f"--config.target_reward={target!r}"]
    assert main([*stopping, "--workdir", str(tmp_path / "seq")]) == 0
    assert main([*stopping, "--workdir", str(tmp_path / "batch"), "--config.batch_prompts=true"]) == 0
    summaries = json.loads((tmp_path / "batch" / "summary.json").read_text())["prompts"]
    first, second = sorted(summaries, key=lambda s: s["generations"])
    assert (first["generations"], first["stopped_because"]) == (1, "target_reward") and second["generations"] > 1
    for folder in folders:
        seq, batch = tmp_path / "seq" / folder, tmp_path / "batch" / folder
        assert_same_metrics(metrics(seq), metrics(batch))
        for name in ("best_solution.npy", "best_latent.npy"):
            np.testing.assert_allclose(np.load(batch / name), np.load(seq / name), atol=1e-4, err_msg=f"{folder}/{name}")
        population = [np.load(run / "images" / "final_population.npy").astype(int) for run in (batch, seq)]
        np.testing.assert_allclose(*population, atol=1)  # uint8 images: one level of rounding
    assert [s["prompts_per_step"] for s in summaries] == [2, 2]


def run_cli(workdir, *extra, env=ENV):
    args = [sys.executable, "-m", "jaxalign", "run", "--config", RED_PIXELS, "--workdir", str(workdir), "--no-progress", *SMALL, *extra]
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return json.loads(Path(workdir, "summary.json").read_text())


def run_here(workdir, *extra):
    """The same command in this (one-device) test process, sparing a process start and model load."""
    assert main(["run", "--config", RED_PIXELS, "--workdir", str(workdir), "--no-progress", *SMALL, *extra]) == 0
    return json.loads(Path(workdir, "summary.json").read_text())


EIGHT = {**ENV, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
POPULATION = ["--config.popsize=8", "--config.steps=4", "--config.checkpoint_every=2", "--config.rewards={'brightness': 1.0, 'contrast': 1.0}"]
AXES = ["--config.popsize=8", "--config.steps=3", "--config.batch_prompts=true", f"--config.prompts={PROMPTS[:2]!r}", "--config.rewards={'brightness': 1.0}"]
FLUX = ["--config.popsize=4", "--config.steps=2", "--config.guidance_scale=3.5", "--config.rewards={'brightness': 1.0}"]
RUNS_ON_EIGHT = {  # workdir -> arguments
    "evolution": [*POPULATION, "--config.method=evolution"],
    "random": [*POPULATION, "--config.method=random"],
    "axes": AXES,
    "flux": [*FLUX, "--config.shard_params=true"],
}


@pytest.fixture(scope="session")  # session: a module fixture would be rebuilt if the worker ran other modules between
def eight_devices(tmp_path_factory):
    """The 8-device runs, all in one process on 8 CPU devices (one JAX start and model load for all of them; their
    programs go to a compilation cache that the resume test's process reads)."""
    from jaxalign.testing import tiny_pytorch_pipeline

    root = tmp_path_factory.mktemp("eight_devices")
    tiny_pytorch_pipeline("flux", root / "flux_model", seed=2)
    runs = {
        name: ["run", "--config", RED_PIXELS, "--workdir", str(root / name), "--no-progress", *SMALL, f"--config.compilation_cache_dir={root / 'xla-cache'}",
               *args, *([f"--config.model={root / 'flux_model'}"] if name == "flux" else [])]
        for name, args in RUNS_ON_EIGHT.items()
    }  # fmt: skip
    script = "import json, sys\nfrom jaxalign.cli import main\nsys.exit(max(main(args) for args in json.loads(sys.argv[1])))"
    result = subprocess.run([sys.executable, "-c", script, json.dumps(list(runs.values()))], env=EIGHT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    return root, runs


def _summary(folder):
    return json.loads(Path(folder, "summary.json").read_text())


@pytest.mark.xdist_group("eight_devices")
@pytest.mark.parametrize("method", ["evolution", "random"])
def test_population_sharded_over_eight_devices_matches_one_device(tmp_path, eight_devices, method):
    root, _ = eight_devices
    single = run_here(tmp_path / "single", *RUNS_ON_EIGHT[method])
    sharded = _summary(root / method)
    assert sharded["num_devices"] == 8 and sharded["population_sharded_over"] == 8
    assert single["num_devices"] == 1 and single["population_sharded_over"] == 1
    assert_same_metrics(metrics(root / method), metrics(tmp_path / "single"), rel=1e-4)


@pytest.mark.xdist_group("eight_devices")
def test_prompt_and_population_axes_sharded_over_eight_devices(tmp_path, eight_devices):
    root, _ = eight_devices
    run_here(tmp_path / "single", *AXES)
    for folder in ("000_a_red_circle", "001_a_blue_square"):
        summary = _summary(root / "axes" / folder)
        assert (summary["prompts_sharded_over"], summary["population_sharded_over"]) == (2, 4)
        assert_same_metrics(metrics(root / "axes" / folder), metrics(tmp_path / "single" / folder), rel=1e-4)


@pytest.mark.xdist_group("eight_devices")
def test_sharded_run_resumes_from_checkpoint(tmp_path, eight_devices):
    root, runs = eight_devices
    run = tmp_path / "run"
    shutil.copytree(root / "evolution", run)
    complete = metrics(run)
    # As if killed after generation 3 was logged: the newest usable checkpoint is generation 2.
    (run / "summary.json").unlink()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(lines[:4]) + "\n")
    shutil.rmtree(run / "checkpoints" / "4")
    arguments = runs["evolution"]
    arguments = [*arguments[: arguments.index("--workdir") + 1], str(run), *arguments[arguments.index("--workdir") + 2 :], "--resume"]
    result = subprocess.run([sys.executable, "-m", "jaxalign", *arguments], env=EIGHT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert _summary(run)["population_sharded_over"] == 8
    assert metrics(run) == complete


def test_persistent_compilation_cache_is_reused_across_processes(tmp_path):
    cache = tmp_path / "xla-cache"
    # A reward without host callbacks: JAX never caches programs that contain them.
    extra = ["--config.popsize=4", "--config.steps=1", f"--config.compilation_cache_dir={cache}", "--config.rewards={'contrast': 1.0}"]
    first = run_cli(tmp_path / "first", *extra)
    assert any(cache.iterdir())
    second = run_cli(tmp_path / "second", *extra)
    assert first["step_from_compilation_cache"] is False
    assert second["step_from_compilation_cache"] is True
    assert metrics(tmp_path / "first") == metrics(tmp_path / "second")


@pytest.mark.xdist_group("eight_devices")
def test_flux_weights_sharded_over_eight_devices_give_the_same_run(tmp_path, eight_devices):
    """shard_params=true splits a tiny Flux's weights over a "model" axis of 8 CPU devices: the same metrics as the
    unsharded run on one device."""
    root, _ = eight_devices
    single = run_here(tmp_path / "single", *FLUX, f"--config.model={root / 'flux_model'}")
    sharded = _summary(root / "flux")
    assert sharded["num_devices"] == 8 and sharded["population_sharded_over"] == 1
    assert sharded["params_split"] > 4 and single["params_split"] == 1.0  # each device holds a fraction of the weights
    assert_same_metrics(metrics(root / "flux"), metrics(tmp_path / "single"), rel=1e-4)
