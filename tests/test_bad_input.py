"""Hostile input ends in one clear line, exit 2, and an untouched workdir; interrupts end cleanly and resume exactly.

Complements tests/test_cli.py's BAD_INPUTS (unknown names and fields, missing files, out-of-range
numbers): this battery covers re-used workdirs, numbers the noise schedule cannot take, damaged
model files, broken config files, bad prompt files, foreign files in a workdir and real signals.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import small_config

from jaxalign.cli import main
from jaxalign.errors import JaxalignError
from jaxalign.run import build
from jaxalign.testing import tiny_pytorch_pipeline

ROOT = Path(__file__).resolve().parent.parent
RED_PIXELS = str(ROOT / "configs" / "red_pixels.py")
SMALL = ["--no-progress", "--config.height=32", "--config.width=32", "--config.num_inference_steps=2", "--config.popsize=4", "--config.steps=2"]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_DISABLE_MOST_OPTIMIZATIONS": "true"}


def snapshot(directory: Path) -> dict:
    """Every file under ``directory`` with its bytes (what 'untouched' is checked against)."""
    if not directory.exists():
        return {}
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def fails_cleanly(argv, capsys, pattern, workdir: Path):
    before = snapshot(workdir)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxalign: error: "), err
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in err
    assert snapshot(workdir) == before


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished small run, copied per test."""
    workdir = tmp_path_factory.mktemp("finished") / "run"
    assert main(["run", "--config", RED_PIXELS, "--workdir", str(workdir), *SMALL]) == 0
    return workdir


# --- Workdirs are never damaged --------------------------------------------------------------------


def test_running_again_into_a_finished_run_is_refused(finished, tmp_path, capsys):
    workdir = tmp_path / "run"
    shutil.copytree(finished, workdir)
    fails_cleanly(["run", "--config", RED_PIXELS, "--workdir", str(workdir), *SMALL], capsys, "already holds a run; pass --resume to continue it or --overwrite", workdir)
    # Another config into it, even with --resume, is refused too (the fields that differ are named).
    fails_cleanly(["run", "--config", RED_PIXELS, "--workdir", str(workdir), *SMALL, "--config.seed=5", "--resume"], capsys, "differs .* in seed", workdir)


def test_resume_of_a_finished_run_changes_nothing(finished, tmp_path, capsys):
    workdir = tmp_path / "run"
    shutil.copytree(finished, workdir)
    before = snapshot(workdir)
    assert main(["run", "--config", RED_PIXELS, "--workdir", str(workdir), *SMALL, "--resume"]) == 0
    after = snapshot(workdir)
    assert {k: v for k, v in after.items() if k != "config.json"} == {k: v for k, v in before.items() if k != "config.json"}


