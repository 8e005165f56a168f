"""The reference network: a multi-layer perceptron on flattened 28x28 images."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mnist_precision.core.data import to_input

IN_FEATURES, CLASSES = 28 * 28, 10


def build_mlp(hidden: Sequence[int]) -> nn.Sequential:
    """Linear -> ReLU for each hidden width, then a Linear to the 10 classes.

    With `hidden=[256]` this is the tutorial's Linear(784,256) -> ReLU -> Linear(256,10).
    """
    layers: list[nn.Module] = []
    width = IN_FEATURES
    for out in hidden:
        layers += [nn.Linear(width, out), nn.ReLU()]
        width = out
    layers.append(nn.Linear(width, CLASSES))
    return nn.Sequential(*layers)


class PixelsIn(nn.Module):
    """Raw MNIST pixels ((N, 28, 28) uint8, 0-255) to the network's input, as
    the training data went in (`data.to_input`: torchvision's ToDtype(scale=True)
    then Normalize, bit for bit, tests/test_serving.py). Not torchvision's own
    modules: its import would cost every training run about a second
    (benchmarks/results/model_outputs.md)."""

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return to_input(pixels)


def served(network: nn.Module) -> nn.Sequential:
    """The network as it is logged and served: MNIST's pixels in as the data set
    stores them, the 10 classes' logits out (the class is their argmax)."""
    return nn.Sequential(PixelsIn(), network)
