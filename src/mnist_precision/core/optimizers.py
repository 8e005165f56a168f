"""The optimizer a run trains with: the tutorial's SGD or AdamW, as torch.optim builds them.

Which implementation: SGD is fused (on the CPU and CUDA), so that the
GradScaler hands it the loss scale and the overflow flag as tensors. AdamW is
fused where the weights are fp32 and foreach where they are half (the
"-true" precisions): the fused kernel computes in fp32 whatever the weights'
dtype, foreach computes in the weights' own dtype, which is what "the
optimizer in half" means (and what a user of pure half precision meets: its
eps of 1e-8 is 0 in float16). The "-sr" precisions step an fp32 optimizer
and round its result stochastically (`rounding.StochasticRounding`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from mnist_precision.base.params import Params
from mnist_precision.core.precision import PrecisionPolicy
from mnist_precision.core.rounding import StochasticRounding, rounding_generator


@dataclass(frozen=True)
class OptimizerChoice:
    """`optimizer` and AdamW's hyperparameters (PyTorch's defaults)."""

    name: str = "sgd"  # sgd or adamw
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    @classmethod
    def of(cls, params: Params) -> OptimizerChoice:
        return cls(params.optimizer, params.train.weight_decay, params.train.betas, params.train.eps)


SGD = OptimizerChoice()


def torch_optimizer(parameters, lr: float, choice: OptimizerChoice = SGD) -> torch.optim.Optimizer:
    """The torch.optim optimizer of `choice` over `parameters` (a list of tensors)."""
    parameters = list(parameters)
    if choice.name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, fused=True)
    half = parameters[0].dtype != torch.float32
    return torch.optim.AdamW(
        parameters,
        lr=lr,
        betas=choice.betas,
        eps=choice.eps,
        weight_decay=choice.weight_decay,
        **({"foreach": True} if half else {"fused": True}),
    )


def make_optimizer(model: nn.Module, policy: PrecisionPolicy, lr: float, choice: OptimizerChoice = SGD, seed: int = 0):
    """The run's optimizer over `model` (already converted by `policy`): the
    torch.optim one, or for stochastic rounding that one stepping fp32 copies
    (the policy is required: without it a "-sr" run would round to nearest)."""
    if policy.precision.stochastic_rounding:
        device = next(model.parameters()).device
        return StochasticRounding(
            model.parameters(), partial(torch_optimizer, lr=lr, choice=choice), rounding_generator(device, seed)
        )
    return torch_optimizer(model.parameters(), lr, choice)


def torch_state(optimizer) -> dict:
    """The torch.optim state_dict of the run's optimizer (under stochastic rounding, the fp32 one's)."""
    inner = optimizer.optimizer if isinstance(optimizer, StochasticRounding) else optimizer
    return inner.state_dict()


def stored_eps(choice: OptimizerChoice, dtype: torch.dtype) -> float:
    """AdamW's eps as a tensor of `dtype` holds it."""
    return torch.tensor(choice.eps, dtype=dtype).item()


def eps_warning(choice: OptimizerChoice, policy: PrecisionPolicy) -> str | None:
    """Why AdamW's eps does nothing in this run, or None: foreach AdamW adds it
    in the weights' dtype, and float16 turns any eps below 2^-25 into 0."""
    dtype = policy.param_dtype
    if choice.name != "adamw" or dtype == torch.float32 or policy.precision.stochastic_rounding:
        return None
    became = stored_eps(choice, dtype)
    if became != 0.0:
        return None
    survives = torch.finfo(dtype).smallest_normal
    return (
        f"train.eps={choice.eps:g} is {became} in {policy.precision.param_dtype}, so AdamW divides by the root "
        f"of its second moment alone, which is 0 wherever that underflowed: set train.eps to at least "
        f"{survives:.3g} ({policy.precision.param_dtype}'s smallest normal), or use a mixed precision, "
        f"whose optimizer is fp32"
    )


def flushed_second_moments(optimizer) -> float:
    """The share of weights whose AdamW first moment is non-zero but whose
    second moment, as stored, is 0: their update is m / eps, unbounded by the
    gradients' history. 0 without AdamW."""
    state = torch_state(optimizer)["state"].values()
    pairs = [(s["exp_avg"], s["exp_avg_sq"]) for s in state if "exp_avg_sq" in s]
    moving = sum(int((m != 0).sum()) for m, _ in pairs)
    flushed = sum(int(((m != 0) & (v == 0)).sum()) for m, v in pairs)
    return flushed / moving if moving else 0.0
