"""The physics of each precision, on the real MNIST: one epoch each, measured by the diagnostics."""

from __future__ import annotations

import functools

import pytest
import torch

from mnist_precision.base.params import TrainParams
from mnist_precision.core.data import load_split
from mnist_precision.core.evaluation import evaluate
from mnist_precision.core.model import build_mlp
from mnist_precision.core.optimizers import SGD, OptimizerChoice
from mnist_precision.core.precision import PrecisionPolicy
from mnist_precision.core.training import DivergenceError, TrainResult, train

pytestmark = pytest.mark.slow  # real MNIST epochs

EVERY_STEPS = 50  # 18 sampled steps in the epoch's 938


@pytest.fixture(scope="module")
def one_epoch(mnist_data):
    data, test = load_split(mnist_data, "train"), load_split(mnist_data, "test")

    @functools.cache
    def run(
        precision: str, loss_scale: str = "dynamic", optimizer: OptimizerChoice = SGD, lr: float = 0.01
    ) -> TrainResult:
        torch.manual_seed(0)
        model = build_mlp([256])
        result = train(
            model,
            data,
            PrecisionPolicy(precision, "cpu", loss_scale),
            TrainParams(epochs=1, batch_size=64, lr=lr, hidden=(256,), compile=False),
            0,
            diagnose_every=EVERY_STEPS,
            optimizer=optimizer,
        )
        result.test_accuracy = evaluate(model, test, PrecisionPolicy(precision, "cpu"), 1000).accuracy
        return result

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
    print(
        "activation gradients below 2^-14 as the run holds them: none",
        unscaled["underflow_act_grads_scaled_subnormal"],
        "dynamic",
        scaled["underflow_act_grads_scaled_subnormal"],
    )
    for bound in ("flushed", "subnormal"):
        assert unscaled[f"underflow_act_grads_scaled_{bound}"] >= scaled[f"underflow_act_grads_scaled_{bound}"]
    # The scale is what moves them: without it, the values as held are the unscaled ones.
    assert unscaled["underflow_act_grads_scaled_subnormal"] == unscaled["underflow_act_grads_subnormal"]
    assert scaled["underflow_act_grads_scaled_subnormal"] < scaled["underflow_act_grads_subnormal"] / 10


def test_every_precision_that_runs_on_the_cpu_learns_in_one_epoch(one_epoch):
    for name in ("fp32", "fp16", "bf16", "fp16-true", "bf16-true", "fp8", "bf16-true-sr"):  # fp8: torchao's emulation
        assert one_epoch(name).epochs[-1].accuracy > 0.8, name


def test_stochastic_rounding_applies_the_updates_that_round_to_nearest_loses(one_epoch):
    nearest, stochastic, fp32 = (one_epoch(name) for name in ("bf16-true", "bf16-true-sr", "fp32"))
    bias = {name: figures(one_epoch(name))["update_bias"] for name in ("fp32", "bf16-true", "bf16-true-sr")}
    accuracy = {name: one_epoch(name).test_accuracy for name in ("fp32", "bf16-true", "bf16-true-sr")}
    print("update bias:", bias, "test accuracy:", accuracy)
    assert bias["fp32"] == 0.0
    assert bias["bf16-true"] < -0.3  # round-to-nearest: a large share of each step's update lost
    assert abs(bias["bf16-true-sr"]) < 0.02  # stochastic rounding: applied on average
    assert fp32.test_accuracy - stochastic.test_accuracy <= fp32.test_accuracy - nearest.test_accuracy


ADAMW = OptimizerChoice("adamw")


def test_fp16_true_adamw_loses_its_second_moment_and_with_the_default_eps_diverges_saying_so(one_epoch):
    survivor = OptimizerChoice("adamw", eps=1e-4)  # the value the warning names: float16 holds it
    fp16, fp32 = one_epoch("fp16-true", optimizer=survivor, lr=1e-3), one_epoch("fp32", optimizer=ADAMW, lr=1e-3)
    flushed = {"fp16-true": figures(fp16)["second_moment_flushed"], "fp32": figures(fp32)["second_moment_flushed"]}
    print("AdamW second moment flushed to zero:", flushed, "test accuracy:", fp16.test_accuracy, fp32.test_accuracy)
    assert flushed["fp32"] == 0.0 and flushed["fp16-true"] > 0.01
    assert figures(fp16)["adamw_eps_survives"] == 1.0 and fp16.test_accuracy > 0.8
    with pytest.raises(DivergenceError, match="AdamW's eps flushed to zero"):
        one_epoch("fp16-true", optimizer=ADAMW, lr=1e-3)
    # Stochastic rounding computes the update in fp32 (eps survives) but stores the second moment in float16.
    with pytest.raises(DivergenceError, match="AdamW's second moment underflowed"):
        one_epoch("fp16-true-sr", optimizer=ADAMW, lr=1e-3)
