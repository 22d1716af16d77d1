"""Denoising schedulers as explicit pytrees of per-step coefficients.

Each scheduler turns a :class:`NoiseSchedule` (the training-time beta schedule, read from a
diffusers ``scheduler_config.json``) and a static number of steps into a :class:`Schedule`:
arrays with one row per model call (one per denoising step, except for ``pndm``, below), which
the sampler scans over inside one jit. All coefficients are computed once on the host in float64,
so the scan body is a handful of multiply-adds and nothing inside it branches on the step number.

* ``ddim``: DDIM with eta = 0 (Song et al. 2021, arXiv 2010.02502), as diffusers' ``DDIMScheduler``.
* ``dpmsolver++``: multistep DPM-Solver++(2M) with the midpoint second-order update and a
  first-order final step to sigma = 0 (Lu et al. 2022, arXiv 2211.01095), as diffusers'
  ``DPMSolverMultistepScheduler`` with its defaults.
* ``lcm``: multistep latent-consistency sampling for LCM-distilled models (Luo et al. 2023,
  arXiv 2310.04378), as diffusers' ``LCMScheduler``: each step maps x_t to a clean estimate with
  the consistency boundary condition and re-noises it to the next timestep. The re-noising noise
  is drawn from a fixed key and shared by every population member, so an image stays a
  deterministic function of its initial latent, which is what a noise search optimises.
* ``pndm``: pseudo linear multistep (PLMS) sampling (Liu et al. 2022, "Pseudo Numerical Methods for
  Diffusion Models on Manifolds", arXiv 2202.09778), as diffusers' ``PNDMScheduler`` with
  ``skip_prk_steps=True`` (Stable Diffusion 1.x's default): Adams-Bashforth combinations of up to four
  model outputs fed through the PNDM transfer. Its second step re-evaluates the model at the same
  timestep (a pseudo-improved Euler start), so ``n`` inference steps make ``n + 1`` model calls and
  its table has ``n + 1`` rows (one per call; a single step stays one row).

Timestep spacings ``leading``, ``linspace`` and ``trailing`` follow diffusers' definitions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxalign.errors import JaxalignError
from jaxalign.registry import Registry

_SPACINGS = ("leading", "linspace", "trailing")
_PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclasses.dataclass(frozen=True)
class NoiseSchedule:
    """The training noise schedule and conventions a model was trained with (static)."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    prediction_type: str = "epsilon"
    timestep_spacing: str = "leading"
    steps_offset: int = 1
    set_alpha_to_one: bool = False
    original_inference_steps: int = 50  # LCM: the distillation schedule's step count
    timestep_scaling: float = 10.0  # LCM: scale of t in the consistency boundary condition

    @classmethod
    def from_config(cls, config: dict) -> NoiseSchedule:
        names = {f.name for f in dataclasses.fields(cls)}
        schedule = cls(**{k: v for k, v in config.items() if k in names})
        if schedule.beta_schedule not in ("linear", "scaled_linear"):
            raise JaxalignError(f"unsupported beta_schedule {schedule.beta_schedule!r}; valid: linear, scaled_linear")
        if schedule.prediction_type not in _PREDICTION_TYPES:
            raise JaxalignError(f"unsupported prediction_type {schedule.prediction_type!r}; valid: {', '.join(_PREDICTION_TYPES)}")
        if schedule.timestep_spacing not in _SPACINGS:
            raise JaxalignError(f"unsupported timestep_spacing {schedule.timestep_spacing!r}; valid: {', '.join(_SPACINGS)}")
        return schedule

    def to_config(self) -> dict:
        return {"_class_name": "DDIMScheduler", **dataclasses.asdict(self)}

    def alphas_cumprod(self) -> np.ndarray:
        n = self.num_train_timesteps
        if self.beta_schedule == "linear":
            betas = np.linspace(self.beta_start, self.beta_end, n, dtype=np.float64)
        else:
            betas = np.linspace(self.beta_start**0.5, self.beta_end**0.5, n, dtype=np.float64) ** 2
        # diffusers computes the schedule in float32; match it so timesteps agree bit for bit.
        return np.cumprod(1.0 - betas.astype(np.float32), dtype=np.float32).astype(np.float64)


