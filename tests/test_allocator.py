"""keep_freed_memory: a training step reuses the memory the previous one freed
instead of page-faulting it in afresh."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
from mnist_precision.allocator import keep_freed_memory
from mnist_precision.model import build_mlp
from mnist_precision.precision import PrecisionPolicy
from mnist_precision.training import TrainStep
if sys.argv[1] == "keep":
    assert keep_freed_memory()
step = TrainStep(build_mlp([4096, 4096]), PrecisionPolicy("bf16", "cpu"), lr=0.01)
images, labels = torch.randn(64, 784), torch.randint(0, 10, (64,))
faults = []
for _ in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step(images, labels)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(faults[-1])
"""


def page_faults_of_a_later_step(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout
    return int(out)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_a_training_step_reuses_freed_memory_without_page_faults():
    pages_of_one_gradient = 4096 * 4096 * 4 // 4096  # the 64 MiB fp32 gradient of the middle layer
    assert page_faults_of_a_later_step("default") > pages_of_one_gradient  # glibc maps it afresh each step
    assert page_faults_of_a_later_step("keep") < pages_of_one_gradient // 100
