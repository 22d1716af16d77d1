"""A search over initial noise and its compiled generations: the state, the report, best tracking, batching.

arXiv 2506.00299 ("Inference-Time Alignment of Diffusion Models with Evolutionary Algorithms") treats the
diffusion model as a black box: a method proposes a population of solutions, they map to initial latents, the
sampler denoises and decodes the whole population, a reward scores the images and the method is told the scores.
:func:`jaxalign.methods.base.make_search` composes a method's pure functions into a :class:`Search`, whose ``step``
runs one whole generation under a single ``jax.jit``; generation 0 is its own compiled function, ``start``,
because it evaluates the baseline (the centre latent, member 0) and may evaluate another number of images.

The objective is "higher is better" (:func:`jaxalign.rewards.oriented` applies ``maximize`` once, where it is
built). Non-finite scores never become the best and are counted.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxalign.rewards import Objective


@struct.dataclass
class Problem:
    """What one search aligns: a prompt's text conditioning and the centre (baseline) latent."""

    context: Any  # [tokens, dim], or SDXL's dict (see DiffusionModel.encode_tokens)
    uncond_context: Any
    centre: jax.Array  # [c, h, w]
    reward_inputs: dict[str, Any] = struct.field(default_factory=dict)  # prompt encodings of conditioned rewards


@struct.dataclass
class SearchParams:
    """Numeric knobs of a search; all traced, so they can be swept or vmapped without recompiling."""

    reward_weights: dict[str, jax.Array]
    guidance_scale: jax.Array
    method: dict[str, Any] = struct.field(default_factory=dict)  # the method's knobs (evolution: its strategy's Params and its space's)


@struct.dataclass
class SearchState:
    key: jax.Array
    generation: jax.Array
    method_state: Any  # the method's own state (evolution: its evosax strategy's)
    best_fitness: jax.Array  # the objective (higher is better)
    best_solution: jax.Array
    best_image: jax.Array
    best_components: dict[str, jax.Array]
    baseline_fitness: jax.Array
    baseline_image: jax.Array
    baseline_components: dict[str, jax.Array]
    spent: dict[str, jax.Array]  # cumulative budget: "nfe", "images", "vjp_nfe" (counted as the generations ran)


BUDGET_KEYS = ("nfe", "images", "vjp_nfe")


@struct.dataclass
class Generation:
    """What one generation reports: per-member scores and the best so far."""

    fitness: jax.Array  # [P], NaN where the objective was not finite
    components: dict[str, jax.Array]  # name -> [P]
    num_nonfinite: jax.Array
    best_fitness: jax.Array
    best_components: dict[str, jax.Array]
    best_image: jax.Array
    spent: dict[str, jax.Array]  # the cumulative budget after this generation
    images: jax.Array  # [P, H, W, 3], the generation's own images (the runner fetches only the last generation's)


def rank_last(minimised: jax.Array, finite: jax.Array) -> jax.Array:
    """Replace non-finite entries by a finite value worse than every finite one."""
    worst_finite = jnp.max(jnp.where(finite, minimised, -jnp.inf))
    worst_finite = jnp.where(jnp.isfinite(worst_finite), worst_finite, 0.0)
    return jnp.where(finite, minimised, worst_finite + 1.0 + jnp.abs(worst_finite))


class Search(NamedTuple):
    """A search: pure ``init``, generation 0 ``start``, one-generation ``step``, and its budget.

    ``start`` and ``step`` have the same signature; :meth:`advance` picks the right one on the host.
    NFE counts UNet forward evaluations of one latent (a classifier-free-guidance pair counts once);
    ``vjp_nfe_per_generation`` counts backward passes through the UNet (gradient-based methods).
    """

    init: Any  # (key, problem, params) -> SearchState
    start: Any  # generation 0, (model_params, reward_params, problem, params, state) -> (SearchState, Generation); jitted
    step: Any  # the same for generations >= 1
    default_params: Any  # (...) -> SearchParams
    popsize: int
    nfe_per_generation: int
    images_per_generation: int = 0
    vjp_nfe_per_generation: int = 0
    best_solution_is: str = "search-space solution"  # what ``best_solution`` holds, in words (summary.json)
    strategy: str | None = None  # the evosax strategy a search runs (summary.json, tables), None for other methods
    # Generation 0 (the baseline and initial population) may cost differently from later ones.
    initial_nfe: int = 0
    initial_images: int = 0
    initial_vjp_nfe: int = 0
    best_latent: Any = None  # (params, best_solution, problem) -> the latent it stands for (``best_latent.npy``)
    mesh: Any = None  # the ("prompts", "population") device mesh the population is sharded over, or None

    def advance(self, model_params, reward_params, problem: Problem, params: SearchParams, state: SearchState):
        """Run the next generation of ``state`` (``start`` at generation 0, else ``step``)."""
        step = step_for(int(jax.device_get(state.generation).reshape(-1)[0]), self.start, self.step)
        return step(model_params, reward_params, problem, params, state)

    def budget(self, generation: int) -> dict[str, int]:
        """Images, NFE and backward NFE planned once ``generation`` has finished (expected values for
        methods whose cost is random; the runner logs what the state counted, ``SearchState.spent``)."""
        return {
            "images": self.initial_images + generation * self.images_per_generation,
            "nfe": self.initial_nfe + generation * self.nfe_per_generation,
            "vjp_nfe": self.initial_vjp_nfe + generation * self.vjp_nfe_per_generation,
        }