def test_overwrite_replaces_the_run_and_leaves_nothing_stale(finished, tmp_path, capsys):
    workdir = tmp_path / "run"
    shutil.copytree(finished, workdir)
    assert main(["run", "--config", RED_PIXELS, "--workdir", str(workdir), *SMALL, "--config.steps=1", "--overwrite"]) == 0
    images = sorted(p.name for p in (workdir / "images").iterdir())
    assert images == ["baseline.png", "final_population.npy", "step_0001.png"]  # step_0002.png of the old run is gone
    assert len((workdir / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("config_json", [None, '{"_name_or_path": "openai/clip-vit-large-patch14", "model_type": "clip"}'])
def test_a_folder_of_other_files_is_never_cleared(tmp_path, capsys, config_json):
    # Neither a folder of documents nor a model folder (whose config.json is not a run's) is ever written or cleared.
    workdir = tmp_path / "thesis"
    workdir.mkdir()
    (workdir / "chapter1.tex").write_text("precious")
    if config_json:
        (workdir / "config.json").write_text(config_json)
    for flag in ([], ["--overwrite"], ["--resume"]):
        fails_cleanly(["run", "--config", RED_PIXELS, "--workdir", str(workdir), *SMALL, *flag], capsys, "not empty and holds no jaxalign run", workdir)


@pytest.mark.parametrize("marker", ['{"jaxalign": "sweep", "format": 1}', '{"jaxalign": "run", "format": 99}', "not json"])
def test_only_a_run_marker_lets_a_run_touch_a_folder(finished, tmp_path, capsys, marker):
    """A run's folder is recognised by jaxalign's own marker, written first; a finished run whose marker names a
    sweep, another format or is damaged is neither resumed nor cleared (its files stay as they were)."""
    assert (finished / ".jaxalign-workdir.json").is_file()
    workdir = tmp_path / "run"
    shutil.copytree(finished, workdir)
    (workdir / ".jaxalign-workdir.json").write_text(marker)
    pattern = "holds a jaxalign sweep, not a run" if "sweep" in marker else "is damaged or from another jaxalign version"
    for flag in (["--resume"], ["--overwrite"]):
        fails_cleanly(["run", "--config", RED_PIXELS, "--workdir", str(workdir), *SMALL, *flag], capsys, pattern, workdir)


def test_resume_and_overwrite_exclude_each_other(tmp_path, capsys):
    fails_cleanly(["run", "--config", RED_PIXELS, "--workdir", str(tmp_path / "new"), "--resume", "--overwrite"], capsys, "exclude each other", tmp_path / "new")


@pytest.mark.parametrize("damage", ["metrics.jsonl is a directory", "images is a file", "config.json is not JSON", "config.json is a JSON list", "inputs.json is a JSON string"])
def test_resume_refuses_a_workdir_jaxalign_did_not_write(finished, tmp_path, capsys, damage):
    workdir = tmp_path / "run"
    shutil.copytree(finished, workdir)
    if damage == "metrics.jsonl is a directory":
        (workdir / "metrics.jsonl").unlink()
        (workdir / "metrics.jsonl").mkdir()
        (workdir / "metrics.jsonl" / "x").write_text("")
        pattern = "metrics.jsonl should be a file"
    elif damage == "images is a file":
        shutil.rmtree(workdir / "images")
        (workdir / "images").write_text("")
        pattern = "images should be a directory"
    elif damage == "config.json is not JSON":
        (workdir / "config.json").write_bytes(b"\x00\xff not json")
        pattern = "config.json is not the JSON a run writes"
    elif damage == "config.json is a JSON list":  # JSON, but not an object: once a traceback from the comparison
        (workdir / "config.json").write_text("[1, 2]")
        pattern = "config.json is not the JSON a run writes"
    else:
        (workdir / "inputs.json").write_text('"prompts"')
        pattern = "inputs.json is not the JSON a run writes"
    fails_cleanly(["run", "--config", RED_PIXELS, "--workdir", str(workdir), *SMALL, "--resume"], capsys, pattern, workdir)


# --- Numbers the model or the schedule cannot take -------------------------------------------------

NUMBERS = {
    "steps >= training timesteps": (["--config.num_inference_steps=1000"], "num_inference_steps must be at most 999 \\(the model's noise process has 1000 training timesteps\\)"),
    "ten thousand steps": (["--config.num_inference_steps=10000"], "must be at most 999"),
    "dpm-solver with repeated timesteps": (["--config.scheduler=dpmsolver++", "--config.num_inference_steps=999"], "more than scheduler 'dpmsolver\\+\\+' can take"),
    "image size the UNet cannot halve": (["--config.height=36", "--config.width=36"], "multiples of 8 .* got 36x36"),
    "huge popsize": (["--config.popsize=1000000000"], r"popsize must be in \[2, 65536\]"),
    "seed beyond 64 bits": ([f"--config.seed={2**64}"], r"seed must be in \[0, 2\*\*63\)"),
    "negative seed": (["--config.seed=-1"], r"seed must be in \[0, 2\*\*63\)"),
    "non-numeric strategy knob": (["--config.method_params.strategy_params.mutation_stdev=abc"], "mutation_stdev must be a number, got 'abc'"),
    "mutation disabled the evotorch way": (["--config.method_params.strategy_params.mutation_stdev=None"], "mutation_stdev=0 disables mutation"),
    "None for a number": (["--config.popsize=none"], "config field 'popsize' cannot be None; it expects int"),
    "negative denoise batch": (["--config.denoise_batch=-1"], r"denoise_batch must be 0 \(the whole population at once\) or divide popsize=4, got -1"),
    "denoise batch not dividing the population": (["--config.denoise_batch=3"], r"denoise_batch must be 0 .* divide popsize=4, got 3"),
    "flow scheduler on a VP model": (["--config.scheduler=flow_euler"], "scheduler 'flow_euler' samples rectified-flow models, but model 'embedded' is a variance-preserving model"),
    "stochastic method on a deterministic scheduler": (["--config.scheduler=pndm", "--config.method=svdd"], "method 'svdd' takes stochastic denoising steps; set scheduler to one of ddim, lcm"),
}


@pytest.mark.parametrize("case", list(NUMBERS))
def test_numbers_out_of_reach_are_one_line(case, tmp_path, capsys):
    overrides, pattern = NUMBERS[case]
    workdir = tmp_path / "out"
    fails_cleanly(["run", "--config", RED_PIXELS, "--workdir", str(workdir), *SMALL, *overrides], capsys, pattern, workdir)
    assert not workdir.exists()


# --- Damaged model files ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "sd"
    tiny_pytorch_pipeline("sd", path)
    return path


def _damage(path: Path, how: str) -> str:
    if how == "corrupt model_index.json":
        (path / "model_index.json").write_text("{not json")
        return "model_index.json is not valid JSON"
    if how == "model_index.json is a list":
        (path / "model_index.json").write_text("[1, 2]")
        return "model_index.json must hold a JSON object, got list"
    if how == "corrupt unet config":
        (path / "unet" / "config.json").write_bytes(b"\x89PNG\x00\x01")
        return "unet/config.json is not valid JSON"
    if how == "truncated safetensors":
        weights = path / "unet" / "diffusion_pytorch_model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        return "diffusion_pytorch_model.safetensors is truncated or damaged"
    if how == "random-byte safetensors":
        weights = path / "vae" / "diffusion_pytorch_model.safetensors"
        weights.write_bytes(os.urandom(4096))
        return "is not a safetensors file"
    if how == "missing tokenizer":
        shutil.rmtree(path / "tokenizer")
        return "tokenizer folder not found: .*tokenizer"
    config = path / "scheduler" / "scheduler_config.json"
    if how == "unimplemented scheduler class":
        config.write_text(json.dumps({**json.loads(config.read_text()), "_class_name": "HeunDiscreteScheduler"}))
        return "scheduler_config.json names 'HeunDiscreteScheduler', which jaxalign does not implement"
    if how == "scheduler key jaxalign cannot honour":
        config.write_text(json.dumps({**json.loads(config.read_text()), "rescale_betas_zero_snr": True}))
        return "DDIMScheduler: rescale_betas_zero_snr=True is not supported by jaxalign's 'ddim' scheduler"
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how", [
        "corrupt model_index.json", "model_index.json is a list", "corrupt unet config", "truncated safetensors", "random-byte safetensors",
        "missing tokenizer", "unimplemented scheduler class", "scheduler key jaxalign cannot honour",
    ],
)  # fmt: skip
def test_damaged_model_files_are_named(tiny_sd, tmp_path, capsys, how):
    model = tmp_path / "model"
    shutil.copytree(tiny_sd, model)
    pattern = _damage(model, how)
    workdir = tmp_path / "out"
    fails_cleanly(["run", "--config", RED_PIXELS, f"--config.model={model}", "--workdir", str(workdir), *SMALL], capsys, pattern, workdir)
    assert not workdir.exists()


