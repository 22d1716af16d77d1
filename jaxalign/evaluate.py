"""``jaxalign eval``: re-score finished runs, as the reference's evaluation does (pjjajal/diffusion-trajectory
``wandb_evals.py`` re-scores each prompt's baseline and best image with rewards other than the one optimised).

For every run under a directory (one run, or a sweep's many), the baseline and best images are scored with
other rewards (cross-reward generalisation); diversity is the mean pairwise distance of CLIP image embeddings
(1 - cosine) and of pixels (RMS), over the best images of runs of the same prompt and method (different seeds)
and over each run's final population; and for the embedded shapes model, :func:`jaxalign.shapes.describe`
judges, independently of any reward, which attributes named in the prompt each image shows. Nothing is
written unless all of it succeeds: ``eval.json`` (per run, per prompt, overall means), ``eval.csv`` (per run)
and ``eval.png`` (baselines above best images); in a sweep's workdir, ``runs.csv`` gains the per-run columns.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy.spatial.distance import pdist  # pairwise distances without a Python loop over pairs

from jaxalign import shapes
from jaxalign.errors import JaxalignError
from jaxalign.files import RUN_MARKER, marker_kind, write_csv, write_json

# Cross-rewards every evaluation adds to the run's own: the paper's weight-free rewards.
CROSS_REWARDS = ("brightness", "contrast", "saturation")


def find_runs(workdir: Path) -> list[Path]:
    """Directories under ``workdir`` (itself included) holding one prompt's finished run."""
    if not workdir.is_dir():
        raise JaxalignError(f"eval: {workdir} is not a directory")
    if marker_kind(workdir) is None:  # eval writes its files there: only into a folder jaxalign made
        raise JaxalignError(f"eval: {workdir} holds no jaxalign run or sweep (no {RUN_MARKER})")
    found = [p.parent for p in sorted(workdir.rglob("summary.json")) if "prompt" in _read(p)]
    if not found:
        raise JaxalignError(f"eval: {workdir} holds no finished jaxalign run (no summary.json of a prompt)")
    return found


def load_image(path: Path) -> np.ndarray:
    from PIL import Image

    if not path.is_file():
        raise JaxalignError(f"eval: image missing: {path}")
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), np.float32) / 255.0
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise JaxalignError(f"eval: {path} is not a readable image ({type(error).__name__}); re-run that run or remove it") from None


def _inside(run: Path, relative) -> Path:
    """A file a run's summary names, which must lie in that run's folder (eval reads nothing outside the runs)."""
    path = run / str(relative)
    if not path.resolve().is_relative_to(run.resolve()):
        raise JaxalignError(f"eval: {run / 'summary.json'} names {relative!r}, outside its run folder; re-run that run or remove it")
    return path


def evaluate(workdir: str | Path, rewards: Sequence[str] | None = None, reward_paths: Mapping[str, Any] | None = None, clip: str | None = None) -> dict:
    """Evaluate every run under ``workdir`` and write ``eval.json``, ``eval.csv`` and ``eval.png`` there.

    ``rewards``: reward names to score with (default: each run's own rewards, ``clip`` for the embedded
    model, and :data:`CROSS_REWARDS`); ``reward_paths`` adds to (and overrides) each run's own paths;
    ``clip`` is the CLIP model (path, repo id or ``"embedded"``) for embedding diversity (default: the
    tiny CLIP for the embedded model; none otherwise, then only pixel diversity is measured).
    """
    from jaxalign.models import EMBEDDED, EMBEDDED_MODELS
    from jaxalign.rewards import REWARDS

    workdir = Path(workdir)
    runs = find_runs(workdir)
    if not os.access(workdir, os.W_OK | os.X_OK):  # before any scoring: eval's files go there
        raise JaxalignError(f"eval: {workdir} is not writable (eval writes eval.json, eval.csv and eval.png there)")
    for name in rewards or ():
        REWARDS[name.partition(":")[0]]  # unknown names fail before any work
    summaries = [_read(run / "summary.json") for run in runs]
    images = [(load_image(run / "images" / "baseline.png"), load_image(_inside(run, s.get("best_image", "images/best.png")))) for run, s in zip(runs, summaries)]
    sizes = {pair[k].shape for pair in images for k in (0, 1)}
    if len(sizes) > 1:  # one grid and pairwise diversities need one size
        odd = next(run for run, pair in zip(runs, images) if {pair[0].shape, pair[1].shape} != {images[0][0].shape})
        raise JaxalignError(f"eval: images of different sizes ({', '.join(f'{h}x{w}' for h, w, _ in sorted(sizes))}), e.g. in {odd}; evaluate runs of one size together")
    # Runs on a shipped model draw the shapes world: its tiny CLIP and judge apply.
    clip_source = clip if clip is not None else (EMBEDDED if all(s.get("model") in EMBEDDED_MODELS for s in summaries) else None)
    embed = _clip_embedder(clip_source) if clip_source else None
    scorers: dict[tuple, Any] = {}
    rows = []
    for run, summary, (baseline, best) in zip(runs, summaries, images):
        config = summary.get("config", {})
        paths = {**config.get("reward_paths", {}), **(reward_paths or {})}
        embedded = summary.get("model") in EMBEDDED_MODELS
        if embedded:
            paths.setdefault("clip", EMBEDDED)
        names = list(rewards) if rewards else list(dict.fromkeys([*summary.get("rewards", {}), *(["clip"] if embedded else []), *CROSS_REWARDS]))
        row = {
            "run": str(run.relative_to(workdir)) or ".", "prompt": summary["prompt"], "method": summary.get("method"),
            "strategy": summary.get("strategy"), "seed": config.get("seed"), "nfe": summary.get("nfe"),
            "search_s": summary.get("search_s"),
        }  # fmt: skip
        for name in names:
            score = _scorer(scorers, name, paths)
            values = np.asarray(score(np.stack([baseline, best]), summary["prompt"]))
            row[f"baseline:{name}"], row[f"best:{name}"] = float(values[0]), float(values[1])
        named = shapes.parse_caption(summary["prompt"]) if embedded else None
        if named:
            for which, image in (("baseline", baseline), ("best", best)):
                read = shapes.describe(image)
                for field, value in named.items():
                    row[f"judge_{which}:{field}"] = float(read is not None and getattr(read, field) == value)
                row[f"judge_{which}:all_named"] = float(all(row[f"judge_{which}:{f}"] for f in named))
        row.update(_population_diversity(run / "images" / "final_population.npy", embed))
        rows.append(row)

    groups = []
    def kind(i):  # runs of one prompt, method and options (rewards included) differ only in their seeds
        config = summaries[i].get("config", {})
        options = json.dumps([config.get("method_params"), config.get("rewards")], sort_keys=True, default=str)
        return rows[i]["prompt"], str(rows[i]["method"]), str(rows[i]["strategy"]), options

    for (prompt, method, strategy, _), members in itertools.groupby(sorted(range(len(runs)), key=kind), key=kind):
        members = list(members)
        if len(members) < 2:
            continue
        group = {"prompt": prompt, "method": method, "strategy": strategy, "runs": len(members), "members": [rows[i]["run"] for i in members]}
        for which, slot in (("baseline", 0), ("best", 1)):
            stack = np.stack([images[i][slot] for i in members])
            group[f"{which}_pixel_diversity"] = pixel_diversity(stack)
            if embed is not None:
                group[f"{which}_clip_diversity"] = embedding_diversity(embed(stack))
        groups.append(group)

    result = {"workdir": str(workdir), "runs": rows, "diversity": groups, "clip_for_diversity": clip_source, "means": _means(rows, groups)}
    write_json(workdir / "eval.json", result)
    write_csv(workdir / "eval.csv", rows)
    _save_grid(images[:16], workdir / "eval.png")
    if (workdir / "sweep_config.json").is_file():
        from jaxalign.sweep import aggregate, finished_jobs

        aggregate(workdir, finished_jobs(workdir))
    return result


