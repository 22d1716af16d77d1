"""Running a configured search: config -> job, the compiled step, and the host loop (its stop rules: :mod:`jaxalign.metrics`).

:func:`build` turns a config into a :class:`Job` (model, compiled-step inputs, prompts) and does
every check that can fail on bad input *before* anything is written. :func:`run` then searches
each prompt with the same compiled generation step; each generation's lines (:mod:`jaxalign.metrics`) go to the
writers (:mod:`jaxalign.outputs`), which store, per prompt:

* ``metrics.jsonl``: line 0 is step 0, the unaligned baseline (the centre latent); then one line
  per generation with ``step, best_fitness, mean_fitness, median_fitness, wall_s``, every reward
  component of the best image so far and its population mean, images and NFE used so far;
* ``images/baseline.png`` and ``images/step_NNNN.png`` (the best image so far, taken from the
  generation's own outputs);
* ``images/final_population.npy``: the images of the last generation, uint8 [P, H, W, 3] (for
  ``jaxalign eval``'s population diversity);
* ``summary.json``, ``fitness.png``, and ``best_solution.npy`` / ``best_latent.npy``;
* with ``config.loggers``, the same lines and best images in TensorBoard or W&B (:mod:`jaxalign.trackers`);
* ``checkpoints/``: the search state, every ``checkpoint_every`` generations and at the end (``--resume``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.compilation_cache import compilation_cache as compilation_cache_module

from jaxalign.checkpoint import Checkpointer
from jaxalign.config import plain, read_prompts, validate
from jaxalign.errors import JaxalignError, output_error
from jaxalign.files import clear_folder, workdir_lock, write_json, write_marker
from jaxalign.methods import METHODS, Context, build_method
from jaxalign.models import CLASSIFIER_FREE, NO_GUIDANCE, DiffusionModel, load_model
from jaxalign.metrics import check_scored, generation_line, stop_reason, summary
from jaxalign.outputs import Ending, Record, Writer, checkpoint_writer, image_files, member, metrics_files, progress_bar, read_lines, summary_files, to_uint8, tracker_writer
from jaxalign.rewards import oriented, weighted_sum
from jaxalign.sampler import make_sampler
from jaxalign.search import Problem, Search, SearchParams, batched, device_mesh, prompt_sharding, shard_over_devices, step_for
from jaxalign.trackers import Tracker, open_trackers, parse_loggers
from jaxalign.workdir import INPUTS, check_run_files, check_same_config, check_same_inputs, check_workdir, read_run_json, run_inputs


@dataclasses.dataclass
class Job:
    """A built run: the step's arguments besides a prompt's problem and state, and what built the search."""

    config: Any
    model: DiffusionModel
    model_params: Any
    reward_params: Any  # the learned rewards' weights (Objective.params; None: every reward is weight-free)
    context: Context  # the sampler, objective, shapes and population size the search was built for
    search: Search
    search_params: SearchParams
    prompts: list[str]


def build(config, loaded: tuple[DiffusionModel, Any] | None = None) -> Job:
    """Everything a run needs, built and checked; raises JaxalignError on bad input.

    ``loaded`` reuses an already loaded ``(model, params)`` (sweeps load the model once).
    """
    validate(config)
    prompts = read_prompts(config)
    model, model_params = loaded if loaded is not None else load_model(config.model, dtype=config.dtype, family=config.model_family, shard_params=config.shard_params)
    model = model.with_attention(config.attention)
    for prompt in prompts:
        limits = model.truncated_at(prompt)
        if limits:
            which = "the text encoder's" if len(model.tokenizers) == 1 else "a text encoder's"
            print(f"jaxalign: warning: prompt {prompt[:40]!r}... is longer than {which} {' / '.join(map(str, limits))} tokens; the rest is ignored there", file=sys.stderr)
    latent_shape = model.latent_shape(config.height, config.width)
    if model.guidance == NO_GUIDANCE and config.guidance_scale != 0:
        raise JaxalignError(f"model {model.name!r} samples without guidance (a distilled model such as FLUX.1-schnell); set guidance_scale=0, got {config.guidance_scale}")
    if model.guidance != CLASSIFIER_FREE and config.negative_prompt and config.true_cfg_scale <= 1:
        print(f"jaxalign: warning: model {model.name!r} takes one conditional pass per step (no classifier-free guidance); negative_prompt is not used", file=sys.stderr)
    spec = METHODS[config.method]
    objective = oriented(weighted_sum(dict(config.rewards), config.reward_paths.to_dict()), config.maximize)
    reward_params = objective.params
    if config.shard_params:  # the devices hold the weights between them (a no-op where load_model placed them so)
        model_params, reward_params = shard_over_devices((model_params, reward_params))
    # Gradient-based methods backpropagate through the sampler: recompute each step's activations.
    sampler = make_sampler(
        model, config.scheduler, config.num_inference_steps, remat=spec.differentiates_sampler, decode_batch=config.decode_batch,
        image_tokens=model.image_tokens(latent_shape), denoise_batch=config.denoise_batch, true_cfg_scale=config.true_cfg_scale,
    )  # fmt: skip
    num_prompt_shards = len(prompts) if config.batch_prompts else 1
    context = Context(
        sampler=sampler,
        objective=objective,
        image_shape=(config.height, config.width, 3),
        latent_shape=latent_shape,
        popsize=config.popsize,
        make_mesh=lambda batch: device_mesh(batch, num_prompt_shards) if config.shard_population and not config.shard_params else None,
    )
    search = build_method(config.method, context, plain(config.method_params))
    search_params = search.default_params(guidance_scale=config.guidance_scale)
    return Job(config, model, model_params, reward_params, context, search, search_params, prompts)


def make_problem(job: Job, prompt: str, index: int) -> tuple[Problem, jax.Array]:
    """The prompt's conditioning and centre latent, and the key its search starts from."""
    key = jax.random.fold_in(seed_key(job.config.seed), index)
    centre_key, search_key = jax.random.split(key)
    context, uncond_context = job.model.conditioning(job.model_params, prompt, job.config.negative_prompt)
    centre = jax.random.normal(centre_key, job.context.latent_shape, jnp.float32)
    return Problem(context=context, uncond_context=uncond_context, centre=centre, reward_inputs=job.context.objective.prepare(prompt)), search_key


