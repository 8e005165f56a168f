"""Run a stage so that expected failures end in one clear line and a non-zero exit."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from .errors import UserError
from .interrupts import Interrupted


def run_stage(name: str, main: Callable[[], None]) -> None:
    try:
        main()
    except UserError as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        sys.exit(130)
    except Interrupted as stop:
        print(f"{name}: stopped: {stop}", file=sys.stderr)
        sys.exit(stop.exit_code)


def main() -> None:
    """`mnist-precision report [...]`: the commands beside the DVC stages."""
    parser = argparse.ArgumentParser(prog="mnist-precision")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    commands.add_parser("report", add_help=False, help="compare the precisions across seeds (--help for options)")
    args, rest = parser.parse_known_args()
    from .report import main as report

    run_stage(args.command, lambda: report(rest))