def test_truncated_flax_msgpack_is_named(tmp_path, capsys):
    from jaxalign.models import EMBEDDED_DIR

    model = tmp_path / "model"
    shutil.copytree(EMBEDDED_DIR, model)
    weights = next((model / "unet").glob("*.msgpack"))
    weights.write_bytes(weights.read_bytes()[:1000])
    fails_cleanly(["run", "--config", RED_PIXELS, f"--config.model={model}", "--workdir", str(tmp_path / "out"), *SMALL], capsys, "cannot read weights .*msgpack: damaged", tmp_path / "out")


def test_a_tokenizer_without_a_length_takes_the_text_encoders(tiny_sd, tmp_path):
    from jaxalign.models import load_model

    model = tmp_path / "model"
    shutil.copytree(tiny_sd, model)
    config_file = model / "tokenizer" / "tokenizer_config.json"
    tokenizer_config = json.loads(config_file.read_text())
    tokenizer_config.pop("model_max_length", None)
    config_file.write_text(json.dumps(tokenizer_config))
    loaded, _ = load_model(str(model))
    assert loaded.max_prompt_tokens == loaded.text_encoder.config.max_position_embeddings


# --- Broken config and prompt files ----------------------------------------------------------------

CONFIG_FILES = {
    "get_config raises": ("def get_config():\n    raise RuntimeError('boom')\n", "get_config\\(\\) raised RuntimeError: boom"),
    "get_config returns None": ("def get_config():\n    return None\n", "must return an ml_collections.ConfigDict .* got NoneType"),
    "get_config returns a dict": ("def get_config():\n    return {'steps': 3}\n", "must return an ml_collections.ConfigDict .* got dict"),
    "a missing field": (
        "from jaxalign.config import default_config\n\ndef get_config():\n    c = default_config()\n    del c['popsize']\n    return c\n",
        "lacks field\\(s\\) popsize",
    ),
    "a field of the wrong type": (
        "import ml_collections\nfrom jaxalign.config import default_config\n\ndef get_config():\n    c = default_config().to_dict()\n    c['steps'] = 'many'\n    return ml_collections.ConfigDict(c)\n",
        "config field 'steps' must be int, got str 'many'",
    ),
}


