"""Stochastic rounding and AdamW in half precision, on hand-made tensors with known answers."""

from __future__ import annotations

import math

import pytest
import torch
from test_training import recipe, toy_split

from mnist_precision.base import names
from mnist_precision.base.params import load as load_params
from mnist_precision.core.checkpoint import CheckpointError, fingerprint, load, save
from mnist_precision.core.model import build_mlp
from mnist_precision.core.optimizers import OptimizerChoice, eps_warning, make_optimizer, torch_optimizer
from mnist_precision.core.precision import PrecisionPolicy
from mnist_precision.core.rounding import StochasticRounding, rounding_generator, stochastic_round
from mnist_precision.core.training import (
    DivergenceError,
    Progress,
    SavedState,
    TrainStep,
    make_diagnostics,
    numeric_causes,
    train,
)

from helpers import REPO_ROOT

HALF = (torch.float16, torch.bfloat16)
DRAWS = 100_000
ADAMW = OptimizerChoice("adamw")


def spacing_above(value: float, dtype: torch.dtype) -> float:
    """The distance from `value` (representable in `dtype`) to the next value of `dtype` above it."""
    x = torch.tensor(value, dtype=dtype)
    return (torch.nextafter(x, torch.tensor(math.inf, dtype=dtype)).float() - x.float()).item()


@pytest.mark.parametrize("dtype", HALF)
def test_a_representable_value_rounds_to_itself(dtype):
    values = torch.tensor(
        [
            0.0,
            -0.0,
            1.0,
            -2.5,
            2.0**-20,
            torch.finfo(dtype).max,
            torch.finfo(dtype).tiny,
            2.0**-24 if dtype == torch.float16 else 2.0**-133,
            math.inf,
            -math.inf,
        ]
    )
    rounded = stochastic_round(values.repeat(1000), dtype, torch.Generator().manual_seed(0))
    assert torch.equal(rounded.float(), values.to(dtype).float().repeat(1000))
    assert stochastic_round(torch.tensor([math.nan]), dtype, torch.Generator()).isnan().all()


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("value", [1.0 + 1e-3, -3.3e-3, 1e-6, 12345.678])
def test_the_mean_of_many_draws_is_the_exact_value(dtype, value):
    exact = torch.tensor(value, dtype=torch.float32)
    rounded = stochastic_round(exact.repeat(DRAWS), dtype, torch.Generator().manual_seed(0)).float()
    below = exact.to(dtype).float() if exact.to(dtype).float() <= exact else None
    low = below if below is not None else torch.nextafter(exact.to(dtype), torch.tensor(-math.inf, dtype=dtype)).float()
    spacing = spacing_above(low.item(), dtype)
    p_up = (exact - low).item() / spacing
    standard_error = spacing * math.sqrt(p_up * (1 - p_up) / DRAWS)
    assert set(rounded.unique().tolist()) <= {low.item(), low.item() + spacing}
    assert abs(rounded.double().mean().item() - value) < 3 * standard_error + 1e-12


@pytest.mark.parametrize("dtype", HALF)
def test_an_update_of_a_quarter_ulp_is_applied_a_quarter_of_the_time_and_never_to_the_nearest(dtype):
    weights = torch.ones(DRAWS, dtype=dtype)
    update = spacing_above(1.0, dtype) / 4
    exact = weights.float() + update
    stochastic = stochastic_round(exact, dtype, torch.Generator().manual_seed(0))
    applied = (stochastic != weights).float().mean().item()
    # Binomial(100,000, 1/4): standard deviation 0.00137; the bound is 4 of them.
    assert abs(applied - 0.25) < 0.0055
    assert torch.equal(exact.to(dtype), weights)  # round-to-nearest: every one lost


def test_adamws_default_eps_is_zero_in_float16_and_not_in_bfloat16():
    assert torch.tensor(1e-8, dtype=torch.float16).item() == 0.0
    assert torch.tensor(1e-8, dtype=torch.bfloat16).item() != 0.0


