"""``dsearch``: dynamic search (Li, Uehara et al. 2025, arXiv 2503.02039), DSearch and DSearch-R.

As the official image pipeline (divelab/DSearch ``sd_pipeline.py``, ``Decoding_nonbatch_SDPipeline``
with ``inference_decoding_nonp.py``'s arguments): a beam starts with N0 = ``popsize`` particles
(``beam * oversampling``; a popsize that is not a multiple of the oversampling ends at ``popsize // oversampling``). At every step but the last, each particle draws D children by stochastic
DDIM steps from its own model output and keeps its best, scored by the reward of the decoded
predicted clean image (Tweedie) after one guided model call at the next timestep; D = M
(``num_candidates``) normally and ``int(width * M * N0 / beam_now)`` on search steps, which a coin
with the search schedule's probability picks afresh at every step (``exponential``:
p_i = 1 - exp(-3 i / (T - 1))). After selection the beam is cut to the drop schedule's size
(best children first) and, for DSearch-R, the worst ``int(replace_rate * beam)`` particles are
replaced by draws from the softmax of the survivors' values (appended after them). The last step is
a plain stochastic step; the whole final beam is returned. Defaults are the paper's DSearch run
(``README.md``: bs 12, E 5, M 5, w 5, exponential search and drop schedules).

Deliberate differences: the chosen child's next-step model output is reused rather than recomputed
(the same value; the official code spends ``beam`` more NFE per step), and children are evaluated in
chunks of ``popsize`` particles, so a step's last chunk may be padded; the budget counts what runs,
padding included. SVDD (:mod:`.svdd`) is the same loop with no search steps and no drop schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.config import MAX_POPSIZE
from jaxalign.errors import JaxalignError
from jaxalign.methods.base import METHODS, Context, MethodSpec, trajectory_method, value
from jaxalign.sampler import Denoiser
from jaxalign.search import Search

# Probability that step i (of T - 1 steps with children) is a search step; the official schedules.
SEARCH_SCHEDULES: Mapping[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "all": lambda i, n: np.full(i.shape, 1.1),
    "uniform": lambda i, n: np.full(i.shape, 0.7),
    "linear": lambda i, n: (i + 10) / n,
    "exponential": lambda i, n: 1 - np.exp(-i / (n / 3)),
    "none": lambda i, n: np.zeros(i.shape),
}


def _sigmoid_sizes(t, n, start, final):
    return np.maximum(final, (start / (1 + np.exp(-10 * ((n - 1 - t) / n - 0.5)))).astype(int))


# Beam size after step t (t = 0 .. n - 1, n = T - 1) from N0 = start down to bs = final, truncated as the official int().
DROP_SCHEDULES: Mapping[str, Callable[[np.ndarray, int, int, int], np.ndarray]] = {
    "exponential": lambda t, n, start, final: np.maximum(final, (start * (final / start) ** (t / n)).astype(int)),
    "quadratic": lambda t, n, start, final: np.maximum(final, (final + (start - final) * (1 - t / n) ** 2).astype(int)),
    "linear": lambda t, n, start, final: np.maximum(final, (start - t * (start - final) / n).astype(int)),
    "sigmoid": _sigmoid_sizes,  # the official list is reversed after it is built: entry t uses n - 1 - t
    "none": lambda t, n, start, final: np.full(t.shape, final),
}


def search_probabilities(schedule: str, num_steps: int) -> np.ndarray:
    """[num_steps - 1] probability that each step with children is a search step."""
    if schedule not in SEARCH_SCHEDULES:
        raise JaxalignError(f"unknown search_schedule {schedule!r}; valid: {', '.join(SEARCH_SCHEDULES)}")
    n = num_steps - 1
    return SEARCH_SCHEDULES[schedule](np.arange(n, dtype=np.float64), n).astype(np.float32)


def drop_sizes(schedule: str, num_steps: int, start: int, final: int) -> np.ndarray:
    """[num_steps - 1] beam size after each step's selection (``final`` everywhere for ``none``)."""
    if schedule not in DROP_SCHEDULES:
        raise JaxalignError(f"unknown drop_schedule {schedule!r}; valid: {', '.join(DROP_SCHEDULES)}")
    n = num_steps - 1
    return DROP_SCHEDULES[schedule](np.arange(n, dtype=np.float64), n, start, final).astype(np.int32)


