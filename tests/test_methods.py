"""Every alignment method through the shared runner on the embedded model: budgets, options and errors.

Each method's algorithm is checked on toy problems with known answers in test_dsearch.py, test_das.py
and test_dno.py."""

import json

import jax
import numpy as np
import pytest
from conftest import small_config

from jaxalign.errors import JaxalignError
from jaxalign.methods import METHODS
from jaxalign.methods.zero_order import sphere_neighbours
from jaxalign.run import build, make_problem, run

ALL_METHODS = sorted(METHODS)
STARTS_AT_BASELINE = {"zero_order", "dno_hybrid"}
SAMPLERS = {"svdd", "dsearch", "das", "fk_steering"}  # each generation samples afresh, tilted towards the reward
# Methods whose runs here are long enough (backward passes) that compiling with XLA's optimisations is quicker overall.
OPTIMISED = {"das", "dno"}
# Small settings per method: few candidates, and beams that divide popsize 4.
SMALL_OPTIONS = {
    "svdd": {"num_candidates": 2},
    "dsearch": {"num_candidates": 2, "oversampling": 2, "width": 1.0},
    # The official interval starts at step 5 (at 6 steps only the last step, where 4 particles rarely resample), and
    # its lambda 10 is scaled for ImageReward; brightness differs by hundredths between these particles.
    "fk_steering": {"resample_t_start": 1, "resample_frequency": 1, "lmbda": 300.0},
}


def method_config(method, **changes):
    # Brightness is differentiable and weight-free; popsize 4 and 4 generations keep each method fast. Methods
    # that steer stochastic denoising steps need a few of them (with 2 they lose to deterministic DDIM).
    # DAS backpropagates at every step, which is slow on CPU; 4 steps suffice for it.
    steps = {"num_inference_steps": 4 if method == "das" else 6} if METHODS[method].stochastic_steps else {}
    options = {"method_params": SMALL_OPTIONS[method]} if method in SMALL_OPTIONS else {}
    return small_config(method=method, rewards={"brightness": 1.0}, popsize=4, steps=4, **{**steps, **options, **changes})


@pytest.mark.parametrize("method", ALL_METHODS)
def test_method_improves_on_its_generation_0_and_counts_its_budget(method, embedded, tmp_path, request):
    if method in OPTIMISED:
        request.getfixturevalue("optimised_xla")
    job = build(method_config(method), embedded)
    (summary,) = run(job, tmp_path, progress=False)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 5
    # Methods that start from the baseline alone (a pivot, a chain) beat the baseline; the others beat generation 0
    # (the baseline and N(0, 1) noises sampled plainly): its best where they search from it, its mean where each
    # generation is a fresh tilted sample (FK steering's 16 particles fell short of generation 0's best of 4 on seed 0).
    assert summary["best_fitness"] > summary["baseline_fitness"] or method in SAMPLERS
    if method in SAMPLERS:
        assert summary["best_fitness"] > lines[0]["initial_population_mean_fitness"]
    elif method not in STARTS_AT_BASELINE:
        assert summary["best_fitness"] > lines[0]["initial_population_best_fitness"]
    # The logged budget is what the state counted; for methods with a fixed cost it equals the plan.
    search = job.search
    if method != "dsearch":  # DSearch's search steps are random coins: its cost varies per generation
        for generation, line in enumerate(lines):
            assert {k: line[k] for k in ("nfe", "images", "vjp_nfe")} == search.budget(generation)
    assert lines[0]["nfe"] == 4 * job.context.sampler.num_steps and lines[0]["images"] == 4
    assert all(b["nfe"] > a["nfe"] and b["images"] > a["images"] for a, b in zip(lines, lines[1:]))
    assert summary["method"] == method and summary["strategy"] == ("CoSyNE" if method == "evolution" else None)
    spec = METHODS[method]
    assert (summary["vjp_nfe"] > 0) == (spec.differentiates_sampler or spec.needs_gradient)
    best = np.asarray([line["best_fitness"] for line in lines])
    assert np.all(np.diff(best) >= 0)


