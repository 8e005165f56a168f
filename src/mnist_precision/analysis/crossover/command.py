"""`mnist-precision crossover`: from which width and batch size on each precision pays against fp32.

    mnist-precision crossover [--device auto] [--budget 180] [--widths 256,1024,4096] [--batches 64,512,4096]

Times one training step of every precision the device runs against fp32's
over the grid (on CUDA eager and compiled, i.e. `train.compile`'s CUDA
graphs; `measure` says how), writes `reports/crossover.md`, `.json` and a
heatmap per variant, and logs them as a run of the experiment
`<experiment>-benchmarks`, tagged as a benchmark, so that it never mixes with
training runs. `--no-log` writes the files only (a machine without MLflow).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from mnist_precision.analysis.crossover.measure import REPEATS, Cell, time_grid
from mnist_precision.analysis.crossover.output import read, write
from mnist_precision.analysis.crossover.record import CrossoverMap
from mnist_precision.base import names
from mnist_precision.base.errors import UserError
from mnist_precision.base.params import experiment_name
from mnist_precision.base.precision_table import BASELINE, NAMES
from mnist_precision.core.device import capability_params, device_name, refusal, resolve_device


def sizes(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give whole numbers >= 1 separated by commas, e.g. 256,1024,4096")
    return sorted(set(values))


def runnable(device: torch.device) -> tuple[list[str], dict[str, str]]:
    """The variants this device runs, and why it does not run the others."""
    variants = [name for name in NAMES if name != BASELINE]
    skipped = {name: why for name in variants if (why := refusal(name, device.type))}
    return [name for name in variants if name not in skipped], skipped


def describe(device: torch.device) -> tuple[str, str]:
    """The device as the map names it, and the software whose kernels ran."""
    offers = capability_params(device)
    if device.type == "cuda":
        label = f"cuda ({device_name(device)}; compute capability {offers[names.CUDA_COMPUTE_CAPABILITY]})"
        return label, f"torch {torch.__version__}, CUDA {torch.version.cuda}"
    label = (
        f"cpu ({device_name(device)}; {offers[names.CPU_CAPABILITY]}, features {offers[names.CPU_FEATURES]}, "
        f"{torch.get_num_threads()} threads)"
    )
    return label, f"torch {torch.__version__}"


def log_benchmark(experiment: str, result: CrossoverMap, files: list[Path]) -> str:
    # Here, not above: a bare GPU machine runs the command with --no-log and no MLflow.
    from mnist_precision.tracking.lifecycle import log_side_run
    from mnist_precision.tracking.run_types import BENCHMARK, RUN_TYPE_TAG

    params = {key: getattr(result, key) for key in ("device", "software", "budget_s", "widths", "batches")}
    ratios = {
        f"crossover/{c.precision}/{c.mode}/w{c.width}_b{c.batch}": c.ratio for c in result.cells if c.ratio is not None
    }
    tags = {RUN_TYPE_TAG: BENCHMARK, "benchmark": "crossover", "device": result.device}
    return log_side_run(experiment, "benchmarks", "crossover", tags, files, params, ratios)


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mnist-precision crossover", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--budget", type=float, default=180.0, help="seconds of timing in all (default 180)")
    parser.add_argument("--widths", type=sizes, default=[256, 1024, 4096], help="hidden widths (default 256,1024,4096)")
    parser.add_argument("--batches", type=sizes, default=[64, 512, 4096], help="batch sizes (default 64,512,4096)")
    parser.add_argument(
        "--threads",
        type=int,
        help="intra-op threads on the CPU (default: PyTorch's, one per core; "
        "fewer where other work shares the cores, or its busy-waiting threads time the contention)",
    )
    parser.add_argument("--eager-only", action="store_true", help="on CUDA, skip the compiled (CUDA graphs) steps")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="folder of the files (default reports)")
    parser.add_argument("--name", default="crossover", help="the files' name (default crossover)")
    parser.add_argument("--experiment", help="MLflow experiment stem (default: mlflow.experiment of params.yaml)")
    parser.add_argument("--no-log", action="store_true", help="write the files only; log nothing to MLflow")
    parser.add_argument(
        "--from-json",
        type=Path,
        metavar="FILE",
        help="time nothing: write the Markdown and heatmaps of a map measured elsewhere (its JSON)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = arguments()
    args = parser.parse_args(argv)
    if args.from_json:
        result = read(args.from_json)
        finish(args, result)
        return
    if args.budget <= 0:
        raise UserError(f"--budget {args.budget:g}: give a number of seconds above 0")
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads {args.threads}: give a number of threads >= 1")
        torch.set_num_threads(args.threads)

    device = resolve_device(args.device, BASELINE)
    precisions, skipped = runnable(device)
    modes = ["eager"] if device.type != "cuda" or args.eager_only else ["eager", "compiled"]
    label, software = describe(device)
    print(
        f"crossover: {len(precisions)} precisions x {len(modes)} modes x {len(args.widths)} widths x "
        f"{len(args.batches)} batches on {label}, within {args.budget:.0f} s",
        flush=True,
    )
    started = time.monotonic()

    def progress(cell: Cell) -> None:
        said = f"{cell.ratio:.2f}x" if cell.ratio is not None else "not timed"
        print(
            f"  {cell.precision:9} {cell.mode:8} width {cell.width:5} batch {cell.batch:5}: {said} ({cell.status})",
            flush=True,
        )

    cells = time_grid(precisions, modes, args.widths, args.batches, device, args.budget, progress)
    result = CrossoverMap(
        device=label,
        software=software,
        date=time.strftime("%Y-%m-%d"),
        budget_s=args.budget,
        elapsed_s=time.monotonic() - started,
        repeats=REPEATS,
        widths=args.widths,
        batches=args.batches,
        modes=modes,
        skipped=skipped,
        threads=torch.get_num_threads(),
        cpus=os.cpu_count(),
        cells=cells,
    )
    finish(args, result)


def finish(args: argparse.Namespace, result: CrossoverMap) -> None:
    """Write the map's files and, unless --no-log, log them as a benchmark run."""
    files = write(result, args.out, args.name)
    print(f"Wrote {', '.join(str(path) for path in files)}")
    if not args.no_log:
        experiment = experiment_name(args.experiment)
        run_id = log_benchmark(experiment, result, files)
        print(f"Logged as benchmark run {run_id} in MLflow experiment '{experiment}-benchmarks'.")
