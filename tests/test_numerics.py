"""The physics of each precision, on the real MNIST: one epoch each, measured by the diagnostics."""

from __future__ import annotations

import functools

import pytest
import torch

from mnist_precision.data import load_split
from mnist_precision.model import build_mlp
from mnist_precision.params import TrainParams
from mnist_precision.precision import PrecisionPolicy
from mnist_precision.training import TrainResult, train

pytestmark = pytest.mark.slow  # real MNIST epochs

EVERY_STEPS = 50  # 18 sampled steps in the epoch's 938


@pytest.fixture(scope="module")
def one_epoch(mnist_data):
    data = load_split(mnist_data, "train")

    @functools.cache
    def run(precision: str, loss_scale: str = "dynamic") -> TrainResult:
        torch.manual_seed(0)
        return train(build_mlp([256]), data, PrecisionPolicy(precision, "cpu", loss_scale),
                     TrainParams(1, 64, 0.01, (256,), False), 0, diagnose_every=EVERY_STEPS)

    return run


def figures(result: TrainResult) -> dict:
    return result.epochs[-1].diagnostics.figures


def test_the_narrower_the_stored_weights_the_more_updates_are_lost(one_epoch):
    lost = {name: figures(one_epoch(name))["lost_updates"] for name in ("fp32", "fp16-true", "bf16-true")}
    print("share of non-zero updates lost:", lost)
    assert lost["bf16-true"] > lost["fp16-true"] > lost["fp32"]
    # Mixed precision keeps fp32 master weights: its updates are as safe as fp32's.
    assert figures(one_epoch("fp16"))["lost_updates"] <= 10 * lost["fp32"] + 1e-4


def test_without_a_loss_scale_fp16s_activation_gradients_underflow_at_least_as_often(one_epoch):
    unscaled = figures(one_epoch("fp16", "none"))
    scaled = figures(one_epoch("fp16", "dynamic"))
    print("activation gradients below 2^-14 as the run holds them: none",
          unscaled["underflow_act_grads_scaled_subnormal"], "dynamic", scaled["underflow_act_grads_scaled_subnormal"])
    for bound in ("flushed", "subnormal"):
        assert unscaled[f"underflow_act_grads_scaled_{bound}"] >= scaled[f"underflow_act_grads_scaled_{bound}"]
    # The scale is what moves them: without it, the values as held are the unscaled ones.
    assert unscaled["underflow_act_grads_scaled_subnormal"] == unscaled["underflow_act_grads_subnormal"]
    assert scaled["underflow_act_grads_scaled_subnormal"] < scaled["underflow_act_grads_subnormal"] / 10


def test_every_precision_that_runs_on_the_cpu_learns_in_one_epoch(one_epoch):
    for name in ("fp32", "fp16", "bf16", "fp16-true", "bf16-true", "fp8"):  # fp8: torchao's emulation
        assert one_epoch(name).epochs[-1].accuracy > 0.8, name