def test_the_rounding_stream_is_the_runs_seed_and_comes_back_from_its_state():
    exact = torch.full((1000,), 1.0 + 2.0**-10)
    first, second = rounding_generator(torch.device("cpu"), 7), rounding_generator(torch.device("cpu"), 7)
    assert torch.equal(stochastic_round(exact, torch.bfloat16, first), stochastic_round(exact, torch.bfloat16, second))
    state = first.get_state()
    drawn = stochastic_round(exact, torch.bfloat16, first)
    first.set_state(state)
    assert torch.equal(stochastic_round(exact, torch.bfloat16, first), drawn)
    other = stochastic_round(exact, torch.bfloat16, rounding_generator(torch.device("cpu"), 8))
    assert not torch.equal(other, drawn)
    # Not the stream the weights were initialised from with the same seed (that would bias the rounding).
    for seed in (0, 7):
        assert not torch.equal(
            torch.rand(100, generator=rounding_generator(torch.device("cpu"), seed)),
            torch.rand(100, generator=torch.Generator().manual_seed(seed)),
        )


def test_the_stochastic_rounding_optimizer_keeps_weights_and_state_in_half():
    weight = torch.nn.Parameter(torch.ones(DRAWS, dtype=torch.bfloat16))
    optimizer = StochasticRounding(
        [weight], lambda tensors: torch_optimizer(tensors, 1e-3, ADAMW), torch.Generator().manual_seed(0)
    )
    weight.grad = torch.full_like(weight, 1e-3)
    optimizer.step()
    assert weight.dtype == torch.bfloat16
    exact = 1.0 * (1 - 1e-3 * 1e-2) - 1e-3  # AdamW's first step: decay, then lr times the sign
    assert abs(weight.float().mean().item() - exact) < 3 * spacing_above(0.99, torch.bfloat16) / math.sqrt(DRAWS)
    for value in optimizer.optimizer.state[optimizer.work[0]].values():
        if value.shape == weight.shape:
            assert torch.equal(value, value.to(torch.bfloat16).float())  # held as bfloat16 holds it


def test_adamw_computes_in_half_for_true_half_and_in_fp32_elsewhere():
    half = torch_optimizer([torch.zeros(4, dtype=torch.float16, requires_grad=True)], 1e-3, ADAMW)
    single = torch_optimizer([torch.zeros(4, requires_grad=True)], 1e-3, ADAMW)
    assert half.defaults["foreach"] and not half.defaults["fused"]
    assert single.defaults["fused"]
    sgd = torch_optimizer([torch.zeros(4, requires_grad=True)], 1e-3)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["fused"]


def test_a_half_adamw_whose_eps_is_zero_is_named_with_a_value_that_survives():
    message = eps_warning(ADAMW, PrecisionPolicy("fp16-true", "cpu"))
    assert message.startswith("train.eps=1e-08 is 0.0 in float16")
    assert "6.1e-05" in message and "a mixed precision" in message
    assert eps_warning(ADAMW, PrecisionPolicy("bf16-true", "cpu")) is None
    assert eps_warning(ADAMW, PrecisionPolicy("fp16-true-sr", "cpu")) is None  # computed in fp32
    assert eps_warning(ADAMW, PrecisionPolicy("fp16", "cpu")) is None  # fp32 master weights
    assert eps_warning(OptimizerChoice("sgd"), PrecisionPolicy("fp16-true", "cpu")) is None
    assert eps_warning(OptimizerChoice("adamw", eps=1e-4), PrecisionPolicy("fp16-true", "cpu")) is None


def test_a_diverging_half_adamw_says_which_numeric_cause_the_diagnostics_saw():
    torch.manual_seed(0)
    with pytest.raises(DivergenceError) as error:
        train(
            build_mlp([32]),
            toy_split(),
            PrecisionPolicy("fp16-true", "cpu"),
            recipe(lr=1e-3),
            0,
            optimizer=ADAMW,
            diagnose_every=1,
        )
    message = str(error.value)
    assert "the numerics show AdamW's eps flushed to zero (train.eps=1e-08 is 0.0 in float16" in message
    assert "AdamW's second moment underflowed" in message and "lower train.lr" not in message


