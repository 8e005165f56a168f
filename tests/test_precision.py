"""The precision policy: what autocast computes in, when a GradScaler runs, and what it skips."""

from __future__ import annotations

import pytest
import torch

from mnist_precision.analysis.report import comparison
from mnist_precision.base import params, precision_table
from mnist_precision.base.precision_table import PRECISIONS
from mnist_precision.core.model import build_mlp
from mnist_precision.core.precision import PrecisionPolicy, fp8_kept_layers


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
    policy = PrecisionPolicy(name, "cpu")
    assert policy.scaler.is_enabled() == enabled
    assert (policy.scale() == 65536.0) if enabled else policy.scale() is None


@pytest.mark.parametrize("name, dtype", [("fp16-true", torch.float16), ("bf16-true", torch.bfloat16)])
def test_the_true_half_precisions_keep_everything_in_half(name, dtype):
    policy = PrecisionPolicy(name, "cpu")
    model = policy.convert_module(build_mlp([32]))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, fused=True)
    with policy.autocast():
        assert not torch.is_autocast_enabled("cpu")
        logits = model(policy.convert_input(torch.randn(4, 784)))
        loss = torch.nn.functional.cross_entropy(logits, torch.randint(0, 10, (4,)))
    policy.backward(loss)
    assert policy.optimizer_step(optimizer) is None  # no scaler
    assert logits.dtype == loss.dtype == dtype
    assert all(p.dtype == dtype and p.grad.dtype == dtype for p in model.parameters())  # no fp32 master copy


def test_a_fixed_loss_scale_skips_overflows_but_never_moves():
    policy = PrecisionPolicy("fp16", "cpu", loss_scale=1024)
    skipped, update = fp16_step(policy, lr=1e30)
    assert bool(skipped) and torch.count_nonzero(update) == 0
    assert policy.scale() == 1024.0  # a dynamic scaler would have halved it
    for _ in range(3):
        assert not bool(fp16_step(policy, lr=0.01)[0])
    assert policy.scale() == 1024.0


def test_no_loss_scale_is_fp16_autocast_without_a_scaler():
    policy = PrecisionPolicy("fp16", "cpu", loss_scale="none")
    assert not policy.scaler.is_enabled() and policy.scale() is None
    with policy.autocast():
        assert torch.get_autocast_dtype("cpu") == torch.float16


def test_a_loss_scale_elsewhere_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="loss_scale applies to fp16 only, not bf16: bf16's exponent range is fp32's"):
        PrecisionPolicy("bf16", "cpu", loss_scale=128)


@pytest.mark.parametrize("order", [("tf32", "fp32"), ("fp32", "tf32")])
def test_the_policys_numerics_switch_tf32_and_put_the_flags_back(order):
    def flags() -> tuple:
        return (
            torch.get_float32_matmul_precision(),
            torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32,
        )

    before = flags()
    policies = [PrecisionPolicy(name, "cuda" if name == "tf32" else "cpu") for name in order]
    assert flags() == before  # building a policy changes nothing
    for policy in policies:
        with policy.numerics():
            expected = ("high", True, True) if policy.name == "tf32" else ("highest", False, False)
            assert flags() == expected
        assert flags() == before
    torch.set_float32_matmul_precision("high")  # a user's own setting survives a stage's block
    with PrecisionPolicy("fp32", "cpu").numerics():
        assert torch.get_float32_matmul_precision() == "highest"
    assert torch.get_float32_matmul_precision() == "high"
    torch.set_float32_matmul_precision(before[0])


def test_fp8_converts_the_linear_layers_that_fit_and_keeps_the_others():
    model = build_mlp([256, 100])  # 784x256 fits; 256x100 and 100x10 are not multiples of 16
    assert fp8_kept_layers(model) == ["2", "4"]
    PrecisionPolicy("fp8", "cpu").convert_module(model)
    assert [type(layer).__name__ for layer in model] == ["Float8Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert model[0].config.emulate  # no float8 matmul on the CPU: torchao's emulation


def test_unknown_precision_is_refused():
    with pytest.raises(
        ValueError, match="fp32, fp16, bf16, fp16-true, bf16-true, fp16-true-sr, bf16-true-sr, tf32, fp8"
    ):
        PrecisionPolicy("fp64", "cpu")


def test_the_precisions_are_listed_once():
    assert precision_table.NAMES == tuple(PRECISIONS)
    assert params.Params.model_fields["precision"].metadata[-1].accepts == ", ".join(precision_table.NAMES)
    assert comparison.NAMES is precision_table.NAMES and comparison.BASELINE == precision_table.BASELINE


def fp16_step(policy: PrecisionPolicy, lr: float) -> tuple[torch.Tensor | None, torch.Tensor]:
    torch.manual_seed(0)
    model = build_mlp([32])
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, fused=True)
    with policy.autocast():
        loss = torch.nn.functional.cross_entropy(model(torch.randn(8, 784)), torch.randint(0, 10, (8,)))
    policy.backward(loss * lr)  # a huge lr makes the gradients overflow fp16
    before = model[0].weight.detach().clone()
    return policy.optimizer_step(optimizer), before - model[0].weight.detach()


def test_an_overflowing_fp16_step_is_skipped_and_reported_as_a_tensor():
    policy = PrecisionPolicy("fp16", "cpu")
    skipped, update = fp16_step(policy, lr=1e30)
    assert isinstance(skipped, torch.Tensor) and bool(skipped)
    assert torch.count_nonzero(update) == 0  # the weights did not move
    assert policy.scale() == 32768.0  # the scaler backed off
    skipped, update = fp16_step(PrecisionPolicy("fp16", "cpu"), lr=0.01)
    assert not bool(skipped) and torch.count_nonzero(update) > 0
    assert fp16_step(PrecisionPolicy("bf16", "cpu"), lr=0.01)[0] is None


def test_the_policy_state_round_trips():
    policy = PrecisionPolicy("fp16", "cpu")
    fp16_step(policy, lr=1e30)
    again = PrecisionPolicy("fp16", "cpu")
    again.load_state_dict(policy.state_dict())
    assert again.scale() == policy.scale() == 32768.0


def test_reference_network_shape():
    model = build_mlp([256])
    assert [tuple(p.shape) for p in model.parameters()] == [(256, 784), (256,), (10, 256), (10,)]


def test_a_precision_without_native_support_on_this_cpu_is_named(monkeypatch):
    from mnist_precision.core import device

    cpu = torch.device("cpu")
    monkeypatch.setattr(device, "cpu_features", lambda: ("avx512f", "avx512_bf16"))  # an AMD EPYC of this project
    assert (
        device.missing_native_support(PRECISIONS["fp16"].native_on_cpu, cpu)
        == "this CPU has none of avx512_fp16, amx_fp16"
    )
    assert device.missing_native_support(PRECISIONS["bf16"].native_on_cpu, cpu) is None
    assert device.missing_native_support(PRECISIONS["fp32"].native_on_cpu, cpu) is None
    monkeypatch.setattr(device, "cpu_features", lambda: ("avx512f", "amx_tile", "amx_bf16", "avx512_fp16"))
    assert device.missing_native_support(PRECISIONS["fp16"].native_on_cpu, cpu) is None
    assert device.capability_params(cpu)["cpu_features"] == "avx512f,amx_tile,amx_bf16,avx512_fp16"
