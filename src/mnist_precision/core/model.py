"""The reference network: a multi-layer perceptron on flattened 28x28 images."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

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
