"""jaxalign: inference-time alignment of text-to-image diffusion models by searching their initial noise with
evolutionary algorithms (Jajal et al. 2025, arXiv 2506.00299), and the alignment methods it is compared with.

The public API, as README's "Python API" shows it::

    import jaxalign

    config = jaxalign.default_config()                    # or jaxalign.load_config("configs/sd15.py")
    job = jaxalign.build(config)                          # model, sampler, search and its traced params
    problem, key = jaxalign.make_problem(job, "a red circle", 0)
    state = job.search.init(key, problem, job.search_params)
    state, report = job.search.advance(job.model_params, job.reward_params, problem, job.search_params, state)

``jaxalign.run_job(job, workdir)`` is the whole job as ``jaxalign run`` does it (checkpoints, metrics, images). The
registries (``METHODS``, ``STRATEGIES``, ``SPACES``, ``REWARDS``, ``SCHEDULERS``, ``FAMILIES``, ``TRACKERS``) list what a config
can name, and take new entries with ``register``.
"""

import importlib

# Public name -> the module defining it. Resolved on first use (PEP 562): `jaxalign run` imports jaxalign.cli, which
# must start in a fraction of a second, before JAX and the models load, so its signal handlers are in from the start.
_API = {
    "default_config": "config", "load_config": "config", "METHODS": "methods", "FAMILIES": "models", "load_model": "models",
    "save_model": "models", "REWARDS": "rewards", "host_reward": "rewards", "weighted_sum": "rewards", "oriented": "rewards", "Job": "run", "build": "run",
    "make_problem": "run", "make_sampler": "sampler", "SCHEDULERS": "schedulers", "Problem": "search", "SearchParams": "search",
    "SearchState": "search", "scanned": "search", "SPACES": "spaces", "STRATEGIES": "strategies", "TRACKERS": "trackers",
}  # fmt: skip
__all__ = sorted([*_API, "run_job"])


def __getattr__(name: str):
    if name == "run_job":  # not `run`: that name is the module jaxalign.run
        return importlib.import_module("jaxalign.run").run
    if name in _API:
        return getattr(importlib.import_module(f"jaxalign.{_API[name]}"), name)
    raise AttributeError(f"module 'jaxalign' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])
