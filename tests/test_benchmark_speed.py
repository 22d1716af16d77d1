"""The plain-torch CoSyNE of the speed benchmark's reference loop does evotorch's work per generation."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from benchmark_speed import TorchCosyne  # noqa: E402


def test_torch_cosyne_scores_what_evotorch_scores_and_improves():
    counts = []

    def score(solutions):
        counts.append(len(solutions))
        return -(solutions**2).sum(1)

    torch.manual_seed(0)
    search = TorchCosyne(score, popsize=16, length=40)
    initial = None
    for _ in range(80):
        search.step()
        initial = float(search.fitness.max()) if initial is None else initial
        assert torch.equal(search.fitness, -(search.population**2).sum(1))  # the kept scores are the kept members'
    # evotorch's Cosyne (popsize 16, no elites) scores its first population, then per generation
    # 2 x popsize/4 children and the permuted population: 8 + 16.
    assert counts == [16] + [24] * 80
    assert float(search.fitness.max()) > initial + 1.0


def test_gpu_benchmark_script_dry_run(tmp_path, size="tiny_flux"):
    """scripts/gpu_benchmarks.sh on CPU with a tiny pipeline of a transformer size's layout: every part (jaxalign and
    the diffusers reference at the size's settings, EA and DNO at the lean ones) runs pinned to one CPU and reports.
    Flux only (packed latents, embedded guidance): the SD 3.5 size goes through the same code (3 min more of suite)."""
    env = {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "true", "OUT": str(tmp_path), "BENCH_ARGS": "--generations 1 --threads 1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    subprocess.run(["bash", "scripts/gpu_benchmarks.sh", "float32", size], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    default, lean = ((tmp_path / f"{name}_{size}_float32.txt").read_text() for name in ("default", "lean"))
    ours, reference, lean_ours, ea, dno = (json.loads(line) for text in (default, lean) for line in text.splitlines() if line.startswith("{"))
    names = ["jaxalign evolution", "reference", "jaxalign evolution", "jaxalign evolution", "jaxalign dno"]
    assert [p["part"].split(" (")[0] for p in (ours, reference, lean_ours, ea, dno)] == names
    for part in ours, reference, lean_ours, ea, dno:
        assert "failed" not in part and part["cpu_threads"] == 1 and part["images_per_s"] > 0, part
    assert reference["torch_threads"] == 1 and ours["reward"] == reference["reward"] == "jpeg_compressibility"
    assert (lean_ours["denoise_batch"], ea["decode_batch"], dno["denoise_batch"]) == (4, 2, 4) and ours["denoise_batch"] == 0
    assert ours["model_tflop_per_image"] > 0 and np.isclose(ours["mfu"], ours["achieved_tflops"] / 494, rtol=1e-3)
    assert "jaxalign vs reference" in default and "EA vs DNO" in lean


def test_the_parents_flop_count_from_shapes_is_the_count_from_the_loaded_model():
    """The parent counts model FLOPs from abstract weights on the CPU (a GPU backend gives no cost analysis of a
    lowered program) and hands the count to the parts: it must be the count of the job the parts run."""
    from types import SimpleNamespace

    from benchmark_speed import JAXALIGN, count_model_tflop_per_image, job_config, load_benchmark_model, model_dir_for, model_tflop_per_image

    from jaxalign.run import build, make_problem

    args = SimpleNamespace(size="embedded", dtype="float32", attention="standard", decode_batch=0, denoise_batch=0, popsize=None, num_inference_steps=None, part=JAXALIGN)
    job = build(job_config(args), load_benchmark_model(model_dir_for(args.size), args.dtype))
    problem, _ = make_problem(job, job.prompts[0], 0)
    assert count_model_tflop_per_image(args, model_dir_for(args.size)) == model_tflop_per_image(job, problem) > 0
