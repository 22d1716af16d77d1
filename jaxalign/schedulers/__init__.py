"""Denoising schedulers as explicit pytrees of per-step coefficients (:class:`Schedule`), one module each, and
their registry (:data:`SCHEDULERS`): ``ddim``, ``pndm``, ``dpmsolver++``, ``lcm`` for variance-preserving models
and ``flow_euler`` for rectified flows (:mod:`.processes`). Each reproduces one diffusers scheduler class and
reads that class's ``scheduler_config.json`` (:class:`~.base.SchedulerKind`); ``scheduler="auto"`` takes the
class a model's own config names (:func:`resolve_scheduler`). All coefficients are computed once on the host in
float64, so the scan body is a handful of multiply-adds and nothing inside it branches on the step number.
Adding a scheduler is one module with a ``KIND`` and one line here.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from jaxalign.errors import JaxalignError
from jaxalign.registry import Registry
from jaxalign.schedulers import ddim, dpmsolver, flow_euler, lcm, pndm
from jaxalign.schedulers.base import Parameter, Schedule, Scheduler, SchedulerKind
from jaxalign.schedulers.lcm import LCM_NOISE_SEED, lcm_noise
from jaxalign.schedulers.processes import NoiseProcess, RectifiedFlow, VariancePreserving, predict_x0_and_eps

AUTO = "auto"

SCHEDULERS: Registry[SchedulerKind] = Registry("scheduler")
for _name, _module in (("ddim", ddim), ("pndm", pndm), ("dpmsolver++", dpmsolver), ("lcm", lcm), ("flow_euler", flow_euler)):
    SCHEDULERS.register(_name, _module.KIND)


def resolve_scheduler(name: str, config: Mapping, process: type, source: str = "the model") -> Scheduler:
    """Scheduler ``name`` over the noise process of ``config`` (a diffusers ``scheduler_config.json``) of a
    model trained with ``process`` (:class:`VariancePreserving` or :class:`RectifiedFlow`); ``"auto"`` is the
    class the config names. A class jaxalign does not implement, a setting it cannot honour, or a scheduler
    for another noise process is refused in one line naming it."""
    if name == AUTO:
        named = config.get("_class_name")
        matches = [n for n, kind in SCHEDULERS.items() if kind.diffusers_class == named]
        if not matches:
            implemented = ", ".join(f"{kind.diffusers_class} ({n})" for n, kind in SCHEDULERS.items())
            raise JaxalignError(
                f"{source}'s scheduler_config.json names {named!r}, which jaxalign does not implement (it implements {implemented}); "
                f"set scheduler to one of {', '.join(fitting(process))} to sample it with another"
            )
        name = matches[0]
    kind = SCHEDULERS[name]
    if kind.process is not process:
        raise JaxalignError(f"scheduler {name!r} samples {kind.process.kind} models, but {source} is a {process.kind} model; use 'auto' or one of {', '.join(fitting(process))}")
    try:
        return kind.from_config(name, config)
    except JaxalignError as error:
        raise JaxalignError(f"{source}: {error}") from None


def fitting(process: type) -> list[str]:
    """Scheduler names for models trained with ``process``."""
    return [n for n, kind in SCHEDULERS.items() if kind.process is process]


def stochastic_schedulers(process: type | None = None) -> list[str]:
    """Schedulers whose steps can be stochastic (what SVDD, DSearch, DAS and DNO's sde mode need)."""
    return [n for n, kind in SCHEDULERS.items() if kind.stochastic and process in (None, kind.process)]


def checked_schedule(solver: Scheduler, num_steps: int, image_tokens: int | None = None, sigmas=None) -> Schedule:
    """``solver``'s table for ``num_steps`` steps, refused in one line where the process cannot take that many:
    more steps than time inputs, or a table with repeated or out-of-range time inputs or non-finite coefficients.
    ``sigmas``: a pipeline's own sigma grid for flow schedulers (``ModelFamily.initial_sigmas``), else ``None``."""
    import jax

    last = solver.process.last_time()
    if num_steps > last:
        raise JaxalignError(f"num_inference_steps must be at most {last:g} (the model's noise process has {solver.process.num_train_timesteps} training timesteps), got {num_steps}")
    schedule = solver.make_schedule(num_steps, image_tokens, **({} if sigmas is None else {"sigmas": sigmas}))
    timesteps = np.asarray(schedule.timesteps)
    finite = all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(schedule) if np.issubdtype(np.asarray(x).dtype, np.floating))
    if len(np.unique(timesteps)) < num_steps or timesteps.min() < 0 or timesteps.max() > last or not finite:
        raise JaxalignError(
            f"num_inference_steps={num_steps} is more than scheduler {solver.name!r} can take from the model's noise process "
            f"(distinct time inputs in [0, {last:g}]); use fewer steps"
        )
    return schedule


__all__ = [
    "AUTO", "LCM_NOISE_SEED", "SCHEDULERS", "NoiseProcess", "Parameter", "RectifiedFlow", "Schedule", "Scheduler",
    "SchedulerKind", "VariancePreserving", "checked_schedule", "fitting", "lcm_noise", "predict_x0_and_eps",
    "resolve_scheduler", "stochastic_schedulers",
]  # fmt: skip