def _population_diversity(path: Path, embed) -> dict[str, float]:
    """Diversity of a run's final population (none for runs from before it was saved, or of one image)."""
    if not path.is_file():
        return {}
    try:
        population = np.load(path, allow_pickle=False)  # never unpickle a file found in a folder
    except (OSError, ValueError, EOFError) as error:  # EOFError: an empty file
        raise JaxalignError(f"eval: {path} is not a saved population ({type(error).__name__}); re-run that run or remove the file") from None
    if population.dtype != np.uint8 or population.ndim != 4 or population.shape[-1] != 3:
        raise JaxalignError(f"eval: {path} is not a saved population (uint8 [P, H, W, 3]; got {population.dtype} {list(population.shape)})")
    population = population.astype(np.float32) / 255.0
    if len(population) < 2:  # methods that return one image per generation (DAS, DSearch's final beam of one)
        return {}
    diversity = {"population_pixel_diversity": pixel_diversity(population)}
    if embed is not None:
        diversity["population_clip_diversity"] = embedding_diversity(embed(population))
    return diversity


def pixel_diversity(images: np.ndarray) -> float:
    """Mean RMS pixel distance over all unordered pairs of images (at least two)."""
    flat = images.reshape(len(images), -1).astype(np.float64)
    return float(np.mean(pdist(flat, "euclidean")) / np.sqrt(flat.shape[1]))


def embedding_diversity(features: np.ndarray) -> float:
    """Mean 1 - cosine similarity over all unordered pairs of embeddings (at least two)."""
    return float(np.mean(pdist(np.asarray(features, np.float64), "cosine")))


def _scorer(cache: dict, name: str, paths: Mapping[str, Any]):
    from jaxalign.rewards import parse_reward

    key = (name, json.dumps(paths.get(name.partition(":")[0]), sort_keys=True, default=str))
    if key not in cache:
        reward = parse_reward(name, paths)

        def score(images, prompt, reward=reward):
            prepared = reward.prepare(prompt) if reward.prepare is not None else None
            return reward.score(jnp.asarray(images), reward.params, prepared)

        cache[key] = score
    return cache[key]


def _clip_embedder(source: str):
    from jaxalign.models import load_clip
    from jaxalign.learned_rewards import clip_preprocess

    clip, params = load_clip(source)

    @jax.jit
    def embed(images):
        return clip.image_features(params, clip_preprocess(images, clip.crop_size, clip.mean, clip.std))

    return lambda images: np.asarray(embed(jnp.asarray(images)))


def _means(rows: list[dict], groups: list[dict]) -> dict:
    columns = [k for k in dict.fromkeys(k for r in rows for k in r) if k.startswith(("baseline:", "best:", "judge_", "population_"))]
    means = {k: float(np.mean([r[k] for r in rows if k in r])) for k in columns}
    for k in dict.fromkeys(k for g in groups for k in g if k.endswith("diversity")):
        means[k] = float(np.mean([g[k] for g in groups]))
    return means


def _save_grid(pairs: list[tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    from jaxalign.train import save_grid

    save_grid(np.stack([p[0] for p in pairs] + [p[1] for p in pairs]), path, columns=len(pairs))


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise JaxalignError(f"eval: cannot read {path}: {error}") from None
    return data if isinstance(data, dict) else {}