def step_for(generation: int, start, step):
    """What generation ``generation`` runs: ``start`` at 0 (the baseline, and the first population), else ``step``;
    the one place that picks (:meth:`Search.advance`, and the runner's compiled pair)."""
    return start if generation == 0 else step


def initial_state(key, method_state, best_solution, component_names, image_shape) -> SearchState:
    """A state before generation 0, strongly typed so ``step``'s output state has the same avals."""
    nan = jnp.float32(jnp.nan)
    no_components = {name: nan for name in component_names}
    blank = jnp.zeros(image_shape, jnp.float32)
    state = SearchState(
        key=key,
        generation=jnp.int32(0),
        method_state=method_state,
        best_fitness=jnp.float32(-jnp.inf),
        best_solution=best_solution,
        best_image=blank,
        best_components=no_components,
        baseline_fitness=nan,
        baseline_image=blank,
        baseline_components=no_components,
        spent={k: jnp.int32(0) for k in BUDGET_KEYS},
    )
    return jax.tree.map(lambda x: jnp.asarray(x, x.dtype), state)


def record(state: SearchState, key, method_state, solutions, total, components, images, cost: Mapping[str, Any]) -> tuple[SearchState, Generation]:
    """The next state and the report of a generation that evaluated ``solutions`` to ``images`` and scores.

    Tracks the best so far (non-finite scores never become it) and, at generation 0, takes member 0
    as the unaligned baseline. ``cost`` is what this generation spent (keys of ``BUDGET_KEYS``; traced
    where it depends on the run, as DSearch's random search steps), added to ``state.spent``.
    """
    first = state.generation == 0
    finite = jnp.isfinite(total)
    candidates = jnp.where(finite, total, -jnp.inf)
    best = jnp.argmax(candidates)
    improved = candidates[best] > state.best_fitness
    pick = lambda new, old: jnp.where(improved, new, old)  # noqa: E731
    pick_baseline = lambda new, old: jnp.where(first, new, old)  # noqa: E731
    member = lambda tree, i: jax.tree.map(lambda x: x[i], tree)  # noqa: E731
    state = SearchState(
        key=key,
        generation=state.generation + 1,
        method_state=method_state,
        best_fitness=pick(total[best], state.best_fitness),
        best_solution=pick(solutions[best], state.best_solution),
        best_image=pick(images[best], state.best_image),
        best_components=jax.tree.map(pick, member(components, best), state.best_components),
        baseline_fitness=pick_baseline(total[0], state.baseline_fitness),
        baseline_image=pick_baseline(images[0], state.baseline_image),
        baseline_components=jax.tree.map(pick_baseline, member(components, 0), state.baseline_components),
        spent={k: state.spent[k] + jnp.int32(cost.get(k, 0)) for k in BUDGET_KEYS},
    )
    report = Generation(
        fitness=jnp.where(finite, total, jnp.nan),
        components=components,
        num_nonfinite=jnp.sum(~finite),
        best_fitness=state.best_fitness,
        best_components=state.best_components,
        best_image=state.best_image,
        spent=state.spent,
        images=images,
    )
    return state, report


def score(objective: Objective, reward_params, problem: Problem, params: SearchParams, images):
    """(total [N], components) of images under the traced reward weights; ``reward_params`` are the learned rewards'
    weights (:attr:`Objective.params`, None when every reward is weight-free)."""
    return objective.fn(images, params.reward_weights, reward_params, problem.reward_inputs)


def initial_population(key, centre_solution, popsize: int):
    """Generation 0 of every method: the centre (the baseline) and ``popsize - 1`` N(0, 1) draws."""
    others = jax.random.normal(key, (popsize - 1, centre_solution.size), centre_solution.dtype)
    return jnp.concatenate([centre_solution[None], others])


