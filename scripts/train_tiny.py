"""Train the embedded tiny SD-architecture model on procedural shapes and export it into the package.

    python scripts/train_tiny.py --workdir runs/train_tiny

writes ``jaxalign/embedded/{vae,unet,text_encoder}`` (Flax weights + configs), resumes from
``--workdir`` when interrupted, and saves loss curves there. MODEL.md records the run that made
the shipped weights. ``--clip-bpe`` rebuilds the shipped CLIP tokenizer from CLIP's BPE merge list
(``open_clip/bpe_simple_vocab_16e6.txt.gz`` in the open-clip-torch wheel).
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time
from pathlib import Path

import jax

from jaxalign.models import EMBEDDED_DIR
from jaxalign.train import StageConfig, plot_losses, train_tiny, write_clip_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=EMBEDDED_DIR, help="where the trained model is exported")
    parser.add_argument("--autoencoder-steps", type=int, default=5000)
    parser.add_argument("--denoiser-steps", type=int, default=5000)
    parser.add_argument("--autoencoder-batch-size", type=int, default=32)
    parser.add_argument("--denoiser-batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="data and initialisation seed")
    parser.add_argument("--clip-bpe", type=Path, help="rebuild tokenizer/ from this bpe_simple_vocab_16e6.txt.gz")
    args = parser.parse_args()

    print(f"training on {jax.devices()[0].device_kind} ({platform.processor() or platform.machine()}), jax {jax.__version__}")
    if args.clip_bpe:
        write_clip_tokenizer(args.clip_bpe, EMBEDDED_DIR / "tokenizer")
    # Configs and tokenizer are read from a copy, so exporting over the package directory is safe.
    config_dir = Path(tempfile.mkdtemp(prefix="jaxalign-train-"))
    for item in ("model_index.json", "vae", "unet", "text_encoder", "scheduler", "tokenizer"):
        source = EMBEDDED_DIR / item
        if source.is_dir():
            shutil.copytree(source, config_dir / item, ignore=shutil.ignore_patterns("*.msgpack"))
        else:
            shutil.copy(source, config_dir / item)
    begin = time.perf_counter()
    train_tiny(
        config_dir,
        args.workdir,
        args.out,
        autoencoder=StageConfig(steps=args.autoencoder_steps, batch_size=args.autoencoder_batch_size),
        denoiser=StageConfig(steps=args.denoiser_steps, batch_size=args.denoiser_batch_size),
        data_seed=args.seed,
    )
    print(f"trained and exported to {args.out} in {time.perf_counter() - begin:.1f} s")
    plot_losses(args.workdir)


if __name__ == "__main__":
    main()
