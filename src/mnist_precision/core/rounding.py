"""Stochastic rounding of fp32 values to a half dtype, and the optimizer of the "-sr" precisions.

Rounded to the nearest half value, an update smaller than half the spacing
of the weight it is added to is lost every time (the lost updates of
`fp16-true` and `bf16-true`). Rounded up with probability equal to the
distance from the lower neighbour (in units of the spacing), and down
otherwise, it is applied on average: the expected stored value is the exact
one (Zamirai et al., "Revisiting BFloat16 Training", 2020).

Why the project's own and not a library's: torch.optim has none (PyTorch
issue 120376). torchao's full-precision AdamW with `bf16_stochastic_round` is
private (`torchao.optim._AdamW`), rounds bfloat16 only (not float16),
compiles each parameter's step with torch.compile (a C++ toolchain and
compile time on every run's first step) and draws from torch's global random
stream; and no library offers it for SGD. The function below
rounds to either half dtype from a generator the run seeds and checkpoints,
and `StochasticRounding` puts it under any torch.optim optimizer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable

import torch


def rounding_generator(device: torch.device, seed: int) -> torch.Generator:
    """The run's stochastic-rounding stream, seeded from its seed.

    Not with the seed itself: the weights' initialisation and the shuffling
    draw from streams seeded with it, and draws that repeat the ones that set
    a weight round that weight with a bias. A hash of the seed gives a stream of its
    own (the CPU generator reads only the low 32 bits of a seed, so an offset
    of 2^32 would not)."""
    digest = hashlib.sha256(f"mnist-precision stochastic rounding {seed}".encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def stochastic_round(exact: torch.Tensor, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """`exact` (fp32) in `dtype`, rounded to the neighbour above with probability
    (exact - below) / (above - below) and to the one below otherwise.

    A value `dtype` represents comes back as itself; so do infinities, NaN and
    values beyond `dtype`'s range (infinite, as round-to-nearest makes them)."""
    nearest = exact.to(dtype)
    widened = nearest.float()
    other = torch.nextafter(nearest, torch.where(widened > exact, -torch.inf, torch.inf).to(dtype))
    below, above = torch.minimum(nearest, other).float(), torch.maximum(nearest, other).float()
    # Both differences are exact in fp32: a half dtype's neighbours are a power of two apart.
    p_up = (exact - below) / (above - below)
    draw = torch.rand(exact.shape, generator=generator, device=exact.device)
    rounded = torch.where(draw < p_up, above, below).to(dtype)
    return torch.where((widened == exact) | nearest.isinf() | exact.isnan(), nearest, rounded)


class StochasticRounding:
    """An optimizer of half weights whose update is computed in fp32 and stored stochastically rounded.

    Each step copies the half weights and gradients into fp32 (exactly), lets
    the torch.optim optimizer built by `make` step the copies, and rounds the
    new weights back stochastically. The optimizer's state (momentum, AdamW's
    moments) is rounded to the weights' dtype after every step, to the nearest
    value, so it holds what a half-precision optimizer would hold (torchao's
    low-bit AdamW does the same); it sits in fp32 tensors because torch.optim
    keeps state in its parameters' dtype.
    """

    def __init__(
        self,
        parameters: Iterable[torch.nn.Parameter],
        make: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
        generator: torch.Generator,
    ):
        self.parameters = list(parameters)
        self.work = [torch.zeros_like(p, dtype=torch.float32) for p in self.parameters]
        self.optimizer = make(self.work)
        self.generator = generator

    def zero_grad(self, set_to_none: bool = True) -> None:
        for parameter in self.parameters:
            parameter.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for parameter, work in zip(self.parameters, self.work, strict=True):
            work.copy_(parameter)
            work.grad = None if parameter.grad is None else parameter.grad.float()
        self.optimizer.step()
        for parameter, work in zip(self.parameters, self.work, strict=True):
            parameter.copy_(stochastic_round(work, parameter.dtype, self.generator))
            for value in self.optimizer.state[work].values():
                if torch.is_tensor(value) and value.shape == work.shape:
                    value.copy_(value.to(parameter.dtype))

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
