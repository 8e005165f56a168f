"""Run a stage so that expected failures end in one clear line and a non-zero exit."""

from __future__ import annotations

import sys
from collections.abc import Callable

from .device import DeviceError
from .download import DownloadError
from .idx import IdxError
from .interrupts import Interrupted
from .params import ParamsError
from .training import DivergenceError

# Failures whose message already names the cause and the fix: no traceback.
USER_ERRORS = (ParamsError, DeviceError, DownloadError, DivergenceError, IdxError, FileNotFoundError)


def run_stage(name: str, main: Callable[[], None]) -> None:
    try:
        main()
    except USER_ERRORS as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        sys.exit(130)
    except Interrupted as stop:
        print(f"{name}: stopped: {stop}", file=sys.stderr)
        sys.exit(143)
