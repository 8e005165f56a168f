#!/usr/bin/env bash
# The GPU check, in one call on a lent GPU machine: a bare machine with no
# network and only PyTorch, pytest, numpy, matplotlib, psutil, PyYAML and scipy
# (no mlflow, dvc or torchao, unless their wheels come along in --wheels DIR).
#
#   bash benchmarks/gpu_check.sh --data DIR --out DIR [--wheels DIR]   # on the GPU, at most 6 minutes
#   bash benchmarks/gpu_check.sh --dry-run --data DIR --out DIR        # the same steps on the CPU, tiny budgets
#
# --data: a folder holding the four MNIST .gz files (a copy of ../shared/mnist),
# read through the project's own downloader and verified; never a download.
# In order, each step's output in the log: versions; the GPU-marked tests;
# the speed harness for every precision the device runs (compiled too); the
# crossover map, eager and with CUDA graphs; one epoch of every variant with
# its numerics; the data-parallel step under torchrun (NCCL at world size 1:
# one GPU cannot host two NCCL ranks). --out gets 6 files (benchmarks/README.md
# lists them); the crossover heatmaps are drawn afterwards, where the files
# land: mnist-precision crossover --from-json crossover_gpu.json --no-log.
set -euo pipefail
cd "$(dirname "$0")/.."

usage="usage: bash benchmarks/gpu_check.sh [--dry-run] --data DIR --out DIR [--wheels DIR]"
data= out= wheels= dry_run=0
while [ $# -gt 0 ]; do
  case "$1" in
    --data) data=${2:?$usage}; shift 2 ;;
    --out) out=${2:?$usage}; shift 2 ;;
    --wheels) wheels=${2:?$usage}; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    *) echo "gpu_check: unknown argument '$1'; $usage" >&2; exit 2 ;;
  esac
done
if [ -z "$data" ] || [ -z "$out" ]; then
  echo "gpu_check: --data and --out are required; $usage" >&2; exit 2
fi
if ! compgen -G "$data/*-ubyte.gz" >/dev/null; then
  echo "gpu_check: $data holds no MNIST .gz files: give a folder with the four of ../shared/mnist" >&2; exit 2
fi
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python=${PYTHON:-python3}
if [ -n "$wheels" ]; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --target "$work/site" "$wheels"/*.whl
  export PYTHONPATH="$work/site"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
started=$SECONDS
log="$out/gpu_check.log"
: > "$log"
step() { echo "== $* ($((SECONDS - started)) s)" | tee -a "$log"; }

if [ "$dry_run" = 1 ]; then
  device=cpu
  speed=(--quick --row-budget 0.1)
  crossover=(--budget 4 --widths 32,128 --batches 16,64 --threads 1)
  variants=(--max-steps 20 --every 10)
  ddp=(--steps 10 --repeats 1)
  gpu_tests=(-m gpu)   # they skip without CUDA: what is checked is that they import and collect here
else
  device=cuda
  speed=(--compile --row-budget 3)
  crossover=(--budget 120)
  variants=()
  ddp=()
  gpu_tests=(-m gpu)
fi

step "versions"
{
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  "$python" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda,
                "GPU", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")'
  for module in mlflow dvc torchao; do
    "$python" -c "import $module" 2>/dev/null && echo "$module: installed" || echo "$module: not installed"
  done
} 2>&1 | tee -a "$log"

step "MNIST from $data"
"$python" -c 'import sys; from mnist_precision.core.download import download_mnist; download_mnist(sys.argv[1], [sys.argv[2]])' \
  "$work/mnist" "$(cd "$data" && pwd)" 2>&1 | tee -a "$log"

step "the GPU tests"
# Outside CI's rule that nothing may skip: on the CPU of a dry run they skip by design.
env -u MNIST_PRECISION_NO_SKIPS "$python" -m pytest -p no:cacheprovider -q "${gpu_tests[@]}" tests/test_gpu.py \
  2>&1 | tee -a "$log"

step "the speed harness"
"$python" benchmarks/train_speed.py --device "$device" --data "$work/mnist" --skip-stage "${speed[@]}" \
  2>>"$log" | tee "$out/gpu.md"
tail -n 1 "$out/gpu.md" > "$out/gpu.json"

step "the crossover map"
"$python" -m mnist_precision.analysis.crossover --device "$device" --no-log --out "$work/crossover" --name crossover_gpu \
  "${crossover[@]}" 2>&1 | tee -a "$log"
cp "$work/crossover/crossover_gpu.json" "$work/crossover/crossover_gpu.md" "$out/"

step "one epoch of every variant"
"$python" benchmarks/variants_epoch.py --device "$device" --data "$work/mnist" "${variants[@]}" \
  2>>"$log" | tee "$out/gpu_variants.md"

step "data parallel under torchrun, world size 1"
"$python" -m torch.distributed.run --standalone --nproc-per-node=1 benchmarks/ddp_steps.py --data "$work/mnist" \
  --device "$device" "${ddp[@]}" 2>&1 | tee -a "$log"

step "done: $((SECONDS - started)) s in all; files in $out"
ls -l "$out" | tee -a "$log"
