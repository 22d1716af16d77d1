"""Checkpoint and resume: a run killed with SIGKILL and resumed ends exactly like an uninterrupted one."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jaxalign.cli import main

ROOT = Path(__file__).resolve().parent.parent
RED_PIXELS = str(ROOT / "configs" / "red_pixels.py")
SMALL = ["--config.height=32", "--config.width=32", "--config.num_inference_steps=2", "--config.popsize=6"]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_DISABLE_MOST_OPTIMIZATIONS": "true"}
# DNO's and DAS's generations differentiate through the UNet: optimised programs run them ten times faster.
OPTIMISED = {**os.environ, "JAX_PLATFORMS": "cpu"}
TIMING = ("wall_s", "elapsed_s")


def command(workdir, cache, *extra):
    # The processes of one test share a compilation cache: each compiles the same programs.
    return [sys.executable, "-m", "jaxalign", "run", "--config", RED_PIXELS, "--workdir", str(workdir), "--no-progress",
            *SMALL, "--config.steps=7", "--config.checkpoint_every=2", f"--config.compilation_cache_dir={cache}", *extra]  # fmt: skip


@pytest.fixture(scope="session")  # not module: with other modules run between, a module fixture is rebuilt
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("compilation_cache")


def metrics(workdir):
    lines = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k not in TIMING} for line in lines]


def count_lines(path):
    return len(path.read_text().splitlines()) if path.is_file() else 0


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory, cache):
    workdir = tmp_path_factory.mktemp("reference") / "run"
    subprocess.run(command(workdir, cache), env=ENV, check=True, capture_output=True, timeout=600)
    return workdir


@pytest.mark.xdist_group("resume")
def test_metrics_cut_mid_line_resume_from_the_checkpoint_they_reach(uninterrupted, cache, tmp_path):
    """A metrics file cut inside generation 5's line (a kill or a full disk while appending) reaches generation 4: the
    resume restores checkpoint 4 (not the newer 6 and 7, which the lost lines belonged to) and ends as the
    uninterrupted run."""
    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted, workdir)
    (workdir / "summary.json").unlink()
    lines = (workdir / "metrics.jsonl").read_text().splitlines(keepends=True)
    (workdir / "metrics.jsonl").write_text("".join(lines[:5]) + lines[5][: len(lines[5]) // 2])
    resumed = subprocess.run(command(workdir, cache, "--resume"), env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert metrics(workdir) == metrics(uninterrupted)
    assert sorted(int(step.name) for step in (workdir / "checkpoints").iterdir() if step.name.isdigit()) == [4, 6, 7]


@pytest.mark.xdist_group("resume")
@pytest.mark.parametrize("kill_after_lines", [2, 5])
def test_sigkill_then_resume_matches_uninterrupted_run(uninterrupted, cache, tmp_path, kill_after_lines):
    workdir = tmp_path / "run"
    process = subprocess.Popen(command(workdir, cache), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while count_lines(workdir / "metrics.jsonl") < kill_after_lines and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (workdir / "summary.json").exists()

    resumed = subprocess.run(command(workdir, cache, "--resume"), env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert metrics(workdir) == metrics(uninterrupted)
    assert (workdir / "images" / "step_0007.png").read_bytes() == (uninterrupted / "images" / "step_0007.png").read_bytes()
    summary, reference = (json.loads((w / "summary.json").read_text()) for w in (workdir, uninterrupted))
    assert summary["best_fitness"] == reference["best_fitness"] and summary["generations"] == 7


@pytest.mark.xdist_group("resume")
@pytest.mark.parametrize("method", ["dno"])
def test_sigkill_then_resume_is_exact_for_optimizer_and_smc_methods(tmp_path, cache, method):
    """DNO's state is optax's (AdamW moments and step count): it resumes exactly. (The SMC methods, DAS and FK
    steering, carry nothing across generations but the key, as the evolution run above; dropped for suite time.)"""
    extra = [f"--config.method={method}", "--config.popsize=2", "--config.steps=4"]  # killed after generation 3, resumed at 2
    reference = tmp_path / "reference"
    subprocess.run(command(reference, cache, *extra), env=OPTIMISED, check=True, capture_output=True, timeout=600)
    workdir = tmp_path / "run"
    process = subprocess.Popen(command(workdir, cache, *extra), env=OPTIMISED, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while count_lines(workdir / "metrics.jsonl") < 4 and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    resumed = subprocess.run(command(workdir, cache, *extra, "--resume"), env=OPTIMISED, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert metrics(workdir) == metrics(reference)
    assert (workdir / "best_solution.npy").read_bytes() == (reference / "best_solution.npy").read_bytes()


def _copy(uninterrupted, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted, workdir)
    return workdir


@pytest.mark.xdist_group("resume")
def test_resume_refuses_a_changed_config(uninterrupted, cache, tmp_path, capsys):
    workdir = _copy(uninterrupted, tmp_path)
    # In this process: the refusal comes before anything is compiled.
    assert main([*command(workdir, cache)[3:], "--config.popsize=8", "--config.seed=3", "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "jaxalign: error: cannot resume: the config differs from the one this workdir was started with in popsize, seed"


@pytest.mark.xdist_group("resume")
def test_corrupt_checkpoint_falls_back_to_the_previous_one(uninterrupted, cache, tmp_path):
    workdir = _copy(uninterrupted, tmp_path)
    (workdir / "summary.json").unlink()  # as if killed after the last checkpoint was written
    for file in (workdir / "checkpoints" / "7").rglob("*"):
        if file.is_file():
            file.write_bytes(b"garbage")
    resumed = subprocess.run(command(workdir, cache, "--resume"), env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "checkpoint at generation 7 is unreadable" in resumed.stderr and "falling back to generation 6" in resumed.stderr
    assert metrics(workdir) == metrics(uninterrupted)


@pytest.mark.xdist_group("resume")
def test_finished_prompts_are_skipped_on_resume(uninterrupted, cache, tmp_path):
    workdir = _copy(uninterrupted, tmp_path)
    before = (workdir / "metrics.jsonl").read_text()
    assert main([*command(workdir, cache)[3:], "--resume"]) == 0  # nothing left to run: nothing compiled
    assert (workdir / "metrics.jsonl").read_text() == before
