"""The precision policy: what autocast computes in, and when a GradScaler runs."""

from __future__ import annotations

import pytest
import torch

from mnist_precision.model import build_mlp
from mnist_precision.precision import PrecisionPolicy, use_true_fp32


@pytest.mark.parametrize("name, dtype", [("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_activations_are_computed_in_the_policy_dtype(name, dtype):
    model = build_mlp([32])
    with PrecisionPolicy(name, "cpu").autocast():
        assert torch.is_autocast_enabled("cpu") == (name != "fp32")
        logits = model(torch.randn(4, 784))
    assert logits.dtype == dtype
    # Mixed precision, not pure half: the weights stay fp32.
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("name, enabled", [("fp32", False), ("fp16", True), ("bf16", False)])
def test_grad_scaler_only_for_fp16(name, enabled):
    scaler = PrecisionPolicy(name, "cpu").grad_scaler()
    assert scaler.is_enabled() == enabled


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="fp32, fp16, bf16"):
        PrecisionPolicy("fp8", "cpu")


def test_true_fp32_turns_tf32_off():
    use_true_fp32()
    assert torch.get_float32_matmul_precision() == "highest"
    assert not torch.backends.cuda.matmul.allow_tf32
    assert not torch.backends.cudnn.allow_tf32


def test_reference_network_shape():
    model = build_mlp([256])
    assert [tuple(p.shape) for p in model.parameters()] == [(256, 784), (256,), (10, 256), (10,)]
