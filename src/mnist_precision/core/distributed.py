"""Data parallelism through torchrun and DistributedDataParallel.

One process (`train.processes: 1`) runs as before: no torchrun, no process
group. Under torchrun, every rank holds the whole data set as tensors, draws
the same seeded order, and takes its share of each global batch, so that each
step sees the samples of the one-process run, whatever the world size. The
loss of a share is weighted so that DDP's average of the ranks' gradients is
the one-process gradient of the whole batch, a short last batch included.
"""

from __future__ import annotations

import os
import pickle
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

from mnist_precision.base.errors import UserError
from mnist_precision.base.interrupts import handling

# How long a rank waits in a collective for the others before it gives up:
# a rank that died is noticed within this time (gloo notices a closed
# connection at once; a rank that hangs takes the whole timeout).
COLLECTIVE_TIMEOUT = timedelta(seconds=60)

# The DDP communication hook that sends gradients in each precision.
GRAD_COMM_HOOKS = {"fp16": default_hooks.fp16_compress_hook, "bf16": default_hooks.bf16_compress_hook}


class DistributedError(UserError, RuntimeError):
    """A collective failed: another rank died or stopped answering."""


def under_torchrun() -> bool:
    """torchrun (torch.distributed.run) exports these to every worker it starts."""
    return "TORCHELASTIC_RUN_ID" in os.environ and "LOCAL_RANK" in os.environ


def processes_wanted(setting: int | str, device_type: str) -> int:
    """`train.processes` as a count: `auto` is one process per visible GPU, one on the CPU."""
    if setting == "auto":
        return max(1, torch.cuda.device_count()) if device_type == "cuda" else 1
    return int(setting)


@dataclass(frozen=True)
class World:
    """This process's place in the job. `World()` is the one-process job."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    node_rank: int = 0
    nodes: int = 1
    backend: str | None = None  # None: no process group
    control: object = None  # a gloo group for flags and objects, which never wait for a GPU

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def node_id(self) -> str | None:
        """The name of this node in system metrics, where the job spans several."""
        return f"node{self.node_rank}" if self.nodes > 1 else None

    def share(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's part of a global batch: contiguous, in the order of the one-process batch."""
        if not self.distributed:
            return images, labels
        return images.tensor_split(self.size)[self.rank], labels.tensor_split(self.size)[self.rank]

    def wrap(self, model: nn.Module, grad_comm: str) -> nn.Module:
        """The model as the training step calls it: under DDP in a distributed job."""
        if not self.distributed:
            return model
        device_ids = [self.local_rank] if self.backend == "nccl" else None
        ddp = DistributedDataParallel(model, device_ids=device_ids)
        if grad_comm in GRAD_COMM_HOOKS:
            ddp.register_comm_hook(dist.group.WORLD, GRAD_COMM_HOOKS[grad_comm])
        return ddp

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over the ranks, in place."""
        if self.distributed:
            self._collective(dist.all_reduce, tensor, op=dist.ReduceOp.SUM)
        return tensor

    def any(self, flag: bool) -> bool:
        """Whether any rank says yes: so that every rank stops at the same step."""
        if not self.distributed:
            return flag
        votes = torch.tensor([int(flag)])
        self._collective(dist.all_reduce, votes, op=dist.ReduceOp.MAX, group=self.control)
        return bool(votes.item())

    def broadcast(self, value):
        """Rank 0's `value`, on every rank."""
        if not self.distributed:
            return value
        box = [value]
        self._collective(dist.broadcast_object_list, box, src=0, group=self.control)
        return box[0]

    def _collective(self, function, *args, **kwargs) -> None:
        try:
            function(*args, **kwargs)
        except (RuntimeError, pickle.UnpicklingError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise DistributedError(
                f"rank {self.rank} of {self.size}: a collective failed, so another rank died or stopped "
                f"answering within {COLLECTIVE_TIMEOUT.seconds} s ({first_line[:300]}); "
                "torchrun's summary names the rank that failed first"
            ) from None


def device_of(world: World, device: torch.device) -> torch.device:
    """The device of this rank: its own GPU on a multi-GPU machine."""
    if device.type == "cuda" and world.distributed:
        return torch.device("cuda", world.local_rank)
    return device


@contextmanager
def joined(device_type: str) -> Iterator[World]:
    """Join torchrun's job (gloo on the CPU, NCCL on CUDA) for the block; the
    one-process World outside torchrun."""
    if not under_torchrun():
        yield World()
        return
    backend = "nccl" if device_type == "cuda" else "gloo"
    local_rank = int(os.environ["LOCAL_RANK"])
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    control = dist.new_group(backend="gloo", timeout=COLLECTIVE_TIMEOUT) if backend == "nccl" else dist.group.WORLD
    try:
        yield World(
            rank=dist.get_rank(),
            size=dist.get_world_size(),
            local_rank=local_rank,
            node_rank=int(os.environ.get("GROUP_RANK", "0")),
            nodes=int(os.environ.get("GROUP_WORLD_SIZE", "1")),
            backend=backend,
            control=control,
        )
    finally:
        dist.destroy_process_group()


def launch(processes: int, script: str) -> None:
    """Run `script` (this stage's entry point) on `processes` ranks of this
    machine through torchrun, and exit as the job did.

    torchrun runs in a session of its own, and this process forwards SIGINT
    and SIGTERM to it once: a Ctrl-C that reached every process at once
    would make torchrun kill the workers before they checkpoint. When a rank
    fails, the message names it, from torchrun's summary of the failure.
    """
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", script]
    job = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, start_new_session=True)
    forwarded: list[int] = []

    def forward(signum, frame):
        if not forwarded:
            forwarded.append(signum)
            job.send_signal(signum)

    summary: list[str] = []

    def relay() -> None:  # torchrun's output goes on to ours, and its summary is kept
        for line in job.stderr or ():
            sys.stderr.write(line)
            summary.append(line)
            del summary[:-200]

    with handling(forward):
        relaying = threading.Thread(target=relay, daemon=True)
        relaying.start()
        code = job.wait()
    relaying.join(timeout=10)
    if code == 0:
        return
    if forwarded:
        sys.exit(128 + forwarded[0])
    # torchrun's summary ends with the first failure it observed: the cause, not the ranks it stopped after it.
    root_cause = "".join(summary).rpartition("Root Cause (first observed failure):")[2]
    failed = re.findall(r"rank\s*:\s*(\d+).*?\n\s*exitcode\s*:\s*(-?\d+)", root_cause)
    if failed:
        rank, exit_code = failed[0]
        cause = f"killed by {signal.Signals(-int(exit_code)).name}" if int(exit_code) < 0 else f"exit code {exit_code}"
        raise DistributedError(
            f"rank {rank} of the {processes}-process job failed ({cause}); "
            "the other ranks were stopped and no output was written: run the stage again"
        )
    raise DistributedError(f"torchrun exited with code {code}; no output was written: run the stage again")
