"""Each numerics measurement on hand-made tensors whose answers are known."""

from __future__ import annotations

import torch
from test_training import toy_split

from mnist_precision.base.params import TrainParams
from mnist_precision.core.diagnostics import (
    Diagnostics,
    EpochNumerics,
    Histogram,
    histogram_rows,
    log2_histogram,
    lost_update_counts,
    underflow_counts,
)
from mnist_precision.core.model import build_mlp
from mnist_precision.core.precision import PrecisionPolicy
from mnist_precision.core.training import train

SUBNORMAL, NORMAL = 2.0**-24, 2.0**-14


def test_underflow_counts_values_just_above_and_below_fp16s_limits():
    values = torch.tensor(
        [0.0, SUBNORMAL * 0.99, SUBNORMAL, SUBNORMAL * 1.01, NORMAL * 0.99, NORMAL, -NORMAL * 1.01, 1.0]
    )
    # Non-zero: 7. Below 2^-24: one. Below 2^-14: the four values under it (the sign does not matter).
    assert underflow_counts(values).tolist() == [7, 1, 4]
    # A loss scale of 2^10 lifts everything above 2^-24, and only 0.99 * 2^-24 stays below 2^-14 ...
    assert underflow_counts(values, 2.0**10).tolist() == [7, 0, 1]
    # ... and zeros in fp32 are never counted as underflow, whatever the scale.
    assert underflow_counts(torch.zeros(5), 2.0**30).tolist() == [0, 0, 0]


def test_what_is_counted_as_flushed_is_what_fp16_makes_zero():
    values = torch.tensor([SUBNORMAL * 0.49, SUBNORMAL * 0.25, SUBNORMAL * 2, NORMAL])
    counts = underflow_counts(values)
    assert int((values.half() == 0).sum()) == 2 == counts[1]


def test_an_update_of_half_an_ulp_is_lost_in_fp16_and_kept_in_fp32():
    def step(dtype):
        weights = torch.nn.Parameter(torch.ones(3, dtype=dtype))
        # lr 1: the updates are +2^-11 (half an fp16 ulp at 1.0: a tie, rounded to even, 1.0),
        # +2^-9 (two ulps) and 0 (no update meant).
        weights.grad = torch.tensor([-(2.0**-11), -(2.0**-9), 0.0], dtype=dtype)
        before = weights.detach().clone()
        torch.optim.SGD([weights], lr=1.0, fused=True).step()
        return lost_update_counts(before, weights.detach(), weights.grad).tolist()

    assert step(torch.float16) == [2, 1]
    assert step(torch.float32) == [2, 0]
    assert step(torch.bfloat16) == [2, 2]  # bf16's ulp at 1.0 is 2^-7: both are lost


def test_the_histogram_bins_by_power_of_two():
    values = torch.tensor([2.0**-30, 1.5 * 2.0**-30, 2.0**-3, 0.0, 2.0**-100, 2.0**40])
    counts = log2_histogram(values)
    low = -64
    assert counts[-30 - low] == 2 and counts[-3 - low] == 1
    assert counts[0] == 1 and counts[-1] == 1  # out of range: in the end bins
    assert int(counts.sum()) == 5  # the zero is not a magnitude


def test_measuring_changes_nothing_in_the_run():
    def final_weights(every: int, precision: str):
        torch.manual_seed(0)
        model = build_mlp([32])
        result = train(
            model,
            toy_split(),
            PrecisionPolicy(precision, "cpu"),
            TrainParams(epochs=2, batch_size=64, lr=0.01, hidden=(32,), compile=False),
            0,
            diagnose_every=every,
        )
        return [p.detach().clone() for p in model.parameters()], result

    for precision in ("fp32", "fp16"):
        plain, _ = final_weights(0, precision)
        measured, result = final_weights(3, precision)
        assert all(torch.equal(a, b) for a, b in zip(plain, measured, strict=True))
        record = result.epochs[0].diagnostics
        assert record.figures["sampled_steps"] == 2  # steps 3 and 6 of the 8 in epoch 1
        assert [step for step, _ in record.loss_scales] == [3, 6]
        assert {scale for _, scale in record.loss_scales} == ({65536.0} if precision == "fp16" else {1.0})
        assert set(record.figures) >= {
            "underflow_act_grads_flushed",
            "underflow_act_grads_scaled_subnormal",
            "underflow_weights_subnormal",
            "lost_updates",
            "range_act_max_layer0",
            "range_grad_max_layer2",
        }


def test_a_skipped_step_loses_no_update():
    model = build_mlp([8])
    diagnostics = Diagnostics(build_mlp([8]), every_steps=1)
    before = Diagnostics.snapshot(model)
    for parameter in model.parameters():
        parameter.grad = torch.ones_like(parameter)  # the weights did not move: a skipped step
    images, labels = torch.randn(4, 784), torch.randint(0, 10, (4,))
    diagnostics.sample(model, before, images, labels, 1, torch.tensor(8.0), torch.tensor(True))
    assert diagnostics.end_epoch().figures["lost_updates"] == 0.0
    diagnostics.sample(model, before, images, labels, 2, torch.tensor(8.0), torch.tensor(False))
    assert diagnostics.end_epoch().figures["lost_updates"] == 1.0


def test_the_range_is_the_largest_magnitude_and_its_scaled_gradient():
    model = build_mlp([4])
    diagnostics = Diagnostics(build_mlp([4]), every_steps=1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(0.5)
    images = torch.full((2, 784), 1.0)
    diagnostics.sample(model, Diagnostics.snapshot(model), images, torch.tensor([0, 1]), 1, torch.tensor(4.0), None)
    figures = diagnostics.end_epoch().figures
    assert figures["range_act_max_layer0"] == 784 * 0.5 + 0.5  # every unit of the first layer
    # Equal logits: the softmax is uniform, and the mean loss's gradient for the true class is (0.1 - 1) / 2.
    assert abs(figures["range_grad_max_layer2"] - 4.0 * 0.45) < 1e-6


def test_the_histogram_rows_are_shares_of_the_last_sampled_step():
    records = {
        1: EpochNumerics(histogram=Histogram(first_exponent=-2, counts=[1, 0, 3], loss_scale=1.0)),
        2: EpochNumerics(histogram=Histogram(first_exponent=-2, counts=[0, 2, 2], loss_scale=8.0)),
        3: EpochNumerics(),
    }
    assert histogram_rows(records) == [
        {"log2_magnitude": -2, "share": 0.0, "loss_scale": 8.0},
        {"log2_magnitude": -1, "share": 0.5, "loss_scale": 8.0},
        {"log2_magnitude": 0, "share": 0.5, "loss_scale": 8.0},
    ]
