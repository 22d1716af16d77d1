"""``jaxalign eval``: cross-reward scores, the shapes judge and diversity on run directories whose images are
known, and its bad input."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxalign import shapes
from jaxalign.cli import main
from jaxalign.evaluate import load_image
from jaxalign.models import load_clip
from jaxalign.learned_rewards import clip_preprocess
from jaxalign.rewards import parse_reward

PROMPT = "a large red circle on a blue background, top left"
RIGHT = shapes.Attributes("circle", "red", "blue", "large", "top left")
WRONG = RIGHT._replace(position="bottom right", background="green")


def _fake_run(directory, seed, baseline, best):
    """A run directory as ``jaxalign run`` leaves it, with rendered images of known attributes."""
    (directory / "images").mkdir(parents=True)
    for name, attributes in (("baseline", baseline), ("step_0003", best)):
        image = shapes.render(attributes, np.random.default_rng(seed))
        Image.fromarray((image * 255).round().astype(np.uint8)).save(directory / "images" / f"{name}.png")
    population = [shapes.render(a, np.random.default_rng(seed)) for a in (best, baseline, best._replace(colour="green"))]
    np.save(directory / "images" / "final_population.npy", (np.stack(population) * 255).round().astype(np.uint8))
    summary = {
        "prompt": PROMPT, "model": "embedded", "method": "evolution", "strategy": "CoSyNE", "rewards": {"color_fraction:red": 1.0},
        "best_image": "images/step_0003.png", "nfe": 640, "config": {"seed": seed, "reward_paths": {}},
    }  # fmt: skip
    (directory / "summary.json").write_text(json.dumps(summary))


@pytest.fixture()
def sweep(tmp_path):
    from jaxalign.files import write_marker

    for seed in range(3):
        _fake_run(tmp_path / "sweep" / f"seed_{seed}", seed, WRONG, RIGHT)
    write_marker(tmp_path / "sweep", "sweep")
    return tmp_path / "sweep"


def test_eval_scores_judges_and_measures_diversity(sweep, capsys):
    assert main(["eval", "--workdir", str(sweep)]) == 0, capsys.readouterr().err
    result = json.loads((sweep / "eval.json").read_text())
    assert len(result["runs"]) == 3 and (sweep / "eval.csv").is_file() and (sweep / "eval.png").is_file()
    run = next(r for r in result["runs"] if r["run"] == "seed_1")
    baseline, best = load_image(sweep / "seed_1" / "images" / "baseline.png"), load_image(sweep / "seed_1" / "images" / "step_0003.png")
    # Every reward's value is the reward itself on the saved image: the run's own, clip (tiny CLIP) and the cross-rewards.
    assert {k for k in run if k.startswith("best:")} == {"best:color_fraction:red", "best:clip", "best:brightness", "best:contrast", "best:saturation"}
    for name in ("color_fraction:red", "clip", "saturation"):
        reward = parse_reward(name, {"clip": "embedded"})
        prepared = reward.prepare(PROMPT) if reward.prepare else None
        expected = np.asarray(reward.score(np.stack([baseline, best]), reward.params, prepared))
        np.testing.assert_allclose([run[f"baseline:{name}"], run[f"best:{name}"]], expected, rtol=1e-5)
    # The judge: the baseline has the wrong background and position, the best image everything named.
    assert run["judge_baseline:colour"] == 1 and run["judge_baseline:background"] == 0 and run["judge_baseline:position"] == 0
    assert all(run[f"judge_best:{f}"] == 1 for f in ("shape", "colour", "background", "size", "position", "all_named"))
    # Diversity over the three seeds' best images: mean pairwise RMS pixel distance and CLIP cosine distance.
    bests = [load_image(sweep / f"seed_{s}" / "images" / "step_0003.png") for s in range(3)]
    pairs = [(0, 1), (0, 2), (1, 2)]
    (group,) = result["diversity"]
    assert group["best_pixel_diversity"] == pytest.approx(np.mean([np.sqrt(np.mean((bests[i] - bests[j]) ** 2)) for i, j in pairs]), rel=1e-6)
    clip, params = load_clip("embedded")
    features = np.asarray(clip.image_features(params, clip_preprocess(np.stack(bests), clip.crop_size, clip.mean, clip.std)))
    features = features / np.linalg.norm(features, axis=1, keepdims=True)
    assert group["best_clip_diversity"] == pytest.approx(np.mean([1 - features[i] @ features[j] for i, j in pairs]), rel=1e-4)
    assert result["means"]["judge_best:all_named"] == 1.0 and result["means"]["judge_baseline:all_named"] == 0.0
    # Diversity within the run's final population.
    population = np.load(sweep / "seed_1" / "images" / "final_population.npy").astype(np.float32) / 255
    assert run["population_pixel_diversity"] == pytest.approx(np.mean([np.sqrt(np.mean((population[i] - population[j]) ** 2)) for i, j in pairs]), rel=1e-6)
    features = np.asarray(clip.image_features(params, clip_preprocess(population, clip.crop_size, clip.mean, clip.std)))
    features = features / np.linalg.norm(features, axis=1, keepdims=True)
    assert run["population_clip_diversity"] == pytest.approx(np.mean([1 - features[i] @ features[j] for i, j in pairs]), rel=1e-4)


@pytest.mark.parametrize(
    "case, args, message",
    [
        ("empty", [], "holds no jaxalign run or sweep \\(no .jaxalign-workdir.json\\)"),
        ("marked but unfinished", [], "holds no finished jaxalign run"),
        ("foreign files, no marker", [], "holds no jaxalign run or sweep"),
        ("missing image", [], "image missing: .*step_0003.png"),
        ("unknown reward", ["--rewards", "brightness,sparkle"], "unknown reward 'sparkle'"),
        ("bad reward path", ["--reward-path", "clip"], "--reward-path takes NAME=SOURCE"),
        ("corrupt image", [], "seed_2/images/step_0003.png is not a readable image \\(OSError\\)"),
        ("pickled population", [], "seed_2/images/final_population.npy is not a saved population \\(ValueError\\)"),
        ("population of floats", [], "final_population.npy is not a saved population \\(uint8 \\[P, H, W, 3\\]; got float64 \\[3, 32, 32, 3\\]\\)"),
        ("mixed sizes", [], "images of different sizes \\(32x32, 48x48\\), e.g. in .*seed_2"),
        ("summary cut short", [], "eval: cannot read .*seed_2/summary.json: "),
        ("best image outside the run", [], "eval: .*seed_2/summary.json names '../../seed_1/images/step_0003.png', outside its run folder"),
        ("empty population file", [], "seed_2/images/final_population.npy is not a saved population \\(EOFError\\)"),
        ("read-only workdir", [], "eval: .*sweep is not writable \\(eval writes eval.json, eval.csv and eval.png there\\)"),
    ],
)
def test_eval_bad_input_is_one_line_and_writes_nothing(sweep, tmp_path, capsys, monkeypatch, case, args, message):
    workdir = sweep
    if case == "read-only workdir":  # what os.access says of a read-only folder; as root (CI) chmod cannot make one
        import os

        access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != sweep and access(path, mode, **kw))
        monkeypatch.setattr("jaxalign.evaluate.load_image", lambda path: pytest.fail("scored before the folder was checked"))
    if case in ("empty", "marked but unfinished", "foreign files, no marker"):
        workdir = tmp_path / "other"
        workdir.mkdir()
        if case == "marked but unfinished":
            (workdir / ".jaxalign-workdir.json").write_text('{"jaxalign": "run", "format": 1}')
        if case == "foreign files, no marker":  # a finished run's files copied without the marker: not eval's to write into
            shutil.copytree(sweep / "seed_1", workdir / "copy")
    images = sweep / "seed_2" / "images"
    if case == "missing image":
        (images / "step_0003.png").unlink()
    if case == "corrupt image":
        (images / "step_0003.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"cut short")
    if case == "pickled population":  # never unpickled: a pickle can run code
        np.save(images / "final_population.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    if case == "population of floats":
        np.save(images / "final_population.npy", np.load(images / "final_population.npy") / 255.0)
    if case == "best image outside the run":  # a summary edited to point elsewhere: eval reads only inside the runs
        summary = json.loads((sweep / "seed_2" / "summary.json").read_text())
        (sweep / "seed_2" / "summary.json").write_text(json.dumps({**summary, "best_image": "../../seed_1/images/step_0003.png"}))
    if case == "empty population file":
        (images / "final_population.npy").write_bytes(b"")
    if case == "summary cut short":
        (sweep / "seed_2" / "summary.json").write_text((sweep / "seed_2" / "summary.json").read_text()[:40])
    if case == "mixed sizes":
        Image.fromarray(np.zeros((48, 48, 3), np.uint8)).save(images / "step_0003.png")
    before = sorted(p.name for p in workdir.rglob("*"))
    assert main(["eval", "--workdir", str(workdir), *args]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and re.search(message, error), error
    assert sorted(p.name for p in workdir.rglob("*")) == before


def test_the_default_job_makes_its_image_read_closer_to_the_prompt(tmp_path, capsys, optimised_xla):
    # README's main command, then eval: the judge, which knows nothing of the reward, finds more of the prompt's
    # attributes in the best image than in the baseline.
    config = Path(__file__).resolve().parent.parent / "configs" / "default.py"
    assert main(["run", "--config", str(config), "--workdir", str(tmp_path / "default"), "--no-progress"]) == 0, capsys.readouterr().err
    assert main(["eval", "--workdir", str(tmp_path / "default")]) == 0, capsys.readouterr().err
    (run,) = json.loads((tmp_path / "default" / "eval.json").read_text())["runs"]
    named = [k.split(":")[1] for k in run if k.startswith("judge_best:") and k != "judge_best:all_named"]
    assert len(named) == 5
    assert sum(run[f"judge_best:{f}"] for f in named) > sum(run[f"judge_baseline:{f}"] for f in named)
    assert run["best:clip"] > run["baseline:clip"]
