"""Shared fixtures: the embedded model and one small compiled search, built once per session."""

import jax
import pytest

# Tests run tiny shapes on CPU, where XLA's optimisation passes cost more than they save.
jax.config.update("jax_disable_most_optimizations", True)

from jaxalign.config import default_config  # noqa: E402
from jaxalign.models import load_model  # noqa: E402


def small_config(**changes):
    """The default config at test size: 32x32 images, 2 denoising steps, popsize 6, 3 generations."""
    config = default_config()
    config.height = 32
    config.width = 32
    config.num_inference_steps = 2
    config.popsize = 6
    config.steps = 3
    for key, value in changes.items():
        config[key] = value
    return config


@pytest.fixture()
def optimised_xla():
    """XLA's optimisations back on for one test: for programs that run long (a backward pass at every denoising step)
    they save more run time than they cost to compile; restored afterwards."""
    jax.config.update("jax_disable_most_optimizations", False)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", True)


@pytest.fixture(scope="session")
def embedded():
    return load_model("embedded")


@pytest.fixture(scope="session")
def small_job():
    from jaxalign.run import build

    return build(small_config(rewards={"brightness": 1.0, "saturation": 0.5}))
