"""Every use of a private part of PyTorch, fenced in one module (MLflow's: tracking/internals.py).

Each one is here because the public API has no equivalent, and each has a
contract test (tests/test_internals.py) that fails, naming the attribute and
the installed version, on a release that changes it. pyproject.toml pins
`torch<2.15` for the same reason: a release the contract tests have not
passed on is not installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # at run time the module needs neither: `mnist-precision runs` imports no torch
    import torch

# torch.amp.GradScaler keeps its loss scale as a device tensor in `_scale`;
# the public `get_scale()` returns a float, which waits for the GPU.
SCALER_SCALE = "_scale"
# The overflow flags of the step just taken, which `update()` then clears;
# no public method says whether `step()` skipped the update.
SCALER_FOUND_INF = "_found_inf_per_device"
# The logger of torch's (private) pytree module, which torchao's import warns through.
PYTREE_LOGGER = "torch.utils._pytree"


def scaler_scale(scaler: torch.amp.GradScaler) -> torch.Tensor:
    """A copy of the loss scale as a 0-dim device tensor (no wait)."""
    return getattr(scaler, SCALER_SCALE).clone()


def scaler_skipped(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """Whether `scaler.step(optimizer)` just skipped the update, as a device tensor (no wait)."""
    return sum(getattr(scaler, SCALER_FOUND_INF)(optimizer).values()) > 0