def select_children(key, denoiser: Denoiser, value_fn, x, out, alive, i, eta, count):
    """Each of the first ``alive`` particles of x_i draws ``count`` children x_{i+1} and keeps its best.

    Children run in chunks of ``len(x)`` (the j-th child belongs to particle j mod alive, so chunk
    order is child order and ties go to the earlier child, as the official argmax). Returns (best
    child [n, ...], its model output at step i + 1, its value (-inf for dead slots), chunks run).
    """
    n = x.shape[0]
    mean, std = denoiser.transition(x, out, i, eta)
    total = alive * count
    chunks = (total + n - 1) // n
    slots = jnp.arange(n)

    def chunk(c, carry):
        best_x, best_out, best_value, chosen, key = carry
        key, noise_key = jax.random.split(key)
        j = c * n + slots
        valid = j < total
        parent = j % alive
        child = mean[parent] + std * jax.random.normal(noise_key, x.shape, x.dtype)
        child_out = denoiser.output(child, i + 1)
        child_value = jnp.where(valid, value_fn(denoiser.predicted_clean(child, child_out, i + 1)), -jnp.inf)
        top = jax.ops.segment_max(jnp.where(valid, child_value, -jnp.inf), parent, num_segments=n)
        winner = jax.ops.segment_min(jnp.where(valid & (child_value >= top[parent]), slots, n), parent, num_segments=n)
        found = winner < n
        take = found & (~chosen | (top > best_value))  # the first child is kept even if its value is not finite
        source = jnp.minimum(winner, n - 1)
        pick = lambda new, old: jnp.where(take.reshape(-1, *[1] * (old.ndim - 1)), new[source], old)  # noqa: E731
        return pick(child, best_x), pick(child_out, best_out), jnp.where(take, top, best_value), chosen | found, key

    init = (x, out, jnp.full((n,), -jnp.inf), jnp.zeros((n,), bool), key)
    best_x, best_out, best_value, _, _ = jax.lax.fori_loop(0, chunks, chunk, init)
    return best_x, best_out, best_value, chunks


def prune(x, out, values, alive, drop_to):
    """Cut the beam to ``drop_to`` particles when it is wider: the best children first (dead slots hold
    -inf, so they sort last; a stable sort breaks ties by position), the order kept otherwise."""
    order = jnp.where(alive > drop_to, jnp.argsort(-values, stable=True), jnp.arange(x.shape[0]))
    return x[order], out[order], values[order], jnp.minimum(alive, drop_to)


def replace_worst(key, x, out, values, replace_count):
    """DSearch-R: drop the ``replace_count`` lowest-valued particles and append copies of survivors drawn
    from softmax(values) (temperature 1, with replacement); survivors keep their order."""
    n = x.shape[0]
    rank = jnp.argsort(jnp.argsort(values, stable=True), stable=True)  # 0 = worst
    survivors = jnp.argsort(rank < replace_count, stable=True)  # kept particles first, in order
    kept = n - replace_count
    logits = jnp.where(jnp.arange(n) < kept, values[survivors], -jnp.inf)
    drawn = survivors[jax.random.categorical(key, logits, shape=(n,))]
    index = jnp.where(jnp.arange(n) < kept, survivors, drawn)
    return x[index], out[index], values[index]


def widened_count(width, num_candidates: int, popsize: int, alive):
    """Children per particle on a search step: the official ``int(w * M * N0 / beam)`` (``N0 / beam`` only while
    the beam is below N0), computed with the division last, which is exact in float32 for an integer w * M * N0
    below 2**24; ``w * M * (N0 / beam)`` in float32 is one short for some sizes (w 3, M 5, N0 21, beam 5: 62.999996)."""
    widened = jnp.where(popsize > alive, width * num_candidates * popsize / alive, width * num_candidates)
    return jnp.floor(widened).astype(jnp.int32)


def beam_search(key, denoiser: Denoiser, value_fn, *, popsize: int, latent_shape, final_beam: int, num_candidates: int,
                search_probability: np.ndarray, beam_after: np.ndarray, width, replace_rate, eta):  # fmt: skip
    """One DSearch run from fresh noise: (the final beam, spent budget). The beam returned is the drop
    schedule's last size (``final_beam`` for every schedule the paper uses; the official code returns
    whatever its schedule leaves, and sizes DSearch-R's replacement by ``final_beam``)."""
    steps = denoiser.num_steps
    returned = int(beam_after[-1])
    key, start_key, last_key = jax.random.split(key, 3)
    x = jax.random.normal(start_key, (popsize, *latent_shape))
    out = denoiser.output(x, 0)
    replace_count = jnp.floor(replace_rate * final_beam).astype(jnp.int32)

    def body(carry, row):
        x, out, alive, key, chunks_run = carry
        i, probability, drop_to = row
        key, coin_key, child_key, replace_key = jax.random.split(key, 4)
        search = jax.random.uniform(coin_key) < probability
        count = jnp.where(search, widened_count(width, num_candidates, popsize, alive), num_candidates)
        x, out, values, chunks = select_children(child_key, denoiser, value_fn, x, out, alive, i, eta, count)
        x, out, values, alive = prune(x, out, values, alive, drop_to)
        x, out, values = jax.lax.cond(
            replace_count > 0, lambda: replace_worst(replace_key, x, out, values, replace_count), lambda: (x, out, values)
        )
        return (x, out, alive, key, chunks_run + chunks), search

    rows = (jnp.arange(steps - 1), jnp.asarray(search_probability), jnp.asarray(beam_after))
    (x, out, alive, key, chunks_run), _ = jax.lax.scan(body, (x, out, jnp.int32(popsize), key, jnp.int32(0)), rows)
    x = denoiser.step(last_key, x, out, steps - 1, eta)[:returned]
    evaluated = chunks_run * popsize
    return x, {"nfe": popsize + evaluated, "images": evaluated + returned}