@pytest.mark.parametrize("case", list(CONFIG_FILES))
def test_broken_config_files_are_one_line(case, tmp_path, capsys):
    text, pattern = CONFIG_FILES[case]
    config = tmp_path / "broken.py"
    config.write_text(text)
    fails_cleanly(["run", "--config", str(config), "--workdir", str(tmp_path / "out")], capsys, pattern, tmp_path / "out")


def test_binary_and_directory_prompt_files(tmp_path, capsys):
    binary = tmp_path / "prompts.txt"
    binary.write_bytes(bytes(range(256)) * 4)
    fails_cleanly(["run", "--config", RED_PIXELS, f"--config.prompt_file={binary}", "--workdir", str(tmp_path / "out")], capsys, "is not UTF-8 text", tmp_path / "out")
    fails_cleanly(["run", "--config", RED_PIXELS, f"--config.prompt_file={tmp_path}", "--workdir", str(tmp_path / "out")], capsys, "is a directory", tmp_path / "out")


def test_seeds_use_all_63_bits_as_jax_keys_them_with_64_bit_types():
    from jaxalign.run import seed_key

    for seed in (5, 2**32 - 1, 2**32 + 5, 2**40 + 7, 2**63 - 1):
        with jax.enable_x64(True):
            expected = np.asarray(jax.random.key_data(jax.random.key(seed)))
        np.testing.assert_array_equal(np.asarray(jax.random.key_data(seed_key(seed))), expected)
    np.testing.assert_array_equal(jax.random.key_data(seed_key(5)), jax.random.key_data(jax.random.key(5)))  # small seeds: as before
    assert not np.array_equal(jax.random.key_data(seed_key(2**32 + 5)), jax.random.key_data(seed_key(5)))


