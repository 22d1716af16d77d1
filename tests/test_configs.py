"""Every shipped config loads, validates and differs from the default only where it says so."""

from pathlib import Path

import pytest

from jaxalign.config import apply_override, default_config, load_config, validate
from jaxalign.errors import JaxalignError

CONFIGS = sorted(p for p in (Path(__file__).resolve().parent.parent / "configs").glob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_and_validates(path, monkeypatch):
    monkeypatch.chdir(path.parent.parent)  # relative prompt files resolve from the repository root
    if path.stem.startswith("sweep"):
        from jaxalign.sweep import load_sweep_config

        validate(load_sweep_config(path).base)
        assert "python scripts/sweep.py --config configs/" + path.name in path.read_text()
        return
    config = load_config(path)
    validate(config)
    assert "jaxalign run --config configs/" + path.name in path.read_text()


def test_variant_changes_a_few_fields():
    config = load_config(Path(__file__).resolve().parent.parent / "configs" / "snes_rotation.py")
    base = default_config()
    changed = {k for k in base.keys() if config[k] != base[k]}
    assert changed == {"method_params", "rewards"}
    assert config.method_params.to_dict() == {"strategy": "SNES", "strategy_params": {"std_init": 0.5}, "space": "rotation", "space_params": {"mean_scale": 0.5}}


def test_overrides_parse_by_field_type():
    config = default_config()
    for override in ("--config.popsize=8", "--config.guidance_scale=3", "--config.maximize=false", "--config.prompts=a cat",
                     "--config.method_params.strategy_params.std_init=0.2", "--config.rewards.brightness=2"):  # fmt: skip
        apply_override(config, override)
    assert config.popsize == 8 and config.guidance_scale == 3.0 and config.maximize is False
    assert config.prompts == ["a cat"]
    assert config.method_params.strategy_params.std_init == 0.2  # an open mapping's nested options are created
    assert dict(config.rewards) == {"color_fraction:red": 1.0, "brightness": 2}
    with pytest.raises(JaxalignError, match="does not exist"):
        apply_override(config, "--config.sampler.steps=3")


ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name, model, steps, guidance, scheduler, gamma, eta", [
    ("das_sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5", 100, 5.0, "ddim", 0.008, 1.0),  # config/sd.py + general.py
    ("das_sdxl", "stabilityai/stable-diffusion-xl-base-1.0", 100, 5.0, "ddim", 0.008, 1.0),  # config/sdxl.py
    ("das_lcm", "SimianLuo/LCM_Dreamshaper_v7", 8, 7.5, "lcm", 0.1, 0.5),  # config/lcm.py
])  # fmt: skip
def test_das_configs_hold_the_official_numbers(name, model, steps, guidance, scheduler, gamma, eta):
    """The literal numbers of krafton-ai/DAS's configs, one run per official reward_fn chosen as ``file.py:REWARD``."""
    for reward, weights, alpha in (("aesthetic", {"aesthetic": 1.0}, 0.005), ("clip", {"clip": 0.2}, 0.01)):
        config = load_config(f"{ROOT / 'configs' / name}.py:{reward}")
        validate(config)
        assert (config.model, config.num_inference_steps, config.guidance_scale, config.scheduler) == (model, steps, guidance, scheduler)
        assert (config.method, config.popsize, config.steps, dict(config.rewards)) == ("das", 4, 1, weights)
        params = dict(config.method_params)
        assert params == {"alpha": alpha, "tempering_gamma": gamma, "ess_threshold": 0.5, "eta": eta, "resampling": "ssp"}
    assert load_config(ROOT / "configs" / f"{name}.py") == load_config(f"{ROOT / 'configs' / name}.py:aesthetic")


def test_config_argument_is_passed_to_get_config_and_a_bad_one_is_one_line():
    with pytest.raises(JaxalignError, match=r"get_config\(\) raised ValueError: unknown DAS run 'pick'; valid: aesthetic, clip"):
        load_config(f"{ROOT / 'configs' / 'das_sd15.py'}:pick")
    with pytest.raises(JaxalignError, match="get_config\\(\\) raised TypeError"):
        load_config(f"{ROOT / 'configs' / 'sd15.py'}:clip")  # a get_config() that takes no argument
    with pytest.raises(JaxalignError, match="config file not found: .*nothere.py"):
        load_config(f"{ROOT / 'configs' / 'nothere.py'}:clip")


def test_a_config_file_that_exits_is_one_line_naming_it(tmp_path):
    for body in ("import sys\nsys.exit(0)\n", "import sys\ndef get_config():\n    sys.exit(3)\n"):
        path = tmp_path / "exits.py"
        path.write_text(body)
        with pytest.raises(JaxalignError, match=f"config {path}.*SystemExit"):
            load_config(path)


def test_csv_prompt_files_as_spreadsheets_save_them(tmp_path):
    """A byte-order mark (Excel's "CSV UTF-8"), a short row (no prompt cell) and an empty cell read as a user expects."""
    from jaxalign.config import read_prompts

    path = tmp_path / "prompts.csv"
    path.write_bytes("\ufeffnote,prompt\nx,a cat\nshort row\n\ny,a dog\nz,\n".encode("utf-8"))
    config = default_config()
    config.prompt_file = str(path)
    assert read_prompts(config) == ["a cat", "a dog"]
    text = tmp_path / "prompts.txt"
    text.write_bytes("\ufeffa cat\na dog\n".encode("utf-8"))
    config.prompt_file = str(text)
    assert read_prompts(config) == ["a cat", "a dog"]


def test_a_registry_refuses_a_name_registered_twice():
    from jaxalign.registry import Registry

    registry = Registry("widget")
    registry.register("a", 1)
    with pytest.raises(ValueError, match="widget 'a' is registered already"):
        registry.register("a", 2)
    with pytest.raises(ValueError, match="widget 'a' is registered already"):
        registry.register("a")(lambda: None)
    assert registry["a"] == 1
