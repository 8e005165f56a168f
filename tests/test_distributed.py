"""The data-parallel arithmetic, without processes: the shares of a batch and
the weighting that makes DDP's average the one-process gradient."""

from __future__ import annotations

import pytest
import torch

from mnist_precision.core.distributed import World, processes_wanted
from mnist_precision.core.model import build_mlp
from mnist_precision.core.training import batch_loss


def gradients(model, loss):
    model.zero_grad()
    loss.backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("batch", [64, 37, 1])  # even, uneven, fewer samples than ranks
@pytest.mark.parametrize("size", [2, 3])
def test_the_mean_of_the_ranks_gradients_is_the_one_process_gradient(batch, size):
    torch.manual_seed(0)
    model = build_mlp([16])
    images, labels = torch.randn(batch, 784), torch.randint(0, 10, (batch,))
    alone = gradients(model, batch_loss(model(images), labels, World(), batch))
    ranks = []
    for rank in range(size):
        world = World(rank=rank, size=size, backend="gloo")
        share = world.share(images, labels)
        ranks.append(gradients(model, batch_loss(model(share[0]), share[1], world, batch)))
    averaged = [sum(grads) / size for grads in zip(*ranks, strict=True)]  # what DDP's all-reduce gives
    for a, b in zip(alone, averaged, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_the_shares_cover_the_batch_in_order():
    images, labels = torch.arange(10).float().unsqueeze(1), torch.arange(10)
    shares = [World(rank=r, size=3, backend="gloo").share(images, labels)[1].tolist() for r in range(3)]
    assert shares == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert World().share(images, labels)[1] is labels


def test_one_process_is_not_distributed():
    world = World()
    assert not world.distributed and world.is_main and world.node_id is None
    assert world.any(True) and not world.any(False)
    assert world.broadcast("run-id") == "run-id"
    assert World(nodes=2, node_rank=1, backend="gloo").node_id == "node1"


def test_processes_auto_is_one_per_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert processes_wanted("auto", "cuda") == 8
    assert processes_wanted("auto", "cpu") == 1
    assert processes_wanted(3, "cpu") == 3
