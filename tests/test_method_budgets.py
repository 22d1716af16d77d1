"""What every method shares, on the toy problem: budgets counted, not restated (a toy model counts its own
UNet calls, decodes and backward passes with ``jax.debug.callback`` at run time, and every method's reported
budget must equal those counts); generation 0 is evolution's baseline; numeric knobs do not recompile."""

import dataclasses
from collections import Counter

import jax
import numpy as np
import pytest

from jaxalign.methods import METHODS, Context, build_method
from jaxalign.sampler import make_sampler
from jaxalign.toy import TOY_FLOW_SCHEDULER, TOY_VP_SCHEDULER, GaussianMixture, linear_reward, two_modes

COUNTS: Counter = Counter()


def _count(name, n, data):
    """Add n to a counter at run time. The callback takes ``data`` (the evaluated array) so that it runs
    where that array is computed: a callback of constants alone is loop-invariant and gets hoisted."""

    def record(n, data):
        COUNTS[name] += int(n)

    jax.debug.callback(record, n, data.reshape(-1)[0])


@jax.custom_vjp
def _counted(x):
    """Identity on the UNet's input that counts forward evaluations (and backward ones when differentiated).
    A CFG pair is one evaluation. Counting in the custom rule keeps the callbacks where autodiff runs them."""
    _count("nfe", x.shape[0] // 2, x)
    return x


def _forward(x):
    _count("nfe", x.shape[0] // 2, x)
    return x, None


def _backward(_, g):
    _count("vjp_nfe", g.shape[0] // 2, g)
    return (g,)


_counted.defvjp(_forward, _backward)


@dataclasses.dataclass(frozen=True, eq=False)
class CountingMixture(GaussianMixture):
    """The exact toy denoiser, counting every evaluation it serves."""

    def predict(self, params, latents, timestep, context, guidance_scale=None):
        return super().predict(params, _counted(latents), timestep, context, guidance_scale)

    def decode(self, params, latents, clip: bool = True):
        _count("images", latents.shape[0], latents)
        return super().decode(params, latents, clip)


SMALL = {"svdd": {"num_candidates": 3}, "dsearch": {"num_candidates": 2, "oversampling": 2, "width": 2.0}}


@pytest.mark.parametrize("process", [TOY_VP_SCHEDULER, TOY_FLOW_SCHEDULER], ids=["vp", "flow"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_reported_budget_equals_counted_model_calls(method, process):
    # Every method runs on both noise processes (flow: Euler steps, and DDIM(eta) on the flow for stochastic ones).
    base = two_modes()
    model, search, params = _build(method, model=CountingMixture(base.means, base.variances, base.weights, dict(process)), guidance_scale=2.0)
    problem = model.problem()
    state = search.init(jax.random.key(0), problem, params)
    COUNTS.clear()
    for generation in range(3):
        state, report = search.advance({}, None, problem, params, state)
        jax.effects_barrier()
        spent = {k: int(v) for k, v in jax.device_get(report.spent).items()}
        assert spent == {k: COUNTS[k] for k in ("nfe", "images", "vjp_nfe")}, generation
    assert COUNTS["nfe"] > 4 * 5  # the counter saw later generations


def _build(method, popsize=4, model=None, guidance_scale=7.5, options=None):
    model = model or two_modes()
    sampler = make_sampler(model, "auto", 5, remat=METHODS[method].differentiates_sampler)
    context = Context(sampler, linear_reward([1.0, 0.0]), model.image_shape, model.latent_shape, popsize)
    options = SMALL.get(method) if options is None else options
    search = build_method(method, context, options)
    return model, search, search.default_params(guidance_scale=guidance_scale)


def test_generation_0_is_the_evolution_baseline_for_every_method():
    model, evolution, params = _build("evolution")
    problem = model.problem(3)
    state, report = evolution.advance({}, None, problem, params, evolution.init(jax.random.key(0), problem, params))
    baseline = float(state.baseline_fitness)
    for method in sorted(METHODS):
        _, search, params = _build(method, popsize=10 if method == "dsearch" else 4)
        state, report = search.advance({}, None, problem, params, search.init(jax.random.key(0), problem, params))
        assert float(state.baseline_fitness) == pytest.approx(baseline, rel=1e-6), method
        assert float(report.fitness[0]) == pytest.approx(baseline, rel=1e-6), method


@pytest.mark.parametrize("method, options", [(m, None) for m in sorted(METHODS)] + [("dno", {"mode": "sde"})])
def test_best_latent_maps_the_initial_best_solution_to_the_baseline_latent(method, options):
    # Every method's state starts at the baseline; best_latent (best_latent.npy) must read it back as the
    # centre latent, also where a solution holds more than one latent (DNO's sde mode: all T + 1 noises).
    model, search, params = _build(method, popsize=10 if method == "dsearch" else 4, options=options)
    problem = model.problem(5)
    state = search.init(jax.random.key(0), problem, params)
    latent = search.best_latent(params, state.best_solution, problem)
    assert latent.shape == problem.centre.shape
    np.testing.assert_array_equal(np.asarray(latent), np.asarray(problem.centre))


@pytest.mark.parametrize("method, options", [(m, None) for m in sorted(METHODS)] + [("dno", {"mode": "sde"})])
def test_best_latent_after_generation_0_gives_back_the_best_image(method, options):
    # Generation 0 samples plainly for every method; what its best solution stands for (best_solution_is) must give
    # back the best image: an initial noise through the sampler, a final latent through the decoder.
    model, search, params = _build(method, popsize=10 if method == "dsearch" else 4, options=options)
    sampler = make_sampler(model, "auto", 5)
    problem = model.problem(5)
    state, _ = search.advance({}, None, problem, params, search.init(jax.random.key(0), problem, params))
    latent = search.best_latent(params, state.best_solution, problem)[None]
    if search.best_solution_is == "final latent":
        image = sampler.decode({}, latent)
    else:
        image = sampler.sample({}, latent, problem.context, problem.uncond_context, params.guidance_scale)
    np.testing.assert_allclose(np.asarray(image[0]), np.asarray(state.best_image), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", sorted(m for m in METHODS if METHODS[m].numeric))
def test_numeric_method_params_do_not_recompile(method):
    model, search, params = _build(method, popsize=10 if method == "dsearch" else 4)
    problem = model.problem()
    state = search.advance({}, None, problem, params, search.init(jax.random.key(0), problem, params))[0]
    state = search.step({}, None, problem, params, state)[0]
    changed = params.replace(method={k: v * 0.5 + 0.01 for k, v in params.method.items()})
    search.step({}, None, problem, changed, state)
    assert search.step._cache_size() == 1
