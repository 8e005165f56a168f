"""A stage's or command's process entry: expected failures end in one clear
line and a non-zero exit, and the process exits without a last sweep of its heap."""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable

from mnist_precision.base.errors import UserError
from mnist_precision.base.interrupts import Interrupted


def run_stage(name: str, main: Callable[[], None]) -> None:
    """Run `main` as the whole of this process's work; the process ends after it."""
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
    finally:
        # At exit the interpreter sweeps every object it still tracks for
        # reference cycles: with torch and MLflow loaded, most of a stage's exit
        # (benchmarks/results/experiment_overhead.md). The process is ending and
        # the OS takes its memory back whole, so the sweep is skipped. atexit
        # handlers (MLflow's, which end runs and drain queues) run as before;
        # only objects in cycles go unfinalized, and this project closes its files.
        gc.freeze()
