"""Time the training step of the reference network in one job, plain or under torchrun.

    python benchmarks/ddp_steps.py --data data/mnist                   # one process, no DDP
    torchrun --standalone --nproc-per-node=2 benchmarks/ddp_steps.py --data data/mnist

Every rank takes its share of each global batch of 64 through DDP (gloo on
the CPU, NCCL on CUDA), as the train stage does with `train.processes`; rank
0 prints one JSON line: world size, backend, threads, samples/s (of the
global batches), the best of the repeats.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from mnist_precision.base.precision_table import BASELINE
from mnist_precision.core.data import load_split, shuffled_batches
from mnist_precision.core.device import resolve_device
from mnist_precision.core.distributed import device_of, joined
from mnist_precision.core.model import build_mlp
from mnist_precision.core.optimizers import make_optimizer
from mnist_precision.core.precision import PrecisionPolicy
from mnist_precision.core.training import TrainStep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--precision", default=BASELINE)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    requested = resolve_device(args.device, args.precision)
    with joined(requested.type) as world:
        device = device_of(world, requested)
        data = load_split(args.data, "train", device)
        torch.manual_seed(0)
        model = build_mlp((256,)).to(device)
        policy = PrecisionPolicy(args.precision, device.type)
        step = TrainStep(model, policy, make_optimizer(model, policy, 0.01), world=world)
        generator = torch.Generator(device=device).manual_seed(0)

        def run(n: int) -> None:
            batches = shuffled_batches(data, args.batch_size, generator)
            for _ in range(n):
                images, labels = next(batches)
                step(*world.share(images, labels), len(labels))
            if device.type == "cuda":
                torch.cuda.synchronize()
            world.any(False)  # every rank has finished its steps

        with policy.numerics():
            run(20)
            best = float("inf")
            for _ in range(args.repeats):
                started = time.perf_counter()
                run(args.steps)
                best = min(best, time.perf_counter() - started)
        if world.is_main:
            print(
                json.dumps(
                    {
                        "world_size": world.size,
                        "backend": world.backend or "none",
                        "threads_per_process": torch.get_num_threads(),
                        "precision": args.precision,
                        "samples_per_s": args.steps * args.batch_size / best,
                    }
                )
            )


if __name__ == "__main__":
    main()