def expected_cost(popsize: int, final_beam: int, num_candidates: int, search_probability, beam_after, width: float) -> dict:
    """The expected budget of :func:`beam_search` over its search coins (planning; runs count their own)."""
    alive, chunks = popsize, 0.0
    for p, drop_to in zip(search_probability, beam_after):
        searched = math.floor(width * num_candidates * popsize / alive if popsize > alive else width * num_candidates)
        p = min(float(p), 1.0)
        chunks += p * math.ceil(alive * searched / popsize) + (1 - p) * math.ceil(alive * num_candidates / popsize)
        alive = min(alive, int(drop_to))
    evaluated = round(chunks * popsize)
    return {"nfe": popsize + evaluated, "images": evaluated + int(beam_after[-1])}


def beam_method(context: Context, numeric, *, final_beam: int, num_candidates: int, search_schedule: str, drop_schedule: str) -> Search:
    """A :func:`beam_search` method (DSearch, and SVDD as its special case)."""
    sampler = context.sampler
    probability = search_probabilities(search_schedule, sampler.num_steps)
    beam_after = drop_sizes(drop_schedule, sampler.num_steps, context.popsize, final_beam)

    def guided_run(key, denoiser, score_images, problem, params):
        return beam_search(
            key, denoiser, lambda clean: value(score_images, denoiser, clean),
            popsize=context.popsize, latent_shape=context.latent_shape, final_beam=final_beam,
            num_candidates=num_candidates, search_probability=probability, beam_after=beam_after,
            width=params.method.get("width", 1.0), replace_rate=params.method.get("replace_rate", 0.0),
            eta=params.method["eta"],
        )  # fmt: skip

    cost = expected_cost(context.popsize, final_beam, num_candidates, probability, beam_after, numeric.get("width", 1.0))
    return trajectory_method(context, numeric, guided_run, cost)


def _dsearch(context: Context, numeric, num_candidates: int, oversampling: int, search_schedule: str, drop_schedule: str) -> Search:
    return beam_method(
        context, numeric, final_beam=context.popsize // oversampling, num_candidates=num_candidates,
        search_schedule=search_schedule, drop_schedule=drop_schedule,
    )  # fmt: skip


def _check(context: Context, static, numeric) -> None:
    oversampling, popsize = static["oversampling"], context.popsize
    if oversampling < 1 or popsize < oversampling:
        raise JaxalignError(f"method 'dsearch': popsize (the initial beam N0) must be at least method_params.oversampling={oversampling} (the final beam is popsize // oversampling); got popsize {popsize}")
    if static["num_candidates"] < 1:
        raise JaxalignError(f"method 'dsearch': method_params.num_candidates must be at least 1, got {static['num_candidates']}")
    if static["drop_schedule"] == "none" and oversampling != 1:
        raise JaxalignError("method 'dsearch': drop_schedule 'none' keeps the beam; it needs oversampling=1")
    search_probabilities(static["search_schedule"], 2)
    drop_sizes(static["drop_schedule"], 2, popsize, popsize // oversampling)
    rate, beam = numeric["replace_rate"], popsize // oversampling
    if rate:
        if oversampling != 1:
            raise JaxalignError(f"method 'dsearch': replace_rate (DSearch-R) needs oversampling=1, as the official code asserts; got {oversampling}")
        if not 0 < rate < 1 or math.floor(rate * beam) < 1:
            raise JaxalignError(f"method 'dsearch': replace_rate * beam must be at least 1 and replace_rate below 1 (beam {beam}); got replace_rate {rate}")
    if numeric["width"] <= 0:
        raise JaxalignError(f"method 'dsearch': method_params.width must be positive, got {numeric['width']}")
    widest = numeric["width"] * static["num_candidates"] * popsize / max(popsize // oversampling, 1)
    if widest > MAX_POPSIZE:  # each child is one model call; past this the int32 count overflows long before memory
        raise JaxalignError(f"method 'dsearch': a search step would draw {widest:.3g} children per particle (width * num_candidates * N0 / beam), more than {MAX_POPSIZE}; lower width")


METHODS.register(
    "dsearch",
    MethodSpec(
        _dsearch,
        static={"num_candidates": 5, "oversampling": 5, "search_schedule": "exponential", "drop_schedule": "exponential"},
        numeric={"width": 5.0, "replace_rate": 0.0, "eta": 1.0},
        stochastic_steps=True,
        check=_check,
    ),
)
