"""CUDA checks, run by benchmarks/gpu_check.sh on a GPU machine (`pytest -m gpu`).

Skipped where there is no CUDA (tests/conftest.py): CI has no GPU.
"""

from __future__ import annotations

import pytest
import torch

from mnist_precision.base.precision_table import NAMES
from mnist_precision.core.data import Split
from mnist_precision.core.device import peak_memory_metrics, resolve_device
from mnist_precision.core.diagnostics import Diagnostics
from mnist_precision.core.model import build_mlp
from mnist_precision.core.optimizers import make_optimizer
from mnist_precision.core.precision import PrecisionPolicy
from mnist_precision.core.training import SYNC_EVERY, TrainState, TrainStep, run_epoch

pytestmark = pytest.mark.gpu


def test_auto_picks_cuda():
    assert resolve_device("auto", "fp32").type == "cuda"


@pytest.mark.parametrize("name", ["fp16-true", "bf16-true", "fp16-true-sr", "bf16-true-sr", "tf32", "fp8"])
def test_every_other_precision_learns_on_cuda(name):
    policy = policy_for(name)
    model = policy.convert_module(build_mlp([256]).cuda())
    step = TrainStep(model, policy, make_optimizer(model, policy, 0.01))
    images, labels = torch.randn(64, 784, device="cuda"), torch.randint(0, 10, (64,), device="cuda")
    losses = [step(images, labels)[1].item() for _ in range(20)]
    assert losses[-1] < losses[0]
    assert next(model.parameters()).dtype == policy.param_dtype


@pytest.mark.parametrize("name, dtype", [("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)])
@pytest.mark.parametrize("compile", [False, True])
def test_training_steps_on_cuda(name, dtype, compile):
    model = build_mlp([256]).cuda()
    policy = PrecisionPolicy(name, "cuda")
    step = TrainStep(model, policy, make_optimizer(model, policy, 0.01), compile=compile)
    images, labels = torch.randn(64, 784, device="cuda"), torch.randint(0, 10, (64,), device="cuda")
    losses = [step(images, labels)[1].item() for _ in range(20)]
    logits, _, _ = step(images, labels)
    assert logits.dtype == dtype
    assert losses[-1] < losses[0]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert step.policy.scaler.is_enabled() == (name == "fp16")


def test_peak_memory_comes_from_the_cuda_allocator():
    torch.ones(1 << 20, device="cuda")
    assert peak_memory_metrics(torch.device("cuda"))["peak_gpu_memory_mb"] >= 4


def policy_for(name: str) -> PrecisionPolicy:
    if name == "fp8":
        pytest.importorskip("torchao", reason="fp8 needs torchao on this machine")
        if torch.cuda.get_device_capability() < (8, 9):
            pytest.skip("fp8 needs compute capability 8.9")
    return PrecisionPolicy(name, "cuda")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("diagnose_every", [0, 40])
def test_an_epoch_waits_for_the_gpu_only_at_the_documented_points(name, diagnose_every, monkeypatch):
    """Under sync debug mode "error", any wait for the GPU raises; the loop's
    documented reads (the loss every SYNC_EVERY steps and at the epoch's end,
    the epoch's sums, and with diagnostics their figures at the epoch's end)
    are let through by counting them."""
    generator = torch.Generator().manual_seed(0)
    data = Split(
        images=torch.randn(64 * 3 * SYNC_EVERY + 17, 784, generator=generator).cuda(),
        labels=torch.randint(0, 10, (64 * 3 * SYNC_EVERY + 17,), generator=generator).cuda(),
    )
    torch.manual_seed(0)
    model = build_mlp([256]).cuda()
    policy = policy_for(name)
    state = TrainState(model, policy, lr=0.01, seed=0)
    diagnostics = Diagnostics(build_mlp([256]).cuda(), diagnose_every) if diagnose_every else None
    step = TrainStep(model, policy, state.optimizer)
    reads = []

    def documented(read):
        def documented_read(tensor):
            torch.cuda.set_sync_debug_mode(0)
            try:
                reads.append(read.__name__)
                return read(tensor)
            finally:
                torch.cuda.set_sync_debug_mode("error")

        return documented_read

    monkeypatch.setattr(torch.Tensor, "item", documented(torch.Tensor.item))
    monkeypatch.setattr(torch.Tensor, "tolist", documented(torch.Tensor.tolist))
    step(data.images[:64], data.labels[:64])  # warm-up: first-call set-up may sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        record = run_epoch(state, step, data, batch_size=64, epochs=1, diagnostics=diagnostics)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert record.loss > 0
    steps = -(-len(data) // 64)
    # The loss every SYNC_EVERY steps and at the end, then loss sum, correct and skipped.
    if diagnostics is None:
        assert reads == ["item"] * (steps // SYNC_EVERY + 1 + 3)
    else:  # and at the epoch's end only: the figures, the loss scales and the histogram's counts and scale
        assert reads[: steps // SYNC_EVERY + 1 + 3] == ["item"] * (steps // SYNC_EVERY + 1 + 3)
        assert record.diagnostics.figures["sampled_steps"] == steps // diagnose_every
        assert reads[steps // SYNC_EVERY + 4 :] == ["tolist", "tolist", "tolist", "item"]
