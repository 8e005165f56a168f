"""One epoch of the reference recipe in every precision the device runs, side by side in one process.

    python benchmarks/variants_epoch.py [--device cpu|cuda] [--epochs 1] [--every 50] [--max-steps N]

The train stage's own loop (`training.train`, with the numerics measured every
`--every` steps) and the evaluate stage's own evaluation, for each precision in
turn, the same seed for all: test accuracy, samples/s, and what the
diagnostics saw. Precisions the device refuses are listed with the reason. It
prints a Markdown table and, as its last line, one JSON object per precision.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from mnist_precision import paths
from mnist_precision.data import load_split
from mnist_precision.device import device_name, refusal, resolve_device
from mnist_precision.download import download_mnist
from mnist_precision.evaluation import evaluate
from mnist_precision.model import build_mlp
from mnist_precision.params import TrainParams
from mnist_precision.precision import PrecisionPolicy
from mnist_precision.precisions import NAMES
from mnist_precision.training import train

REPO_ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("underflow_act_grads_flushed", "underflow_act_grads_scaled_flushed", "underflow_weight_grads_flushed",
           "lost_updates")


def one_variant(name: str, device: torch.device, train_split, test_split, epochs: int, every: int,
                max_steps: int | None = None) -> dict:
    torch.manual_seed(0)
    policy = PrecisionPolicy(name, device.type)
    model = build_mlp([256]).to(device)
    with policy.numerics():
        result = train(model, train_split, policy, TrainParams(epochs, 64, 0.01, (256,), False, max_steps=max_steps), 0,
                       diagnose_every=every)
        tested = evaluate(model, test_split, policy, 1000)
    figures = result.epochs[-1].diagnostics.figures
    return {"precision": name, "test_accuracy": tested.accuracy, "samples_per_s": result.samples_per_s,
            "final_scale": result.final_scale, **{key: figures.get(key) for key in COLUMNS}}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--data", type=Path, default=REPO_ROOT / paths.DATA_DIR)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--every", type=int, default=50, help="diagnostics.every_steps")
    parser.add_argument("--max-steps", type=int, help="at most this many steps an epoch (train.max_steps; a dry run)")
    args = parser.parse_args(argv)
    download_mnist(args.data)
    device = resolve_device(args.device, "fp32")
    train_split, test_split = load_split(args.data, "train", device), load_split(args.data, "test", device)
    print(f"# {args.epochs} epoch(s) of the reference recipe on {device_name(device)} "
          f"({torch.backends.cpu.get_cpu_capability() if device.type == 'cpu' else 'CUDA ' + torch.version.cuda}), "
          f"torch {torch.__version__}, diagnostics every {args.every} steps\n")
    rows, skipped = [], {}
    for name in NAMES:
        if why := refusal(name, device.type):
            skipped[name] = why
            continue
        rows.append(one_variant(name, device, train_split, test_split, args.epochs, args.every, args.max_steps))
        print(f"  {name}: done", file=sys.stderr)
    fp32 = next(row for row in rows if row["precision"] == "fp32")
    print("| precision | test accuracy | samples/s | vs fp32 | act. grads < 2^-24 | the same × loss scale "
          "| weight grads < 2^-24 | updates lost |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['precision']} | {row['test_accuracy']:.4f} | {row['samples_per_s']:,.0f} | "
              f"{row['samples_per_s'] / fp32['samples_per_s']:.2f}x | {row['underflow_act_grads_flushed']:.3%} | "
              f"{row['underflow_act_grads_scaled_flushed']:.3%} | {row['underflow_weight_grads_flushed']:.3%} | "
              f"{row['lost_updates']:.3%} |")
    for name, why in skipped.items():
        print(f"\nskipped {name}: {why}")
    print(json.dumps(rows))
    return rows


if __name__ == "__main__":
    main()
