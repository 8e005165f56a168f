"""CUDA checks, run by benchmarks/gpu_check.sh on a GPU machine (`pytest -m gpu`).

Deselected by default: CI has no GPU.
"""

from __future__ import annotations

import pytest
import torch

from mnist_precision.device import peak_memory_metrics, resolve_device
from mnist_precision.model import build_mlp
from mnist_precision.precision import PrecisionPolicy
from mnist_precision.training import TrainStep

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run by gpu_check.sh)"),
]


def test_auto_picks_cuda():
    assert resolve_device("auto", "fp32").type == "cuda"


@pytest.mark.parametrize("name, dtype", [("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)])
@pytest.mark.parametrize("compile", [False, True])
def test_training_steps_on_cuda(name, dtype, compile):
    model = build_mlp([256]).cuda()
    step = TrainStep(model, PrecisionPolicy(name, "cuda"), lr=0.01, compile=compile)
    images, labels = torch.randn(64, 784, device="cuda"), torch.randint(0, 10, (64,), device="cuda")
    losses = [step(images, labels)[1].item() for _ in range(20)]
    logits, _, _ = step(images, labels)
    assert logits.dtype == dtype
    assert losses[-1] < losses[0]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert step.scaler.is_enabled() == (name == "fp16")


def test_peak_memory_comes_from_the_cuda_allocator():
    torch.ones(1 << 20, device="cuda")
    assert peak_memory_metrics(torch.device("cuda"))["peak_gpu_memory_mb"] >= 4
