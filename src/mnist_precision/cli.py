"""`mnist-precision report|ui|server|runs|crossover [...]`: the commands beside the DVC stages."""

from __future__ import annotations

import argparse

from mnist_precision.base.entry import run_stage

COMMANDS = {
    "report": "compare the precisions across seeds, from the MLflow runs (--help for options)",
    "ui": "start the MLflow UI on the project's runs and print the address of its runs table (--help for options)",
    "server": "start a team's MLflow tracking server on PostgreSQL, with authentication (--help for options)",
    "runs": "list the runs a hard crash left RUNNING (--stale), or end them (--mark-killed RUN_ID ...)",
    "crossover": "time each precision against fp32 over widths and batch sizes: where it pays (--help for options)",
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="mnist-precision")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, summary in COMMANDS.items():
        commands.add_parser(name, add_help=False, help=summary)
    args, rest = parser.parse_known_args()
    if args.command == "report":
        from mnist_precision.analysis import report as command
    elif args.command == "ui":
        from mnist_precision.operations import ui as command
    elif args.command == "runs":
        from mnist_precision.operations import runs as command
    elif args.command == "crossover":
        from mnist_precision.analysis.crossover import command
    else:
        from mnist_precision.operations import server as command
    run_stage(args.command, lambda: command.main(rest))
