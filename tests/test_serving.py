"""The logged model's input transform (torchvision's, in `model.served`) is the
training data's (`data.to_input`), bit for bit, on every pixel value."""

from __future__ import annotations

import torch
from torch import nn

from mnist_precision.core.data import to_input
from mnist_precision.core.model import served


def test_the_served_transform_is_the_training_transform_on_every_pixel_value():
    every_value = torch.arange(256, dtype=torch.uint8).repeat(4)[: 28 * 28].reshape(1, 28, 28)
    pixels = torch.cat([every_value, torch.randint(0, 256, (63, 28, 28), dtype=torch.uint8)])
    assert torch.equal(served(nn.Identity())(pixels), to_input(pixels))
    assert served(nn.Identity())(pixels).shape == (64, 784)
