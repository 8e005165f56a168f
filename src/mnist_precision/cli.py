"""`mnist-precision report|ui|server|runs|crossover [...]`: the commands beside the DVC stages."""

from __future__ import annotations

import argparse
import importlib

from mnist_precision.base.entry import run_stage

# Each command, its module (imported only when it runs: `--help` and the other
# commands import no torch or MLflow they do not use) and its summary.
COMMANDS = {
    "report": (
        "mnist_precision.analysis.report",
        "compare the precisions across seeds, from the MLflow runs (--help for options)",
    ),
    "ui": (
        "mnist_precision.operations.ui",
        "start the MLflow UI on the project's runs and print the address of its runs table (--help for options)",
    ),
    "server": (
        "mnist_precision.operations.server",
        "start a team's MLflow tracking server on PostgreSQL, with authentication (--help for options)",
    ),
    "runs": (
        "mnist_precision.operations.runs",
        "list the runs a hard crash left RUNNING (--stale), or end them (--mark-killed RUN_ID ...)",
    ),
    "crossover": (
        "mnist_precision.analysis.crossover.command",
        "time each precision against fp32 over widths and batch sizes: where it pays (--help for options)",
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="mnist-precision")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, (_, summary) in COMMANDS.items():
        commands.add_parser(name, add_help=False, help=summary)
    args, rest = parser.parse_known_args()
    command = importlib.import_module(COMMANDS[args.command][0])
    run_stage(args.command, lambda: command.main(rest))
