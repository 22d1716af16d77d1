"""Experiment trackers (``config.loggers``): each generation's logged scalars and best image, sent to TensorBoard or
Weights & Biases beside ``metrics.jsonl``, which stays the record that resuming and ``jaxalign eval`` read.

Both are optional extras (``pip install "jaxalign[tensorboard]"``, ``"jaxalign[wandb]"``) written through the
libraries' own writers. A tracker is a pair of functions, ``log(run_key, generation, line, image)`` (``line`` is the
generation's metrics line: its numbers are logged) and ``close()``, opened once per run: ``run_key`` names a prompt's output folder inside the workdir ("" for a one-prompt
run), so a multi-prompt run keeps one TensorBoard run and one W&B key prefix per prompt.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jaxalign.errors import JaxalignError
from jaxalign.registry import Registry


class Tracker(NamedTuple):
    log: Callable[[str, int, dict, np.ndarray], None]  # (run_key, generation, metrics line, best image uint8 [H, W, 3])
    close: Callable[[], None]


class TrackerSpec(NamedTuple):
    open: Callable[[Path, dict, bool], Tracker]  # (workdir, config as a dict, resume) -> Tracker
    module: str  # what must be importable
    extra: str  # the pip extra that installs it


TRACKERS: Registry[TrackerSpec] = Registry("logger")


def parse_loggers(text: str) -> list[str]:
    """``config.loggers`` ("tensorboard,wandb"; "" for none) as names, each known and installed."""
    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    for name in names:
        spec = TRACKERS[name]
        if importlib.util.find_spec(spec.module) is None:
            raise JaxalignError(f"logger {name!r} needs the {spec.module} package: pip install 'jaxalign[{spec.extra}]'")
    return names


def open_trackers(names: list[str], workdir: Path, config: dict, resume: bool) -> Tracker:
    """The named trackers as one."""
    trackers = [TRACKERS[name].open(workdir, config, resume) for name in names]

    def log(run_key, generation, line, image):
        scalars = {name: value for name, value in line.items() if name != "step" and type(value) in (int, float)}
        for tracker in trackers:
            tracker.log(run_key, generation, scalars, image)

    def close():
        for tracker in trackers:
            tracker.close()

    return Tracker(log, close)


def _tensorboard(workdir: Path, config: dict, resume: bool) -> Tracker:
    from tensorboardX import SummaryWriter

    writers = {}

    def log(run_key, generation, scalars, image):
        if run_key not in writers:
            # A resumed prompt logs again from its restored generation on: purge what a killed process wrote after it.
            writers[run_key] = SummaryWriter(str(workdir / run_key / "tensorboard"), purge_step=generation if generation else None)
        writer = writers[run_key]
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, generation)
        writer.add_image("best_image", image, generation, dataformats="HWC")
        writer.flush()  # each generation reaches the disk, as metrics.jsonl does

    def close():
        for writer in writers.values():
            writer.close()
        writers.clear()

    return Tracker(log, close)


def _wandb_mode() -> str:
    """WANDB_MODE when set; otherwise online only with an API key and a reachable server, else offline."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if not os.environ.get("WANDB_API_KEY"):
        return "offline"
    try:
        socket.create_connection(("api.wandb.ai", 443), timeout=3).close()
    except OSError:
        return "offline"
    return "online"


def _wandb(workdir: Path, config: dict, resume: bool) -> Tracker:
    import wandb

    ids = workdir / "wandb_run.json"  # the run's id, kept so a resumed run continues the same W&B run
    run_id = json.loads(ids.read_text())["id"] if resume and ids.is_file() else uuid.uuid4().hex[:16]
    ids.write_text(json.dumps({"id": run_id}))
    run = wandb.init(
        project=os.environ.get("WANDB_PROJECT", "jaxalign"), name=workdir.name, id=run_id, resume="allow", dir=str(workdir),
        config=config, mode=_wandb_mode(), settings=wandb.Settings(silent=True, x_disable_stats=True),
    )  # fmt: skip
    keyed = set()

    def log(run_key, generation, scalars, image):
        prefix = f"{run_key}/" if run_key else ""
        if run_key not in keyed:  # each prompt has its own generation axis (prompts run one after another)
            run.define_metric(f"{prefix}generation")
            run.define_metric(f"{prefix}*", step_metric=f"{prefix}generation")
            keyed.add(run_key)
        entries = {f"{prefix}{name}": value for name, value in scalars.items()}
        run.log({**entries, f"{prefix}generation": generation, f"{prefix}best_image": wandb.Image(image)})

    return Tracker(log, run.finish)


TRACKERS.register("tensorboard", TrackerSpec(_tensorboard, "tensorboardX", "tensorboard"))
TRACKERS.register("wandb", TrackerSpec(_wandb, "wandb", "wandb"))
