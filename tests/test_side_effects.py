"""Library calls leave the caller's process as they found it: log levels, matplotlib's backend, JAX's settings."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp

from jaxalign.run import compilation_cache

# Loads the embedded model, samples with it and plots, with the caller's own choices set first; prints what
# those choices are afterwards.
CALLER = """
import json, matplotlib
matplotlib.use("svg")
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging
diffusers_logging.set_verbosity_info()
transformers_logging.set_verbosity_warning()
import jax
from pathlib import Path
from jaxalign.models import load_model
from jaxalign.outputs import plot_fitness
from jaxalign.sampler import make_sampler
model, params = load_model("embedded")
sampler = make_sampler(model, "ddim", 2)
context, uncond = model.conditioning(params, "a red circle", "")
images = sampler.sample(params, jax.random.normal(jax.random.key(0), (1, *model.latent_shape(32, 32))), context, uncond, 7.5)
plot_fitness([{"step": 0, "best_fitness": 0.1, "mean_fitness": 0.1, "median_fitness": 0.1}], Path(__import__("sys").argv[1]) / "fitness.png")
print(json.dumps({"backend": matplotlib.get_backend(), "diffusers": diffusers_logging.get_verbosity(),
                  "transformers": transformers_logging.get_verbosity(), "finite": bool(jax.numpy.isfinite(images).all())}))
"""


def test_loading_sampling_and_plotting_keep_the_callers_settings(tmp_path):
    result = subprocess.run([sys.executable, "-c", CALLER, str(tmp_path)], capture_output=True, text=True, env={"JAX_PLATFORMS": "cpu", "PATH": ""}, timeout=300)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen == {"backend": "svg", "diffusers": 20, "transformers": 30, "finite": True}
    assert (tmp_path / "fitness.png").stat().st_size > 0
    # The one message jaxalign drops: the pinned libraries' notice that their Flax classes are deprecated.
    assert "classes are deprecated" not in result.stderr


def test_compilation_cache_is_scoped_to_the_block(tmp_path):
    before = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_entry_size_bytes)
    with compilation_cache(tmp_path / "cache") as hits:
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache")
        jax.jit(lambda x: jnp.sin(x) * 3.0 + 0.25).lower(jnp.ones(7)).compile()
        assert hits() == 0
    assert (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_entry_size_bytes) == before
    assert any((tmp_path / "cache").iterdir())  # the executable compiled inside the block was persisted
    with compilation_cache("") as hits:
        assert jax.config.jax_compilation_cache_dir == before[0] and hits() == 0
