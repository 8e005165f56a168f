"""MNIST held as tensors: parsed once, normalized once, batched by index.

The seed tutorial runs every sample through PIL and ToTensor in a DataLoader;
here the whole set is one float tensor on the training device, and a batch is
a slice of a seeded permutation.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from mnist_precision.core.idx import read_idx

MEAN, STD = 0.1307, 0.3081
SPLITS = {"train": "train", "test": "t10k"}


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # (N, 784) float32, normalized
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)


def split_files(data_dir: str | Path, split: str) -> tuple[Path, Path]:
    """The split's images file and labels file."""
    prefix = Path(data_dir) / SPLITS[split]
    return prefix.with_name(f"{prefix.name}-images-idx3-ubyte"), prefix.with_name(f"{prefix.name}-labels-idx1-ubyte")


def read_pixels(data_dir: str | Path, split: str) -> torch.Tensor:
    """The split's images as MNIST stores them: (N, 28, 28) uint8, 0-255."""
    return read_idx(split_files(data_dir, split)[0])


def to_input(pixels: torch.Tensor) -> torch.Tensor:
    """The network's input from raw pixels: scaled to [0, 1], normalized with
    the training set's mean and std, flattened. The same arithmetic as
    torchvision's ToDtype(scale=True) and Normalize, and as the logged model's
    `model.PixelsIn`, which calls it: what a client sends is what training saw.
    In place on a copy: the whole training set goes through it at once."""
    return pixels.to(torch.float32, copy=True).mul_(1.0 / 255).sub_(MEAN).div_(STD).flatten(1)


def load_split(data_dir: str | Path, split: str, device: torch.device | str = "cpu") -> Split:
    images_file, labels_file = split_files(data_dir, split)
    images, labels = read_idx(images_file), read_idx(labels_file)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{split}: {images.shape[0]} images but {labels.shape[0]} labels")
    return Split(images=to_input(images.to(device)), labels=labels.to(device).long())


def shuffled_batches(
    split: Split, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of batches in the generator's order; the last batch may be short.

    Each batch is gathered by index: an epoch's gathers of a batch's rows cost
    less than permuting the whole set once per epoch, and `index_select` less
    than indexing with a tensor (benchmarks/results/cpu.md).
    """
    order = torch.randperm(len(split), generator=generator, device=generator.device)
    for start in range(0, len(split), batch_size):
        index = order[start : start + batch_size]
        yield split.images.index_select(0, index), split.labels.index_select(0, index)


def batches(split: Split, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The split in its stored order, for evaluation."""
    for start in range(0, len(split), batch_size):
        yield split.images[start : start + batch_size], split.labels[start : start + batch_size]