@struct.dataclass
class Schedule:
    """Rows the sampler scans over, one per model call; ``coefficients`` are scheduler specific."""

    timesteps: jax.Array  # [steps] int32, the UNet's timestep input
    alpha: jax.Array  # [steps] sqrt(alpha_bar_t): x_t = alpha * x0 + sigma * eps
    sigma: jax.Array  # [steps] sqrt(1 - alpha_bar_t)
    coefficients: dict[str, jax.Array]


class Scheduler(NamedTuple):
    """A scheduler: host-side table builder and a pure per-step update.

    Schedulers that define a stochastic step (``transition``) also serve the methods that act inside
    the denoising loop (SVDD, DSearch, DAS): ``transition(x, model_output, i, schedule, eta) -> (mean,
    std)`` of x_{i+1} given x_i, and ``predicted_clean(x, model_output, i, schedule)``, the clean
    estimate of x_i (Tweedie's formula for DDIM, the consistency function for LCM).
    """

    make_schedule: Callable[[NoiseSchedule, int], Schedule]
    init_carry: Callable[[jax.Array], tuple]
    step: Callable[[tuple, jax.Array, jax.Array, Schedule], tuple]
    transition: Callable[..., tuple[jax.Array, jax.Array]] | None = None
    predicted_clean: Callable[..., jax.Array] | None = None


def predict_x0_and_eps(prediction_type: str, x, model_output, alpha, sigma):
    """Clean-image and noise estimates from the model output at one step."""
    if prediction_type == "epsilon":
        eps = model_output
        x0 = (x - sigma * eps) / alpha
    else:  # v_prediction
        x0 = alpha * x - sigma * model_output
        eps = sigma * x + alpha * model_output
    return x0, eps


def _timesteps(schedule: NoiseSchedule, num_steps: int, count: int) -> np.ndarray:
    """``count`` descending training timesteps for ``num_steps`` inference steps, per diffusers."""
    total = schedule.num_train_timesteps
    if schedule.timestep_spacing == "linspace":
        return np.linspace(0, total - 1, count).round()[::-1].astype(np.int64)
    if schedule.timestep_spacing == "leading":
        ratio = total // count
        return (np.arange(count) * ratio).round()[::-1].astype(np.int64) + schedule.steps_offset
    ratio = total / num_steps
    return (np.round(np.arange(total, 0, -ratio)) - 1).astype(np.int64)[:count]


def _ddim_schedule(schedule: NoiseSchedule, num_steps: int) -> Schedule:
    alphas_cumprod = schedule.alphas_cumprod()
    timesteps = _timesteps(schedule, num_steps, num_steps)
    final = 1.0 if schedule.set_alpha_to_one else alphas_cumprod[0]
    prev = timesteps - schedule.num_train_timesteps // num_steps
    alpha_bar_prev = np.where(prev >= 0, alphas_cumprod[np.clip(prev, 0, None)], final)
    alpha_bar = alphas_cumprod[timesteps]
    return Schedule(
        timesteps=jnp.asarray(timesteps, jnp.int32),
        alpha=jnp.asarray(np.sqrt(alpha_bar), jnp.float32),
        sigma=jnp.asarray(np.sqrt(1 - alpha_bar), jnp.float32),
        coefficients={
            "alpha_prev": jnp.asarray(np.sqrt(alpha_bar_prev), jnp.float32),
            "sigma_prev": jnp.asarray(np.sqrt(1 - alpha_bar_prev), jnp.float32),
        },
    )


def _ddim_step(prediction_type: str):
    def step(carry, model_output, i, s: Schedule):
        (x,) = carry
        x0, eps = predict_x0_and_eps(prediction_type, x, model_output, s.alpha[i], s.sigma[i])
        return (s.coefficients["alpha_prev"][i] * x0 + s.coefficients["sigma_prev"][i] * eps,)

    return step


def _ddim_clean(prediction_type: str):
    def clean(x, model_output, i, s: Schedule):
        return predict_x0_and_eps(prediction_type, x, model_output, s.alpha[i], s.sigma[i])[0]

    return clean


