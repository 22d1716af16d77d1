"""What a run writes, as writers behind one interface.

A :class:`Writer` is three functions, as a tracker or an optax transformation is a tuple of them: ``write(record)``
after each generation of a group of prompts searched together (a :class:`Record`: the lines
:mod:`jaxalign.metrics` made, the best images, the state), ``finish(ending)`` once the group has searched to the
end, and ``close()`` always, an interrupt included. The run loop (:mod:`jaxalign.run`) makes the records and hands
them to its writers in order; none of them decides anything:

* :func:`metrics_files`: ``metrics.jsonl``, one line per generation, each on disk (fsync) before the next step;
* :func:`image_files`: ``images/baseline.png``, ``images/step_NNNN.png`` (the best image so far) and, when a prompt
  stops, ``images/final_population.npy`` (its last generation's images, uint8 [P, H, W, 3], for ``jaxalign eval``);
* :func:`tracker_writer`: the lines and best images in TensorBoard or W&B (:mod:`jaxalign.trackers`);
* :func:`checkpoint_writer`: the group's search state every ``checkpoint_every`` generations and at the end;
* :func:`progress_bar`: a tqdm bar;
* :func:`summary_files`: ``best_solution.npy``, ``best_latent.npy``, ``fitness.png`` and, last, ``summary.json``
  (its presence marks the prompt finished).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from PIL import Image

from jaxalign.files import replace_atomically, write_json
from jaxalign.trackers import Tracker


class Record(NamedTuple):
    """One generation of a group of prompts, as its writers see it; members are indices into the group."""

    generation: int
    state: Any  # the group's search state, on the devices (checkpoints)
    lines: dict[int, dict]  # member -> its metrics line (members still searching)
    images: dict[int, np.ndarray]  # member -> the image of its line (the baseline at 0, else the best so far), uint8 [H, W, 3]
    populations: dict[int, np.ndarray]  # members that stopped at this generation -> their last population, uint8 [P, H, W, 3]
    finished: bool  # the group's last generation


class Ending(NamedTuple):
    """A group searched to the end."""

    best_solutions: list[np.ndarray]  # every member's best solution when it stopped
    problem: Any  # the group's problems, leading member axis
    lines: list[list[dict]]  # every member's metrics lines
    summaries: list[dict]  # every member's summary.json content


def _ignore(_) -> None:
    pass


def _nothing() -> None:
    pass


class Writer(NamedTuple):
    write: Callable[[Record], None] = _ignore
    finish: Callable[[Ending], None] = _ignore
    close: Callable[[], None] = _nothing


def read_lines(path: Path) -> list[dict]:
    """The whole lines of a ``metrics.jsonl`` (a line cut short by a kill ends them)."""
    if not path.is_file():
        return []
    lines = []
    for text in path.read_text(errors="replace").splitlines():
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:
            break
    return lines


def metrics_files(outs: list[Path], kept: list[list[dict]]) -> Writer:
    """``metrics.jsonl`` per member, rewritten atomically to the lines ``kept`` (a resume's), then appended to."""
    files = []
    try:
        for out, lines in zip(outs, kept):
            path = out / "metrics.jsonl"
            partial = path.with_suffix(".jsonl.partial")
            partial.write_text("".join(json.dumps(line) + "\n" for line in lines))
            os.replace(partial, path)
            files.append(path.open("a"))
    except BaseException:  # those opened before a refused one are closed: the writer never reaches its caller
        for file in files:
            file.close()
        raise

    def write(record: Record):
        for j, line in record.lines.items():
            try:
                files[j].write(json.dumps(line) + "\n")
                files[j].flush()
                os.fsync(files[j].fileno())
            except OSError as error:  # a write to an open file names none
                error.filename = str(outs[j] / "metrics.jsonl")
                raise

    def close():
        for file in files:
            try:
                file.close()
            except OSError:  # every line was flushed when written: only a line whose write already failed is left
                pass

    return Writer(write=write, close=close)


def image_files(outs: list[Path]) -> Writer:
    for out in outs:
        (out / "images").mkdir(parents=True, exist_ok=True)

    def write(record: Record):
        name = "baseline.png" if record.generation == 0 else f"step_{record.generation:04d}.png"
        for j, image in record.images.items():
            _replace(outs[j] / "images" / name, lambda buffer, image=image: Image.fromarray(image).save(buffer, format="PNG"))
        for j, population in record.populations.items():
            _replace(outs[j] / "images" / "final_population.npy", lambda buffer, population=population: np.save(buffer, population))

    return Writer(write=write)


def tracker_writer(tracker: Tracker, run_keys: list[str]) -> Writer:
    """The run's trackers, each member under its ``run_key`` (its folder's name in the workdir; "" for a one-prompt run)."""

    def write(record: Record):
        for j, line in record.lines.items():
            tracker.log(run_keys[j], record.generation, line, record.images[j])

    return Writer(write=write)


def checkpoint_writer(checkpointer) -> Writer:
    """Saves the group's state when due (the run loop owns the checkpointer: it restores from it before writing)."""

    def write(record: Record):
        if checkpointer.due(record.generation, last=record.finished):
            checkpointer.save(record.generation, record.state)

    return Writer(write=write)


def progress_bar(total: int, label: str, enabled: bool, done: int, bests: list[float | None]) -> Writer:
    """A tqdm bar over generations, starting at ``done``; its postfix is the median best fitness of the members."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=label[:30], unit="gen", disable=not enabled, leave=False)
    bar.update(max(0, done))
    bests = list(bests)

    def write(record: Record):
        for j, line in record.lines.items():
            bests[j] = line["best_fitness"]
        if record.generation:
            bar.update(1)
            known = [b for b in bests if b is not None]
            bar.set_postfix(best=f"{np.median(known):.4g}" if known else "n/a")

    return Writer(write=write, close=bar.close)


def summary_files(outs: list[Path], best_latent: Callable) -> Writer:
    """Each member's best solution and latent (``best_latent(best_solution, problem)``), fitness plot and summary."""

    def finish(ending: Ending):
        for j, out in enumerate(outs):
            solution = ending.best_solutions[j]
            np.save(out / "best_solution.npy", solution)
            np.save(out / "best_latent.npy", np.asarray(best_latent(solution, member(ending.problem, j))))
            plot_fitness(ending.lines[j], out / "fitness.png", title=ending.summaries[j]["prompt"])
            write_json(out / "summary.json", ending.summaries[j])

    return Writer(finish=finish)


def to_uint8(images) -> np.ndarray:
    return np.clip(np.round(np.asarray(images) * 255.0), 0, 255).astype(np.uint8)


def member(tree, index: int):
    """Member ``index`` of a tree with a leading member axis (None stays None)."""
    return None if tree is None else jax.tree.map(lambda x: x[index], tree)


def _replace(path: Path, save: Callable[[io.BytesIO], None]) -> None:
    buffer = io.BytesIO()
    save(buffer)
    replace_atomically(path, buffer.getvalue())


def plot_fitness(lines: list[dict], path: Path, title: str = "") -> None:
    """Best-so-far, population mean and median per generation, with the baseline as a line."""
    from matplotlib.figure import Figure  # not pyplot: a library call must not switch the user's backend

    steps = [line["step"] for line in lines[1:]]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for key, style in (("best_fitness", "-o"), ("mean_fitness", "--"), ("median_fitness", ":")):
        values = [line[key] if line[key] is not None else np.nan for line in lines[1:]]
        ax.plot(steps, values, style, label=key.replace("_", " "), markersize=3)
    if lines[0]["best_fitness"] is not None:
        ax.axhline(lines[0]["best_fitness"], color="gray", linewidth=1, label="baseline")
    ax.set_xlabel("generation")
    ax.set_ylabel("fitness")
    ax.set_title(title[:60])
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