def test_sweep_seeds_must_be_integers(tmp_path):
    from jaxalign.errors import JaxalignError
    from jaxalign.sweep import load_sweep_config

    with pytest.raises(JaxalignError, match=r"sweep seeds must be integers .* got \['x'\]"):
        load_sweep_config(ROOT / "configs" / "sweep.py", ["--config.seeds=['x']"])


def test_no_command_names_run(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "jaxalign run --config CONFIG --workdir DIR" in err


def test_loading_a_config_does_not_touch_sys_path(tmp_path):
    from jaxalign.config import load_config

    before, modules = list(sys.path), {m for m in sys.modules if m.split(".")[0] == "configs"}
    assert load_config(ROOT / "configs" / "sdxl.py").scheduler == "ddim"  # imports configs.sd15 and configs.default
    assert sys.path == before
    assert {m for m in sys.modules if m.split(".")[0] == "configs"} == modules  # the import system is given back


# --- Interrupts, as real signals -------------------------------------------------------------------


INTERRUPTED = [sys.executable, "-m", "jaxalign", "run", "--config", RED_PIXELS, *SMALL, "--config.steps=12", "--config.checkpoint_every=1"]


@pytest.fixture(scope="session")  # with the group below, built once on the worker that runs the signal tests
def interrupted_command(tmp_path_factory):
    # The reference, interrupted and resumed processes share a compilation cache: they compile the same programs.
    return [*INTERRUPTED, f"--config.compilation_cache_dir={tmp_path_factory.mktemp('compilation_cache')}"]


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory, interrupted_command):
    reference = tmp_path_factory.mktemp("uninterrupted") / "run"
    subprocess.run([*interrupted_command, "--workdir", str(reference)], env=ENV, check=True, capture_output=True, timeout=600)
    return reference


