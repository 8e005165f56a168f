"""Timing the grid: each variant's training step against fp32's, interleaved, within a budget.

A cell is one (precision, mode, hidden width, batch size). fp32 and the
variant take turns (fp32's steps, the variant's steps, again, five times), so
that a shared machine's drift falls on both; the throughput ratio of each
turn is one sample of the interval. The budget is shared out as the grid
goes, smallest cells first: a cell too slow for its share is timed once, and
one whose single step (estimated from a smaller cell of the same variant)
would not fit in what is left is not timed at all. Both are marked.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from mnist_precision.analysis.crossover.record import Cell
from mnist_precision.analysis.crossover.timing import Clock, training_flops_per_sample
from mnist_precision.analysis.stats import ratio_of_means
from mnist_precision.core.model import build_mlp
from mnist_precision.core.optimizers import make_optimizer
from mnist_precision.core.precision import PrecisionPolicy
from mnist_precision.core.training import TrainStep

REPEATS = 5  # turns of fp32 and the variant in a timed cell
TIMED, ONCE = "timed", "timed once"


def flops(cell: Cell) -> int:
    return training_flops_per_sample((cell.width,)) * cell.batch


def make_step(precision: str, width: int, batch: int, device: torch.device, compile: bool) -> Callable[[], object]:
    """One training step (forward, backward, optimizer) of a `width`-wide
    network on a batch already on the device: the train stage's own step."""
    torch.manual_seed(0)
    policy = PrecisionPolicy(precision, device.type)
    model = policy.convert_module(build_mlp((width,)).to(device))
    step = TrainStep(model, policy, make_optimizer(model, policy, 0.01), compile=compile)
    images, labels = torch.randn(batch, 28 * 28, device=device), torch.randint(0, 10, (batch,), device=device)

    def run():
        with policy.numerics():  # TF32 for tf32's step only
            step(images, labels)

    return run


def repeat(step: Callable[[], object], n: int) -> Callable[[], None]:
    def run():
        for _ in range(n):
            step()

    return run


def one_step(step: Callable[[], object], clock: Clock) -> float:
    """A step's time: the least of three where a step is short, since a shared
    machine's hiccup would otherwise decide how the cell is timed."""
    seconds = clock.time(step)
    return seconds if seconds > 0.1 else min(seconds, clock.time(step), clock.time(step))


def time_cell(cell: Cell, device: torch.device, clock: Clock, budget_s: float, estimate_s: float | None) -> Cell:
    """Time `cell` in about `budget_s`; `estimate_s` is a guess of one variant step (None: no guess)."""
    if budget_s <= 0:
        cell.note = "the budget was spent before this cell"
        return cell
    if estimate_s is not None and estimate_s > budget_s:
        cell.note = f"one step would take about {estimate_s:.1f} s (scaled from a smaller cell), over its budget"
        return cell
    compile = cell.mode == "compiled"
    base = make_step("fp32", cell.width, cell.batch, device, compile)
    variant = make_step(cell.precision, cell.width, cell.batch, device, compile)
    warmup = 3 if compile else 1  # compiled steps record their CUDA graphs in the first few
    clock.time(repeat(base, warmup))
    first = clock.time(repeat(variant, warmup)) / warmup
    base_s = one_step(base, clock)
    # A step of seconds is its own measurement (a slow path has nothing to warm
    # up); a short first step may hold one-time set-up, so others are timed.
    variant_s = first if first > max(1.0, budget_s / 4) else one_step(variant, clock)
    if (base_s + variant_s) * REPEATS * 2 > budget_s:  # no room for turns: this one measurement
        cell.status, cell.steps, cell.ratio = ONCE, 1, base_s / variant_s
        cell.fp32_ms, cell.variant_ms = 1000 * base_s, 1000 * variant_s
        cell.note = "one step each: too slow for turns within its budget"
        return cell
    steps = max(1, int(budget_s / (REPEATS * (base_s + variant_s))))
    turns = [(clock.time(repeat(base, steps)), clock.time(repeat(variant, steps))) for _ in range(REPEATS)]
    interval = ratio_of_means(
        {i: 1 / v for i, (_, v) in enumerate(turns)}, {i: 1 / b for i, (b, _) in enumerate(turns)}
    )
    cell.status, cell.steps = TIMED, steps
    cell.ratio, cell.low, cell.high = interval.estimate, interval.low, interval.high
    cell.fp32_ms = 1000 * min(b for b, _ in turns) / steps
    cell.variant_ms = 1000 * min(v for _, v in turns) / steps
    return cell


def time_grid(
    precisions: list[str],
    modes: list[str],
    widths: list[int],
    batches: list[int],
    device: torch.device,
    budget_s: float,
    progress: Callable[[Cell], None] = lambda cell: None,
) -> list[Cell]:
    """Every cell, smallest first, each given an equal share of the budget that is left."""
    cells = sorted(
        (Cell(p, mode, w, b) for p in precisions for mode in modes for w in widths for b in batches),
        key=lambda cell: (flops(cell), cell.mode, precisions.index(cell.precision)),
    )
    clock, deadline = Clock(device), time.monotonic() + budget_s
    seconds_per_flop: dict[tuple[str, str], float] = {}  # the variant's, from its last timed cell
    for left, cell in zip(range(len(cells), 0, -1), cells, strict=True):
        share = max(0.0, deadline - time.monotonic()) / left
        rate = seconds_per_flop.get((cell.precision, cell.mode))
        time_cell(cell, device, clock, share, None if rate is None else rate * flops(cell))
        if cell.variant_ms is not None:
            seconds_per_flop[(cell.precision, cell.mode)] = cell.variant_ms / 1000 / flops(cell)
        progress(cell)
    return cells
