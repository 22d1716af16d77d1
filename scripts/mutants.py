"""Plant plausible bugs one at a time and check that the tests catch each one (mutation testing).

    python scripts/mutants.py [--only NAME,...] [--list]

Copies the repository's tracked and untracked-but-not-ignored files to a temporary folder, then for
each mutant replaces one snippet of one file (the snippet must occur exactly once), runs the tests
that should catch it (``pytest -x``) with the copy first on ``PYTHONPATH``, and restores the file.
A mutant is *killed* when those tests fail. Prints one line per mutant and the survivors; exits 1 if
any survives. Not part of CI (it runs the relevant tests once per mutant: about ten minutes on
2 cores). Prints the hardware.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent


class Mutant(NamedTuple):
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTANTS = [
    Mutant("strategy told the opposite direction", "jaxalign/methods/evolution.py",
           "rank_last(-scores, jnp.isfinite(scores))", "rank_last(scores, jnp.isfinite(scores))",
           ("tests/test_directions.py", "-k", "evolution")),
    Mutant("CoSyNE tournament picks the worse entrant", "jaxalign/strategies.py",
           "jnp.argmin(parent_fitness[entrants], axis=-1)", "jnp.argmax(parent_fitness[entrants], axis=-1)",
           ("tests/test_strategies.py",)),
    Mutant("CoSyNE without crossover", "jaxalign/strategies.py",
           "children = CROSSOVERS[self.crossover](key_cross, first, second, params)[: self.num_children]",
           "children = jnp.concatenate([first, second])[: self.num_children]", ("tests/test_strategies.py",)),
    Mutant("CoSyNE parents are the first members, not the best", "jaxalign/strategies.py",
           "order = jnp.argsort(_rankable(fitness))[: self.num_parents]", "order = jnp.arange(fitness.shape[0])[: self.num_parents]",
           ("tests/test_strategies.py",)),
    Mutant("DAS tempering of the proposal shifted by one step", "jaxalign/methods/das.py",
           "gradient = lam[i + 1] * gradient", "gradient = lam[i] * gradient", ("tests/test_das.py",)),
    Mutant("DAS log p/q weight sign flipped", "jaxalign/methods/das.py",
           "log_w = log_w + (log_p_diffusion + twist - log_p_proposal - twist_prev)",
           "log_w = log_w + (log_p_proposal + twist - log_p_diffusion - twist_prev)", ("tests/test_das.py",)),
    Mutant("DAS final weight without the reward", "jaxalign/methods/das.py",
           "log_w = log_w + (log_p_diffusion + rewards / alpha - log_p_proposal - twist_prev)",
           "log_w = log_w + (log_p_diffusion - log_p_proposal - twist_prev)", ("tests/test_das.py",)),
    Mutant("DAS does not permute gradients with particles (the official bug)", "jaxalign/methods/das.py",
           "x, out, gradient, twist = x[ancestors], out[ancestors], gradient[ancestors], twist[ancestors]",
           "x, out = x[ancestors], out[ancestors]", ("tests/test_das.py",)),
    Mutant("tempering without saturation at 1", "jaxalign/methods/das.py",
           "return jnp.minimum(jnp.expm1(i * jnp.log1p(jnp.asarray(gamma, jnp.float32))), 1.0)",
           "return jnp.expm1(i * jnp.log1p(jnp.asarray(gamma, jnp.float32)))", ("tests/test_das.py",)),
    Mutant("SSP never swaps", "jaxalign/resampling.py",
           "swap = uniforms[step] < p_swap", "swap = uniforms[step] < 0.0", ("tests/test_das.py", "-k", "resampl or ssp")),
    Mutant("SVDD/DSearch keep each parent's worst child", "jaxalign/methods/dsearch.py",
           "child_value = jnp.where(valid, value_fn(", "child_value = jnp.where(valid, -value_fn(",
           ("tests/test_dsearch.py",)),
    Mutant("SVDD/DSearch children without noise", "jaxalign/methods/dsearch.py",
           "child = mean[parent] + std * jax.random.normal", "child = mean[parent] + 0.0 * std * jax.random.normal",
           ("tests/test_dsearch.py",)),
    Mutant("DSearch prunes its best particles", "jaxalign/methods/dsearch.py",
           "jnp.argsort(-values, stable=True)", "jnp.argsort(values, stable=True)", ("tests/test_dsearch.py", "tests/test_directions.py", "-k", "dsearch")),
    Mutant("DSearch search steps not widened by N0 / beam", "jaxalign/methods/dsearch.py",
           "widened = jnp.where(popsize > alive, width * num_candidates * popsize / alive, width * num_candidates)",
           "widened = width * num_candidates + 0 * alive", ("tests/test_dsearch.py",)),
    Mutant("DSearch-R replaces the rounded share of the beam and not its floor", "jaxalign/methods/dsearch.py",
           "replace_count = jnp.floor(replace_rate * final_beam)", "replace_count = jnp.round(replace_rate * final_beam)",
           ("tests/test_dsearch.py",)),
    Mutant("DSearch's planned cost rounds partial chunks", "jaxalign/methods/dsearch.py",
           "(1 - p) * math.ceil(alive * num_candidates / popsize)", "(1 - p) * round(alive * num_candidates / popsize)",
           ("tests/test_dsearch.py",)),
    Mutant("a resumed run's TensorBoard events repeat the generations after the checkpoint", "jaxalign/trackers.py",
           "purge_step=generation if generation else None", "purge_step=None", ("tests/test_trackers.py",)),
    Mutant("a resumed run starts a new W&B run", "jaxalign/trackers.py",
           'json.loads(ids.read_text())["id"] if resume and ids.is_file() else', "", ("tests/test_trackers.py",)),
    Mutant("resume restores the newest checkpoint whatever the metrics reach", "jaxalign/run.py",
           "at_most=min(len(lines) for lines in kept) - 1", "at_most=None",
           ("tests/test_resume.py", "-k", "cut_mid")),
    Mutant("DNO AdamW with a short first-moment memory", "jaxalign/methods/dno.py",
           "b1=0.9, b2=0.999", "b1=0.8, b2=0.999", ("tests/test_dno.py",)),
    Mutant("DSearch-R replaces its best particles", "jaxalign/methods/dsearch.py",
           "survivors = jnp.argsort(rank < replace_count, stable=True)", "survivors = jnp.argsort(rank >= rank.shape[0] - replace_count, stable=True)",
           ("tests/test_dsearch.py",)),
    Mutant("SVDD/DSearch budget misses a chunk", "jaxalign/methods/dsearch.py",
           "evaluated = chunks_run * popsize", "evaluated = (chunks_run - 1) * popsize", ("tests/test_method_budgets.py", "tests/test_dsearch.py")),
    Mutant("stochastic DDIM step ignores eta", "jaxalign/schedulers/base.py",
           "std = eta * (b_prev / b)", "std = (b_prev / b)", ("tests/test_schedulers.py", "-k", "stochastic")),
    Mutant("DDIM step sign flip", "jaxalign/schedulers/ddim.py",
           'return s.coefficients["alpha_prev"][i] * clip(x0) + s.coefficients["sigma_prev"][i] * eps',
           'return s.coefficients["alpha_prev"][i] * clip(x0) - s.coefficients["sigma_prev"][i] * eps', ("tests/test_schedulers.py",)),
    Mutant("flow Euler step with the time difference reversed", "jaxalign/schedulers/flow_euler.py",
           '"dt": float32(sigmas[1:] - sigmas[:-1])', '"dt": float32(sigmas[:-1] - sigmas[1:])', ("tests/test_schedulers.py", "-k", "flow")),
    Mutant("flow shift applied once where diffusers shifts the grid bounds too", "jaxalign/schedulers/flow_euler.py",
           "train = np.float32(shift) * train / (np.float32(1) + np.float32(shift - 1) * train)", "pass",
           ("tests/test_schedulers.py", "-k", "flow_euler")),
    Mutant("stochastic flow transition with the VP noise level", "jaxalign/schedulers/base.py",
           "jnp.maximum(b**2 - (a / a_prev) ** 2 * b_prev**2, 0.0)", "jnp.maximum(1.0 - (a / a_prev) ** 2, 0.0)",
           ("tests/test_schedulers.py", "-k", "marginals")),
    Mutant("zero-order pivot moves when a neighbour is worse", "jaxalign/methods/zero_order.py",
           "moves = scores[best] > state.score", "moves = scores[best] < state.score", ("tests/test_methods.py", "-k", "zero_order")),
    Mutant("zero-order pivot starts at the best of generation 0", "jaxalign/methods/zero_order.py",
           "return PivotState(noises[0], scores[0])", "return PivotState(noises[jnp.argmax(scores)], jnp.max(scores))",
           ("tests/test_methods.py", "-k", "zero_order")),
    Mutant("DNO ascends the loss", "jaxalign/methods/dno.py",
           "return jnp.sum(-finite_scores(total) + regularizer)", "return jnp.sum(finite_scores(total) + regularizer)",
           ("tests/test_dno.py",)),
    Mutant("DNO without torch's default weight decay", "jaxalign/methods/dno.py",
           '"weight_decay": 0.01', '"weight_decay": 0.0', ("tests/test_dno.py",)),
    Mutant("hybrid DNO estimate with the wrong sign", "jaxalign/methods/dno.py",
           "difference = _finite(losses[1:] - losses[0])", "difference = _finite(losses[0] - losses[1:])", ("tests/test_dno.py",)),
    Mutant("luma weights of G and B swapped", "jaxalign/rewards.py",
           "_LUMA = np.array([0.2126, 0.7152, 0.0722]", "_LUMA = np.array([0.2126, 0.0722, 0.7152]", ("tests/test_rewards.py",)),
    Mutant("a trajectory method's generation 0 records its initial noises instead of its final latents", "jaxalign/methods/base.py",
           "recorded = final.reshape(final.shape[0], -1) if method.records_final_latent else solutions",
           "recorded = final.reshape(final.shape[0], -1) if method.records_final_latent and not first else solutions",
           ("tests/test_method_budgets.py", "-k", "best_latent_after")),
    Mutant("a noise method's best latent read from the padding of an sde solution", "jaxalign/methods/base.py",
           "solutions[:, -dim:].reshape(-1, *context.latent_shape)", "solutions[:, :dim].reshape(-1, *context.latent_shape)", ("tests/test_method_budgets.py", "-k", "best_latent")),
    Mutant("clean estimate with a mis-scaled noise term", "jaxalign/schedulers/processes.py",
           "x0 = (x - sigma * eps) / alpha", "x0 = (x - 0.9 * sigma * eps) / alpha", ("tests/test_registries.py", "-k", "scheduler")),
    Mutant("saturation without the division by max", "jaxalign/rewards.py",
           "exact = _per_image_mean(((255 * (top - bottom)) // jnp.maximum(top, 1)).astype(jnp.float32)) / 255.0",
           "exact = _per_image_mean((top - bottom).astype(jnp.float32)) / 255.0", ("tests/test_rewards.py",)),
    Mutant("an NFE budget that stops one generation short", "jaxalign/sweep.py",
           "while search.budget(generations + 1)[\"nfe\"] <= budget:", "while search.budget(generations + 2)[\"nfe\"] <= budget:",
           ("tests/test_sweep.py", "-k", "nfe_budget")),
    Mutant("an NFE budget that keeps the popsize that does not fit", "jaxalign/sweep.py",
           "if search.budget(min_generations)[\"nfe\"] <= budget:", "if search.budget(min_generations - 1)[\"nfe\"] <= budget:",
           ("tests/test_sweep.py", "-k", "nfe_budget")),
    Mutant("bootstrap resamples of half the sample size", "jaxalign/comparison.py",
           "draws = np.random.default_rng(seed).integers(0, values.size, size=(resamples, values.size))",
           "draws = np.random.default_rng(seed).integers(0, values.size, size=(resamples, values.size // 2))", ("tests/test_comparison.py",)),
    Mutant("DSearch widened count with N0 / beam taken first (float32 shortfall)", "jaxalign/methods/dsearch.py",
           "width * num_candidates * popsize / alive, width * num_candidates)", "width * num_candidates * (popsize / alive), width * num_candidates)",
           ("tests/test_dsearch.py", "-k", "widened")),
    Mutant("DNO steps on a non-finite gradient", "jaxalign/methods/dno.py",
           "finite = jnp.all(jnp.isfinite(grad))", "finite = jnp.bool_(True)", ("tests/test_dno.py", "-k", "non_finite")),
    Mutant("hybrid DNO differences the clipped images under the raw option", "jaxalign/methods/dno.py",
           "return context.sampler.clip_images(raw), 2.0 * raw - 1.0",
           "return context.sampler.clip_images(raw), context.sampler.clip_images(raw)", ("tests/test_methods.py", "-k", "hybrid_dno_differences")),
    Mutant("reference aesthetic with the embedding L2-normalised", "jaxalign/learned_rewards.py",
           'uint8_clip_preprocess, normalise_embedding=False', 'uint8_clip_preprocess, normalise_embedding=True',
           ("tests/test_learned_rewards.py", "-k", "reference_aesthetic")),
    Mutant("reference aesthetic on 0-1 pixels", "jaxalign/learned_rewards.py",
           "values = jnp.clip(jnp.round(resized * 255.0), 0.0, 255.0)", "values = jnp.clip(jnp.round(resized * 255.0), 0.0, 255.0) / 255.0",
           ("tests/test_learned_rewards.py", "-k", "reference_aesthetic")),
    Mutant("DAS gamma rescaled to saturate at the last step", "jaxalign/methods/das.py",
           "saturation = math.log(2.0) / math.log1p(gamma) / reference_steps", "saturation = 1.0",
           ("tests/test_das.py", "-k", "gamma_for")),
    Mutant("seeded weights drawn on the device without the fan-in scale", "jaxalign/models/weights.py",
           "return (multiplier * jax.random.normal(key, shape, jnp.float32) / divisor).astype(dtype)",
           "return (multiplier * jax.random.normal(key, shape, jnp.float32)).astype(dtype)", ("tests/test_model.py", "-k", "seeded")),
    Mutant("CoSyNE equal-budget archive rounded up", "jaxalign/strategies.py",
           "archive_size = max(2, round(2 * ask_size / 3))", "archive_size = max(2, math.ceil(2 * ask_size / 3))",
           ("tests/test_strategies.py", "-k", "sizes_follow")),
    Mutant("DNO regulariser's covariance gap without the absolute value", "jaxalign/methods/dno.py",
           "covariance_gap = jnp.max(jnp.abs(jnp.linalg.eigvalsh(covariance - jnp.eye(subsample))))",
           "covariance_gap = jnp.max(jnp.linalg.eigvalsh(covariance - jnp.eye(subsample)))", ("tests/test_dno.py", "-k", "regularizer")),
    Mutant("hybrid DNO estimate normalised by its squared norm", "jaxalign/methods/dno.py",
           "return g / (jnp.linalg.norm(g) + 1e-3)", "return g / (jnp.linalg.norm(g) ** 2 + 1e-3)", ("tests/test_dno.py", "-k", "hand_example")),
    Mutant("eval scores a folder it cannot write to", "jaxalign/evaluate.py",
           "if not os.access(workdir, os.W_OK | os.X_OK):", "if False:", ("tests/test_evaluate.py", "-k", "read-only")),
    Mutant("orbax's logged write failures reach stderr", "jaxalign/checkpoint.py",
           "with _signals_held(), _without_logged_write_failures():", "with _signals_held():",
           ("tests/test_bad_input.py", "-k", "after_the_free_space")),
]  # fmt: skip


def copy_repository(destination: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\n")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def run_mutant(copy: Path, mutant: Mutant) -> tuple[bool, float]:
    path = copy / mutant.path
    original = path.read_text()
    if original.count(mutant.old) != 1:
        raise SystemExit(f"mutant {mutant.name!r}: the snippet occurs {original.count(mutant.old)} times in {mutant.path}")
    path.write_text(original.replace(mutant.old, mutant.new))
    env = {**os.environ, "PYTHONPATH": str(copy), "JAX_PLATFORMS": "cpu"}
    start = time.perf_counter()
    try:
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *mutant.tests], cwd=copy, env=env, capture_output=True, text=True)
    finally:
        path.write_text(original)
    return result.returncode != 0, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated mutant names (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = parser.parse_args()
    mutants = [m for m in MUTANTS if not args.only or m.name in args.only.split(",")]
    if args.list:
        for m in mutants:
            print(f"{m.name}: {m.path} ({' '.join(m.tests)})")
        return
    print(f"hardware: {platform.machine()}, {os.cpu_count()} CPU cores; python {platform.python_version()}")
    survivors = []
    with tempfile.TemporaryDirectory(prefix="jaxalign-mutants-") as folder:
        copy = Path(folder)
        copy_repository(copy)
        for mutant in mutants:
            killed, seconds = run_mutant(copy, mutant)
            print(f"{'killed  ' if killed else 'SURVIVED'}  {mutant.name}  ({seconds:.0f} s)", flush=True)
            if not killed:
                survivors.append(mutant.name)
    print(f"{len(mutants) - len(survivors)} of {len(mutants)} mutants killed" + (f"; survivors: {', '.join(survivors)}" if survivors else ""))
    sys.exit(1 if survivors else 0)


if __name__ == "__main__":
    main()
