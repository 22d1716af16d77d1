"""Train the embedded tiny SD3-layout model (MMDiT, rectified flow; :mod:`jaxalign.tiny_sd3`) on procedural
shapes and export it into the package.

    python scripts/train_tiny_sd3.py --workdir runs/train_tiny_sd3

writes ``jaxalign/embedded_sd3`` in diffusers' StableDiffusion3Pipeline layout (Flax weights, float16), resumes
from ``--workdir`` with the same batches when interrupted, and saves the loss curve there. MODEL.md records the
run that made the shipped weights.
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import jax

from jaxalign.cli import OneLineParser
from jaxalign.errors import JaxalignError
from jaxalign.models import EMBEDDED_SD3_DIR
from jaxalign.tiny_sd3 import train
from jaxalign.train import StageConfig, plot_losses


def main() -> int:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=EMBEDDED_SD3_DIR, help="where the trained model is exported")
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0, help="data and initialisation seed")
    try:
        args = parser.parse_args()
        if args.steps < 1 or args.batch_size < 1 or not args.learning_rate > 0:
            raise JaxalignError(f"--steps and --batch-size must be positive and --learning-rate a positive number, got {args.steps}, {args.batch_size}, {args.learning_rate}")
    except JaxalignError as error:
        print(f"train_tiny_sd3: error: {error}", file=sys.stderr)
        return 2

    print(f"training on {jax.devices()[0].device_kind} ({platform.processor() or platform.machine()}), jax {jax.__version__}")
    begin = time.perf_counter()
    train(args.workdir, args.out, StageConfig(steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate), data_seed=args.seed)
    print(f"trained and exported to {args.out} in {time.perf_counter() - begin:.1f} s")
    plot_losses(args.workdir, stages=("denoiser",))
    return 0


if __name__ == "__main__":
    sys.exit(main())
