"""The train stage's entry: train in this process, or start torchrun's ranks
(`train.processes` above 1), each of which runs the stage's script again.

The training code is imported only in a process that trains: it brings
MLflow, whose start-up a launcher, which only waits for its ranks, would
spend for nothing once per job."""

from __future__ import annotations

import sys

from mnist_precision.base import paths
from mnist_precision.base.params import load
from mnist_precision.core.device import resolve_device
from mnist_precision.core.distributed import launch, processes_wanted, under_torchrun


def main() -> None:
    params = load(paths.PARAMS)
    device = resolve_device(params.device, params.precision)
    processes = processes_wanted(params.train.processes, device.type)
    if processes > 1 and not under_torchrun():
        launch(processes, sys.argv[0])  # this stage again, on every rank
        return
    from mnist_precision.pipeline import train_stage  # here, not at the top: see the module's docstring

    train_stage.main(params, device)
