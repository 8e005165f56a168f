"""benchmarks/gpu_check.sh runs the first time on a lent GPU: its dry run, the same
script on the CPU with tiny budgets, passes here on a machine made as bare as
that one (no mlflow, dvc or torchao), so every fault that is not about the GPU
shows in CI."""

from __future__ import annotations

import gzip
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
from test_benchmark import DOCUMENTED_KEYS, STAGE_KEYS

from helpers import REPO_ROOT, SHARED_MNIST

pytestmark = pytest.mark.slow

# What the lent machine lacks, made to lack here: importing them fails as it would there.
BARE_MACHINE = """
import importlib.abc, sys

class Bare(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("mlflow", "dvc", "torchao"):
            raise ModuleNotFoundError(f"No module named {name!r} (a bare GPU machine)", name=name)
        return None

sys.meta_path.insert(0, Bare())
"""
RESULTS = ["crossover_gpu.json", "crossover_gpu.md", "gpu.json", "gpu.md", "gpu_check.log", "gpu_variants.md"]


def mnist_gz(folder, mnist_data) -> None:
    """The four .gz files the lent machine is sent (../shared/mnist's, or gzipped from the downloaded set)."""
    folder.mkdir()
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        if (SHARED_MNIST / f"{name}.gz").is_file():
            shutil.copy(SHARED_MNIST / f"{name}.gz", folder)
        else:
            (folder / f"{name}.gz").write_bytes(gzip.compress((mnist_data / name).read_bytes()))


def test_the_dry_run_passes_on_a_bare_machine_and_writes_the_files_a_gpu_run_brings_back(tmp_path, mnist_data):
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "sitecustomize.py").write_text(BARE_MACHINE)
    mnist_gz(tmp_path / "mnist", mnist_data)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "MNIST_"))}
    env |= {"PYTHONPATH": str(tmp_path / "bare"), "PYTHON": sys.executable}
    out = tmp_path / "out"
    result = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--dry-run", "--data", str(tmp_path / "mnist"), "--out", str(out)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    assert sorted(p.name for p in out.iterdir()) == RESULTS  # at most 8 files, one folder: what a lease brings back
    assert all(p.stat().st_size < 16 * 2**20 for p in out.iterdir())
    log = (out / "gpu_check.log").read_text()
    assert "mlflow: not installed" in log and "dvc: not installed" in log and "torchao: not installed" in log
    assert " skipped in " in log and " error" not in log  # the GPU tests import and collect; without CUDA they skip
    assert "s in all; files in" in log

    # The speed harness (--quick): every documented figure but the stage's, which needs MLflow.
    figures = json.loads((out / "gpu.json").read_text())
    assert DOCUMENTED_KEYS - STAGE_KEYS <= set(figures)
    for key, value in figures.items():
        if key not in ("device", "quick", "malloc", "skipped_precisions"):
            assert isinstance(value, float) and math.isfinite(value) and value > 0, (key, value)
    speed = (out / "gpu.md").read_text()
    assert "| reference | bf16 |" in speed and "| seed-loader | fp32 |" in speed
    assert "| reference | bf16-true |" in speed and "| wide | fp16-true |" in speed
    # No GPU here: the GPU-only precisions are named as skipped, with the reason.
    assert figures["skipped_precisions"] == "tf32, fp8"
    assert "skipped fp8: precision fp8 runs only on NVIDIA GPUs of compute capability 8.9" in speed
    crossover = json.loads((out / "crossover_gpu.json").read_text())
    assert {c["precision"] for c in crossover["cells"]} == {
        "fp16",
        "bf16",
        "fp16-true",
        "bf16-true",
        "fp16-true-sr",
        "bf16-true-sr",
    }
    assert "## bf16, eager" in (out / "crossover_gpu.md").read_text()
    variants = json.loads((out / "gpu_variants.md").read_text().strip().splitlines()[-1])
    cpu_precisions = ["fp32", "fp16", "bf16", "fp16-true", "bf16-true", "fp16-true-sr", "bf16-true-sr"]
    assert [(row["precision"], row["optimizer"]) for row in variants] == [
        (p, o) for o in ("sgd", "adamw") for p in cpu_precisions
    ]
    assert '"world_size": 1' in log

    # Where the files land, the heatmaps are drawn from the JSON.
    drawn = subprocess.run(
        [
            sys.executable,
            "-m",
            "mnist_precision.analysis.crossover",
            "--from-json",
            str(out / "crossover_gpu.json"),
            "--no-log",
            "--out",
            str(tmp_path / "drawn"),
            "--name",
            "crossover_gpu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert drawn.returncode == 0, drawn.stderr
    assert (tmp_path / "drawn" / "crossover_gpu-bf16.png").read_bytes().startswith(b"\x89PNG")