def _ddim_transition(prediction_type: str):
    """DDIM's generalised step with noise level ``eta`` (Song et al. 2021, eq. 12 and 16; eta = 1 is
    DDPM's posterior variance, as diffusers' ``DDIMScheduler.step(eta=...)``): (mean, std) of x_{i+1}."""

    def transition(x, model_output, i, s: Schedule, eta):
        alpha, sigma = s.alpha[i], s.sigma[i]
        alpha_prev, sigma_prev = s.coefficients["alpha_prev"][i], s.coefficients["sigma_prev"][i]
        x0, eps = predict_x0_and_eps(prediction_type, x, model_output, alpha, sigma)
        std = eta * jnp.sqrt(jnp.maximum((sigma_prev**2 / sigma**2) * (1.0 - alpha**2 / alpha_prev**2), 0.0))
        return alpha_prev * x0 + jnp.sqrt(jnp.maximum(sigma_prev**2 - std**2, 0.0)) * eps, std

    return transition


def _dpm_schedule(schedule: NoiseSchedule, num_steps: int) -> Schedule:
    alphas_cumprod = schedule.alphas_cumprod()
    if schedule.timestep_spacing == "leading":
        total = schedule.num_train_timesteps
        ratio = total // (num_steps + 1)
        timesteps = (np.arange(num_steps + 1) * ratio).round()[::-1][:-1].astype(np.int64) + schedule.steps_offset
    elif schedule.timestep_spacing == "linspace":
        timesteps = _timesteps(schedule, num_steps, num_steps + 1)[:-1]
    else:
        timesteps = _timesteps(schedule, num_steps, num_steps)
    # Karras-style sigmas of the VP process, ending at sigma = 0 (diffusers' final_sigmas_type="zero").
    sigmas = np.sqrt((1 - alphas_cumprod) / alphas_cumprod)
    sigmas = np.append(np.interp(timesteps, np.arange(len(sigmas)), sigmas), 0.0)
    alpha_t = 1.0 / np.sqrt(sigmas**2 + 1.0)
    sigma_t = sigmas * alpha_t
    with np.errstate(divide="ignore"):
        lam = np.log(alpha_t) - np.log(sigma_t)  # +inf at the final sigma = 0
    h = lam[1:] - lam[:-1]
    decay = -np.expm1(-h)  # 1 - exp(-h), equal to 1 at the final step
    # Step i: x <- c_x x + c_0 D0 + c_1 (D0 - D_prev); second order from the 2nd step on,
    # first order at the final step (diffusers with final_sigmas_type="zero").
    second_order = np.zeros(num_steps, bool)
    second_order[1:-1] = True
    h_prev = np.concatenate([[1.0], h[:-1]])
    c_1 = np.where(second_order, 0.5 * alpha_t[1:] * decay * h / h_prev, 0.0)
    with np.errstate(invalid="ignore"):
        c_x = np.where(sigma_t[1:] > 0, sigma_t[1:] / sigma_t[:-1], 0.0)
    return Schedule(
        timesteps=jnp.asarray(timesteps, jnp.int32),
        alpha=jnp.asarray(alpha_t[:-1], jnp.float32),
        sigma=jnp.asarray(sigma_t[:-1], jnp.float32),
        coefficients={
            "c_x": jnp.asarray(c_x, jnp.float32),
            "c_0": jnp.asarray(alpha_t[1:] * decay, jnp.float32),
            "c_1": jnp.asarray(c_1, jnp.float32),
        },
    )


def _dpm_step(prediction_type: str):
    def step(carry, model_output, i, s: Schedule):
        x, x0_prev = carry
        x0, _ = predict_x0_and_eps(prediction_type, x, model_output, s.alpha[i], s.sigma[i])
        c = s.coefficients
        x = c["c_x"][i] * x + c["c_0"][i] * x0 + c["c_1"][i] * (x0 - x0_prev)
        return (x, x0)

    return step