def test_a_second_moment_that_float16_flushes_is_named_as_the_cause():
    """Under stochastic rounding eps survives (the update is computed in fp32),
    but the second moment is stored in float16: a gradient of 1e-5 gives a
    first moment of 1e-6 (float16 holds it) and a second moment of 1e-13 (0)."""
    policy = PrecisionPolicy("fp16-true-sr", "cpu")
    model = policy.convert_module(torch.nn.Linear(4, 4))
    optimizer = make_optimizer(model, policy, 1e-3, ADAMW)
    for parameter in model.parameters():
        parameter.grad = torch.full_like(parameter, 1e-5)
    optimizer.step()
    [cause] = numeric_causes(policy, ADAMW, optimizer, diagnostics=None)
    assert cause.startswith(
        "AdamW's second moment underflowed (100.0% of the weights with a first moment have a "
        "second moment of 0 in float16, so their update is m / eps)"
    )
    assert "or a train.eps that bounds the update, such as 6.1e-05" in cause
    fp32 = PrecisionPolicy("fp32", "cpu")
    assert numeric_causes(fp32, ADAMW, make_optimizer(torch.nn.Linear(4, 4), fp32, 1e-3, ADAMW), None) == ()


def test_resuming_with_another_optimizer_is_refused_naming_both(tmp_path):
    params = load_params(REPO_ROOT / "params.yaml")
    path = tmp_path / "train.pt"
    state = SavedState(model={}, optimizer={}, precision={}, progress=Progress(epoch=1))
    save(path, state, fingerprint(params, torch.device("cpu")), "run")
    adamw = params.model_copy(update={"optimizer": "adamw"})
    with pytest.raises(CheckpointError, match="optimizer was 'sgd', params say 'adamw'"):
        load(path, fingerprint(adamw, torch.device("cpu")), epochs=5)


def figures_of_one_step(precision: str, optimizer: OptimizerChoice, lr: float = 1e-3) -> dict[str, float]:
    torch.manual_seed(0)
    model, policy = build_mlp([32]), PrecisionPolicy(precision, "cpu")
    policy.convert_module(model)
    run_optimizer = make_optimizer(model, policy, lr, optimizer)
    step = TrainStep(model, policy, run_optimizer)
    diagnostics = make_diagnostics(recipe(lr=lr), policy, optimizer, 1, torch.device("cpu"))
    split = toy_split(64)
    diagnostics.measure(step, model, split.images, split.labels, None, 1)
    return diagnostics.end_epoch().figures


def test_the_update_is_measured_against_fp32s():
    fp32 = figures_of_one_step("fp32", ADAMW)
    assert fp32[names.UPDATE_BIAS] == 0.0 and fp32[names.WEIGHT_DRIFT] == 0.0  # fp32 is its own shadow
    assert fp32[names.SECOND_MOMENT_FLUSHED] == 0.0 and fp32[names.ADAMW_EPS_SURVIVES] == 1.0
    nearest = figures_of_one_step("bf16-true", OptimizerChoice("sgd"), lr=1e-4)
    stochastic = figures_of_one_step("bf16-true-sr", OptimizerChoice("sgd"), lr=1e-4)
    assert nearest[names.UPDATE_BIAS] < -0.5  # most of SGD's small updates are lost to the nearest value
    assert abs(stochastic[names.UPDATE_BIAS]) < 0.05
    assert names.SECOND_MOMENT_FLUSHED not in nearest and names.ADAMW_EPS_SURVIVES not in nearest
    fp16 = figures_of_one_step("fp16-true", ADAMW)
    assert fp16[names.SECOND_MOMENT_FLUSHED] > 0.0 and fp16[names.ADAMW_EPS_SURVIVES] == 0.0