@pytest.mark.xdist_group("signals")
@pytest.mark.parametrize("signal_number, exit_code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_is_one_line_and_resume_is_exact(uninterrupted, interrupted_command, tmp_path, signal_number, exit_code):
    workdir = tmp_path / "interrupted"
    # A job started in the background by a non-interactive shell inherits SIGINT ignored (Python then
    # keeps ignoring it, as it should); give the child the default disposition, as a terminal would.
    process = subprocess.Popen(
        [*interrupted_command, "--workdir", str(workdir)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not metrics.is_file() or len(metrics.read_text().splitlines()) < 4):
        time.sleep(0.02)
    process.send_signal(signal_number)  # most of a generation is spent saving its checkpoint: this lands in or near a save
    _, err = process.communicate(timeout=120)
    assert process.returncode == exit_code, err
    assert err.strip().splitlines()[-1].endswith("continue with --resume") and "Traceback" not in err, err
    assert not list((workdir / "checkpoints").glob("*orbax-checkpoint-tmp*"))
    assert len(metrics.read_text().splitlines()) < 13  # it did stop early

    resumed = subprocess.run([*interrupted_command, "--workdir", str(workdir), "--resume"], env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr

    def lines(path):
        return [{k: v for k, v in json.loads(x).items() if k not in ("wall_s", "elapsed_s")} for x in (path / "metrics.jsonl").read_text().splitlines()]

    assert lines(workdir) == lines(uninterrupted)
    assert (workdir / "images" / "step_0012.png").read_bytes() == (uninterrupted / "images" / "step_0012.png").read_bytes()


def test_a_prompt_longer_than_the_text_encoder_is_a_warning(embedded, capsys):
    # build() is where a run checks its prompts, before anything is compiled.
    long_prompt = "a red circle " * 40
    build(small_config(prompts=[long_prompt]), embedded)
    assert "is longer than the text encoder's 77 tokens; the rest is ignored there" in capsys.readouterr().err
    build(small_config(), embedded)
    assert "longer than" not in capsys.readouterr().err


# --- Every numeric knob: finite and in its declared range, generated from the declarations ----------------------


def _knob_cases():
    import math

    from jaxalign.methods import METHODS
    from jaxalign.spaces import PARAM_RANGES as SPACE_RANGES
    from jaxalign.spaces import SPACES
    from jaxalign.strategies import PARAM_RANGES as STRATEGY_RANGES
    from jaxalign.strategies import REFERENCE_DEFAULTS

    bad = {"inf": math.inf, "nan": math.nan}
    cases = []
    for method, spec in sorted(METHODS.items()):
        for knob in spec.numeric:
            settings = {"method": method, "rewards": {"brightness": 1.0}}
            cases += [(f"{method}.{knob}={label}", settings, (knob,), value, "must be a finite number") for label, value in bad.items()]
    for space in sorted(SPACES):
        for knob in SPACES[space]().default_params:
            settings = {"method_params": {"space": space}}
            cases += [(f"{space}.{knob}={label}", settings, ("space_params", knob), value, "must be a finite number") for label, value in bad.items()]
            low, high = SPACE_RANGES.get(knob, (-math.inf, math.inf))
            for outside in (low - 1.0, high + 1.0):
                if math.isfinite(outside):
                    cases.append((f"{space}.{knob}={outside}", settings, ("space_params", knob), outside, r"must be in \["))
    for strategy in sorted(REFERENCE_DEFAULTS):
        for knob, (low, high) in STRATEGY_RANGES.items():
            settings = {"method_params": {"strategy": strategy}}
            # CoSyNE takes its mutation settings in its constructor, which checks them with its own words.
            refused = r"must be a finite number|must be in \[|must be >= 0|unknown strategy_params"
            cases.append((f"{strategy}.{knob}=inf", settings, ("strategy_params", knob), math.inf, refused))
            if math.isfinite(low):
                cases.append((f"{strategy}.{knob}={low - 1}", settings, ("strategy_params", knob), low - 1.0, refused))
    return cases


@pytest.mark.parametrize("name, settings, knob, value, message", _knob_cases(), ids=lambda c: c if isinstance(c, str) else "")
def test_every_declared_knob_refuses_non_finite_and_out_of_range_values(name, settings, knob, value, message, embedded):
    options = dict(settings.get("method_params", {}))  # knob: the value's path inside method_params
    *outer, leaf = knob
    (options.setdefault(outer[0], {}) if outer else options)[leaf] = value
    changes = {**settings, "method_params": options}
    with pytest.raises(JaxalignError, match=message):
        build(small_config(**changes), embedded)


def test_a_second_process_in_a_working_run_folder_is_refused_and_the_lock_dies_with_its_holder(tmp_path, capsys):
    """A process that holds the folder's lock (as a running `jaxalign run` does) keeps out a second run and a resume;
    once it is killed (SIGKILL: nothing cleans up) the folder is usable again."""
    from jaxalign.files import LOCK

    workdir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import fcntl, pathlib, sys, time; p = pathlib.Path({str(workdir)!r}); p.mkdir(); h = (p / {LOCK!r}).open('a'); "
         "fcntl.flock(h, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        for extra in ([], ["--resume"]):
            assert main(["run", "--config", RED_PIXELS, "--workdir", str(workdir), *SMALL, "--config.steps=1", *extra]) == 2
            err = capsys.readouterr().err.strip()
            assert err == f"jaxalign: error: workdir {workdir} is in use by another jaxalign process; let it finish (or stop it) first"
        assert [path.name for path in workdir.iterdir()] == [LOCK]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    assert main(["run", "--config", RED_PIXELS, "--workdir", str(workdir), *SMALL, "--config.steps=1"]) == 0
    assert (workdir / "summary.json").is_file()


def test_resume_refuses_other_prompts_or_changed_reward_weights(finished, tmp_path, capsys):
    """A prompt file edited after a crash would mix two prompts in one run, and replaced weights two rewards: the run
    keeps what it started with (inputs.json) and a resume that finds something else is refused, writing nothing."""
    from types import SimpleNamespace

    from jaxalign.config import default_config
    from jaxalign.files import write_json
    from jaxalign.workdir import check_same_inputs, run_inputs

    workdir = tmp_path / "run"
    shutil.copytree(finished, workdir)
    (workdir / "summary.json").unlink()  # as if interrupted
    inputs = json.loads((workdir / "inputs.json").read_text())
    assert inputs["prompts"] == ["a red circle on a blue background"]
    (workdir / "inputs.json").write_text(json.dumps({**inputs, "prompts": ["a green square"]}))  # as the prompt file read then
    fails_cleanly(["run", "--config", RED_PIXELS, "--workdir", str(workdir), *SMALL, "--resume"], capsys, "the prompts differ from the ones this run started with", workdir)

    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "model.msgpack").write_bytes(b"1234")
    config = default_config()
    config.reward_paths = {"aesthetic": {"path": str(weights), "clip": "openai/clip-vit-large-patch14"}}
    job = SimpleNamespace(config=config, prompts=["x"])
    write_json(tmp_path / "inputs.json", run_inputs(job))
    check_same_inputs(tmp_path / "inputs.json", job)  # unchanged: accepted
    (weights / "model.msgpack").write_bytes(b"12345")
    with pytest.raises(JaxalignError, match=r"reward weights changed since this run started \(.*model\.msgpack\)"):
        check_same_inputs(tmp_path / "inputs.json", job)


def test_a_run_whose_generation_0_is_entirely_non_finite_stops_in_one_line(tmp_path, capsys, monkeypatch):
    """A backstop behind the knob checks: a reward that scores every image NaN ends the run (exit 2, one line) at
    generation 0 instead of ranking NaNs for ten generations and reporting success."""
    import jax.numpy as jnp

    from jaxalign.rewards import REWARDS, Reward, images_only

    monkeypatch.setitem(REWARDS._entries, "always_nan", lambda: Reward(images_only(lambda images: jnp.full(images.shape[0], jnp.nan)), True))
    workdir = tmp_path / "run"
    assert main(["run", "--config", RED_PIXELS, "--workdir", str(workdir), *SMALL, "--config.rewards={'always_nan': 1.0}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxalign: error: generation 0 scored no image finitely (the baseline and all 4 candidates") and "\n" not in err
    assert not (workdir / "summary.json").exists()
    # One finite image is enough to search from: a reward finite on bright images only runs to the end.
    monkeypatch.setitem(REWARDS._entries, "nan_when_dark", lambda: Reward(images_only(lambda images: jnp.where(images.mean((1, 2, 3)) > 0.3, 1.0, jnp.nan)), True))
    assert main(["run", "--config", RED_PIXELS, "--workdir", str(tmp_path / "ok"), *SMALL, "--config.rewards={'nan_when_dark': 1.0}"]) == 0


def test_a_refused_write_ends_the_run_in_one_line_and_resume_finishes_it(tmp_path):
    """A file-size limit (RLIMIT_FSIZE: writes past it fail with EFBIG, as a full disk fails them with ENOSPC; it works
    without mounting a small file system) stops the run when metrics.jsonl outgrows it: one line, exit 1, no traceback;
    without the limit, --resume finishes it exactly as an uninterrupted run. (Checkpoints off: their arrays would
    outgrow the limit first; the checkpoint's own free-space check is the next test.)"""
    args = ["run", "--config", RED_PIXELS, *SMALL, "--config.steps=12", "--config.checkpoint_every=0"]
    limited = "import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000)); from jaxalign.cli import main; sys.exit(main(sys.argv[1:]))"
    workdir = tmp_path / "run"
    result = subprocess.run([sys.executable, "-c", limited, *args, "--workdir", str(workdir)], env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and re.fullmatch(
        rf"jaxalign: error: cannot write {re.escape(str(workdir))}/metrics.jsonl: file too large for the file system or limit; make room .* continue with --resume", lines[0]
    ), result.stderr  # fmt: skip
    assert main([*args, "--workdir", str(workdir), "--resume"]) == 0
    assert main([*args, "--workdir", str(tmp_path / "uninterrupted")]) == 0
    without_times = [[{k: v for k, v in json.loads(line).items() if k not in ("wall_s", "elapsed_s")} for line in (w / "metrics.jsonl").read_text().splitlines()] for w in (workdir, tmp_path / "uninterrupted")]
    assert without_times[0] == without_times[1] and len(without_times[0]) == 13


def test_a_checkpoint_that_would_not_fit_is_refused_before_orbax_writes(tmp_path, monkeypatch):
    import collections

    from jaxalign import checkpoint
    from jaxalign.errors import OutputError

    saver = checkpoint.Checkpointer(tmp_path / "checkpoints", every=1)
    state = {"x": np.zeros(1000, np.float32)}
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 5000, 5000))
    with pytest.raises(OutputError, match=r"cannot write .*checkpoints/3: no space left on the device \(a checkpoint needs about \d+ bytes, 5000 are free\)"):
        saver.save(3, state)
    monkeypatch.undo()
    saver.save(4, state)  # with room, the same save goes through
    assert saver.restore_latest(state)[0] == 4 and not (tmp_path / "checkpoints" / "3").exists()
    saver.close()


@pytest.mark.parametrize("signal_number, exit_code, after_s", [(signal.SIGTERM, 143, 0.3), (signal.SIGTERM, 143, 1.5), (signal.SIGINT, 130, 1.0)])
def test_a_signal_during_start_up_is_one_line_and_writes_nothing(tmp_path, signal_number, exit_code, after_s):
    """While modules import and the model loads (the first generation is seconds away): the documented one line and
    exit status, never a swallowed signal and a run that goes on, and no workdir yet."""
    workdir = tmp_path / "run"
    # As in the interrupt test above: a suite started in the background inherits SIGINT ignored, which Python keeps.
    process = subprocess.Popen([sys.executable, "-m", "jaxalign", "run", "--config", RED_PIXELS, "--workdir", str(workdir), *SMALL],
                               env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    time.sleep(after_s)
    process.send_signal(signal_number)
    _, err = process.communicate(timeout=300)
    assert process.returncode == exit_code, err
    assert err.strip().splitlines() == [f"jaxalign: {'terminated' if exit_code == 143 else 'interrupted'}; continue with --resume"]
    assert not workdir.exists()


def test_a_checkpoint_write_refused_after_the_free_space_check_is_one_line_and_leaves_no_partial_step(tmp_path):
    """The free-space check can pass and orbax's writes still fail (the disk fills meanwhile; here a file-size limit,
    EFBIG): its threads' logged failures are dropped, the save raises one OutputError, and close removes the step."""
    script = (
        "import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "import jax; from jaxalign.checkpoint import Checkpointer; from jaxalign.errors import OutputError\n"
        "saver = Checkpointer(sys.argv[1], 1); resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))\n"
        "try:\n    saver.save(1, {'x': jax.random.normal(jax.random.key(0), (256, 256))})\n"  # 256 KiB that do not compress
        "except OutputError as error:\n    print(error, file=sys.stderr)\nfinally:\n    saver.close()\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "checkpoints")], env=ENV, capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 0 and len(lines) == 1, result.stderr
    assert re.fullmatch(rf"cannot write {re.escape(str(tmp_path))}/checkpoints/1: file too large for the file system or limit; .*--resume", lines[0])
    assert list((tmp_path / "checkpoints").iterdir()) == []
