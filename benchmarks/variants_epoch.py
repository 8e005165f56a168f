"""One epoch of the reference recipe in every precision the device runs, side by side in one process.

    python benchmarks/variants_epoch.py [--device cpu|cuda] [--epochs 1] [--every 50] [--max-steps N]
                                        [--optimizers sgd adamw]

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

from mnist_precision.base import paths
from mnist_precision.base.params import TrainParams
from mnist_precision.base.precision_table import NAMES
from mnist_precision.core.data import load_split
from mnist_precision.core.device import device_name, refusal, resolve_device
from mnist_precision.core.download import download_mnist
from mnist_precision.core.evaluation import evaluate
from mnist_precision.core.model import build_mlp
from mnist_precision.core.optimizers import OptimizerChoice
from mnist_precision.core.precision import PrecisionPolicy
from mnist_precision.core.training import DivergenceError, train

REPO_ROOT = Path(__file__).resolve().parents[1]
COLUMNS = (
    "underflow_act_grads_flushed",
    "underflow_act_grads_scaled_flushed",
    "underflow_weight_grads_flushed",
    "lost_updates",
    "update_bias",
    "second_moment_flushed",
)
# Each optimizer's learning rate here: the recipe's for SGD, AdamW's usual one for AdamW.
LEARNING_RATES = {"sgd": 0.01, "adamw": 0.001}


def one_variant(
    name: str,
    optimizer: str,
    device: torch.device,
    train_split,
    test_split,
    epochs: int,
    every: int,
    max_steps: int | None = None,
) -> dict:
    torch.manual_seed(0)
    policy = PrecisionPolicy(name, device.type)
    model = build_mlp([256]).to(device)
    recipe = TrainParams(
        epochs=epochs, batch_size=64, lr=LEARNING_RATES[optimizer], hidden=(256,), compile=False, max_steps=max_steps
    )
    row = {"precision": name, "optimizer": optimizer}
    with policy.numerics():
        try:
            result = train(
                model, train_split, policy, recipe, 0, diagnose_every=every, optimizer=OptimizerChoice(optimizer)
            )
        except DivergenceError as error:
            return row | {"diverged": str(error)}
        tested = evaluate(model, test_split, policy, 1000)
    figures = result.epochs[-1].diagnostics.figures
    return row | {
        "test_accuracy": tested.accuracy,
        "samples_per_s": result.samples_per_s,
        "final_scale": result.final_scale,
        **{key: figures.get(key) for key in COLUMNS},
    }


def share(value: float | None, form: str = "{:.3%}") -> str:
    return "not measured" if value is None else form.format(value)


def table_row(row: dict, fp32: dict) -> str:
    if "diverged" in row:
        return f"| {row['precision']} | {row['optimizer']} | {row['diverged']} |" + " |" * 8
    return (
        f"| {row['precision']} | {row['optimizer']} | {row['test_accuracy']:.4f} | {row['samples_per_s']:,.0f} | "
        f"{row['samples_per_s'] / fp32['samples_per_s']:.2f}x | {share(row['underflow_act_grads_flushed'])} | "
        f"{share(row['underflow_act_grads_scaled_flushed'])} | {share(row['underflow_weight_grads_flushed'])} | "
        f"{share(row['lost_updates'])} | {share(row['update_bias'], '{:+.3f}')} | "
        f"{share(row['second_moment_flushed'])} |"
    )


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--data", type=Path, default=REPO_ROOT / paths.DATA_DIR)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--every", type=int, default=50, help="diagnostics.every_steps")
    parser.add_argument("--max-steps", type=int, help="at most this many steps an epoch (train.max_steps; a dry run)")
    parser.add_argument(
        "--optimizers",
        nargs="+",
        default=["sgd", "adamw"],
        choices=tuple(LEARNING_RATES),
        help="each precision with each of them (lr: SGD 0.01, AdamW 0.001)",
    )
    args = parser.parse_args(argv)
    download_mnist(args.data)
    device = resolve_device(args.device, "fp32")
    train_split, test_split = load_split(args.data, "train", device), load_split(args.data, "test", device)
    print(
        f"# {args.epochs} epoch(s) of the reference recipe on {device_name(device)} "
        f"({torch.backends.cpu.get_cpu_capability() if device.type == 'cpu' else 'CUDA ' + torch.version.cuda}), "
        f"torch {torch.__version__}, diagnostics every {args.every} steps\n"
    )
    rows, skipped = [], {}
    for optimizer in args.optimizers:
        for name in NAMES:
            if why := refusal(name, device.type):
                skipped[name] = why
                continue
            rows.append(
                one_variant(name, optimizer, device, train_split, test_split, args.epochs, args.every, args.max_steps)
            )
            print(f"  {name}, {optimizer}: done", file=sys.stderr)
    print(
        "| precision | optimizer | test accuracy | samples/s | vs fp32 (same optimizer) | act. grads < 2^-24 "
        "| the same × loss scale | weight grads < 2^-24 | updates lost | update bias | AdamW 2nd moment flushed |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        fp32 = next(r for r in rows if r["precision"] == "fp32" and r["optimizer"] == row["optimizer"])
        print(table_row(row, fp32))
    for name, why in skipped.items():
        print(f"\nskipped {name}: {why}")
    print(json.dumps(rows))
    return rows


if __name__ == "__main__":
    main()
