"""The command line end to end on the embedded model, and its answers to bad input."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxalign.cli import main

ROOT = Path(__file__).resolve().parent.parent
RED_PIXELS = str(ROOT / "configs" / "red_pixels.py")
SHARED_PROMPTS = ROOT.parent / "shared" / "data" / "open_image_preferences_60.csv"
SMALL = ["--config.height=32", "--config.width=32", "--config.num_inference_steps=2", "--config.popsize=6"]


def test_run_end_to_end(tmp_path, capsys):
    workdir = tmp_path / "run"
    # JPEG compressibility, so the saved PNG can be re-scored exactly.
    jpeg = "--config.rewards={'jpeg_compressibility': 1.0}"
    code = main(["run", "--config", RED_PIXELS, "--workdir", str(workdir), "--no-progress", *SMALL, "--config.steps=4", jpeg])
    assert code == 0, capsys.readouterr().err
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 1, 2, 3, 4]
    assert lines[0]["baseline"] is True
    assert lines[0]["best_fitness"] == lines[0]["mean_fitness"] == lines[0]["jpeg_compressibility"]
    for line in lines[1:]:
        for key in ("best_fitness", "mean_fitness", "median_fitness", "wall_s", "jpeg_compressibility", "mean_jpeg_compressibility"):
            assert isinstance(line[key], float), key
        assert line["best_fitness"] >= line["generation_best_fitness"] - 1e-9
    assert [line["images"] for line in lines] == [6, 12, 18, 24, 30]
    assert [line["nfe"] for line in lines] == [12, 24, 36, 48, 60]
    bests = [line["best_fitness"] for line in lines[1:]]
    assert bests == sorted(bests) and bests[-1] >= lines[0]["best_fitness"]

    images = workdir / "images"
    assert sorted(p.name for p in images.iterdir()) == ["baseline.png", "final_population.npy"] + [f"step_{i:04d}.png" for i in range(1, 5)]
    final = np.asarray(Image.open(images / "step_0004.png"))
    population = np.load(images / "final_population.npy")  # generation 4's six images, quantised as the PNGs are
    assert population.shape == (6, *final.shape) and population.dtype == np.uint8
    assert final.shape == (32, 32, 3)
    # The saved best image is the one whose score is logged: re-score it from the PNG.
    from jaxalign.rewards import jpeg_size_kb

    assert -jpeg_size_kb(final[None] / 255.0)[0] == pytest.approx(bests[-1], abs=1e-3)

    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["best_fitness"] == bests[-1] and summary["baseline_fitness"] == lines[0]["best_fitness"]
    assert summary["generations"] == 4 and summary["stopped_because"] == "steps"
    assert summary["compile_s"] > 0 and summary["seconds_per_generation"] > 0
    assert (workdir / "fitness.png").stat().st_size > 1000
    assert np.load(workdir / "best_latent.npy").shape == (4, 8, 8)
    assert "baseline" in capsys.readouterr().out


def test_target_reward_and_several_prompts_from_csv(tmp_path, capsys):
    assert SHARED_PROMPTS.is_file(), "the shared prompt file sits beside the checkout"
    import csv

    rows = list(csv.DictReader(SHARED_PROMPTS.open()))[:2]
    prompts = tmp_path / "two.csv"
    with prompts.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["prompt"])
        writer.writeheader()
        writer.writerows({"prompt": row["prompt"]} for row in rows)
    workdir = tmp_path / "multi"
    code = main(
        ["run", "--config", RED_PIXELS, "--workdir", str(workdir), "--no-progress", *SMALL, "--config.steps=5",
         f"--config.prompt_file={prompts}", "--config.rewards={'brightness': 1.0}", "--config.target_reward=-1.0"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    summaries = json.loads((workdir / "summary.json").read_text())["prompts"]
    assert [s["prompt"] for s in summaries] == [row["prompt"] for row in rows]
    for summary in summaries:
        # Brightness is always above -1, so the target is reached at the first generation.
        assert summary["stopped_because"] == "target_reward" and summary["generations"] == 1
    folders = sorted(p.name for p in workdir.iterdir() if p.is_dir())
    assert len(folders) == 2 and folders[0].startswith("000_cute_honey_badger")
    assert all((workdir / f / "metrics.jsonl").is_file() for f in folders)



def test_minimising_reports_higher_is_better_fitness_and_target(tmp_path, capsys):
    workdir = tmp_path / "darker"
    code = main(
        ["run", "--config", RED_PIXELS, "--workdir", str(workdir), "--no-progress", *SMALL, "--config.steps=5",
         "--config.rewards={'brightness': 1.0}", "--config.maximize=false", "--config.target_reward=-1.0"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    for line in lines:  # fitness is the brightness negated once; the component is brightness itself
        assert 0.0 < line["brightness"] < 1.0 and line["best_fitness"] == pytest.approx(-line["brightness"])
    # -brightness >= -1 always: the target (on the higher-is-better fitness) is reached at the first generation.
    assert len(lines) == 2 and lines[1]["best_fitness"] >= lines[0]["best_fitness"]
    assert json.loads((workdir / "summary.json").read_text())["stopped_because"] == "target_reward"

BAD_INPUTS = {
    "unknown strategy": (["--config.method_params.strategy=Nope"], "unknown strategy 'Nope'; valid: .*CoSyNE.*SNES"),
    "unknown space": (["--config.method_params.space=spiral"], "unknown space 'spiral'; valid: additive_noise, multi_axis_rotation, multi_axis_svd_rotation, noise, rotation, svd_rotation"),
    "unknown reward": (["--config.rewards={'beauty': 1.0}"], "unknown reward 'beauty'; valid: aesthetic, brightness"),
    "unknown field": (["--config.popsise=4"], "config field 'popsise' does not exist"),
    "missing model": (["--config.model=/nonexistent/sd"], "model directory not found: /nonexistent/sd"),
    "popsize 1": (["--config.popsize=1"], r"popsize must be in \[2, 65536\], got 1"),
    "steps 0": (["--config.steps=0"], "steps must be at least 1, got 0"),
    "empty prompts": (["--config.prompts=[]"], "prompt list is empty"),
    "bad number": (["--config.popsize=many"], "config field 'popsize' expects int, got 'many'"),
    "unknown strategy param": (["--config.method_params.strategy_params.sigma=2.0"], "unknown strategy_params sigma for CoSyNE; valid: elitism_ratio, eta, mode, mutation_probability"),
    "unknown CoSyNE mode": (["--config.method_params.strategy_params.mode=fast"], "cannot build strategy 'CoSyNE' with popsize 16: mode must be one of equal_budget, reference, got 'fast'"),
    "too many CoSyNE elites": (["--config.method_params.strategy_params.num_elites=20"], r"cannot build strategy 'CoSyNE' with popsize 16: num_elites must be in \[0, 11\]"),
    "odd reference children": (["--config.method_params.strategy_params={'mode': 'reference', 'num_children': 3}"], "num_children must be even in reference mode"),
    "non-numeric strategy param": (["--config.method_params.strategy=SNES", "--config.method_params.strategy_params.std_init=abc"], "strategy_params.std_init for SNES must be a finite number, got 'abc'"),
    "missing prompt file": (["--config.prompt_file=/nonexistent/prompts.txt"], "prompt_file not found"),
    "learned reward without weights": (["--config.rewards={'hpsv2': 1.0}"], "reward 'hpsv2' needs its checkpoint: set --config.reward_paths.hpsv2"),
    "missing reward weights": (["--config.rewards={'aesthetic': 1.0}", "--config.reward_paths.aesthetic={'path': '/nonexistent/a.pth', 'clip': '/nonexistent/clip'}"],
                               "CLIP model not found: /nonexistent/clip"),
    "reward path for no reward": (["--config.reward_paths.clip=/models/clip"], r"reward_paths for clip, which is not among rewards"),
    "uncached hub model": (["--config.model=nobody/nothing"], "'nobody/nothing' is not in the local Hugging Face cache"),
    "wrong family": (["--config.model_family=sdxl"], r"model family mismatch: the config expects 'sdxl' .* holds a 'sd' model"),
    "unknown attention": (["--config.attention=flash"], "unknown attention 'flash'; valid: chunked, fused, standard"),
    "negative decode batch": (["--config.decode_batch=-1"], "decode_batch must be >= 0"),
    "a strategy for a method without one": (["--config.method=random", "--config.method_params.strategy=SNES"],
                                            r"unknown method_params strategy for method 'random'; valid: \(none\)"),
    "a space for a trajectory method": (["--config.method=svdd", "--config.method_params.space=rotation"],
                                        "unknown method_params space for method 'svdd'; valid: eta, num_candidates"),
    "another method's option for evolution": (["--config.method_params={'num_candidates': 4}"],
                                              "unknown method_params num_candidates for method 'evolution'; valid: space, space_params, strategy, strategy_params"),
    "strategy options that are not a mapping": (["--config.method_params.strategy_params=3"],
                                                "method_params.strategy_params for method 'evolution' must be a mapping of options, got 3"),
    "a strategy that is not a name": (["--config.method_params.strategy=3"], "method_params.strategy for method 'evolution' must be a name, got 3"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_writes_nothing(case, tmp_path, capsys):
    overrides, message = BAD_INPUTS[case]
    workdir = tmp_path / "out"
    code = main(["run", "--config", RED_PIXELS, "--workdir", str(workdir), *overrides])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("jaxalign: error: ")
    import re

    assert re.search(message, err), err
    assert not workdir.exists()


def test_unwritable_workdir(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    code = main(["run", "--config", RED_PIXELS, "--workdir", str(blocker / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "is not writable" in err and len(err.strip().splitlines()) == 1


def test_config_file_with_unknown_field(tmp_path, capsys):
    config = tmp_path / "typo.py"
    config.write_text("from jaxalign.config import default_config\n\ndef get_config():\n    c = default_config()\n    c.unlock()\n    c.popsise = 3\n    return c\n")
    code = main(["run", "--config", str(config), "--workdir", str(tmp_path / "out")])
    assert code == 2 and "popsise" in capsys.readouterr().err


def test_module_entry_point_reports_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "jaxalign", "run", "--config", RED_PIXELS, "--workdir", str(tmp_path / "x"), "--config.method_params.space=spiral"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["jaxalign: error: unknown space 'spiral'; valid: additive_noise, multi_axis_rotation, multi_axis_svd_rotation, noise, rotation, svd_rotation"]
    assert "Traceback" not in result.stderr
