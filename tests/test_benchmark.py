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

from conftest import REPO_ROOT

DOCUMENTED_KEYS = {
    "reference_fp32_vs_seed_loader", "reference_fp32_ceiling_fraction", "reference_fp16_vs_fp32",
    "reference_bf16_vs_fp32", "wide_fp16_vs_fp32", "wide_bf16_vs_fp32", "stage_overhead_ratio",
    "stage_overhead_ratio_existing_store", "device",
}


@pytest.mark.e2e
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
        if key not in ("device", "quick"):
            assert isinstance(value, float) and math.isfinite(value) and value > 0, (key, value)
    assert "| reference | bf16 |" in result.stdout and "| seed-loader | fp32 |" in result.stdout
    documented = (REPO_ROOT / "benchmarks" / "README.md").read_text()
    assert all(f"`{key}`" in documented for key in DOCUMENTED_KEYS)
