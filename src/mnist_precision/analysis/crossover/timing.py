"""Timing a training step: the clock that counts queued GPU work, and the FLOPs a step does."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import torch


def training_flops_per_sample(hidden: tuple[int, ...]) -> int:
    """Matmul FLOPs of one training sample: forward (2 per weight), weight
    gradients (2 per weight), and input gradients for every layer but the
    first, whose input (the image) needs none."""
    widths = [28 * 28, *hidden, 10]
    weights = [a * b for a, b in itertools.pairwise(widths)]
    return 2 * sum(weights) + 2 * sum(weights) + 2 * sum(weights[1:])


class Clock:
    """Wall time on the CPU; CUDA events on a GPU, so that queued kernels count."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def time(self, work: Callable[[], object]) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            work()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1000
        started = time.perf_counter()
        work()
        return time.perf_counter() - started
