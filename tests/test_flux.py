"""The Flux family end to end on tiny random FLUX.1-dev and -schnell directories built with diffusers' PyTorch
classes: the default job through the CLI (dev: guidance embedded, one pass per step; schnell: no guidance, and a
guidance scale refused), and every method through the runner the CLI calls, the stochastic ones through the flow's
DDIM(eta) transition on packed-inside latents. (Parity with FluxPipeline: test_families.py; weights sharded over 8
devices: test_scale.py.)"""

import json
from pathlib import Path

import pytest

from jaxalign.cli import main
from jaxalign.config import load_config
from jaxalign.methods import METHODS
from jaxalign.models import load_model
from jaxalign.run import build, run
from jaxalign.testing import TINY_VARIANTS, tiny_pytorch_pipeline

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "configs" / "default.py"
SMALL = ["--no-progress", "--config.popsize=4", "--config.steps=1", "--config.num_inference_steps=2"]
SMALL_OPTIONS = {"svdd": {"num_candidates": 2}, "dsearch": {"num_candidates": 2, "oversampling": 2, "width": 1.0}}


@pytest.fixture(scope="module")
def tiny_flux(tmp_path_factory):
    root = tmp_path_factory.mktemp("flux")
    tiny_pytorch_pipeline("flux", root / "dev", seed=7)
    family, options = TINY_VARIANTS["flux_schnell"]
    tiny_pytorch_pipeline(family, root / "schnell", seed=8, **options)
    return root


def test_the_default_job_runs_on_tiny_flux_directories_through_the_cli(tiny_flux, tmp_path, capsys):
    for variant, guidance in (("dev", "3.5"), ("schnell", "0")):
        workdir = tmp_path / variant
        argv = ["run", "--config", str(DEFAULT), f"--config.model={tiny_flux / variant}", "--workdir", str(workdir), *SMALL, f"--config.guidance_scale={guidance}"]
        assert main(argv) == 0, capsys.readouterr().err
        summary = json.loads((workdir / "summary.json").read_text())
        assert summary["best_fitness"] >= summary["baseline_fitness"]
    capsys.readouterr()
    argv = ["run", "--config", str(DEFAULT), f"--config.model={tiny_flux / 'schnell'}", "--workdir", str(tmp_path / "refused"), *SMALL]
    assert main(argv) == 2 and not (tmp_path / "refused").exists()
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "samples without guidance (a distilled model such as FLUX.1-schnell); set guidance_scale=0, got 7.5" in error


@pytest.fixture(scope="module")
def loaded(tiny_flux):
    return load_model(str(tiny_flux / "dev"))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs_on_a_tiny_flux_directory(loaded, tmp_path, method):
    options = SMALL_OPTIONS.get(method)
    overrides = [*SMALL[1:], f"--config.method={method}", "--config.guidance_scale=3.5", "--config.rewards={'brightness': 1.0}", "--config.reward_paths={}"]
    config = load_config(DEFAULT, overrides + [f"--config.method_params={options!r}"] * bool(options))
    config.model = "tiny-flux-dev"
    job = build(config, loaded)
    assert job.context.sampler.scheduler == "flow_euler" and job.model.guidance == "embedded"
    (summary,) = run(job, tmp_path, progress=False)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 1] and summary["method"] == method
    assert lines[1]["best_fitness"] >= lines[0]["best_fitness"]
    if method != "dsearch":
        assert [{k: line[k] for k in ("nfe", "images", "vjp_nfe")} for line in lines] == [job.search.budget(g) for g in (0, 1)]
