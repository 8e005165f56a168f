"""The speed harness runs (quick mode, tiny sizes) and reports every documented figure.

Timing targets are the benchmark's business, never asserted here.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from helpers import REPO_ROOT

DOCUMENTED_KEYS = {
    "reference_fp32_vs_seed_loader", "reference_fp32_ceiling_fraction", "reference_fp16_vs_fp32",
    "reference_fp32_torch_optim_vs_bare_update", "malloc",
    "reference_bf16_vs_fp32", "wide_fp16_vs_fp32", "wide_bf16_vs_fp32", "stage_overhead_ratio",
    "stage_overhead_ratio_existing_store", "device", "reference_fp16-true_vs_fp32", "reference_bf16-true_vs_fp32",
    "wide_fp16-true_vs_fp32", "wide_bf16-true_vs_fp32", "diagnostics_every_200_fp32_epoch_overhead",
    "diagnostics_every_200_bf16_epoch_overhead", "skipped_precisions",
}


@pytest.mark.slow
def test_quick_harness_reports_every_documented_figure(tmp_path, mnist_mirror):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "MNIST_"))}
    if mnist_mirror:
        env["MNIST_MIRROR"] = mnist_mirror
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "train_speed.py"), "--quick", "--device", "cpu",
         "--data", str(tmp_path / "mnist")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    figures = json.loads(lines[-1])
    assert DOCUMENTED_KEYS <= set(figures)
    for key, value in figures.items():
        if key not in ("device", "quick", "malloc", "skipped_precisions"):
            assert isinstance(value, float) and math.isfinite(value) and value > 0, (key, value)
    assert "| reference | bf16 |" in result.stdout and "| seed-loader | fp32 |" in result.stdout
    assert "| reference | bf16-true |" in result.stdout and "| wide | fp16-true |" in result.stdout
    # No GPU here: the GPU-only precisions are named as skipped, with the reason.
    assert figures["skipped_precisions"] == "tf32, fp8"
    assert "skipped fp8: precision fp8 runs only on NVIDIA GPUs of compute capability 8.9" in result.stdout
    documented = (REPO_ROOT / "benchmarks" / "README.md").read_text()
    assert all(f"`{key}`" in documented for key in DOCUMENTED_KEYS)


PAGE_FAULTS_OF_A_LATER_STEP = """
import resource, torch
from mnist_precision.model import build_mlp
from mnist_precision.precision import PrecisionPolicy
from mnist_precision.training import TrainStep, make_optimizer
model = build_mlp([4096, 4096])
step = TrainStep(model, PrecisionPolicy("bf16", "cpu"), make_optimizer(model, lr=0.01))
images, labels = torch.randn(64, 784), torch.randint(0, 10, (64,))
faults = []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step(images, labels)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(min(faults[1:]))  # the later steps: the least disturbed of them
"""


@pytest.mark.slow  # times page faults of a 4096-wide network in two interpreters
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_the_benchmarks_malloc_settings_keep_freed_memory():
    """--keep-freed-memory's environment variables make glibc reuse a step's
    big buffers instead of mapping them afresh (and page-faulting them in)."""
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    from train_speed import KEEP_FREED_MEMORY

    def faults(extra_env: dict[str, str]) -> int:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | extra_env
        return int(subprocess.run([sys.executable, "-c", PAGE_FAULTS_OF_A_LATER_STEP], env=env, capture_output=True,
                                  text=True, check=True, timeout=300).stdout)

    pages_of_one_gradient = 4096 * 4096 * 4 // 4096  # the 64 MiB fp32 gradient of the middle layer
    assert faults({}) > pages_of_one_gradient  # glibc's defaults: mapped afresh each step
    assert faults(KEEP_FREED_MEMORY) < pages_of_one_gradient // 100