@pytest.mark.parametrize("method", [m for m in ALL_METHODS if METHODS[m].needs_gradient])
def test_gradient_methods_refuse_black_box_rewards(method, embedded):
    config = small_config(method=method, rewards={"jpeg_compressibility": 1.0})
    with pytest.raises(JaxalignError, match=f"method '{method}' needs a differentiable reward"):
        build(config, embedded)


def test_zero_order_neighbours_lie_on_the_cosine_shell():
    pivot = jax.random.normal(jax.random.key(0), (256,))
    neighbours = np.asarray(sphere_neighbours(jax.random.key(1), pivot, 0.95, 6))
    pivot = np.asarray(pivot)
    cosines = neighbours @ pivot / (np.linalg.norm(neighbours, axis=1) * np.linalg.norm(pivot))
    np.testing.assert_allclose(cosines, 0.95, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(neighbours, axis=1), np.linalg.norm(pivot), rtol=1e-5)
    assert len({tuple(np.round(n, 4)) for n in neighbours}) == 6  # distinct directions


def test_zero_order_pivot_starts_at_the_baseline_and_moves_only_on_improvement(embedded):
    job = build(method_config("zero_order"), embedded)
    problem, key = make_problem(job, job.prompts[0], 0)
    state = job.search.init(key, problem, job.search_params)
    state, report = job.search.advance(job.model_params, job.reward_params, problem, job.search_params, state)
    # Generation 0 puts the pivot at the baseline latent (member 0), as the reference.
    np.testing.assert_array_equal(np.asarray(state.method_state.pivot), np.asarray(problem.centre).reshape(-1))
    assert float(state.method_state.score) == float(report.fitness[0])
    moves = 0
    for _ in range(4):
        previous = state.method_state
        state, report = job.search.advance(job.model_params, job.reward_params, problem, job.search_params, state)
        best = int(np.nanargmax(np.asarray(report.fitness)))
        moved = not np.array_equal(np.asarray(state.method_state.pivot), np.asarray(previous.pivot))
        assert moved == (float(report.fitness[best]) > float(previous.score))
        assert float(state.method_state.score) == max(float(previous.score), float(report.fitness[best]))
        moves += moved
    assert moves > 0  # the check above saw both branches or at least a move


@pytest.mark.parametrize("method", ALL_METHODS)
def test_every_method_builds_on_the_default_job_with_its_own_defaults(method, embedded):
    """`jaxalign run --config configs/default.py --config.method=NAME` is accepted for every registered method:
    no method's defaults clash with the default job (DSearch's oversampling 5 against popsize 16, for one)."""
    from pathlib import Path

    from jaxalign.config import load_config

    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "default.py", [f"--config.method={method}"])
    assert config.method == method and config.popsize == 16 and not config.method_params
    job = build(config, embedded)
    assert job.search.images_per_generation > 0


def test_method_options_are_checked(embedded):
    with pytest.raises(JaxalignError, match="unknown method_params bogus for method 'dno'"):
        build(small_config(method="dno", rewards={"brightness": 1.0}, method_params={"bogus": 1.0}), embedded)
    with pytest.raises(JaxalignError, match=r"unknown method_params space for method 'random'; valid: \(none\)"):
        build(small_config(method="random", method_params={"space": "rotation"}), embedded)
    with pytest.raises(JaxalignError, match="set scheduler to one of ddim, lcm"):
        build(small_config(method="svdd", scheduler="dpmsolver++"), embedded)
    with pytest.raises(JaxalignError, match="method_params.num_candidates for method 'svdd' must be a number"):
        build(small_config(method="svdd", num_inference_steps=4, method_params={"num_candidates": "many"}), embedded)
    with pytest.raises(JaxalignError, match="unknown method_params.mode 'pde'; valid: ode, sde"):
        build(small_config(method="dno", rewards={"brightness": 1.0}, method_params={"mode": "pde"}), embedded)
    with pytest.raises(JaxalignError, match="sde mode takes stochastic steps"):
        build(small_config(method="dno", rewards={"brightness": 1.0}, scheduler="pndm", method_params={"mode": "sde"}), embedded)
    with pytest.raises(JaxalignError, match="must be at least method_params.oversampling=5"):
        build(small_config(method="dsearch", popsize=4, num_inference_steps=4), embedded)
    with pytest.raises(JaxalignError, match="unknown method 'nope'"):
        build(small_config(method="nope"), embedded)


