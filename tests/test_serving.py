"""The logged model's input transform (`model.PixelsIn`) is torchvision's
ToDtype(scale=True) and Normalize, and the training data's (`data.to_input`),
bit for bit, on every pixel value."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.transforms import v2

from mnist_precision.core.data import MEAN, STD, to_input
from mnist_precision.core.model import served


def test_the_served_transform_is_torchvisions_and_the_training_transform_on_every_pixel_value():
    every_value = torch.arange(256, dtype=torch.uint8).repeat(4)[: 28 * 28].reshape(1, 28, 28)
    pixels = torch.cat([every_value, torch.randint(0, 256, (63, 28, 28), dtype=torch.uint8)])
    torchvision = nn.Sequential(v2.ToDtype(torch.float32, scale=True), v2.Normalize([MEAN], [STD]), nn.Flatten())
    inputs = served(nn.Identity())(pixels)
    assert inputs.shape == (64, 784) and inputs.dtype == torch.float32
    assert torch.equal(inputs, torchvision(pixels)) and torch.equal(inputs, to_input(pixels))
