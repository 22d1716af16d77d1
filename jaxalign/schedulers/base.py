"""What a scheduler is: a host-side table of per-step coefficients (:class:`Schedule`, one row per model call,
scanned over inside one jit) and pure per-step updates (:class:`Scheduler`); how a diffusers
``scheduler_config.json`` is read into one (:class:`SchedulerKind`), refusing any setting jaxalign does not
implement rather than sampling another schedule; and the DDIM(eta) transition every first-order scheduler
shares (:func:`ddim_transition`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxalign.errors import JaxalignError
from jaxalign.schedulers.processes import NoiseProcess, predict_x0_and_eps


@struct.dataclass
class Schedule:
    """Rows the sampler scans over, one per model call; ``coefficients`` are scheduler specific."""

    timesteps: jax.Array  # [rows] float32: the network's time input (a training timestep, or sigma x num_train_timesteps)
    alpha: jax.Array  # [rows] a_t of x_t = a_t x0 + b_t eps
    sigma: jax.Array  # [rows] b_t
    coefficients: dict[str, jax.Array]


class Scheduler(NamedTuple):
    """A scheduler bound to a noise process and its settings: table builder and pure per-step update.

    Schedulers that define a stochastic step (``transition``) also serve the methods that act inside
    the denoising loop (SVDD, DSearch, DAS, DNO's sde mode): ``transition(x, model_output, i, schedule, eta) ->
    (mean, std)`` of x_{i+1} given x_i, and ``predicted_clean(x, model_output, i, schedule)``, the clean
    estimate of x_i (Tweedie's formula; the consistency function for LCM).
    """

    name: str
    process: NoiseProcess
    make_schedule: Callable[..., Schedule]  # (num_steps, image_tokens=None[, sigmas: a pipeline's grid, flow schedulers]) -> Schedule
    init_carry: Callable[[jax.Array], tuple]
    step: Callable[[tuple, jax.Array, jax.Array, Schedule], tuple]
    transition: Callable[..., tuple[jax.Array, jax.Array]] | None = None
    predicted_clean: Callable[..., jax.Array] | None = None

    @property
    def stochastic(self) -> bool:
        return self.transition is not None


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One ``__init__`` argument of a diffusers scheduler class: its default, and the values jaxalign
    implements (``None``: every value, because jaxalign reads it or because it cannot change the samples)."""

    default: Any
    accepted: tuple | None = None


# Settings that change the noise levels or the prediction in some diffusers scheduler, with their neutral values. A
# model's own scheduler_config.json carrying one with another value, for a class that does not take it, is
# refused: its authors meant a schedule jaxalign would not run. (Another class's algorithm choices, such as
# PNDM's skip_prk_steps left in a DDIM config, say nothing about the model and are ignored, as diffusers does.)
SAMPLER_CHANGING = {
    "shift": (1.0,), "use_dynamic_shifting": (False,), "use_karras_sigmas": (False,), "use_exponential_sigmas": (False,),
    "use_beta_sigmas": (False,), "use_lu_lambdas": (False,), "use_flow_sigmas": (False,), "thresholding": (False,),
    "rescale_betas_zero_snr": (False,), "trained_betas": (None,), "stochastic_sampling": (False,), "invert_sigmas": (False,),
    "shift_terminal": (None,),
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class SchedulerKind:
    """A registered scheduler: the diffusers class it reproduces, the noise process it samples, that class's
    ``__init__`` parameters (``parameters``; checked against diffusers' own signatures by the tests), and
    ``build(process, settings) -> Scheduler`` with ``settings`` every parameter's value."""

    diffusers_class: str
    process: type
    parameters: Mapping[str, Parameter]
    build: Callable[[str, Any, dict], Scheduler]
    stochastic: bool
    summary: str = ""

    def from_config(self, name: str, config: Mapping[str, Any]) -> Scheduler:
        """This scheduler over the noise process of a diffusers ``scheduler_config.json``, read as diffusers'
        ``from_config`` of this class reads it: its parameters from the config where given, its defaults
        elsewhere, other keys ignored. Where the config is this class's own, a value jaxalign does not
        implement, or a foreign sampler-changing key, is refused; read from another class's config, a choice
        the config does not make takes jaxalign's implemented variant."""
        own = config.get("_class_name") == self.diffusers_class
        where = f"{config.get('_class_name', 'scheduler config')}"
        settings = {}
        for key, parameter in self.parameters.items():
            value = config.get(key, parameter.default)
            if parameter.accepted is not None and not _among(value, parameter.accepted):
                if key not in config and not own:
                    value = parameter.accepted[0]
                else:
                    valid = " or ".join(repr(v) for v in parameter.accepted)
                    raise JaxalignError(f"{where}: {key}={value!r} is not supported by jaxalign's {name!r} scheduler (it implements {key}={valid})")
            settings[key] = value
        if own:
            for key, neutral in SAMPLER_CHANGING.items():
                if key not in self.parameters and key in config and not _among(config[key], neutral):
                    raise JaxalignError(f"{where}: {key}={config[key]!r} would change the sampler, which jaxalign's {name!r} scheduler does not do; remove it or pick another scheduler")
        fields = {f.name for f in dataclasses.fields(self.process)}
        process = self.process(**{k: v for k, v in settings.items() if k in fields})
        return self.build(name, process, settings)


def _among(value, accepted: tuple) -> bool:
    """``value in accepted``, where None matches only None, a float option any number equal to it (a JSON
    ``-Infinity`` included) and other options only values of their own type (so ``True`` is not ``1``)."""
    for option in accepted:
        if option is None or value is None:
            matched = option is value
        elif isinstance(option, float):
            matched = isinstance(value, (int, float)) and not isinstance(value, bool) and value == option
        else:
            matched = type(value) is type(option) and value == option
        if matched:
            return True
    return False


def ddim_transition(prediction_type: str, step_mean: Callable):
    """DDIM's generalised step with noise level ``eta`` (Song et al. 2021, eq. 12 and 16) for any process
    x_t = a_t x0 + b_t eps: x_{i+1} ~ N(a' x0 + sqrt(b'^2 - s^2) eps, s^2) with
    s = eta (b' / b) sqrt(b^2 - (a / a')^2 b'^2), the posterior of the Markov chain with the process's
    marginals (eta = 1); eta = 0 is the deterministic step. The mean is written as the scheduler's own
    deterministic ``step_mean`` plus (sqrt(b'^2 - s^2) - b') eps, so eta = 0 gives that step exactly.
    ``step_mean(x, model_output, i, schedule)``; rows carry ``alpha_prev`` and ``sigma_prev`` (a', b')."""

    def transition(x, model_output, i, s: Schedule, eta):
        a, b = s.alpha[i], s.sigma[i]
        a_prev, b_prev = s.coefficients["alpha_prev"][i], s.coefficients["sigma_prev"][i]
        _, eps = predict_x0_and_eps(prediction_type, x, model_output, a, b)
        # a' > 0 at every step (the chain moves towards the data), so a / a' is finite.
        std = eta * (b_prev / b) * jnp.sqrt(jnp.maximum(b**2 - (a / a_prev) ** 2 * b_prev**2, 0.0))
        mean = step_mean(x, model_output, i, s) + (jnp.sqrt(jnp.maximum(b_prev**2 - std**2, 0.0)) - b_prev) * eps
        return mean, std

    return transition


def clean_estimate(prediction_type: str, clip: Callable = lambda x0: x0):
    """Tweedie's clean estimate of x_i from the model output (what value functions score)."""

    def clean(x, model_output, i, s: Schedule):
        return clip(predict_x0_and_eps(prediction_type, x, model_output, s.alpha[i], s.sigma[i])[0])

    return clean


def float32(x) -> jax.Array:
    return jnp.asarray(np.asarray(x), jnp.float32)
