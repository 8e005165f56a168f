#!/usr/bin/env bash
# The GPU check, in one call on a lent GPU machine (about 9 minutes on one H200):
# versions, the GPU-marked tests, then the speed harness on CUDA for every
# precision the GPU runs (tf32 and fp8 included) and configuration, eager and
# with train.compile (CUDA graphs), one epoch of the training loop and the
# evaluation in every precision with its numerics (variants_epoch.py), then the
# data-parallel path (torchrun, DDP over NCCL) at world size 1: one GPU cannot
# host two NCCL ranks. fp8 needs torchao on that machine; without it, fp8 is
# listed as skipped, with the reason.
#
#   MNIST_MIRROR=<dir or URL> bash benchmarks/gpu_check.sh [results dir]
#
# The results (harness output and JSON) go to the results dir, by default
# benchmarks/results/. MLflow is not needed there: without it the stage
# overhead (a CPU figure) is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
results=${1:-benchmarks/results}
mkdir -p "$results"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python=${PYTHON:-python3}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  "$python" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name())'
} | tee "$results/gpu_versions.txt"

"$python" -m pytest -p no:cacheprovider -m gpu -q tests/test_gpu.py 2>&1 | tee "$results/gpu_tests.txt"

stage=()
"$python" -c 'import mlflow' 2>/dev/null || stage=(--skip-stage)
"$python" benchmarks/train_speed.py --device cuda --compile "${stage[@]}" 2>&1 | tee "$results/gpu.md"
tail -n 1 "$results/gpu.md" > "$results/gpu.json"
"$python" benchmarks/variants_epoch.py --device cuda --data data/mnist 2>&1 | tee "$results/gpu_variants.md"
"$python" -m torch.distributed.run --standalone --nproc-per-node=1 benchmarks/ddp_steps.py --data data/mnist \
  --device cuda 2>&1 | tee "$results/gpu_ddp.txt"
