"""jaxalign: inference-time alignment of text-to-image diffusion models by searching their initial noise with
evolutionary algorithms (Jajal et al. 2025, arXiv 2506.00299), and the alignment methods it is compared with.

The public API, as README's "Python API" shows it::

    import jaxalign

    config = jaxalign.default_config()                    # or jaxalign.load_config("configs/sd15.py")
    job = jaxalign.build(config)                          # model, sampler, search and its traced params
    problem, key = jaxalign.make_problem(job, "a red circle", 0)
    state = job.search.init(key, problem, job.search_params)
    state, report = job.search.advance(job.model_params, problem, job.search_params, state)

``jaxalign.run_job(job, workdir)`` is the whole job as ``jaxalign run`` does it (checkpoints, metrics, images). The
registries (``METHODS``, ``STRATEGIES``, ``SPACES``, ``REWARDS``, ``SCHEDULERS``, ``FAMILIES``, ``TRACKERS``) list what a config
can name, and take new entries with ``register``.
"""

from jaxalign.config import default_config, load_config
from jaxalign.methods import METHODS
from jaxalign.models import FAMILIES, load_model, save_model
from jaxalign.rewards import REWARDS, host_reward, weighted_sum
from jaxalign.run import Job, build, make_problem
from jaxalign.run import run as run_job  # not `run`: that name is the module jaxalign.run
from jaxalign.sampler import make_sampler
from jaxalign.schedulers import SCHEDULERS
from jaxalign.search import Problem, SearchParams, SearchState
from jaxalign.spaces import SPACES
from jaxalign.strategies import STRATEGIES
from jaxalign.trackers import TRACKERS

__all__ = [
    "FAMILIES", "METHODS", "REWARDS", "SCHEDULERS", "SPACES", "STRATEGIES", "TRACKERS", "Job", "Problem", "SearchParams", "SearchState",
    "build", "default_config", "host_reward", "load_config", "load_model", "make_problem", "make_sampler", "run_job", "save_model",
    "weighted_sum",
]  # fmt: skip
