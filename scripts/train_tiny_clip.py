"""Train the tiny CLIP of the embedded shapes world (the ``clip`` reward with ``reward_paths.clip="embedded"``)
and export it into the package; then print its held-out zero-shot accuracy and its agreement with the judge.

    python scripts/train_tiny_clip.py --workdir runs/train_tiny_clip

Resumes from ``--workdir`` (orbax) when interrupted; the loss curve is ``--workdir/loss.png``. MODEL.md's
"Tiny CLIP" section records the run that made the shipped weights.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import time
from pathlib import Path

import jax

from jaxalign import shapes, train
from jaxalign.models import EMBEDDED_CLIP_DIR, load_clip, load_model
from jaxalign.tiny_clip import attribute_accuracy, contrastive_batch, contrastive_loss, init_tiny_clip, save_tiny_clip, zero_shot_read


def evaluate(clip_dir: Path, count: int, seed: int) -> dict:
    """Zero-shot per-attribute accuracy on rendered held-out-combination images, and agreement with
    :func:`jaxalign.shapes.describe` on the embedded model's samples for held-out captions."""
    clip, params = load_clip(str(clip_dir))
    data = shapes.make_batch(seed + 7, count, held_out=True)
    rendered = attribute_accuracy(zero_shot_read(clip, params, data.images, data.attributes), data.attributes)
    model, model_params = load_model("embedded")
    _, images, captions = train.caption_following(model, model_params, held_out=True, count=count, seed=seed)
    truth = [shapes.Attributes(**shapes.parse_caption(c)) for c in captions]
    judge = [shapes.describe(image) for image in images]
    clip_read = zero_shot_read(clip, params, images, truth)
    readable = [i for i, j in enumerate(judge) if j is not None]
    agreement = attribute_accuracy([clip_read[i] for i in readable], [judge[i] for i in readable])
    return {"held_out_rendered": rendered, "agreement_with_describe_on_samples": agreement, "samples_read_by_describe": len(readable)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=EMBEDDED_CLIP_DIR, help="where the trained CLIP is exported")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0, help="data and initialisation seed")
    parser.add_argument("--eval-count", type=int, default=256)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()

    print(f"training on {jax.devices()[0].device_kind} ({platform.processor() or platform.machine()}), jax {jax.__version__}")
    begin = time.perf_counter()
    clip, params = init_tiny_clip(args.seed)
    config = train.StageConfig(steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate)
    state = train.run_stage(
        "clip", functools.partial(contrastive_batch, clip, args.seed), contrastive_loss(clip), params, {}, config,
        args.workdir, args.seed, progress=not args.no_progress,
    )  # fmt: skip
    save_tiny_clip(clip, state.ema, args.out)
    print(f"trained and exported to {args.out} in {time.perf_counter() - begin:.1f} s")
    train.plot_losses(args.workdir, ("clip",))
    results = evaluate(args.out, args.eval_count, args.seed)
    (args.workdir / "evaluation.json").write_text(json.dumps(results, indent=2) + "\n")
    for name, accuracy in results.items():
        print(name, json.dumps(accuracy if isinstance(accuracy, int) else {k: round(v, 3) for k, v in accuracy.items()}))
    print("chance:", json.dumps({f: round(1 / len(v), 3) for f, v in {"shape": shapes.SHAPES, "size": shapes.SIZES, "position": shapes.POSITIONS}.items()}), "colour/background 1/7")


if __name__ == "__main__":
    main()
