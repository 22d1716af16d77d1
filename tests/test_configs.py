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
    assert changed == {"strategy", "strategy_params", "space", "space_params", "rewards"}


def test_overrides_parse_by_field_type():
    config = default_config()
    for override in ("--config.popsize=8", "--config.guidance_scale=3", "--config.maximize=false", "--config.prompts=a cat",
                     "--config.strategy_params.std_init=0.2", "--config.rewards.brightness=2"):  # fmt: skip
        apply_override(config, override)
    assert config.popsize == 8 and config.guidance_scale == 3.0 and config.maximize is False
    assert config.prompts == ["a cat"]
    assert config.strategy_params.std_init == 0.2
    assert dict(config.rewards) == {"color_fraction:red": 1.0, "brightness": 2}
    with pytest.raises(JaxalignError, match="does not exist"):
        apply_override(config, "--config.sampler.steps=3")
