#!/usr/bin/env bash
# GPU measurements at the sizes the reference runs (SD1.5, SD 3.5-medium, FLUX.1-dev; random weights, no download),
# one call of the `device` tool's `run` per size and set, each within its 10 minutes.
#
# Here, once, fetch the wheels that machine lacks into ./.whl:
#   bash ../shared/tools/device-wheels.sh ml-collections==1.1.0 dotmap==1.3.30 importlib-metadata flax==0.12.8
# then, naming `.whl` in `carry`:
#   bash scripts/gpu_benchmarks.sh DTYPE [SIZE] [SET]
#     DTYPE  bfloat16 | float32
#     SIZE   sd15 (default) | sd35_medium | flux_dev; tiny_sd35, tiny_flux and embedded are CPU dry runs of them
#     SET    default: jaxalign at default settings against the reference loop at the reference config's settings;
#            lean: the memory-lean settings, EA against DNO (DNO needs them to fit at all); all (default): both
# BENCH_ARGS adds arguments to every benchmark_speed.py call (e.g. "--generations 1 --threads 1").
# The reference loop uses benchmark_speed.py's plain-torch CoSyNE: evotorch's `ray` dependency is
# larger than what a call can carry. PEAK_TFLOPS defaults to the H100/H200 SXM dense tensor-core
# peaks (989 bf16, 494 TF32, which XLA and cuBLAS use for float32 matmuls by default).
# Logs and one JSON line per part land in $OUT; BENCHMARKS.md records them with this command.
set -euo pipefail
dtype=${1:-bfloat16}
size=${2:-${SIZE:-sd15}}
set_=${3:-all}
case $dtype in
  bfloat16) peak=${PEAK_TFLOPS:-989} ;;
  float32) peak=${PEAK_TFLOPS:-494} ;;
  *) echo "usage: $0 bfloat16|float32 [SIZE] [default|lean|all]" >&2; exit 2 ;;
esac
# Memory-lean settings: decoding 4 at a time (SD1.5; its attention is fused by default); the transformers' attention
# is always fused, so there the population is denoised 4 and decoded 2 at a time.
case $size in
  sd15|embedded) lean="--decode-batch 4" ;;
  sd35_medium|flux_dev|tiny_sd35|tiny_flux) lean="--denoise-batch 4 --decode-batch 2" ;;
  *) echo "$0: unknown size $size (sd15, sd35_medium, flux_dev, tiny_sd35, tiny_flux, embedded)" >&2; exit 2 ;;
esac
case $set_ in default|lean|all) ;; *) echo "$0: unknown set $set_ (default, lean, all)" >&2; exit 2 ;; esac
out=${OUT:-/tmp/jaxalign-gpu-benchmarks}
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"; } | tee "$out/gpu.txt"
python3 -c "import os, jax, flax, torch, diffusers, transformers; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'cpus', len(os.sched_getaffinity(0)))" | tee -a "$out/gpu.txt"
# shellcheck disable=SC2086 # BENCH_ARGS and lean are lists of arguments
run() { python3 scripts/benchmark_speed.py --size "$size" --dtype "$dtype" --peak-tflops "$peak" "$@" ${BENCH_ARGS:-}; }
# Chunked attention's speed depends on size and device (on CPU: 20% faster at SD1.5 size, 2.9x slower on the
# tiny model; BENCHMARKS.md), so the reference comparison runs the default settings.
if [ "$set_" != lean ]; then
  run --reference --reference-searcher torch 2>"$out/default_${size}_$dtype.err" | tee "$out/default_${size}_$dtype.txt"
fi
if [ "$set_" != default ]; then
  # shellcheck disable=SC2086
  run --dno $lean 2>"$out/lean_${size}_$dtype.err" | tee "$out/lean_${size}_$dtype.txt"
fi
