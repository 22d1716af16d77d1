"""The PixArt families end to end on tiny random PixArt-α and PixArt-Σ directories built with diffusers' PyTorch
classes: the default job through the CLI on both (their own DPM-Solver++ scheduler), and every method on both
through the runner the CLI calls, the stochastic ones through DDIM(eta) (DPM-Solver++ has no stochastic step).
(Parity with the PyTorch pipelines: test_families.py.)"""

import json
from pathlib import Path

import pytest

from jaxalign.cli import main
from jaxalign.config import load_config
from jaxalign.methods import METHODS
from jaxalign.models import load_model
from jaxalign.run import build, run
from jaxalign.testing import tiny_pytorch_pipeline

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "configs" / "default.py"
SMALL = ["--no-progress", "--config.popsize=4", "--config.steps=1", "--config.num_inference_steps=3"]
SMALL_OPTIONS = {"svdd": {"num_candidates": 2}, "dsearch": {"num_candidates": 2, "oversampling": 2, "width": 1.0}}
VARIANTS = ("pixart_alpha", "pixart_sigma")


@pytest.fixture(scope="module")
def tiny_pixart(tmp_path_factory):
    root = tmp_path_factory.mktemp("pixart")
    for seed, family in enumerate(VARIANTS):
        tiny_pytorch_pipeline(family, root / family, seed=seed)
    return root


def test_the_default_job_runs_on_tiny_pixart_directories_through_the_cli(tiny_pixart, tmp_path, capsys):
    for family in VARIANTS:
        workdir = tmp_path / family
        argv = ["run", "--config", str(DEFAULT), f"--config.model={tiny_pixart / family}", "--workdir", str(workdir), *SMALL, "--config.guidance_scale=4.5"]
        assert main(argv) == 0, capsys.readouterr().err
        summary = json.loads((workdir / "summary.json").read_text())
        assert summary["best_fitness"] >= summary["baseline_fitness"]
        assert json.loads((workdir / "config.json").read_text())["scheduler"] == "auto"
    capsys.readouterr()
    argv = ["run", "--config", str(DEFAULT), f"--config.model={tiny_pixart / 'pixart_sigma'}", "--workdir", str(tmp_path / "refused"), *SMALL, "--config.method=svdd"]
    assert main(argv) == 2 and not (tmp_path / "refused").exists()
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "takes stochastic denoising steps; set scheduler to one of" in error and "'dpmsolver++'" in error


@pytest.fixture(scope="module")
def loaded(tiny_pixart):
    return {family: load_model(str(tiny_pixart / family)) for family in VARIANTS}


# Each method on one of the two variants, alternating: they share every line of the family's code but the T5 length
# (each variant's own parity tests are above), so every method and both variants are covered at half the compiles.
@pytest.mark.parametrize("method, family", [(method, VARIANTS[i % 2]) for i, method in enumerate(sorted(METHODS))])
def test_every_method_runs_on_a_tiny_pixart_directory(loaded, tmp_path, method, family):
    options = SMALL_OPTIONS.get(method)
    scheduler = "ddim" if METHODS[method].stochastic_steps else "auto"
    overrides = [*SMALL[1:], f"--config.method={method}", f"--config.scheduler={scheduler}", "--config.guidance_scale=4.5", "--config.rewards={'brightness': 1.0}", "--config.reward_paths={}"]
    config = load_config(DEFAULT, overrides + [f"--config.method_params={options!r}"] * bool(options))
    config.model = f"tiny-{family}"
    job = build(config, loaded[family])
    assert job.context.sampler.scheduler == ("ddim" if scheduler == "ddim" else "dpmsolver++") and job.model.family.name == family
    (summary,) = run(job, tmp_path / family, progress=False)
    lines = [json.loads(line) for line in (tmp_path / family / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 1] and summary["method"] == method
    assert lines[1]["best_fitness"] >= lines[0]["best_fitness"]
    if method != "dsearch":  # DSearch's search steps are random coins: its cost varies
        assert [{k: line[k] for k in ("nfe", "images", "vjp_nfe")} for line in lines] == [job.search.budget(g) for g in (0, 1)]