def _lcm_schedule(schedule: NoiseSchedule, num_steps: int) -> Schedule:
    alphas_cumprod = schedule.alphas_cumprod()
    skip = schedule.num_train_timesteps // schedule.original_inference_steps
    origin = (np.arange(1, schedule.original_inference_steps + 1) * skip - 1)[::-1]
    if num_steps > len(origin):
        raise JaxalignError(f"lcm takes at most original_inference_steps={len(origin)} steps, got {num_steps}")
    timesteps = origin[np.floor(np.linspace(0, len(origin), num_steps, endpoint=False)).astype(np.int64)]
    alpha_bar = alphas_cumprod[timesteps]
    # The last step returns the clean estimate itself: alpha_prev = 1, sigma_prev = 0.
    alpha_bar_prev = np.append(alphas_cumprod[timesteps[1:]], 1.0)
    scaled = timesteps * schedule.timestep_scaling
    sigma_data = 0.5
    return Schedule(
        timesteps=jnp.asarray(timesteps, jnp.int32),
        alpha=jnp.asarray(np.sqrt(alpha_bar), jnp.float32),
        sigma=jnp.asarray(np.sqrt(1 - alpha_bar), jnp.float32),
        coefficients={
            "c_skip": jnp.asarray(sigma_data**2 / (scaled**2 + sigma_data**2), jnp.float32),
            "c_out": jnp.asarray(scaled / np.sqrt(scaled**2 + sigma_data**2), jnp.float32),
            "alpha_prev": jnp.asarray(np.sqrt(alpha_bar_prev), jnp.float32),
            "sigma_prev": jnp.asarray(np.sqrt(1 - alpha_bar_prev), jnp.float32),
        },
    )


LCM_NOISE_SEED = 0


def lcm_noise(key: jax.Array, i, shape) -> jax.Array:
    """The re-noising noise of LCM step ``i`` for one latent of ``shape`` (shared by the batch)."""
    return jax.random.normal(jax.random.fold_in(key, i), shape, jnp.float32)


def _lcm_clean(prediction_type: str):
    """The consistency function's clean estimate f(x_t, t) = c_skip x_t + c_out x0_pred."""

    def clean(x, model_output, i, s: Schedule):
        x0, _ = predict_x0_and_eps(prediction_type, x, model_output, s.alpha[i], s.sigma[i])
        return s.coefficients["c_out"][i] * x0 + s.coefficients["c_skip"][i] * x

    return clean


def _lcm_transition(prediction_type: str):
    """LCM's re-noising as a Gaussian transition: N(alpha_prev f(x_t, t), sigma_prev^2); ``eta`` does not apply."""
    clean = _lcm_clean(prediction_type)

    def transition(x, model_output, i, s: Schedule, eta):
        return s.coefficients["alpha_prev"][i] * clean(x, model_output, i, s), s.coefficients["sigma_prev"][i]

    return transition


def _lcm_step(prediction_type: str):
    clean = _lcm_clean(prediction_type)

    def step(carry, model_output, i, s: Schedule):
        x, key = carry
        c = s.coefficients
        return (c["alpha_prev"][i] * clean(x, model_output, i, s) + c["sigma_prev"][i] * lcm_noise(key, i, x.shape[1:]), key)

    return step


