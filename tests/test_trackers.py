"""config.loggers: TensorBoard event files that TensorBoard's own reader parses, and an offline W&B run, both holding
each generation's metrics line and best image, continued (not duplicated) by a resumed run; bad names are one line."""

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from jaxalign.cli import main
from jaxalign.trackers import TRACKERS, TrackerSpec

ROOT = Path(__file__).resolve().parent.parent
RED_PIXELS = str(ROOT / "configs" / "red_pixels.py")
SMALL = ["--config.height=32", "--config.width=32", "--config.num_inference_steps=2", "--config.popsize=4", "--config.steps=4",
         "--config.checkpoint_every=2", "--config.rewards={'brightness': 1.0, 'contrast': 0.5}", "--no-progress"]  # fmt: skip


def _run(workdir, *extra):
    cache = f"--config.compilation_cache_dir={workdir.parent / 'xla-cache'}"  # the resumed run reuses the first's programs
    assert main(["run", "--config", RED_PIXELS, "--workdir", str(workdir), *SMALL, cache, *extra]) == 0
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _interrupt_after_generation_3(workdir):
    """The files of a run killed after generation 3 was logged: its newest checkpoint is generation 2."""
    (workdir / "summary.json").unlink()
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    (workdir / "metrics.jsonl").write_text("\n".join(lines[:4]) + "\n")
    shutil.rmtree(workdir / "checkpoints" / "4")


def _wandb_records(path):
    """The records of a .wandb file (W&B's LevelDB-style log: a 7-byte header, then 32 KiB blocks of
    crc32 / length / type-framed chunks), read here because wandb ships no public reader of offline runs."""
    from wandb.proto import wandb_internal_pb2

    data, block, records, pending = path.read_bytes(), 32768, [], b""
    assert data[:4] == b":W&B"
    offset = 7
    while offset + 7 <= len(data):
        left = block - offset % block
        if left < 7:  # a block's tail too short for a header is padding
            offset += left
            continue
        length, kind = struct.unpack("<HB", data[offset + 4 : offset + 7])
        if length == 0 and kind == 0:
            break
        pending += data[offset + 7 : offset + 7 + length]
        offset += 7 + length
        if kind in (1, 4):  # FULL or LAST: a record is complete
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _wandb_history(run_dir):
    history = []
    for record in _wandb_records(next(run_dir.glob("run-*.wandb"))):
        if record.WhichOneof("record_type") == "history":
            entry = {}
            for item in record.history.item:  # keys come as a path: ["nfe"], or ["best_image", "width"] for a media field
                *parents, name = item.nested_key or [item.key]
                node = entry
                for parent in parents:
                    node = node.setdefault(parent, {})
                node[name] = json.loads(item.value_json)
            history.append(entry)
    return history


def _without_times(lines):
    return [{k: v for k, v in line.items() if k not in ("wall_s", "elapsed_s")} for line in lines]


def test_both_trackers_hold_every_line_and_a_resumed_run_continues_them(tmp_path, monkeypatch):
    """One run with both loggers, interrupted after generation 3 and resumed: TensorBoard's reader sees each
    generation once (the resumed process purges what the killed one logged after its checkpoint), and the offline W&B
    run, named after the workdir, is continued under the same id."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)  # no key, no network: offline
    workdir = tmp_path / "my_search"
    first_lines = _run(workdir, "--config.loggers=tensorboard,wandb")
    run_id = json.loads((workdir / "wandb_run.json").read_text())["id"]
    (first,) = (workdir / "wandb").glob("offline-run-*")
    assert first.name.endswith(run_id)
    history = _wandb_history(first)
    assert [entry["generation"] for entry in history] == [0, 1, 2, 3, 4]
    for entry, line in zip(history, first_lines):
        assert entry["best_fitness"] == pytest.approx(line["best_fitness"], rel=1e-6) and entry["nfe"] == line["nfe"]
        assert entry["best_image"]["_type"] == "image-file" and entry["best_image"]["width"] == 32

    _interrupt_after_generation_3(workdir)
    lines = _run(workdir, "--config.loggers=tensorboard,wandb", "--resume")
    assert _without_times(lines) == _without_times(first_lines)
    resumed = [path for path in (workdir / "wandb").glob("offline-run-*") if path != first]
    assert len(resumed) == 1 and resumed[0].name.endswith(run_id)  # the same W&B run, continued
    assert [entry["generation"] for entry in _wandb_history(resumed[0])] == [3, 4]

    events = EventAccumulator(str(workdir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    for name in ("best_fitness", "mean_fitness", "brightness", "contrast", "nfe", "images", "wall_s"):
        logged = [(event.step, event.value) for event in events.Scalars(name)]
        expected = [(line["step"], line[name]) for line in lines if line.get(name) is not None]
        assert [step for step, _ in logged] == [step for step, _ in expected], name  # generations 3 and 4 once each
        np.testing.assert_allclose([value for _, value in logged], [value for _, value in expected], rtol=1e-6, err_msg=name)
    images = events.Images("best_image")
    assert [image.step for image in images] == [0, 1, 2, 3, 4] and (images[0].width, images[0].height) == (32, 32)


def test_unknown_or_missing_logger_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    assert main(["run", "--config", RED_PIXELS, "--workdir", str(tmp_path / "a"), "--config.loggers=tensorboard,mlflow"]) == 2
    assert capsys.readouterr().err.strip() == "jaxalign: error: unknown logger 'mlflow'; valid: tensorboard, wandb"
    monkeypatch.setitem(TRACKERS._entries, "notinstalled", TrackerSpec(None, "jaxalign_no_such_module", "notinstalled"))
    assert main(["run", "--config", RED_PIXELS, "--workdir", str(tmp_path / "b"), "--config.loggers=notinstalled"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "jaxalign: error: logger 'notinstalled' needs the jaxalign_no_such_module package: pip install 'jaxalign[notinstalled]'"
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