def sharding_helpers(mesh):
    """``(shard_population, replicate)`` constraints for a ("prompts", "population") mesh; identities without one."""

    def shard_population(x):
        if mesh is None or x.shape[0] % mesh.shape["population"]:  # e.g. generation 0 of a distribution strategy: 1 latent
            return x
        spec = jax.sharding.PartitionSpec("population", *([None] * (x.ndim - 1)))
        return jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(mesh, spec))

    def replicate(tree):
        # States and reports stay whole on every device, so the next step's inputs have the
        # shardings the compiled step expects.
        if mesh is None:
            return tree
        return jax.lax.with_sharding_constraint(tree, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))

    return shard_population, replicate


def batched(search: Search) -> tuple[Any, Any, Any]:
    """``init``, ``start`` and ``step`` over a leading prompt axis of problems and states, in one compiled step.

    Every prompt keeps its own key, strategy state and best-so-far; results equal running the
    prompts one at a time with the same keys. With a mesh whose ``"prompts"`` axis has several
    devices, the prompt axis is sharded over it (inputs must be placed with :func:`prompt_sharding`).
    """
    mesh = search.mesh
    spmd = "prompts" if mesh is not None and mesh.shape["prompts"] > 1 else None
    init = jax.jit(jax.vmap(search.init, in_axes=(0, 0, None), spmd_axis_name=spmd))
    start, step = (jax.jit(jax.vmap(fn, in_axes=(None, None, 0, None, 0), spmd_axis_name=spmd)) for fn in (search.start, search.step))
    return init, start, step


def scanned(search: Search, generations: int):
    """Generation 0 and ``generations`` later ones as one pure function, for runs that need no per-generation I/O.

    ``(model_params, reward_params, problem, params, state) -> (state, first, later)``, the later generations a ``lax.scan`` (as
    purejaxrl trains); ``first`` is generation 0's report and ``later`` the others' stacked on a leading axis (apart:
    generation 0 may evaluate another number of images), without the populations' images (each keeps the best image
    so far). Equal to ``generations + 1`` calls of :meth:`Search.advance`, and like :func:`batched`'s steps it can be
    vmapped, e.g. over seeds' problems and states.
    """

    def run(model_params, reward_params, problem: Problem, params: SearchParams, state: SearchState):
        state, first = search.start(model_params, reward_params, problem, params, state)

        def generation(state, _):
            state, report = search.step(model_params, reward_params, problem, params, state)
            return state, report.replace(images=None)

        state, later = jax.lax.scan(generation, state, None, length=generations)
        return state, first.replace(images=None), later

    return run


def device_mesh(popsize: int, num_prompts: int = 1) -> jax.sharding.Mesh | None:
    """A ("prompts", "population") mesh over the local devices, or None on one device.

    Prompts searched together take as many devices as divide their number; the population shares
    the rest when they divide ``popsize`` (otherwise the population is not sharded and only the
    prompt axis uses devices).
    """
    devices = jax.devices()
    if len(devices) < 2:
        return None
    prompts = math.gcd(num_prompts, len(devices))
    population = len(devices) // prompts
    if popsize % population:
        population = 1
    if prompts * population == 1:
        return None
    # Auto axes: the compiler propagates the population's sharding constraints, as with a plain Mesh.
    auto = (jax.sharding.AxisType.Auto,) * 2
    return jax.make_mesh((prompts, population), ("prompts", "population"), axis_types=auto, devices=devices[: prompts * population])


def param_placement(shape: tuple[int, ...]) -> jax.sharding.Sharding | None:
    """Where one model weight of ``shape`` goes when weights are split over a "model" axis of the local devices:
    along its largest axis that the device count divides (the last of equal sizes), small arrays (norms, biases)
    replicated; ``None`` on one device. So a model larger than one device's memory fits, and XLA gathers what
    each step needs."""
    mesh = _model_mesh()
    if mesh is None:
        return None
    devices = mesh.devices.ravel()
    spec = [None] * len(shape)
    axes = [a for a in np.argsort(shape, kind="stable")[::-1] if shape[a] % len(devices) == 0 and shape[a] >= len(devices)]
    if axes and math.prod(shape) >= 1024:
        spec[int(axes[0])] = "model"
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))


@functools.cache
def _model_mesh() -> jax.sharding.Mesh | None:
    """The local devices along one "model" axis (``None`` on one device); built once, not per weight."""
    devices = jax.local_devices()
    if len(devices) < 2:
        return None
    return jax.make_mesh((len(devices),), ("model",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def shard_over_devices(params: Any) -> Any:
    """``params`` placed as :func:`param_placement` says (already placed leaves are not copied)."""

    def place(x):
        placement = param_placement(x.shape)
        return x if placement is None else jax.device_put(x, placement)

    return jax.tree.map(place, params)


def prompt_sharding(mesh: jax.sharding.Mesh | None, tree: Any) -> Any:
    """Place a tree with a leading prompt axis on ``mesh``, split over its "prompts" axis."""
    if mesh is None or mesh.shape["prompts"] == 1:
        return tree
    return jax.device_put(tree, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("prompts")))
