"""Caption-following accuracy and sample grids of an embedded model (the numbers in MODEL.md).

    python scripts/evaluate_tiny.py --out docs                                        # the UNet model
    python scripts/evaluate_tiny.py --model embedded_sd3 --guidance-scale 4.5 --out docs  # the SD3-layout flow model

Samples one image per caption for held-out (shape, colour, background) combinations and for
training combinations, reads each image back with ``jaxalign.shapes.describe`` and prints the
per-attribute accuracy; saves the first 32 samples of each set as a grid.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from jaxalign.models import load_model
from jaxalign.train import caption_following, save_grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--count", type=int, default=96)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance-scale", type=float, default=5.0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model, params = load_model(args.model)
    results = {}
    for name, held_out in (("held_out", True), ("training", False)):
        accuracy, images, captions = caption_following(model, params, held_out, args.count, 0, args.steps, args.guidance_scale)
        results[name] = accuracy
        save_grid(images[:32], args.out / f"{args.model}_samples_{name}.png")
        (args.out / f"{args.model}_samples_{name}.txt").write_text("\n".join(captions[:32]) + "\n")
        print(f"{name:9s} " + "  ".join(f"{k} {v:.3f}" for k, v in accuracy.items()), flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