def seed_key(seed: int) -> jax.Array:
    """The key of a seed in [0, 2**63). With 64-bit types off, ``jax.random.key`` keeps only a seed's low 32 bits
    (2**32 + 5 would alias 5); threefry's key data is the seed's two 32-bit halves, as JAX makes it with x64 on."""
    if seed < 2**32:
        return jax.random.key(seed)
    return jax.random.wrap_key_data(np.asarray([seed >> 32, seed & 0xFFFFFFFF], np.uint32), impl="threefry2x32")


def run(job: Job, workdir: str | Path, progress: bool = True, resume: bool = False, overwrite: bool = False) -> list[dict]:
    """Search every prompt of the job, writing outputs under ``workdir``.

    Prompts run one at a time, or all together through one vmapped compiled step when
    ``config.batch_prompts`` is set. With ``resume``, finished prompts are skipped and unfinished
    ones continue from their newest checkpoint; the config must be the one the workdir started with.
    A workdir holding another run is refused unless ``resume`` or ``overwrite`` (which clears it first).
    """
    workdir = check_workdir(workdir, resume=resume, overwrite=overwrite)
    with workdir_lock(workdir):  # one process at a time in a run folder
        try:
            return _run_locked(job, workdir, progress, resume, overwrite)
        except OSError as error:
            refused = output_error(error, error.filename or workdir)
            if refused is None:
                raise
            raise refused from None


def _run_locked(job: Job, workdir: Path, progress: bool, resume: bool, overwrite: bool) -> list[dict]:
    config = job.config
    config_file = workdir / "config.json"
    several = len(job.prompts) > 1
    outs = [workdir / f"{i:03d}_{_slug(p)}" if several else workdir for i, p in enumerate(job.prompts)]
    if resume and config_file.is_file():
        check_same_config(read_run_json(config_file), config.to_dict())
        check_run_files([workdir, *outs])
        check_same_inputs(workdir / INPUTS, job)
    if overwrite:
        clear_folder(workdir)  # check_workdir made sure it holds a run (its marker) or nothing
    write_marker(workdir, "run")  # first, so a run killed at any later instant is still recognised as one
    write_json(config_file, config.to_dict())
    write_json(workdir / INPUTS, run_inputs(job))
    tracker = open_trackers(parse_loggers(config.loggers), workdir, config.to_dict(), resume)
    try:
        with compilation_cache(config.compilation_cache_dir) as cache_hits:
            summaries = _search_prompts(job, workdir, outs, progress, resume, cache_hits, tracker)
    finally:
        tracker.close()
    ordered = [summaries[i] for i in range(len(job.prompts))]
    if several:
        write_json(workdir / "summary.json", {"prompts": ordered})
    return ordered


