"""Test-set evaluation, and what storing the weights in fp16 costs and saves."""

from __future__ import annotations

import io
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mnist_precision.core.data import Split, batches
from mnist_precision.core.model import CLASSES
from mnist_precision.core.precision import PrecisionPolicy


@dataclass(frozen=True)
class Evaluation:
    loss: float
    accuracy: float
    predictions: torch.Tensor  # (N,) int64, on the CPU

    def confusion(self, labels: torch.Tensor) -> torch.Tensor:
        """(actual, predicted) counts, CLASSES x CLASSES."""
        pairs = labels.cpu() * CLASSES + self.predictions
        return torch.bincount(pairs, minlength=CLASSES * CLASSES).reshape(CLASSES, CLASSES)

    def per_class_accuracy(self, labels: torch.Tensor) -> dict[str, float]:
        matrix = self.confusion(labels)
        return {str(c): matrix[c, c].item() / matrix[c].sum().item() for c in range(CLASSES)}


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, policy: PrecisionPolicy, batch_size: int) -> Evaluation:
    """The model (as `policy.convert_module` made it) on the split, in the policy's precision."""
    model.eval()
    loss_sum = torch.zeros((), device=split.images.device)
    predictions = []
    for images, labels in batches(split, batch_size):
        with policy.autocast():
            logits = model(policy.convert_input(images))
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").float()
        predictions.append(logits.argmax(dim=1))
    predicted = torch.cat(predictions).cpu()
    return Evaluation(
        loss=loss_sum.item() / len(split),
        accuracy=(predicted == split.labels.cpu()).sum().item() / len(split),
        predictions=predicted,
    )


def stored_bytes(state_dict: dict[str, torch.Tensor]) -> int:
    """Size of the state_dict as torch.save writes it."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    return buffer.getbuffer().nbytes


def fp16_stored_copy(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The weights as they would be stored in fp16, and that copy widened back
    to fp32 for use: only the storage rounding differs from the original."""
    half = {name: tensor.half() for name, tensor in state_dict.items()}
    return half, {name: tensor.float() for name, tensor in half.items()}
