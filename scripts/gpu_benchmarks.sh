#!/usr/bin/env bash
# Issue 5's SD1.5-size measurements in one call on a lent GPU machine (the `device` tool's `run`).
#
# Here, once, fetch the wheels that machine lacks into ./.whl:
#   bash ../shared/tools/device-wheels.sh ml-collections==1.1.0 dotmap==1.3.30 importlib-metadata flax==0.12.8
# then, one call per dtype, naming `.whl` in `carry`:
#   bash scripts/gpu_benchmarks.sh bfloat16
#   bash scripts/gpu_benchmarks.sh float32
# The reference loop uses benchmark_speed.py's plain-torch CoSyNE: evotorch's `ray` dependency is
# larger than what a call can carry. PEAK_TFLOPS defaults to the H100/H200 SXM dense tensor-core
# peaks (989 bf16, 494 TF32, which XLA and cuBLAS use for float32 matmuls by default).
# Logs and one JSON line per part land in $OUT; BENCHMARKS.md records them with this command.
# SIZE=embedded runs the same sequence on the tiny model, a dry run for machines without a GPU.
set -euo pipefail
dtype=${1:-bfloat16}
case $dtype in
  bfloat16) peak=${PEAK_TFLOPS:-989} ;;
  float32) peak=${PEAK_TFLOPS:-494} ;;
  *) echo "usage: $0 bfloat16|float32" >&2; exit 2 ;;
esac
size=${SIZE:-sd15}
out=${OUT:-/tmp/jaxalign-gpu-benchmarks}
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"; } | tee "$out/gpu.txt"
python3 -c "import jax, flax, torch, diffusers, transformers; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)" | tee -a "$out/gpu.txt"
# Default settings (standard attention, one decode; a popsize-16 step fits an 80 GB device) against the
# reference loop; then the memory-lean settings (chunked attention, decode 4 at a time), which DNO needs
# to fit at all, for EA against DNO. Chunked attention's speed depends on size and device (on CPU: 20%
# faster at SD1.5 size, 2.9x slower on the tiny model; BENCHMARKS.md), so the reference comparison avoids it.
python3 scripts/benchmark_speed.py --size "$size" --dtype "$dtype" --peak-tflops "$peak" --reference --reference-searcher torch \
  2>"$out/default_$dtype.err" | tee "$out/default_$dtype.txt"
python3 scripts/benchmark_speed.py --size "$size" --dtype "$dtype" --peak-tflops "$peak" --dno --attention chunked --decode-batch 4 \
  2>"$out/lean_$dtype.err" | tee "$out/lean_$dtype.txt"