def _search_prompts(job: Job, workdir: Path, outs: list[Path], progress: bool, resume: bool, cache_hits, tracker: Tracker) -> dict[int, dict]:
    """Search every prompt not finished yet (all together with ``batch_prompts``); their summaries by index."""
    config = job.config
    several = len(job.prompts) > 1
    if config.batch_prompts and several:
        groups = [(list(range(len(job.prompts))), workdir / "checkpoints")]
    else:
        groups = [([i], outs[i] / "checkpoints") for i in range(len(job.prompts))]

    init, start, step = batched(job.search)
    compiled: dict[int, Any] = {}
    memory: dict[int, int | None] = {}
    summaries: dict[int, dict] = {}
    for members, checkpoints in groups:
        if resume and all((outs[i] / "summary.json").is_file() for i in members):
            summaries.update({i: json.loads((outs[i] / "summary.json").read_text()) for i in members})
            continue
        problems, keys = zip(*(make_problem(job, job.prompts[i], i) for i in members))
        mesh = job.search.mesh
        problem = prompt_sharding(mesh, jax.tree.map(lambda *x: jnp.stack(x), *problems))
        state = prompt_sharding(mesh, init(prompt_sharding(mesh, jnp.stack(keys)), problem, job.search_params))
        compile_s, from_cache = 0.0, None
        if len(members) not in compiled:  # same shapes, same executables: compile once, ahead of time
            began, hits = time.perf_counter(), cache_hits()
            arguments = (job.model_params, job.reward_params, problem, job.search_params, state)
            compiled[len(members)] = (start.lower(*arguments).compile(), step.lower(*arguments).compile())
            memory[len(members)] = step_memory_bytes(compiled[len(members)][1])
            compile_s, from_cache = time.perf_counter() - began, cache_hits() > hits
        ran = {
            "compile_s": round(compile_s, 3),
            "prompts_per_step": len(members),
            "step_memory_bytes": memory[len(members)],
            # JAX does not cache programs with host callbacks (jpeg_compressibility), so this can stay False.
            "step_from_compilation_cache": from_cache if config.compilation_cache_dir else None,
        }
        prompts = [PromptRun(job.prompts[i], outs[i], "" if outs[i] == workdir else outs[i].name) for i in members]
        search_group(job, compiled[len(members)], problem, state, prompts, checkpoints, progress, resume, tracker, ran)
        summaries.update({i: json.loads((outs[i] / "summary.json").read_text()) for i in members})
    return summaries


def step_memory_bytes(compiled) -> int | None:
    """What XLA plans to hold while a compiled step runs: its arguments, outputs and temporaries (aliased
    buffers once); a per-job figure, where the process's peak memory mixes every job a sweep runs."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None
    held = analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes
    return int(held - analysis.alias_size_in_bytes)


@contextlib.contextmanager
def compilation_cache(directory: str | Path | None):
    """Persist compiled executables in ``directory`` (none: no cache) while the block runs, so repeated
    runs skip compilation; yields a function counting the cache hits so far. JAX's settings are
    given back afterwards, so a library caller's own cache configuration is left as it was."""
    if not directory:
        yield lambda: 0
        return
    hits = [0]

    def listener(event, **kwargs):
        hits[0] += event == "/jax/compilation_cache/cache_hits"

    settings = {
        "jax_compilation_cache_dir": str(Path(directory).expanduser().absolute()),
        "jax_persistent_cache_min_compile_time_secs": 0.0,
        "jax_persistent_cache_min_entry_size_bytes": -1,
    }
    before = {name: getattr(jax.config, name) for name in settings}
    for name, value in settings.items():
        jax.config.update(name, value)
    jax.monitoring.register_event_listener(listener)
    try:
        yield lambda: hits[0]
    finally:
        jax.monitoring.unregister_event_listener(listener)
        for name, value in before.items():
            jax.config.update(name, value)
        compilation_cache_module.reset_cache()  # the cache object keeps its directory until reset


@dataclasses.dataclass
class PromptRun:
    """One prompt in the run loop: where its outputs go, its metrics lines so far and why it stopped (None: running)."""

    prompt: str
    out: Path
    run_key: str  # its name for the trackers: its folder in the workdir ("" for a one-prompt run)
    lines: list[dict] = dataclasses.field(default_factory=list)
    stopped_because: str | None = None
    # Its best solution when it stopped: a group's compiled step keeps evolving a stopped member for the others.
    best_solution: np.ndarray | None = None