def test_hybrid_dno_differences_the_raw_decoder_output_by_default_as_the_reference(embedded):
    """benchmark_dno_nograd.py differences and back-propagates the decoder's unclamped output: saturated pixels
    still pass gradient. Same keys, same scored images; only the chain's step differs between the two spaces, and
    the embedded decoder does saturate (else the variants would agree and the test would prove nothing)."""
    chains, reports = {}, {}
    jobs = {variant: build(method_config("dno_hybrid", method_params={"image_gradient": variant}), embedded) for variant in ("raw", "clipped")}
    job = jobs["raw"]
    problem, key = make_problem(job, job.prompts[0], 0)
    start, _ = job.search.start(job.model_params, job.reward_params, problem, job.search_params, job.search.init(key, problem, job.search_params))
    for variant, job in jobs.items():  # one generation 0 (the variants differ only in their steps), then each one's step
        state, reports[variant] = job.search.step(job.model_params, job.reward_params, problem, job.search_params, start)
        chains[variant] = np.asarray(state.method_state.noises)
    raw_output = job.context.sampler.decode(job.model_params, job.context.sampler.denoise(job.model_params, problem.centre[None], problem.context, problem.uncond_context, 7.5), False)
    assert float(raw_output.min()) < 0.0 or float(raw_output.max()) > 1.0
    np.testing.assert_allclose(np.asarray(reports["raw"].fitness), np.asarray(reports["clipped"].fitness), rtol=1e-6)
    assert not np.allclose(chains["raw"], chains["clipped"])
    assert dict(METHODS["dno_hybrid"].static) == {"mode": "ode", "image_gradient": "raw"}
    with pytest.raises(JaxalignError, match="unknown method_params.image_gradient 'pixels'; valid: raw, clipped"):
        build(method_config("dno_hybrid", method_params={"image_gradient": "pixels"}), embedded)


def test_method_defaults_are_the_official_numbers():
    """Literal numbers of the official code, not the project's own table: DSearch's README run (M 5, E 5, w 5,
    exponential schedules), SVDD's and DSearch's script default of 20 candidates (inference_decoding_nonp.py
    --duplicate_size), the reference's zero-order threshold 0.95 (configs/baselines/sd.yaml), DNO's lr 0.01 and the
    hybrid's mu 0.01 (benchmark_dno.py, benchmark_dno_nograd.py), torch AdamW's weight decay 0.01."""
    assert dict(METHODS["dsearch"].static) == {"num_candidates": 5, "oversampling": 5, "search_schedule": "exponential", "drop_schedule": "exponential"}
    assert dict(METHODS["dsearch"].numeric) == {"width": 5.0, "replace_rate": 0.0, "eta": 1.0}
    assert dict(METHODS["svdd"].static) == {"num_candidates": 20} and dict(METHODS["svdd"].numeric) == {"eta": 1.0}
    assert dict(METHODS["zero_order"].numeric) == {"cosine": 0.95}
    dno = {"learning_rate": 0.01, "max_grad_norm": 1.0, "weight_decay": 0.01, "gamma": 0.0, "eta": 1.0}
    assert dict(METHODS["dno"].numeric) == dno and dict(METHODS["dno_hybrid"].numeric) == {**dno, "perturbation": 0.01}
