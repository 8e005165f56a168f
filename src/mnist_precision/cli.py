"""`mnist-precision report [...]`: the commands beside the DVC stages."""

from __future__ import annotations

import argparse

from . import report
from .entry import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(prog="mnist-precision")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    commands.add_parser("report", add_help=False, help="compare the precisions across seeds (--help for options)")
    args, rest = parser.parse_known_args()
    run_stage(args.command, lambda: report.main(rest))