def search_group(job: Job, steps, problem: Problem, state, prompts: list[PromptRun], checkpoints: Path, progress: bool, resume: bool, tracker: Tracker, ran: dict) -> None:
    """Search the ``prompts`` together (leading axis of ``problem`` and ``state``) to the end, through the writers;
    ``steps`` are the compiled generation-0 and later-generation functions, ``ran`` what summaries add about them."""
    config = job.config
    for p in prompts:
        p.out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as closing:  # what is opened is closed whatever happens next, an interrupt included
        checkpointer = None
        if config.checkpoint_every > 0:
            checkpointer = Checkpointer(checkpoints, config.checkpoint_every)
            closing.callback(checkpointer.close)  # removes a partial step an interrupt left
        done = -1
        if resume and checkpointer is not None:
            # The newest checkpoint the surviving metrics reach: a file cut mid-line (a kill, a full disk) resumes from
            # an earlier checkpoint instead of discarding them.
            kept = [read_lines(p.out / "metrics.jsonl") for p in prompts]
            restored = checkpointer.restore_latest(state, at_most=min(len(lines) for lines in kept) - 1)
            if restored is not None:
                done, state = restored
                for j, (p, lines) in enumerate(zip(prompts, kept)):
                    p.lines = lines[: done + 1]
                    p.stopped_because = stop_reason(config, p.lines[-1], done)
                    if p.stopped_because:
                        p.best_solution = np.asarray(jax.device_get(state.best_solution[j]))
        outs, label = [p.out for p in prompts], prompts[0].prompt if len(prompts) == 1 else f"{len(prompts)} prompts"

        def opened(writer: Writer) -> Writer:
            closing.callback(writer.close)
            return writer

        writers = [  # in the order they write: a line follows its image, a checkpoint the lines it resumes after
            opened(image_files(outs)),
            opened(metrics_files(outs, [p.lines for p in prompts])),
            opened(tracker_writer(tracker, [p.run_key for p in prompts])),
            checkpoint_writer(checkpointer) if checkpointer is not None else Writer(),
            opened(progress_bar(config.steps, label, progress, done, [p.lines[-1]["best_fitness"] if p.lines else None for p in prompts])),
            summary_files(outs, lambda solution, one: job.search.best_latent(job.search_params, solution, one)),
        ]
        _search_generations(job, steps, problem, state, prompts, writers, done)
        summaries = [{**summary(job, p.prompt, p.lines, p.stopped_because), **ran} for p in prompts]
        ending = Ending([p.best_solution for p in prompts], problem, [p.lines for p in prompts], summaries)
        for writer in writers:
            writer.finish(ending)


def _search_generations(job: Job, steps, problem: Problem, state, prompts: list[PromptRun], writers: list[Writer], done: int) -> None:
    """Generations ``done + 1 ..`` of a group until every prompt has stopped, each handed to the writers."""
    config = job.config
    search_start = time.perf_counter() - (prompts[0].lines[-1]["elapsed_s"] if done >= 0 else 0.0)
    for generation in range(done + 1, config.steps + 1):
        if all(p.stopped_because for p in prompts):
            break
        start = time.perf_counter()
        compiled = step_for(generation, *steps)
        arguments = (job.model_params, job.reward_params, problem, job.search_params, state)
        # Where the compiled step expects its inputs (a no-op for those already there; a restored or initial state moves).
        args_placement, _ = compiled.input_shardings
        state, reports = compiled(*jax.device_put(arguments, args_placement))
        population, reports = reports.images, reports.replace(images=None)  # only a prompt's last population is fetched
        host_state, reports = jax.device_get((state if generation == 0 else None, reports))  # the baseline is in the state
        seconds = time.perf_counter() - start
        elapsed = time.perf_counter() - search_start
        record = Record(generation, state, {}, {}, {}, finished=False)
        for j, p in enumerate(prompts):
            if p.stopped_because:
                continue
            line, image = generation_line(generation, member(host_state, j), member(reports, j), seconds, elapsed)
            check_scored(line, p.prompt, config.popsize)
            p.lines.append(line)
            p.stopped_because = stop_reason(config, line, generation)
            record.lines[j], record.images[j] = line, to_uint8(image)
            if p.stopped_because:
                record.populations[j] = to_uint8(jax.device_get(population[j]))
                p.best_solution = np.asarray(jax.device_get(state.best_solution[j]))
        record = record._replace(finished=all(p.stopped_because for p in prompts) or generation == config.steps)
        for writer in writers:
            writer.write(record)


def _slug(text: str, length: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:length] or "prompt"
