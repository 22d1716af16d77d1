"""The SD3 family end to end on a tiny random SD 3.5-layout directory (RMS-normed q/k, MMDiT-X blocks, T5) built
with diffusers' PyTorch classes: the default job through the CLI, and with every method and every search space
through the runner the CLI calls, the stochastic methods through the flow's DDIM(eta) transition; sharded float16
T5 weights; the long-prompt warning. (Parity with the PyTorch pipeline: test_families.py.)"""

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
# Beams that divide popsize 4 and few candidates.
SMALL_OPTIONS = {"svdd": {"num_candidates": 2}, "dsearch": {"num_candidates": 2, "oversampling": 2, "width": 1.0}}
# run id -> (method, method_params, space). Spaces touch the model only through its latent shape (16 channels
# here): the default and the most shape-bound one run here; all six were run on this directory when SD3 landed.
RUNS = {
    **{f"evolution-{space}": ("evolution", None, space) for space in ("noise", "multi_axis_svd_rotation")},
    **{method: (method, SMALL_OPTIONS.get(method), None) for method in sorted(METHODS) if method != "evolution"},
    "dsearch_r": ("dsearch", {"num_candidates": 2, "oversampling": 1, "drop_schedule": "none", "replace_rate": 0.25}, None),
    "dno_sde": ("dno", {"mode": "sde"}, None),
}


@pytest.fixture(scope="module")
def tiny_sd35(tmp_path_factory):
    path = tmp_path_factory.mktemp("sd35") / "model"
    family, options = TINY_VARIANTS["sd35"]
    tiny_pytorch_pipeline(family, path, seed=5, **options)
    return path


@pytest.fixture(scope="module")
def loaded(tiny_sd35):
    return load_model(str(tiny_sd35))


def _overrides(method, options, space):
    options = {**(options or {}), "space": space} if space else options
    return [f"--config.method={method}"] + [f"--config.method_params={options!r}"] * bool(options)


def test_the_default_job_runs_on_a_tiny_sd35_directory_through_the_cli(tiny_sd35, tmp_path, capsys):
    workdir = tmp_path / "run"
    argv = ["run", "--config", str(DEFAULT), f"--config.model={tiny_sd35}", "--workdir", str(workdir), *SMALL]
    assert main(argv) == 0, capsys.readouterr().err
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["model"] == str(tiny_sd35) and summary["best_fitness"] >= summary["baseline_fitness"]
    assert json.loads((workdir / "config.json").read_text())["scheduler"] == "auto"


@pytest.mark.parametrize("run_id", list(RUNS))
def test_every_method_and_space_runs_on_a_tiny_sd35_directory(loaded, tmp_path, run_id):
    # The default job's config with the run's method and space, through the runner the CLI calls (the model loaded
    # once for all runs: the CLI path itself is the test above).
    method, options, space = RUNS[run_id]
    # Brightness (differentiable, weight-free) instead of the tiny-CLIP reward: a smaller program to compile per run.
    config = load_config(DEFAULT, [*SMALL[1:], *_overrides(method, options, space), "--config.rewards={'brightness': 1.0}", "--config.reward_paths={}"])
    config.model = "tiny-sd35"
    job = build(config, loaded)
    assert job.context.sampler.scheduler == "flow_euler" and job.context.sampler.stochastic
    (summary,) = run(job, tmp_path, progress=False)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 1] and summary["method"] == method
    assert lines[1]["best_fitness"] >= lines[0]["best_fitness"] and lines[1]["nfe"] > lines[0]["nfe"]
    if method != "dsearch":  # DSearch's search steps are random coins: its cost varies
        assert [{k: line[k] for k in ("nfe", "images", "vjp_nfe")} for line in lines] == [job.search.budget(g) for g in (0, 1)]
    assert (tmp_path / "images" / "step_0001.png").is_file()


def test_sharded_fp16_t5_with_its_tied_embedding_loads(tiny_sd35, tmp_path):
    """The Hub's SD3 layout stores T5 in float16 shards with an index (some checkpoints also repeat the input
    embedding as ``encoder.embed_tokens.weight``): read to the same weights, up to float16 rounding."""
    import shutil

    import jax
    import numpy as np
    from safetensors.numpy import load_file, save_file

    sharded = tmp_path / "sharded"
    shutil.copytree(tiny_sd35, sharded)
    folder = sharded / "text_encoder_3"
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    state = {k: v.astype(np.float16) for k, v in state.items()} | {"encoder.embed_tokens.weight": state["shared.weight"].astype(np.float16)}
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        save_file({k: state[k] for k in keys}, folder / shard)
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    _, reference = load_model(str(tiny_sd35))
    for index in ("model.safetensors.index.json", "model.safetensors.index.fp16.json"):  # the Hub's main and variant index names
        if index != "model.safetensors.index.json":
            (folder / "model.safetensors.index.json").rename(folder / index)
        _, params = load_model(str(sharded))
        for a, b in zip(jax.tree.leaves(params["text_encoder_3"]), jax.tree.leaves(reference["text_encoder_3"])):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-4)


def test_a_prompt_longer_than_t5_takes_is_a_warning(tiny_sd35, capsys):
    from conftest import small_config

    from jaxalign.run import build

    words = "a red circle on a blue background, " * 40  # 9 tokens each: past CLIP's 77 and T5's 256
    build(small_config(model=str(tiny_sd35), prompts=[words], rewards={"brightness": 1.0}, popsize=4))
    assert "is longer than a text encoder's 77 / 256 tokens; the rest is ignored there" in capsys.readouterr().err
    build(small_config(model=str(tiny_sd35), prompts=[words[:700]], rewards={"brightness": 1.0}, popsize=4))
    assert "77 tokens; the rest is ignored there" in capsys.readouterr().err  # CLIP cuts, T5 takes it whole