def _pndm_schedule(schedule: NoiseSchedule, num_steps: int, prediction_type: str) -> Schedule:
    """PLMS rows, one per model call; row i maps the carry (x, kept sample, last three outputs) to the next x.

    diffusers' ``PNDMScheduler`` (skip_prk_steps) visits the descending timesteps t_0, t_1, t_1, t_2, ...:
    call 0 takes a plain step from t_0 and keeps its input sample; call 1 averages its output with
    call 0's and restarts from the kept sample, stepping t_1 + r -> t_1 (r = T // n); call k >= 2
    steps t_k -> t_k - r with the 2nd/3rd/4th-order Adams-Bashforth combination of the outputs
    recorded so far (call 1's output is never recorded). Each step is the PNDM transfer
    x' = sqrt(a'/a) x - (a' - a) eps / (a sqrt(1 - a') + sqrt(a (1 - a) a')), with a = alpha_bar,
    and eps = sqrt(a) v + sqrt(1 - a) x for v-prediction; everything but the model outputs is
    folded into the per-row coefficients here.
    """
    alphas_cumprod = schedule.alphas_cumprod()
    total = schedule.num_train_timesteps
    ratio = total // num_steps
    base = _timesteps(schedule, num_steps, num_steps)  # descending
    timesteps = np.concatenate([base[:2], base[1:]])  # the second timestep twice (once when num_steps == 1)
    rows = len(timesteps)
    call = np.arange(rows)
    restart = call == 1  # the second call steps from the kept sample
    current = np.where(restart, timesteps + ratio, timesteps)
    prev = np.where(restart, timesteps, timesteps - ratio)
    if current.max() >= total:
        raise JaxalignError(f"pndm with {num_steps} steps reaches timestep {current.max()} >= num_train_timesteps={total}")
    final = 1.0 if schedule.set_alpha_to_one else alphas_cumprod[0]
    a = alphas_cumprod[current]
    a_prev = np.where(prev >= 0, alphas_cumprod[np.clip(prev, 0, None)], final)
    sample_coeff = np.sqrt(a_prev / a)
    output_coeff = -(a_prev - a) / (a * np.sqrt(1 - a_prev) + np.sqrt(a * (1 - a) * a_prev))
    if prediction_type == "v_prediction":  # eps = sqrt(a) v + sqrt(1 - a) x, folded into both coefficients
        sample_coeff = sample_coeff + output_coeff * np.sqrt(1 - a)
        output_coeff = output_coeff * np.sqrt(a)
    # Weights of (this output, last recorded, the one before, the one before that) by call number.
    weights = np.tile(np.array([55.0, -59.0, 37.0, -9.0]) / 24.0, (rows, 1))
    for k, w in enumerate([[1.0], [0.5, 0.5], [1.5, -0.5], np.array([23.0, -16.0, 5.0]) / 12.0][:rows]):
        weights[k] = np.pad(w, (0, 4 - len(w)))
    weights = weights * output_coeff[:, None]
    return Schedule(
        timesteps=jnp.asarray(timesteps, jnp.int32),
        alpha=jnp.asarray(np.sqrt(alphas_cumprod[timesteps]), jnp.float32),
        sigma=jnp.asarray(np.sqrt(1 - alphas_cumprod[timesteps]), jnp.float32),
        coefficients={
            "c_x": jnp.asarray(np.where(restart, 0.0, sample_coeff), jnp.float32),
            "c_kept": jnp.asarray(np.where(restart, sample_coeff, 0.0), jnp.float32),
            "c_out": jnp.asarray(weights[:, 0], jnp.float32),
            "c_history": jnp.asarray(weights[:, 1:], jnp.float32),
            "record": jnp.asarray(~restart),  # whether this call's output joins the history
        },
    )


def _pndm_init(x):
    """(x, kept sample, the last three recorded outputs, newest first)."""
    zeros = jnp.zeros_like(x)
    return (x, x, zeros, zeros, zeros)


def _pndm_step(carry, model_output, i, s: Schedule):
    x, kept, h1, h2, h3 = carry
    c = s.coefficients
    w = c["c_history"][i]
    x_next = c["c_x"][i] * x + c["c_kept"][i] * kept + c["c_out"][i] * model_output + w[0] * h1 + w[1] * h2 + w[2] * h3
    record = c["record"][i]
    return (
        x_next,
        kept,
        jnp.where(record, model_output, h1),
        jnp.where(record, h1, h2),
        jnp.where(record, h2, h3),
    )


SCHEDULERS: Registry[Callable[[str], Scheduler]] = Registry("scheduler")
SCHEDULERS.register(
    "ddim",
    lambda prediction_type: Scheduler(
        _ddim_schedule, lambda x: (x,), _ddim_step(prediction_type), _ddim_transition(prediction_type), _ddim_clean(prediction_type)
    ),
)
SCHEDULERS.register(
    "dpmsolver++",
    lambda prediction_type: Scheduler(_dpm_schedule, lambda x: (x, jnp.zeros_like(x)), _dpm_step(prediction_type)),
)


SCHEDULERS.register(
    "lcm",
    lambda prediction_type: Scheduler(
        _lcm_schedule,
        lambda x: (x, jax.random.key(LCM_NOISE_SEED)),
        _lcm_step(prediction_type),
        _lcm_transition(prediction_type),
        _lcm_clean(prediction_type),
    ),
)

SCHEDULERS.register(
    "pndm",
    lambda prediction_type: Scheduler(
        lambda schedule, num_steps: _pndm_schedule(schedule, num_steps, prediction_type), _pndm_init, _pndm_step
    ),
)


def get_scheduler(name: str, prediction_type: str) -> Scheduler:
    return SCHEDULERS[name](prediction_type)
