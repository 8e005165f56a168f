"""Run a stage or command so that expected failures end in one clear line and a non-zero exit."""

from __future__ import annotations

import sys
from collections.abc import Callable

from mnist_precision.base.errors import UserError
from mnist_precision.base.interrupts import Interrupted


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
